"""The one place that maps a failure to the reply the client gets (STYLE.md §6).

Each entry gives Envoy's status, body, response flag and response-code details, as Envoy 1.40
sends them (bodies checked against it in tests/oracle). The connection manager turns an entry
into a response with ``content-length`` and ``content-type: text/plain`` when there is a body.
"""

from __future__ import annotations

from meshproxy.http.headers import ResponseHeaders


class Reply:
    __slots__ = ("status", "body", "flag", "details", "overloaded")

    def __init__(self, status: int, body: bytes, flag: str, details: str,
                 overloaded: bool = False):
        self.status = status
        self.body = body
        self.flag = flag
        self.details = details
        self.overloaded = overloaded


NO_ROUTE = Reply(404, b"", "NR", "route_not_found")
CLUSTER_NOT_FOUND = Reply(503, b"", "NC", "cluster_not_found")
NO_HEALTHY_UPSTREAM = Reply(503, b"no healthy upstream", "UH", "no_healthy_upstream")
UPSTREAM_TIMEOUT = Reply(504, b"upstream request timeout", "UT", "upstream_response_timeout")
STREAM_IDLE_TIMEOUT = Reply(408, b"stream timeout", "SI", "stream_idle_timeout")
# The request had fully arrived: the wait is the upstream's, hence a gateway timeout.
STREAM_IDLE_TIMEOUT_504 = Reply(504, b"stream timeout", "SI", "stream_idle_timeout")
REQUEST_TIMEOUT = Reply(408, b"request timeout", "", "request_overall_timeout")
MAX_DURATION_408 = Reply(408, b"downstream duration timeout", "", "max_duration_timeout")
MAX_DURATION_504 = Reply(504, b"downstream duration timeout", "", "max_duration_timeout")
REQUEST_HEADER_TIMEOUT = Reply(408, b"request header timeout", "", "request_header_timeout")
UPGRADE_FAILED = Reply(403, b"", "", "upgrade_failed")
MISSING_HOST = Reply(400, b"", "", "missing_host_header")
INVALID_PATH = Reply(400, b"", "", "path_normalization_failed")
ABSOLUTE_PATH = Reply(404, b"", "", "absolute_path")
INVALID_METHOD = Reply(400, b"", "", "invalid_method")
OVERFLOW = Reply(503, b"upstream connect error or disconnect/reset before headers. "
                      b"reset reason: overflow", "UO",
                 "upstream_reset_before_response_started{overflow}", overloaded=True)
MAINTENANCE = Reply(503, b"maintenance mode", "UMSDR", "maintenance_mode")


def upstream_reset(reason: str, transport_detail: str = "", retried: bool = False) -> Reply:
    """The reply for an upstream that failed before response headers (Envoy's router
    ``onUpstreamReset``): 502 with flag UPE for a protocol error (``Http::Code::BadGateway``),
    else 503 with UF for connect failures, UC for terminations, UR otherwise."""
    lead = b"upstream connect error or disconnect/reset before headers. "
    lead += b"retried and the latest reset reason: " if retried else b"reset reason: "
    body = lead + reason.encode()
    if transport_detail and retried:
        body += b", transport failure reason: " + transport_detail.encode()
    if reason == "remote connection failure" or reason == "connection timeout":
        flag = "UF"
    elif reason == "connection termination":
        flag = "UC"
    elif reason == "overflow":
        flag = "UO"
    elif reason == "protocol error":
        return Reply(502, body, "UPE", "upstream_reset_before_response_started{protocol_error}")
    else:
        flag = "UR"
    return Reply(503, body, flag, "upstream_reset_before_response_started{" +
                 reason.replace(" ", "_") + "}")


def codec_error(status: int, details: str) -> Reply:
    from meshproxy.http.h1_common import reason
    return Reply(status, reason(status), "DPE", details)


def response_for(reply: Reply, body: bytes | None = None) -> tuple[ResponseHeaders, bytes]:
    """Headers and body of a local reply. ``body`` overrides the entry's body."""
    b = reply.body if body is None else body
    # The router sets x-envoy-overloaded before the reply is built, so it comes first.
    headers = [(b"x-envoy-overloaded", b"true")] if reply.overloaded else []
    resp = ResponseHeaders(reply.status, headers)
    if b:
        headers.append((b"content-length", b"%d" % len(b)))
        headers.append((b"content-type", b"text/plain"))
        resp.content_length = len(b)
    return resp, b


# --------------------------------------------------------------------------------------------
# gRPC requests get their local replies as gRPC statuses (Envoy's Utility::sendLocalReply with
# is_grpc: a trailers-only response, 200 with grpc-status and grpc-message).

def is_grpc(req) -> bool:
    """``Grpc::Common::hasGrpcContentType``: application/grpc, or application/grpc+<codec> or
    application/grpc;<params>."""
    for n, v in req.headers:
        if n == b"content-type":
            return v == b"application/grpc" or v[:17] in (b"application/grpc+",
                                                           b"application/grpc;")
    return False


_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def grpc_status_for(http_status: int) -> int:
    """``Grpc::Utility::httpToGrpcStatus`` (grpc/doc/http-grpc-status-mapping.md)."""
    return _HTTP_TO_GRPC.get(http_status, 2)


def _percent_encode(b: bytes) -> bytes:
    """grpc-message is percent-encoded outside printable ASCII and '%' (PROTOCOL-HTTP2.md)."""
    return b"".join(bytes((c,)) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c
                    for c in b)


def grpc_response_for(reply: Reply, body: bytes | None,
                      grpc_status: int | None) -> tuple[ResponseHeaders, bytes]:
    b = reply.body if body is None else body
    code = grpc_status if grpc_status is not None else grpc_status_for(reply.status)
    headers = [(b"x-envoy-overloaded", b"true")] if reply.overloaded else []
    headers += [(b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % code)]
    if b:
        headers.append((b"grpc-message", _percent_encode(b)))
    return ResponseHeaders(200, headers), b""
