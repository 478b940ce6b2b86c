"""The codec seam between bytes on a connection and the connection manager.

It follows Envoy's ``envoy/http/codec.h``: a server codec is fed bytes (``dispatch``) and calls
``callbacks.new_stream()`` for each request, then ``decode_headers`` / ``decode_data`` /
``decode_trailers`` on the returned stream; the connection manager answers through
``encode_headers`` / ``encode_data`` / ``encode_trailers`` on the codec with that stream. HTTP/1
has one stream at a time (pipelined requests wait); HTTP/2 will have many, behind the same calls.

A protocol violation raises :class:`CodecError` carrying the status Envoy answers with.
"""

from __future__ import annotations

import dataclasses


class CodecError(Exception):
    """The peer broke the protocol. ``status`` is the local reply Envoy sends (400, 413, 431,
    426, 501) and ``details`` Envoy's response-code detail (``http1.codec_error`` ...)."""

    def __init__(self, status: int, details: str, body: bool = True):
        super().__init__(f"{status} {details}")
        self.status = status
        self.details = details
        self.body = body


@dataclasses.dataclass(frozen=True)
class CodecLimits:
    """Per-connection limits from the HCM config (Envoy defaults)."""

    max_request_headers_kb: int = 60
    max_headers_count: int = 100
    accept_http_10: bool = False
    default_host_for_http_10: bytes = b""
    allow_absolute_url: bool = True
    # Envoy: headers_with_underscores_action (ALLOW, REJECT_REQUEST, DROP_HEADER)
    headers_with_underscores: str = "ALLOW"
    enable_trailers: bool = False


# Hop-by-hop headers that a proxy consumes (RFC 9110 §7.6.1; Envoy's
# ConnectionManagerUtility / HeaderUtility). ``te`` is kept when its value is "trailers".
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                        b"upgrade", b"te"))
