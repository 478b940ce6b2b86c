"""HTTP/1.1 server codec on h11: the pure-Python backend (select it with the
``http_protocol_options`` ... ``MESHPROXY_H1_CODEC=h11`` switch, see ``http.hcm_config``).

h11 parses; Envoy's rules and the serialisation are shared with the httptools backend
(``H1ServerBase``), so the same tests run against both and each checks the other's parser.
h11 pauses after a complete request until its response is sent; since h11 only parses here, a
fresh ``h11.Connection`` takes over the unparsed bytes (``trailing_data``) for the next request.
"""

from __future__ import annotations

import h11

from meshproxy.http.codec import CodecError, CodecLimits
from meshproxy.http.h1_server import H1ServerBase


class H11ServerCodec(H1ServerBase):

    def __init__(self, callbacks, write, limits: CodecLimits, scheme: bytes = b"http"):
        super().__init__(callbacks, write, limits, scheme)
        self._new_conn(b"")

    def _new_conn(self, data: bytes):
        # h11 counts the whole head against max_incomplete_event_size; Envoy's limit is on
        # header bytes, so allow the request line and CRLFs on top.
        self.conn = h11.Connection(h11.SERVER,
                                   max_incomplete_event_size=self.max_header_bytes + 16384)
        if data:
            self.conn.receive_data(data)

    def dispatch(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        self._pump()

    def _pump(self):
        while True:
            conn = self.conn
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as exc:
                hint = exc.error_status_hint
                if "Transfer-Encoding" in str(exc):
                    hint = 501
                raise CodecError(hint if hint in (400, 413, 431, 501) else 400,
                                 "http1.codec_error") from None
            t = type(ev)
            if t is h11.Data:
                self.on_body(bytes(ev.data))
            elif t is h11.Request:
                self._reset_message()
                self.on_url(bytes(ev.target))
                for name, value in ev.headers.raw_items():
                    self.on_header(bytes(name), bytes(value))
                keep_alive = h11._connection._keep_alive(ev)
                self.finish_headers(bytes(ev.method), ev.http_version.decode(), keep_alive)
            elif t is h11.EndOfMessage:
                self.on_message_complete()
                # Parsing only: hand the rest of the buffer to a fresh connection.
                trailing, closed = conn.trailing_data
                self._new_conn(bytes(trailing))
                if closed:
                    return
            else:  # NEED_DATA, PAUSED, ConnectionClosed
                return
