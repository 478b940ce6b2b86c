"""HTTP/1.1 serialising shared by the server codecs and the upstream connection.

Serialisation follows Envoy's HTTP/1 encoder (``codec_impl.cc`` ``encodeHeadersBase``): names
are written lower-case as stored, ``host`` comes first on requests (it is ``:authority``), and
framing headers come last: ``transfer-encoding: chunked`` for a body of unknown length, and an
explicit ``content-length: 0`` for a header-only message, except on requests whose method defines
no body (GET, HEAD, DELETE, TRACE) and on 1xx/204/304 responses (RFC 9110 §8.6).
"""

from __future__ import annotations

CRLF = b"\r\n"
CHUNK_END = b"0\r\n\r\n"
_NO_BODY_METHODS = frozenset((b"GET", b"HEAD", b"DELETE", b"TRACE", b"CONNECT"))

# Envoy's reason phrases (Http::CodeUtility::toString): the status line uses these, not the
# upstream's, and codes Envoy does not name read "Unknown".
_PHRASES = {
    100: "Continue", 101: "Switching Protocols",
    200: "OK", 201: "Created", 202: "Accepted", 203: "Non-Authoritative Information",
    204: "No Content", 205: "Reset Content", 206: "Partial Content", 207: "Multi-Status",
    208: "Already Reported", 226: "IM Used",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other",
    304: "Not Modified", 305: "Use Proxy", 307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
    411: "Length Required", 412: "Precondition Failed", 413: "Payload Too Large",
    414: "URI Too Long", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
    417: "Expectation Failed", 421: "Misdirected Request", 422: "Unprocessable Entity",
    423: "Locked", 424: "Failed Dependency", 425: "Too Early", 426: "Upgrade Required",
    428: "Precondition Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    506: "Variant Also Negotiates", 507: "Insufficient Storage", 508: "Loop Detected",
    510: "Not Extended", 511: "Network Authentication Required",
    599: "Last Unassigned Server Error Code",
}
REASONS: dict[int, bytes] = {code: phrase.encode() for code, phrase in _PHRASES.items()}
_STATUS_LINES: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in REASONS.items()}


def reason(status: int) -> bytes:
    return REASONS.get(status, b"Unknown")


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason(status))
    return line


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def encode_response_head(resp, chunked: bool, end_stream: bool, head_request: bool = False,
                         http10: bool = False) -> bytes:
    framing = b""
    if chunked:
        framing = _CHUNKED
    elif end_stream and resp.content_length < 0 and not head_request:
        s = resp.status
        if s >= 200 and s != 204 and s != 304:
            framing = _ZERO_LENGTH
    elif head_request and resp.content_length < 0 and not http10 and \
            resp.status >= 200 and resp.status != 204 and resp.status != 304:
        # A HEAD response describes the GET response it stands for: without a length that
        # would be chunked, so Envoy's encodeHeadersBase says so, with no body (RFC 9110
        # §9.3.2).
        framing = _CHUNKED
    line = _STATUS_LINES.get(resp.status) or status_line(resp.status)
    if http10:
        line = b"HTTP/1.0" + line[8:]
    return _head(line, resp.headers, framing)


def encode_request_head(req, chunked: bool, end_stream: bool) -> bytes:
    framing = b""
    if chunked:
        framing = _CHUNKED
    elif end_stream and req.content_length < 0 and req.method not in _NO_BODY_METHODS:
        framing = _ZERO_LENGTH
    if req.authority is not None:
        line = b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (req.method, req.path, req.authority)
    else:
        line = b"%s %s HTTP/1.1\r\n" % (req.method, req.path)
    return _head(line, req.headers, framing)


_CHUNKED = b"transfer-encoding: chunked\r\n"
_ZERO_LENGTH = b"content-length: 0\r\n"
_pair = b": ".join


def _head(line: bytes, headers: list, framing: bytes) -> bytes:
    """Start line, ``name: value`` lines, framing header, blank line. Joined in C: one
    ``b": ".join`` per header through ``map``, no Python-level loop."""
    if headers:
        return b"".join((line, b"\r\n".join(map(_pair, headers)), CRLF, framing, CRLF))
    return b"".join((line, framing, CRLF))

