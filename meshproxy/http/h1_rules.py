"""Envoy 1.40's HTTP/1 request grammar, for the cases the parser backends disagree with it.

Envoy parses HTTP/1 with Balsa (``source/common/http/http1/balsa_parser.cc``, QUICHE's
``BalsaFrame``). Neither llhttp (httptools) nor h11 accepts exactly what Balsa accepts: Balsa
takes bare-LF line endings, obs-fold continuations (RFC 9112 §5.2), runs of spaces or tabs and
trailing whitespace in the request line, and several Host headers; llhttp and h11 reject some of
those, and h11 accepts control characters and any method token that Balsa refuses.

The backends stay the fast path. When one rejects a request head, ``parse_head`` re-reads the
raw head the way Balsa does and either returns Envoy's error or a *canonical* head (plain CRLF
lines, one space between request-line tokens, continuations joined) that the backend parses the
normal way, so every later rule (``H1ServerBase.finish_headers``) runs once, in one place.
Everything here was checked against the Envoy 1.40 binary (tests/oracle/test_http1_oracle.py).
"""

from __future__ import annotations

import re

from meshproxy.http.codec import CodecError

# Balsa's isMethodValid: exactly these, case-sensitive (lower-case "get" is a 400). Note
# "MSEARCH" rather than "M-SEARCH", and no PRI, RTSP or custom tokens. QUERY passes the codec
# but Envoy 1.40's connection manager then answers 400 (see ``stream.decode_headers``).
VALID_METHODS = frozenset((b"QUERY",

    b"ACL", b"BIND", b"CHECKOUT", b"CONNECT", b"COPY", b"DELETE", b"GET", b"HEAD", b"LINK",
    b"LOCK", b"MERGE", b"MKACTIVITY", b"MKCALENDAR", b"MKCOL", b"MOVE", b"MSEARCH", b"NOTIFY",
    b"OPTIONS", b"PATCH", b"POST", b"PROPFIND", b"PROPPATCH", b"PURGE", b"PUT", b"REBIND",
    b"REPORT", b"SEARCH", b"SOURCE", b"SUBSCRIBE", b"TRACE", b"UNBIND", b"UNLINK", b"UNLOCK",
    b"UNSUBSCRIBE"))

# Request headers Envoy keeps as "inline" O(1) headers: a repeated one is folded into the first
# with "," (HeaderMapImpl::appendToHeader), the others stay separate lines. Measured on 1.40 by
# sending each name twice (tests/oracle); names that sanitising strips anyway are included so
# internal requests fold them the same way.
INLINE_REQUEST_HEADERS = frozenset((
    b"accept", b"accept-encoding", b"access-control-request-headers",
    b"access-control-request-method", b"authorization", b"cache-control", b"content-encoding",
    b"content-type", b"expect", b"grpc-accept-encoding", b"grpc-timeout", b"if-match",
    b"if-modified-since", b"if-none-match", b"if-range", b"if-unmodified-since", b"origin",
    b"pragma",
    b"proxy-status", b"referer", b"user-agent", b"via", b"x-client-trace-id",
    b"x-envoy-attempt-count", b"x-envoy-decorator-operation",
    b"x-envoy-downstream-service-cluster", b"x-envoy-downstream-service-node",
    b"x-envoy-expected-rq-timeout-ms", b"x-envoy-external-address", b"x-envoy-force-trace",
    b"x-envoy-hedge-on-per-try-timeout", b"x-envoy-internal", b"x-envoy-ip-tags",
    b"x-envoy-is-timeout-retry", b"x-envoy-max-retries", b"x-envoy-original-host",
    b"x-envoy-original-path",
    b"x-envoy-original-url", b"x-envoy-retriable-header-names",
    b"x-envoy-retriable-status-codes", b"x-envoy-retry-grpc-on", b"x-envoy-retry-on",
    b"x-envoy-upstream-alt-stat-name", b"x-envoy-upstream-rq-per-try-timeout-ms",
    b"x-envoy-upstream-rq-timeout-alt-response", b"x-envoy-upstream-rq-timeout-ms",
    b"x-forwarded-client-cert", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-port",
    b"x-forwarded-proto", b"x-request-id"))

# RFC 9110 §5.6.2 tchar; Balsa rejects any other byte in a header name.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Field values: HTAB, SP, VCHAR and obs-text (RFC 9110 §5.5). Balsa (InvalidCharsLevel::kError)
# refuses the other control characters, DEL included; a bare CR inside a value is dropped.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
_WS = re.compile(rb"[ \t]+")
# Balsa's isUrlValid (written to match http-parser): path and query bytes are HTAB, FF or
# '!'..'~'; an absolute URL needs an alphabetic scheme and "://", and a host of these bytes.
_PATH_OK = re.compile(rb"[\t\x0c!-~]*\Z")
_ABS_URL = re.compile(rb"[A-Za-z]+://([A-Za-z0-9!$%&'()*+,\-.:;=@\[\]_~]*)([/?][\t\x0c!-~]*)?\Z")
_AUTHORITY_FORM = re.compile(rb"([A-Za-z0-9!$%&'()*+,\-.:;=@\[\]_~]*)([/?][\t\x0c!-~]*)?\Z")


def bad_value(value: bytes) -> bool:
    return _BAD_VALUE.search(value) is not None


def valid_name(name: bytes) -> bool:
    return _TOKEN.match(name) is not None


def url_valid(url: bytes, is_connect: bool) -> bool:
    if not url:
        return False
    c = url[:1]
    if c == b"/" or c == b"*":
        return _PATH_OK.match(url, 1) is not None
    m = (_AUTHORITY_FORM if is_connect else _ABS_URL).match(url)
    return m is not None and b"@@" not in m.group(1)


def head_end(buf: bytes) -> int:
    """Offset just past the blank line that ends a head (LF or CRLF lines), or -1."""
    i = buf.find(b"\n")
    while i >= 0:
        j = i + 1
        if buf[j:j + 1] == b"\n":
            return j + 1
        if buf[j:j + 2] == b"\r\n":
            return j + 2
        i = buf.find(b"\n", j)
    return -1


def parse_head(buf: bytes, limit: int):
    """Read a request head from the start of ``buf`` as Balsa does.

    Returns None while the head is incomplete, or ``(canonical_head, consumed)`` where
    ``canonical_head`` is the same request in plain RFC 9112 form. Raises ``CodecError`` with
    Envoy's status for heads Envoy refuses.
    """
    # Empty lines before the request line are skipped (RFC 9112 §2.2).
    start = 0
    while buf[start:start + 1] in (b"\r", b"\n") and start < len(buf):
        start += 1
    end = head_end(buf[start:])
    if end < 0:
        if len(buf) - start > limit:
            raise CodecError(431, "http1.headers_too_large")
        return None
    consumed = start + end
    if end > limit + 4096:
        raise CodecError(431, "http1.headers_too_large")
    lines = buf[start:consumed].split(b"\n")
    # A CR is part of the line terminator only right before LF; elsewhere Balsa drops it.
    lines = [ln[:-1] if ln[-1:] == b"\r" else ln for ln in lines[:-2]]
    tokens = _WS.split(lines[0].strip(b" \t"))
    if len(tokens) == 2:
        # "GET /" is HTTP/0.9, which Envoy does not speak.
        raise CodecError(426, "http1.version_not_supported")
    if len(tokens) != 3:
        raise CodecError(400, "http1.codec_error")
    method, url, version = tokens
    if _VERSION.match(version) is None:
        raise CodecError(400, "http1.codec_error")
    if method not in VALID_METHODS:
        raise CodecError(400, "http1.codec_error")
    if not url_valid(url, method == b"CONNECT"):
        raise CodecError(400, "http1.invalid_url")
    fields = []
    name = None
    value = b""
    for ln in lines[1:]:
        if ln[:1] in (b" ", b"\t"):
            # obs-fold (RFC 9112 §5.2): Balsa joins the continuation, keeping its whitespace.
            if name is None:
                raise CodecError(400, "http1.codec_error")
            value += ln
            continue
        if name is not None:
            fields.append(_field(name, value))
        name, sep, value = ln.partition(b":")
        if not sep or not valid_name(name):
            raise CodecError(400, "http1.codec_error")
    if name is not None:
        fields.append(_field(name, value))
    out = [method, b" ", url, b" ", version, b"\r\n"]
    host = None
    for n, v in fields:
        if n.lower() == b"host":
            # Several Host lines are one :authority "a,b" to Envoy; backends want one line.
            if host is None:
                host = len(out)
                out.append(b"host: " + v + b"\r\n")
            else:
                out[host] = out[host][:-2] + b"," + v + b"\r\n"
            continue
        out.append(n + b": " + v + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out), consumed


def _field(name: bytes, value: bytes):
    value = value.replace(b"\r", b"").strip(b" \t")
    if bad_value(value):
        raise CodecError(400, "http1.invalid_characters")
    return name, value


def has_host(canonical: bytes) -> bool:
    return b"\r\nhost:" in canonical.lower()


def skip_messages(buf: bytes, n: int) -> int:
    """Offset of the byte after the first ``n`` complete requests in ``buf``, or -1.

    Used to find where a pipelined request starts when the parser does not say; the
    requests skipped were accepted by the parser, so only their framing matters here.
    """
    off = 0
    for _ in range(n):
        try:
            r = parse_head(buf[off:], 1 << 30)
        except CodecError:
            return -1
        if r is None:
            return -1
        canonical, consumed = r
        off += consumed
        te = cl = None
        for line in canonical.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"transfer-encoding":
                te = value
            elif name == b"content-length":
                cl = value
        if te is not None:
            off = _skip_chunked(buf, off)
            if off < 0:
                return -1
        elif cl is not None:
            off += int(cl.strip() or 0)
    return off if off <= len(buf) else -1


def _skip_chunked(buf: bytes, off: int) -> int:
    while True:
        eol = buf.find(b"\n", off)
        if eol < 0:
            return -1
        size = int(buf[off:eol].split(b";")[0].strip() or b"0", 16)
        off = eol + 1
        if size == 0:
            # trailers, up to the blank line
            while True:
                eol = buf.find(b"\n", off)
                if eol < 0:
                    return -1
                line = buf[off:eol].rstrip(b"\r")
                off = eol + 1
                if not line:
                    return off
        off += size
        if buf[off:off + 2] == b"\r\n":
            off += 2
        elif buf[off:off + 1] == b"\n":
            off += 1
        else:
            return -1
