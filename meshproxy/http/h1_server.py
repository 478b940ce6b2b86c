"""HTTP/1.1 server codec on httptools (llhttp, the parser Node.js uses): the default backend.

Parsing is driven by llhttp callbacks; this class turns them into the codec calls of
``meshproxy.http.codec`` and enforces Envoy's HTTP/1 rules (``source/common/http/http1/
codec_impl.cc``): header size and count limits (431), HTTP/1.0 only when ``accept_http_10``
(else 426), ``Transfer-Encoding`` other than ``chunked`` (501), and llhttp's strict parse errors
(400), including conflicting ``Content-Length`` / ``Transfer-Encoding`` (RFC 9112 §6.3).

Pipelining: llhttp parses every request in the buffer at once, but a request may only start once
the previous response is complete (RFC 9112 §9.3.2). Events of a request that arrives early are
kept in order and replayed when the current stream completes, and reading is paused meanwhile so
this backlog stays bounded by one read.
"""

from __future__ import annotations

import httptools

from meshproxy.http.codec import CodecError, CodecLimits
from meshproxy.http.h1_common import (
    ConnectionHeaderState, encode_response_head, CHUNK_END, chunk)
from meshproxy.http.headers import RequestHeaders

_BEGIN, _HEADERS, _DATA, _END = 0, 1, 2, 3


class H1ServerBase:
    """Parser-independent half of a downstream HTTP/1.1 codec: Envoy's header rules, the
    pipelining backlog and response serialisation. Backends feed it ``on_url``/``on_header``
    and call ``finish_headers`` / ``on_body`` / ``on_message_complete``."""

    protocol = "HTTP/1.1"

    def __init__(self, callbacks, write, limits: CodecLimits, scheme: bytes = b"http"):
        self.callbacks = callbacks          # the connection manager (new_stream, read_disable)
        self.write = write                  # transport.write
        self.limits = limits
        self.scheme = scheme
        self.max_header_bytes = limits.max_request_headers_kb * 1024
        self.active = None                  # stream whose response is not complete yet
        self.decoding = None                # stream receiving request events
        self.backlog: list | None = None    # events of pipelined requests, in order
        self._replaying = False
        self._reset_message()
        self.response_chunked = False
        self.response_keep_alive = True
        self.head_request = False

    def _reset_message(self):
        self._url = b""
        self._headers: list = []
        self._header_bytes = 0
        self._count = 0
        self._conn = ConnectionHeaderState()
        self._authority = None

    # ------------------------------------------------------------------ input

    def on_url(self, url: bytes):
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            raise CodecError(431, "http1.headers_too_large")

    def on_header(self, name: bytes, value: bytes):
        n = len(name) + len(value)
        self._header_bytes += n
        if self._header_bytes > self.max_header_bytes:
            raise CodecError(431, "http1.headers_too_large")
        self._count += 1
        if self._count > self.limits.max_headers_count:
            raise CodecError(431, "http1.too_many_headers")
        name = name.lower()
        if name in _SPECIAL:
            if name == b"host":
                # Envoy folds repeated Host headers into one :authority ("a,b").
                self._authority = value if self._authority is None else self._authority + b"," + value
                return
            keep = self._conn.take(name, value)
            if keep is False:
                return
            if keep is not True:
                value = keep
        elif b"_" in name and self.limits.headers_with_underscores != "ALLOW":
            if self.limits.headers_with_underscores == "REJECT_REQUEST":
                raise CodecError(400, "http1.unexpected_underscore")
            return
        self._headers.append((name, value))

    def finish_headers(self, method: bytes, version: str, keep_alive: bool):
        req = RequestHeaders(method, self._url, self._authority, self._headers,
                             self.scheme, b"1.1")
        if version != "1.1":
            if version == "1.0" and self.limits.accept_http_10:
                req.version = b"1.0"
                if req.authority is None and self.limits.default_host_for_http_10:
                    req.authority = self.limits.default_host_for_http_10
            else:
                raise CodecError(426, "http1.version_not_supported")
        conn = self._conn
        conn.apply(req, keep_alive)
        if req.chunked is None:
            raise CodecError(501, "http1.invalid_transfer_encoding")
        if req.chunked and conn.cl_count:
            # RFC 9112 §6.3: both framings present is a smuggling vector; Envoy rejects it.
            raise CodecError(400, "http1.content_length_and_chunked_not_allowed")
        if req.path[:1] != b"/":
            _absolute_or_reject(req, self.limits)
        end_stream = not req.chunked and req.content_length <= 0
        self._emit(_HEADERS, req, end_stream)

    def on_body(self, body: bytes):
        self._emit(_DATA, body, False)

    def on_message_complete(self):
        self._emit(_END, None, True)

    # event routing (pipelining) -------------------------------------------

    def _emit(self, kind, payload, end_stream):
        if self.backlog is not None:
            self.backlog.append((kind, payload, end_stream))
            return
        if kind == _HEADERS:
            if self.active is not None:
                # A pipelined request: hold it until the current response completes.
                self.backlog = [(kind, payload, end_stream)]
                self.callbacks.read_disable(True)
                return
            self._start(payload, end_stream)
        elif kind == _DATA:
            s = self.decoding
            if s is not None:
                s.decode_data(payload, False)
        else:
            s = self.decoding
            if s is not None:
                self.decoding = None
                if not s.request_headers_end_stream:
                    s.decode_data(b"", True)

    def _start(self, req, end_stream):
        self.head_request = req.method == b"HEAD"
        s = self.callbacks.new_stream()
        self.active = s
        self.decoding = None if end_stream else s
        s.request_headers_end_stream = end_stream
        s.decode_headers(req, end_stream)

    def stream_complete(self, stream) -> None:
        """The connection manager finished ``stream``'s response: start the next request."""
        if stream is not self.active:
            return
        self.active = None
        if self.decoding is stream:
            self.decoding = None
        if self.backlog is None or self._replaying:
            return
        self._replaying = True
        try:
            while self.backlog:
                kind, payload, end_stream = self.backlog[0]
                if kind == _HEADERS and self.active is not None:
                    return
                self.backlog.pop(0)
                if kind == _HEADERS:
                    self._start(payload, end_stream)
                else:
                    self._emit_direct(kind, payload)
            self.backlog = None
            self.callbacks.read_disable(False)
        finally:
            self._replaying = False

    def _emit_direct(self, kind, payload):
        s = self.decoding
        if s is None:
            return
        if kind == _DATA:
            s.decode_data(payload, False)
        else:
            self.decoding = None
            if not s.request_headers_end_stream:
                s.decode_data(b"", True)

    # ------------------------------------------------------------------ output

    def encode_headers(self, stream, resp, end_stream: bool) -> None:
        chunked = False
        if not end_stream and resp.content_length < 0 and resp.status >= 200 \
                and resp.status not in (204, 304) and not self.head_request:
            chunked = True
        self.response_chunked = chunked
        self.write(encode_response_head(resp, chunked, end_stream, self.head_request))

    def encode_100_continue(self) -> None:
        self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def encode_data(self, stream, data: bytes, end_stream: bool) -> None:
        if self.head_request:
            return
        if self.response_chunked:
            if data:
                self.write(chunk(data) + CHUNK_END if end_stream else chunk(data))
            elif end_stream:
                self.write(CHUNK_END)
        elif data:
            self.write(data)

    def encode_trailers(self, stream, trailers) -> None:
        # RFC 9112 §7.1.2: trailers ride in the last chunk; Envoy drops them unless
        # enable_trailers is set on the codec.
        if self.head_request:
            return
        if self.response_chunked:
            if self.limits.enable_trailers and trailers:
                self.write(b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers)
                           + b"\r\n")
            else:
                self.write(CHUNK_END)


_SPECIAL = frozenset((b"host", b"connection", b"keep-alive", b"proxy-connection",
                      b"transfer-encoding", b"upgrade", b"te", b"content-length", b"expect"))


def _details(exc) -> str:
    text = str(exc).lower()
    if "content-length" in text or "transfer-encoding" in text:
        return "http1.content_length_and_chunked_not_allowed"
    if "chunk" in text:
        return "http1.invalid_chunk_size"
    return "http1.codec_error"


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
        req.path = (url.path or b"/") + (b"?" + url.query if url.query else b"")
        return
    raise CodecError(400, "http1.invalid_url")


class H1ServerCodec(H1ServerBase):
    """The httptools (llhttp) backend, the default."""

    def __init__(self, callbacks, write, limits: CodecLimits, scheme: bytes = b"http"):
        super().__init__(callbacks, write, limits, scheme)
        self.parser = httptools.HttpRequestParser(self)

    def dispatch(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades are refused by the HCM without upgrade_configs (403); the request head
            # has been delivered, anything after it is discarded with the connection.
            pass
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, CodecError):
                raise cause from None
            raise CodecError(400, "http1.codec_error") from None
        except httptools.HttpParserError as exc:
            raise CodecError(400, _details(exc)) from None

    # llhttp callbacks (on_url, on_header, on_body, on_message_complete are inherited)

    def on_message_begin(self):
        self._reset_message()

    def on_headers_complete(self):
        p = self.parser
        self.finish_headers(p.get_method(), p.get_http_version(), p.should_keep_alive())
