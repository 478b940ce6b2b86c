"""Envoy's rules for a request head, shared by both HTTP/1 parser backends (the request half of
``ServerConnectionImpl`` in ``source/common/http/http1/codec_impl.cc`` and of
``Utility::sanitizeConnectionHeader``).

The backends call ``on_url`` / ``on_header`` as they parse and ``finish_headers`` at the end of
the head; the rules run once, here: HTTP/1.0 only with ``accept_http_10`` (else 426), Envoy's
method list, ``Transfer-Encoding`` other than ``chunked`` (501), ``Content-Length`` with
``Transfer-Encoding`` or repeated (400, RFC 9112 §6.3), header size and count limits (431),
Connection-nominated headers (RFC 9110 §7.6.1, with Envoy's refusal to drop X-Forwarded-* that
way), ``h2c`` upgrade offers dropped, Host characters, and repeated inline headers folded ",".
"""

from __future__ import annotations

import httptools

from meshproxy.http import h1_rules
from meshproxy.http.codec import CodecError, CodecLimits
from meshproxy.http.headers import RequestHeaders

_INLINE = h1_rules.INLINE_REQUEST_HEADERS
_SPECIAL = frozenset((b"host", b"connection", b"keep-alive", b"proxy-connection",
                      b"transfer-encoding", b"upgrade", b"te", b"content-length", b"expect",
                      b"http2-settings"))
# Connection tokens that name no header to remove (Utility::sanitizeConnectionHeader).
_NOT_NOMINATED = frozenset((b"close", b"keep-alive", b"upgrade", b"http2-settings",
                            b"connection", b""))
_NO_NOMINATION = frozenset((b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto"))
# RFC 3986 authority bytes Envoy accepts in Host (HeaderUtility::authorityIsValid).
_HOST_OK = b"".join(bytes((c,)) for c in range(128)
                    if chr(c).isalnum() or chr(c) in "-._~!$&'()*+,;=:@[]%")
_MAX_CL = (1 << 63) - 1
_METHODS = h1_rules.VALID_METHODS
class _Framing:
    """Framing and hop-by-hop headers of one request (only made when one is present)."""

    __slots__ = ("tokens", "te", "cl", "cl_count", "upgrade", "expect", "te_index")

    def __init__(self):
        self.tokens = None
        self.te = None
        self.cl = None
        self.cl_count = 0
        self.upgrade = None
        self.expect = False
        self.te_index = -1


class RequestHeadReader:
    """Mixin: the per-request head state and rules. ``finish_headers`` hands the request to
    ``self.deliver_headers(req, end_stream)``."""

    def _reset_message(self):
        self._url = b""
        self._headers: list = []
        self._header_bytes = 0
        self._count = 0
        self._authority = None
        self._inline = None
        self._sp = None           # _Framing, made only if framing/hop-by-hop headers come
        self._tunnel = False
        self._last = False

    # ------------------------------------------------------------------ input
    def on_url(self, url: bytes):
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            raise CodecError(431, "http1.headers_too_large")

    def on_header(self, name: bytes, value: bytes):
        if not self._in_head:
            # A chunked request's trailers: Envoy's HTTP/1 codec drops them (enable_trailers
            # is off), and they must not reach the head that is already on its way.
            return
        n = self._header_bytes + len(name) + len(value)
        self._header_bytes = n
        c = self._count = self._count + 1
        if n > self.max_header_bytes:
            raise CodecError(431, "http1.headers_too_large")
        if c > self._max_count:
            raise CodecError(431, "http1.too_many_headers")
        name = name.lower()
        if name in _SPECIAL:
            if name == b"host":
                # Repeated Host headers become one :authority "a,b" (Envoy's inline append).
                a = self._authority
                self._authority = value if a is None else a + b"," + value
            else:
                self._special(name, value)
        elif name in _INLINE:
            # Envoy keeps one entry per inline header and appends repeats with ",".
            inl = self._inline
            if inl is None:
                self._inline = {name: len(self._headers)}
            else:
                i = inl.get(name)
                if i is not None:
                    h = self._headers
                    h[i] = (name, h[i][1] + b"," + value)
                    return
                inl[name] = len(self._headers)
            self._headers.append((name, value))
        elif self._underscores and b"_" in name:
            if self.limits.headers_with_underscores == "REJECT_REQUEST":
                raise CodecError(400, "http1.unexpected_underscore")
            g = getattr(getattr(self.callbacks, "ctx", None), "global_stats", None)
            if g is not None:
                g.http1__dropped_headers_with_underscores += 1
        else:
            self._headers.append((name, value))

    def _special(self, name: bytes, value: bytes) -> None:
        sp = self._sp
        if sp is None:
            sp = self._sp = _Framing()
        if name == b"content-length":
            sp.cl_count += 1
            sp.cl = value
            self._headers.append((name, value))
        elif name == b"connection":
            # tokens (RFC 9110 §5.6.2) carry no inner spaces: drop them all at once
            toks = value.lower().translate(None, b" \t").split(b",")
            sp.tokens = toks if sp.tokens is None else sp.tokens + toks
        elif name == b"transfer-encoding":
            sp.te = value if sp.te is None else sp.te + b"," + value
        elif name == b"expect":
            # Envoy answers "Expect: 100-continue" itself and strips it (RFC 9110 §10.1.1).
            if value.strip().lower() == b"100-continue":
                sp.expect = True
            else:
                self._headers.append((name, value))
        elif name == b"upgrade":
            sp.upgrade = value
        elif name == b"te":
            # Only the "trailers" token may travel on (RFC 9110 §10.1.4), as Envoy does.
            if sp.te_index < 0:
                sp.te_index = len(self._headers)
                self._headers.append((name, value))
            else:
                h = self._headers
                h[sp.te_index] = (name, h[sp.te_index][1] + b"," + value)
        elif name == b"http2-settings":
            self._headers.append((name, value))
        # keep-alive and proxy-connection are hop-by-hop: dropped.

    def finish_headers(self, method: bytes, version: str, keep_alive=None):
        """The request head is complete. ``keep_alive`` from the parser is ignored: Envoy's
        rule (HeaderUtility::shouldCloseConnection) is applied here for both backends."""
        self._in_head = False
        req = RequestHeaders(method, self._url, self._authority, self._headers,
                             self.scheme, b"1.1")
        sp = self._sp
        toks = sp.tokens if sp is not None else None
        if version != "1.1":
            if version == "1.0" and self.limits.accept_http_10:
                req.version = b"1.0"
                req.keep_alive = toks is not None and b"keep-alive" in toks \
                    and b"close" not in toks
                if req.authority is None and self.limits.default_host_for_http_10:
                    req.authority = self.limits.default_host_for_http_10
            else:
                raise CodecError(426, "http1.version_not_supported")
        elif toks is not None and b"close" in toks:
            req.keep_alive = False
        if method not in _METHODS:
            raise CodecError(400, "http1.codec_error")
        end_stream = True
        if sp is not None:
            end_stream = self._framing(req, sp, toks)
        if req.path[:1] != b"/":
            _absolute_or_reject(req, self.limits)
        if req.authority is not None and req.authority.translate(None, _HOST_OK):
            raise CodecError(400, "http1.invalid_characters")
        if method == b"CONNECT" or req.upgrade is not None:
            # The rest of the connection is the tunnel's payload: the request never ends.
            end_stream = False
            self._tunnel = self.stopped = True
        elif not req.keep_alive:
            # Bytes after a request that closes the connection are never read (Envoy).
            self._last = True
        self.deliver_headers(req, end_stream)

    def _framing(self, req, sp, toks) -> bool:
        """Framing (RFC 9112 §6.3) and hop-by-hop headers; returns end_stream."""
        end_stream = True
        if sp.te is not None:
            # Both framings, or a repeated length, is a smuggling vector: Envoy refuses.
            if sp.cl_count:
                raise CodecError(400, "http1.content_length_and_chunked_not_allowed")
            if sp.te.strip().lower() != b"chunked":
                raise CodecError(501, "http1.invalid_transfer_encoding")
            req.chunked = True
            end_stream = False
        elif sp.cl_count:
            v = sp.cl.strip()
            if sp.cl_count > 1 or not v.isdigit() or int(v) > _MAX_CL:
                raise CodecError(400, "http1.content_length_not_allowed")
            req.content_length = int(v)
            end_stream = req.content_length == 0
        if sp.te_index >= 0:
            self._fix_te(req, sp.te_index)
        if toks is not None:
            self._connection_tokens(req, sp, toks)
        up = sp.upgrade
        if up is not None and toks is not None and b"upgrade" in toks:
            req.upgrade = up
        if sp.expect:
            req.expect_continue = True
        return end_stream

    def _fix_te(self, req, i) -> None:
        h = req.headers
        v = h[i][1]
        if any(t.strip().lower() == b"trailers" for t in v.split(b",")):
            h[i] = (b"te", b"trailers")
        else:
            del h[i]

    def _connection_tokens(self, req, sp, toks) -> None:
        """Utility::sanitizeConnectionHeader: remove nominated headers, refusing to let a
        client strip X-Forwarded-* or pseudo-headers, or nominate ten or more."""
        toks = [t for t in toks if t]
        if len(toks) >= 10:
            raise CodecError(400, "http1.connection_header_rejected")
        if sp.upgrade is not None and b"upgrade" in toks and \
                sp.upgrade.strip().lower() == b"h2c":
            # An h2c upgrade offer is dropped and the request proxied as plain HTTP/1.1.
            sp.upgrade = None
            req.remove(b"http2-settings")
        remove = None
        for t in toks:
            if t in _NOT_NOMINATED:
                continue
            if t in _NO_NOMINATION or t[:1] == b":":
                raise CodecError(400, "http1.connection_header_rejected")
            if t == b"host":
                req.authority = None
                continue
            if t == b"te":
                # a nominated TE survives only as "trailers"; _fix_te did that already.
                continue
            if remove is None:
                remove = set()
            remove.add(t)
        if remove:
            req.headers = [p for p in req.headers if p[0] not in remove]

def _absolute_or_reject(req: RequestHeaders, limits: CodecLimits) -> None:
    """A request target that is not origin-form (RFC 9112 §3.2): absolute-form is accepted
    when ``allow_absolute_url`` (the URL's authority replaces Host, as Envoy does); ``*`` is
    for OPTIONS; authority-form for CONNECT; anything else is a 400."""
    path = req.path
    if req.method == b"CONNECT":
        if req.authority is None:
            req.authority = path
        return
    if path == b"*" and req.method == b"OPTIONS":
        return
    lower = path[:8].lower()
    if limits.allow_absolute_url and (lower.startswith(b"http://") or lower.startswith(b"https://")):
        try:
            url = httptools.parse_url(path)
        except httptools.HttpParserInvalidURLError:
            raise CodecError(400, "http1.invalid_url") from None
        if not url.host:
            raise CodecError(400, "http1.invalid_url")
        req.authority = url.host + (b":%d" % url.port if url.port else b"")
        # Envoy keeps a query-only target as "?q", which the HCM then refuses (404).
        p = (url.path or b"") + (b"?" + url.query if url.query else b"") + \
            (b"#" + url.fragment if url.fragment else b"")
        req.path = p or b"/"
        return
    raise CodecError(400, "http1.invalid_url")
