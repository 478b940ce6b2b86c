"""HTTP/1.1 server codec on h11: the pure-Python backend (``MESHPROXY_HTTP1_CODEC=h11``, see
``http.hcm_config``).

h11 parses; Envoy's rules and the serialisation are shared with the httptools backend
(``H1ServerBase``), so the same tests run against both and each checks the other's parser.
h11 is stricter than Envoy in places (one space between request-line tokens, exactly one Host,
CRLF only) and laxer in others (control characters in values, any method token, huge chunk
sizes): a head h11 refuses is re-read with ``h1_rules`` (Envoy's grammar) and handed back in
canonical form, and the checks h11 skips are made here. h11 pauses after a complete request
until its response is sent; since h11 only parses here, a fresh ``h11.Connection`` takes over
the unparsed bytes (``trailing_data``) for the next request.
"""

from __future__ import annotations

import re

import h11

from meshproxy.http import h1_rules
from meshproxy.http.codec import CodecError, CodecLimits
from meshproxy.http.h1_server import H1ServerBase

_MAX_CHUNK = (1 << 64) - 1   # Balsa's chunk length is a size_t: longer is a 400
_CL_LINE = re.compile(rb"(?im)^content-length[ \t]*:([^\r\n]*)")


class H11ServerCodec(H1ServerBase):

    def __init__(self, callbacks, write, limits: CodecLimits, scheme: bytes = b"http"):
        super().__init__(callbacks, write, limits, scheme)
        self._raw = bytearray()     # the head in progress, from its first byte
        self._slow = None
        self._refed = False
        self._drop_host = False
        self._new_conn(b"")

    def _new_conn(self, data: bytes):
        # h11 counts the whole head against max_incomplete_event_size; Envoy's limit is on
        # header bytes, so allow the request line and CRLFs on top.
        self.conn = h11.Connection(h11.SERVER,
                                   max_incomplete_event_size=self.max_header_bytes + 16384)
        self._raw = bytearray(data)
        if data:
            self.conn.receive_data(data)

    def dispatch(self, data: bytes) -> None:
        if self.stopped:
            return
        if self._slow is not None:
            self._slow += data
            return self._try_slow()
        if not self._in_message or self._in_head:
            self._raw += data
        self.conn.receive_data(data)
        self._pump()

    def _pump(self):
        while not self.stopped:
            conn = self.conn
            try:
                ev = conn.next_event()
                t = type(ev)
                if t is h11.Data:
                    self.on_body(bytes(ev.data))
                    self._check_chunk(conn)
                elif t is h11.Request:
                    if not self._request(ev):
                        return
                elif t is h11.EndOfMessage:
                    self.on_message_complete()
                    # Parsing only: hand the rest of the buffer to a fresh connection.
                    trailing, closed = conn.trailing_data
                    self._new_conn(bytes(trailing))
                    if closed:
                        return
                else:  # NEED_DATA, PAUSED, ConnectionClosed
                    if ev is h11.NEED_DATA:
                        if not self._in_message and self._raw.strip(b"\r\n"):
                            # Envoy's stream starts with the request's first byte.
                            self.on_message_begin()
                        elif self._in_message and not self._in_head:
                            self._check_chunk(conn)
                    return
            except h11.RemoteProtocolError as exc:
                if not self._in_head and self._in_message or self._refed:
                    self._fail(_h11_error(exc))
                    return
                self._slow = bytes(self._raw)
                self._try_slow()
                return
            except CodecError as exc:
                self._fail(exc)
                return

    def _request(self, ev) -> bool:
        raw = self._raw
        if not self._refed and (b"\n " in raw or b"\n\t" in raw):
            # h11 folds obs-fold lines with one space; Balsa keeps the continuation's own
            # whitespace. Read the head Envoy's way and hand h11 the canonical form.
            self._slow = bytes(raw)
            self._try_slow()
            return False
        if not self._in_head:
            self.on_message_begin()
        self._raw = bytearray()
        self._refed = False
        if any(n == b"content-length" for n, _ in ev.headers):
            # h11 merges equal Content-Length headers ("3" twice, or "3, 3"); Envoy refuses
            # both (RFC 9112 §6.3), so look at the raw head.
            lines = _CL_LINE.findall(bytes(raw))
            if len(lines) > 1 or b"," in lines[0]:
                raise CodecError(400, "http1.content_length_not_allowed")
        method = bytes(ev.method)
        target = bytes(ev.target)
        self.on_url(target)
        drop_host = self._drop_host
        self._drop_host = False
        for name, value in ev.headers.raw_items():
            if h1_rules.bad_value(value):
                raise CodecError(400, "http1.invalid_characters")
            if drop_host and name.lower() == b"host":
                continue
            self.on_header(bytes(name), bytes(value))
        if not h1_rules.url_valid(target, method == b"CONNECT"):
            raise CodecError(400, "http1.invalid_url")
        self.finish_headers(method, ev.http_version.decode())
        return True

    def _check_chunk(self, conn) -> None:
        """Envoy's chunk-size rules where h11 is laxer: a size that overflows 64 bits, or a
        chunk line ended by a bare LF, is a 400."""
        reader = conn._reader
        size = getattr(reader, "_bytes_in_chunk", None)
        if size is None:
            return
        if size > _MAX_CHUNK:
            raise CodecError(400, "http1.invalid_chunk_size")
        if size == 0 and not getattr(reader, "_bytes_to_discard", 0):
            buf = bytes(conn._receive_buffer)
            lf = buf.find(b"\n")
            if lf >= 0 and buf[lf - 1:lf] != b"\r":
                raise CodecError(400, "http1.invalid_chunk_size")

    def _try_slow(self) -> None:
        r = self._reparse_head()
        if r is None:
            return
        canonical, rest = r
        if not h1_rules.has_host(canonical) and canonical.split(b"\r\n", 1)[0][-3:] == b"1.1":
            # h11 insists on Host for HTTP/1.1; Envoy answers 400 itself (missing host).
            canonical = canonical[:-2] + b"host: x\r\n\r\n"
            self._drop_host = True
        self._skip_begin = self._in_head
        self._refed = True
        self._in_head = self._in_message = False
        self._new_conn(canonical + rest)
        self._pump()


def _h11_error(exc) -> CodecError:
    hint = exc.error_status_hint
    if "Transfer-Encoding" in str(exc):
        return CodecError(501, "http1.invalid_transfer_encoding")
    return CodecError(hint if hint in (400, 413, 431, 501) else 400, "http1.codec_error")
