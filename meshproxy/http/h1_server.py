"""Downstream HTTP/1.1 server codec (Envoy's ``ServerConnectionImpl``,
``source/common/http/http1/codec_impl.cc``): the parser-independent half, ``H1ServerBase``, and
the httptools (llhttp) backend, the default.

``H1ServerBase`` takes the request heads that ``RequestHeadReader`` (``h1_request``) has checked
and turns parser events into stream calls; it owns the pipelining backlog and the response
serialisation. Pipelining: a parser reads every request in a buffer at once, but Envoy starts a
request only once the previous response is complete (RFC 9112 §9.3.2). Events of a request that
arrives early, a protocol error included, are kept in order and replayed when the current stream
completes; reading is paused meanwhile so the backlog stays bounded by one read.
"""

from __future__ import annotations

import httptools

from meshproxy.http import h1_rules
from meshproxy.http.codec import CodecError, CodecLimits
from meshproxy.http.h1_common import CHUNK_END, chunk, encode_response_head
from meshproxy.http.h1_request import RequestHeadReader

_BEGIN, _HEADERS, _DATA, _END, _ERROR = 0, 1, 2, 3, 4
_PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class FloodError(CodecError):
    """Envoy's HTTP/1 response flood protection: a request starts while two responses are
    still queued for the socket (``http1.response_flood``). The connection closes, no reply."""

    def __init__(self):
        super().__init__(0, "http1.response_flood", body=False)


class H1ServerBase(RequestHeadReader):
    """Backends feed it ``on_message_begin`` / ``on_url`` / ``on_header`` and call
    ``finish_headers`` / ``on_body`` / ``on_message_complete``."""

    protocol = "HTTP/1.1"

    def __init__(self, callbacks, write, limits: CodecLimits, scheme: bytes = b"http"):
        self.callbacks = callbacks          # the connection manager
        self.write = write                  # transport.write, counted
        self.limits = limits
        self.scheme = scheme
        self.max_header_bytes = limits.max_request_headers_kb * 1024
        self._max_count = limits.max_headers_count
        self._underscores = limits.headers_with_underscores != "ALLOW"
        self.active = None                  # stream whose response is not complete yet
        self.decoding = None                # stream receiving request events
        self.backlog: list | None = None    # events of pipelined requests, in order
        self._replaying = False
        self.stopped = False                # nothing after this point is HTTP we parse
        self._skip_begin = False
        self._reset_message()
        self.response_chunked = False
        self.head_request = False
        self.http10 = False
        self._in_head = False
        self._in_message = False
        self._begins = 0
    def on_message_begin(self):
        self._reset_message()
        self._in_head = self._in_message = True
        self._begins += 1
        if self._skip_begin:
            # A head re-read after a parser error: its stream exists already.
            self._skip_begin = False
            return
        if self.backlog is None and self.active is None:
            self._begin()
        else:
            self._emit(_BEGIN, None, False)
    def on_body(self, body: bytes):
        if not self._tunnel:
            self._emit(_DATA, body, False)

    def on_message_complete(self):
        self._in_message = False
        if self._last:
            self.stopped = True
        if self._tunnel:
            return
        if self.backlog is None:
            s = self.decoding
            if s is not None:
                self.decoding = None
                if not s.request_headers_end_stream:
                    s.decode_data(b"", True)
        else:
            self.backlog.append((_END, None, True))

    # event routing (pipelining) -------------------------------------------

    def deliver_headers(self, req, end_stream) -> None:
        if self.backlog is not None:
            self.backlog.append((_HEADERS, req, end_stream))
            return
        s = self.decoding
        if s is None:
            s = self._begin()
        self.head_request = req.method == b"HEAD"
        self.http10 = req.version == b"1.0"
        s.request_headers_end_stream = end_stream
        if end_stream:
            self.decoding = None
        s.decode_headers(req, end_stream)

    def _emit(self, kind, payload, end_stream):
        if self.backlog is not None:
            self.backlog.append((kind, payload, end_stream))
            return
        if kind == _BEGIN:
            if self.active is not None:
                # A pipelined request: hold it until the current response completes.
                self.backlog = [(kind, payload, end_stream)]
                self.callbacks.read_disable(True)
                return
            self._begin()
        elif kind == _HEADERS:
            self.deliver_headers(payload, end_stream)   # backlog is None here
        elif kind == _DATA:
            s = self.decoding
            if s is not None:
                s.decode_data(payload, False)
        elif kind == _END:
            s = self.decoding
            if s is not None:
                self.decoding = None
                if not s.request_headers_end_stream:
                    s.decode_data(b"", True)
        else:
            raise payload

    def _begin(self):
        s = self.callbacks.new_stream()
        self.active = self.decoding = s
        if self.callbacks.queued_responses >= 2:
            raise FloodError()
        return s

    def defer_error(self, exc: CodecError) -> bool:
        """A parse error in a request that has not started yet (the previous response is
        still being sent) is answered in turn, as Envoy parses it only then."""
        self.stopped = True
        if self.backlog is not None:
            self.backlog.append((_ERROR, exc, False))
            return True
        if self.active is not None and self.decoding is None:
            self.backlog = [(_ERROR, exc, False)]
            self.callbacks.read_disable(True)
            return True
        return False

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
            backlog = self.backlog
            while backlog:
                if backlog[0][0] == _BEGIN and self.active is not None:
                    return
                kind, payload, end_stream = backlog.pop(0)
                self.backlog = None
                try:
                    self._emit(kind, payload, end_stream)
                except CodecError as exc:
                    self.callbacks.codec_error(exc)
                    return
                if self.backlog is not None:      # _emit started a new backlog
                    self.backlog.extend(backlog)
                    return
                self.backlog = backlog
            self.backlog = None
            self.callbacks.read_disable(False)
        finally:
            self._replaying = False

    def release(self) -> None:
        """The connection closed: drop what points back at the connection manager and at
        this codec (the parser holds its bound callbacks)."""
        self.stopped = True
        self.callbacks = None
        self.active = self.decoding = None
        self.backlog = None
        if getattr(self, "parser", None) is not None:
            self.parser = None

    def _fail(self, exc: CodecError) -> None:
        self.stopped = True
        if not self.defer_error(exc):
            raise exc

    def _reparse_head(self):
        """Read the head buffered in ``_slow`` with ``h1_rules`` (Envoy's grammar, for what the
        parser backend refuses): (canonical head, bytes after it) once it is whole; None while
        more is needed, or when the head is bad (the connection is failed then)."""
        raw = bytes(self._slow)
        try:
            r = h1_rules.parse_head(raw, self.max_header_bytes)
        except CodecError as exc:
            self._slow = None
            self._fail(exc)
            return None
        if r is None:
            self._slow = bytearray(raw)
            return None
        self._slow = None
        canonical, consumed = r
        return canonical, raw[consumed:]

    # ------------------------------------------------------------------ output

    def encode_headers(self, stream, resp, end_stream: bool) -> None:
        status = resp.status
        chunked = (not end_stream and resp.content_length < 0 and status >= 200
                   and status != 204 and status != 304 and not self.head_request
                   and not self.http10)
        self.response_chunked = chunked
        self.write(encode_response_head(resp, chunked, end_stream, self.head_request,
                                        self.http10))

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

def _llhttp_error(exc) -> CodecError:
    """Map an llhttp error to Envoy's status for the same input."""
    text = str(exc)
    if "Transfer-Encoding" in text and "Content-Length" not in text:
        return CodecError(501, "http1.invalid_transfer_encoding")
    if "Content-Length" in text:
        return CodecError(400, "http1.content_length_and_chunked_not_allowed")
    if "chunk" in text.lower():
        return CodecError(400, "http1.invalid_chunk_size")
    return CodecError(400, "http1.codec_error")


def _parser(codec):
    p = httptools.HttpRequestParser(codec)
    # Accept any HTTP/x.y so the version rule (426) is Envoy's, spaces after a chunk size as
    # Balsa does, and ignore what follows a request that closes the connection.
    p.set_dangerous_leniencies(lenient_version=True, lenient_spaces_after_chunk_size=True,
                               lenient_data_after_close=True)
    return p


class H1ServerCodec(H1ServerBase):
    """The httptools (llhttp) backend, the default. A head llhttp refuses is re-read with
    ``h1_rules`` (Envoy's grammar); the raw bytes of a head in progress are kept for that."""

    # httptools looks every callback up with getattr(..., None) when a parser is made; a
    # missing one costs an AttributeError (formatted message and all) per new connection.
    on_chunk_header = None
    on_chunk_complete = None

    def __init__(self, callbacks, write, limits: CodecLimits, scheme: bytes = b"http"):
        super().__init__(callbacks, write, limits, scheme)
        self.parser = _parser(self)
        self._carry = None      # raw bytes of a head that spans reads (from its start)
        self._slow = None       # raw bytes buffered while h1_rules waits for a whole head
        self._refed = False
        self._method = None

    def dispatch(self, data: bytes) -> None:
        if self.stopped:
            return
        if self._slow is not None:
            self._slow += data
            return self._try_slow()
        carry = self._carry
        if carry is not None:
            self._carry = carry = carry + data
            self._feed(data, False, carry)
            return
        # The common case, inline: a read that starts between requests or inside a body.
        at_start = not self._in_message
        self._begins = 0
        try:
            self.parser.feed_data(data)
        except _PARSER_ERRORS as exc:
            self._feed_error(exc, data, at_start, None)
            return
        if self._in_head:
            # Keep the head's bytes for h1_rules in case a later read breaks it.
            self._carry = self._locate(data, at_start)

    def _feed(self, data: bytes, at_start: bool, carry=None) -> None:
        self._begins = 0
        try:
            self.parser.feed_data(data)
        except _PARSER_ERRORS as exc:
            self._feed_error(exc, data, at_start, carry)
            return
        if self._in_head:
            if carry is None:
                self._carry = self._locate(data, at_start)
            elif len(carry) > self.max_header_bytes + 65536:
                self._fail(CodecError(431, "http1.headers_too_large"))

    def _feed_error(self, exc, data: bytes, at_start: bool, carry) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            # CONNECT / Upgrade: the head is delivered; the rest is tunnel payload that the
            # HCM refuses (no upgrade_configs), so it is dropped with the connection.
            self.stopped = True
            return
        if isinstance(exc, httptools.HttpParserCallbackError):
            cause = exc.__context__
            if isinstance(cause, CodecError):
                self._fail(cause)
                return
            raise exc
        raw = carry if carry is not None else self._locate(data, at_start)
        if not self._in_head or self._refed or raw is None:
            self._fail(_llhttp_error(exc))
            return
        self._slow = raw
        self._try_slow()

    def _locate(self, data: bytes, at_start: bool):
        """The bytes of the message being parsed, from its first byte, or None if unknown."""
        if not at_start:
            return None
        if self._begins <= 1:
            return data
        off = h1_rules.skip_messages(data, self._begins - 1)
        return data[off:] if off >= 0 else None

    def _try_slow(self) -> None:
        r = self._reparse_head()
        if r is None:
            return
        canonical, rest = r
        self._carry = None
        if canonical[:8] == b"MSEARCH ":
            # Envoy's method list says MSEARCH where llhttp knows only M-SEARCH.
            canonical = b"M-" + canonical[1:]
            self._method = b"MSEARCH"
        # llhttp reads the canonical head as if it had arrived so; its stream exists.
        self.parser = _parser(self)
        self._skip_begin = True
        self._refed = True
        self._in_head = self._in_message = False
        self._feed(canonical + rest, True)

    # llhttp callbacks (on_message_begin, on_url, on_header, on_body and on_message_complete
    # are inherited)

    def on_headers_complete(self):
        self._carry = None
        self._refed = False
        p = self.parser
        m = self._method
        if m is not None:
            self._method = None
        else:
            m = p.get_method()
        self.finish_headers(m, p.get_http_version())
