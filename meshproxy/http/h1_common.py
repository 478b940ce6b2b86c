"""HTTP/1.1 pieces shared by both parser backends: connection-header handling and serialising.

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
    # One formatted line per header and one join: the cheapest way to build a head in Python.
    head = [b"%s: %s\r\n" % p for p in resp.headers]
    if chunked:
        head.append(b"transfer-encoding: chunked\r\n")
    elif end_stream and resp.content_length < 0 and not head_request:
        s = resp.status
        if s >= 200 and s != 204 and s != 304:
            head.append(b"content-length: 0\r\n")
    elif head_request and resp.content_length < 0 and not http10 and \
            resp.status >= 200 and resp.status != 204 and resp.status != 304:
        # A HEAD response describes the GET response it stands for: without a length that
        # would be chunked, so Envoy's encodeHeadersBase says so, with no body (RFC 9110
        # §9.3.2).
        head.append(b"transfer-encoding: chunked\r\n")
    line = status_line(resp.status)
    if http10:
        line = b"HTTP/1.0" + line[8:]
    return line + b"".join(head) + CRLF


def encode_request_head(req, chunked: bool, end_stream: bool) -> bytes:
    head = [b"%s: %s\r\n" % p for p in req.headers]
    if chunked:
        head.append(b"transfer-encoding: chunked\r\n")
    elif end_stream and req.content_length < 0 and req.method not in _NO_BODY_METHODS:
        head.append(b"content-length: 0\r\n")
    line = b"%s %s HTTP/1.1\r\n" % (req.method, req.path)
    if req.authority is not None:
        line += b"host: %s\r\n" % req.authority
    return line + b"".join(head) + CRLF


class ConnectionHeaderState:
    """Collects the hop-by-hop and framing headers of one message while it is parsed.

    ``take(name, value)`` is called for the headers in ``SPECIAL`` and says whether the header
    stays in the forwarded list. ``apply`` then sets framing fields on the message and removes
    headers nominated by ``Connection`` (RFC 9110 §7.6.1).
    """

    __slots__ = ("tokens", "te_chunked", "te_bad", "upgrade", "content_length", "expect_continue",
                 "cl_count")

    def __init__(self):
        self.tokens = None
        self.te_chunked = False
        self.te_bad = False
        self.upgrade = None
        self.content_length = -1
        self.expect_continue = False
        self.cl_count = 0

    def take(self, name: bytes, value: bytes):
        """False: drop the header; True: keep it; bytes: keep it with this value."""
        if name == b"content-length":
            self.cl_count += 1
            try:
                self.content_length = int(value)
            except ValueError:
                self.content_length = -2
            return True
        if name == b"connection":
            toks = [t.strip().lower() for t in value.split(b",")]
            self.tokens = toks if self.tokens is None else self.tokens + toks
            return False
        if name == b"transfer-encoding":
            if value.strip().lower() == b"chunked":
                self.te_chunked = True
            else:
                self.te_bad = True
            return False
        if name == b"te":
            # Only "trailers" may travel on (RFC 9110 §10.1.4; Envoy keeps just that token).
            return b"trailers" if b"trailers" in value.lower() else False
        if name == b"expect":
            if value.strip().lower() == b"100-continue":
                self.expect_continue = True
                return False
            return True
        if name == b"upgrade":
            self.upgrade = value
            return False
        return False  # keep-alive, proxy-connection

    def apply(self, msg, keep_alive: bool) -> None:
        msg.keep_alive = keep_alive
        msg.content_length = self.content_length
        msg.chunked = None if self.te_bad else self.te_chunked
        toks = self.tokens
        if self.expect_continue:
            msg.expect_continue = True
        if toks is not None:
            if self.upgrade is not None and b"upgrade" in toks:
                msg.upgrade = self.upgrade
            nominated = [t for t in toks if t not in _CONNECTION_KEYWORDS]
            if nominated:
                msg.headers = [h for h in msg.headers if h[0] not in nominated]

_CONNECTION_KEYWORDS = frozenset((b"close", b"keep-alive", b"upgrade", b"te", b""))
