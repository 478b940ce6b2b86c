"""An HTTP/2 request head into the ``RequestHeaders`` the connection manager takes.

The checks are nghttp2's (``lib/nghttp2_http.c``, ``nghttp2_http_on_header`` and
``nghttp2_http_on_request_headers``), which Envoy's HTTP/2 codec runs before it sees a header:
RFC 9113 §8.2.1 field names are lower-case tokens, values carry no CR, LF or NUL; §8.2.2
connection-specific fields (``connection``, ``keep-alive``, ``proxy-connection``,
``transfer-encoding``, ``upgrade``) are malformed and ``te`` may only be ``trailers``; §8.3
pseudo-headers come first, only once each, only the defined ones, and a request has
``:method``, ``:scheme`` and ``:path`` (``/...``, or ``*`` for OPTIONS) and ``:authority`` or
``host``. A malformed request raises :class:`Malformed`; Envoy ends the whole connection for it
(``stream_error_on_invalid_http_messaging`` false, counted ``http2.rx_messaging_error``).

Envoy's own limits (``ConnectionImpl::saveHeader``): more than ``max_headers_count`` headers or
more than ``max_request_headers_kb`` of names and values resets the stream (nghttp2's temporal
callback failure: RST_STREAM INTERNAL_ERROR), raised as :class:`TooLarge`.

``:authority`` becomes ``authority`` (the HTTP/1 upstream writes it as ``host``), a ``host``
header stands in for a missing ``:authority`` (RFC 9113 §8.3.1) and is otherwise dropped, and
``cookie`` crumbs are joined with "; " (RFC 9113 §8.2.3), as Envoy does; ``expect:
100-continue`` is taken out for the connection manager to answer, as from HTTP/1.
"""

from __future__ import annotations

from meshproxy.http.h1_request import _HOST_OK
from meshproxy.http.headers import RequestHeaders


class Malformed(Exception):
    """RFC 9113 §8.1.1 malformed request (a connection error in Envoy's default setting)."""


class TooLarge(Exception):
    """The header list passes Envoy's count or size limit (the stream is reset)."""


class UnderscoreRejected(Exception):
    """``headers_with_underscores_action: REJECT_REQUEST`` and a name with "_" (the stream is
    reset, as for TooLarge: Envoy's ``ConnectionImpl::saveHeader``)."""


_CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection",
                                  b"transfer-encoding", b"upgrade"))
# nghttp2_check_header_name: lower-case tchar (RFC 9110 §5.6.2).
_NAME_OK = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_VALUE_BAD = b"\r\n\x00"
_PSEUDO = frozenset((b":method", b":path", b":scheme", b":authority"))


def request_from_headers(headers, max_count: int, max_bytes: int, underscores: str = "ALLOW",
                         stats=None, conn_scheme: bytes = b"http") -> RequestHeaders:
    """``underscores``: the HCM's ``headers_with_underscores_action``; ``stats`` (``http2.*``)
    counts headers it drops."""
    if len(headers) > max_count:
        raise TooLarge()
    pseudo = {}
    out = []
    size = 0
    cookies = None
    host = None
    regular = False
    content_length = -1
    expect = False
    for name, value in headers:
        size += len(name) + len(value)
        if name[:1] == b":":
            if regular or name not in _PSEUDO or name in pseudo:
                raise Malformed(name)
            pseudo[name] = value
            continue
        regular = True
        if not name or name.translate(None, _NAME_OK):
            raise Malformed(name)
        if value.translate(None, _VALUE_BAD) != value:
            raise Malformed(name)
        if name in _CONNECTION_SPECIFIC:
            raise Malformed(name)
        if name == b"te":
            if value.lower() != b"trailers":
                raise Malformed(name)
        elif name == b"host":
            host = value if host is None else host
            continue
        elif name == b"cookie":
            cookies = [value] if cookies is None else cookies + [value]
            continue
        elif underscores != "ALLOW" and b"_" in name:
            if underscores == "REJECT_REQUEST":
                raise UnderscoreRejected(name)
            if stats is not None:
                stats.dropped_headers_with_underscores += 1
            continue
        elif name == b"expect" and value.lower() == b"100-continue":
            expect = True       # the connection manager answers it (RFC 9110 §10.1.1)
            continue
        elif name == b"content-length":
            if content_length >= 0 or not value.isdigit():
                raise Malformed(name)
            content_length = int(value)
        out.append((name, value))
    if size > max_bytes:
        raise TooLarge()
    method = pseudo.get(b":method")
    path = pseudo.get(b":path")
    scheme = pseudo.get(b":scheme")
    authority = pseudo.get(b":authority", host)
    if method == b"CONNECT":
        # RFC 9113 §8.5: CONNECT names only :authority (no extended CONNECT here).
        if scheme is not None or path is not None or b":authority" not in pseudo:
            raise Malformed(b"CONNECT")
        path = b""
    elif method is None or scheme is None or not path or authority is None:
        raise Malformed(b"pseudo-headers")
    elif path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
        raise Malformed(b":path")
    if not authority or authority.translate(None, _HOST_OK):
        raise Malformed(b":authority")      # nghttp2_check_authority (RFC 3986 §3.2)
    if cookies is not None:
        out.append((b"cookie", b"; ".join(cookies)))
    # The scheme the connection manager reads (x-forwarded-proto) is the connection's, as for
    # HTTP/1: Envoy derives it from the transport, not from :scheme.
    req = RequestHeaders(method, path, authority, out, conn_scheme, b"2")
    req.content_length = content_length
    req.expect_continue = expect
    return req


def trailers_from_headers(headers) -> list:
    """Request trailers (RFC 9113 §8.1): no pseudo-headers; same field rules."""
    for name, value in headers:
        if name[:1] == b":" or not name or name.translate(None, _NAME_OK) \
                or name in _CONNECTION_SPECIFIC:
            raise Malformed(name)
        if value.translate(None, _VALUE_BAD) != value:
            raise Malformed(name)
    return list(headers)
