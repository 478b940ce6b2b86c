"""The response half of the HTTP/2 server codec: HEADERS, DATA and trailers for a stream, with
the peer's flow-control windows (RFC 9113 §5.2, §6.9) and backpressure.

Frames are built here rather than through ``h2``'s ``send_headers`` / ``send_data``, which make
several frame objects, validation flags and log calls per frame (a quarter of an HTTP/2
request's CPU in the profile). What ``h2`` must know is kept in step: the stream's state machine
gets the same inputs (SEND_HEADERS, SEND_DATA, SEND_END_STREAM, so closed streams are
reclaimed and late frames refused), and both outbound windows are debited as ``send_data``
would; ``h2`` still reads WINDOW_UPDATE and SETTINGS and credits them. The header block comes
from the connection's encoder (``h2_hpack.StatelessEncoder``); a block larger than the peer's
frame size continues in CONTINUATION frames (§6.10).

A body beyond the window waits on the stream (``stream.out``); past the connection's buffer
limit the stream's upstream stops being read (the router's ``on_downstream_write_paused``) until
WINDOW_UPDATE makes room, so memory stays bounded (Envoy's per-stream watermarks).
"""

from __future__ import annotations

import struct

import h2.exceptions
from h2.stream import StreamInputs

_SEND_HEADERS = StreamInputs.SEND_HEADERS
_SEND_DATA = StreamInputs.SEND_DATA
_SEND_END = StreamInputs.SEND_END_STREAM
_SEND_INFO = StreamInputs.SEND_INFORMATIONAL_HEADERS
_HEAD = struct.Struct(">HBBBL")       # 24-bit length as 16 + 8 bits, type, flags, stream id
_END_STREAM, _END_HEADERS = 0x1, 0x4
# Response headers an HTTP/1 upstream may send that HTTP/2 forbids (RFC 9113 §8.2.2).
_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                  b"upgrade"))
_STATUS = {s: b"%d" % s for s in range(100, 600)}


def _frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 8, n & 0xFF, kind, flags, sid) + payload


class H2Output:
    """Mixin for ``H2ServerCodec`` (which owns ``conn``, ``write``, ``blocked``, ``dead``,
    ``dispatching``, ``decoding`` and ``buffer_limit``)."""

    def flush(self) -> None:
        if not self.dispatching and not self.dead:
            data = self.conn.data_to_send()
            if data:
                self.write(data)

    def _emit(self, frames: bytes) -> None:
        # after whatever h2 queued (ACKs, WINDOW_UPDATE, RST_STREAM), in order
        if not self.dead:
            pending = self.conn.data_to_send()
            self.write(pending + frames if pending else frames)

    def _h2_stream(self, stream, *inputs):
        """h2's stream, moved through ``inputs``; None if it is closed (reset by the peer)."""
        st = self.conn.streams.get(stream.sid)
        if st is None:
            return None
        try:
            for i in inputs:
                st.state_machine.process_input(i)
        except h2.exceptions.ProtocolError:
            return None
        return st

    def _headers(self, stream, headers, end_stream: bool) -> None:
        inputs = (_SEND_HEADERS, _SEND_END) if end_stream else (_SEND_HEADERS,)
        if self._h2_stream(stream, *inputs) is None:
            return
        block = self.conn.encoder.encode(headers)
        sid = stream.sid
        flags = _END_STREAM if end_stream else 0
        mfs = self.conn.max_outbound_frame_size
        if len(block) <= mfs:
            self._emit(_frame(1, flags | _END_HEADERS, sid, block))
            return
        parts = [_frame(1, flags, sid, block[:mfs])]
        block = block[mfs:]
        while block:
            chunk, block = block[:mfs], block[mfs:]
            parts.append(_frame(9, 0 if block else _END_HEADERS, sid, chunk))
        self._emit(b"".join(parts))

    def encode_100_continue(self) -> None:
        """``100 Continue`` for the stream whose headers are being decoded (the connection
        manager answers ``expect: 100-continue`` itself, RFC 9110 §10.1.1)."""
        stream = self.decoding
        if stream is not None and self._h2_stream(stream, _SEND_INFO) is not None:
            self._emit(_frame(1, _END_HEADERS, stream.sid,
                              self.conn.encoder.encode([(b":status", b"100")])))

    def encode_headers(self, stream, resp, end_stream: bool) -> None:
        hs = [(b":status", _STATUS.get(resp.status) or b"%d" % resp.status)]
        hs += [p for p in resp.headers if p[0] not in _HOP]
        self._headers(stream, hs, end_stream)

    def encode_data(self, stream, data: bytes, end_stream: bool) -> None:
        if stream.out is not None:
            stream.out.append(data)
            stream.out_bytes += len(data)
            stream.out_end = end_stream
            self._check_watermark(stream)
            return
        self._send(stream, data, end_stream)

    def encode_trailers(self, stream, trailers) -> None:
        trailers = [p for p in trailers if p[0] not in _HOP]
        if stream.out is not None:
            stream.out_trailers = trailers
            stream.out_end = True
            return
        if trailers:
            self._headers(stream, trailers, True)
        elif self._h2_stream(stream, _SEND_END):
            self._emit(_frame(0, _END_STREAM, stream.sid, b""))

    def _send(self, stream, data: bytes, end_stream: bool) -> None:
        """Send what the peer's windows allow; queue the rest on the stream."""
        conn = self.conn
        st = conn.streams.get(stream.sid)
        if st is None:
            return
        sid = stream.sid
        parts = []
        try:
            while True:
                n = len(data)
                room = min(st.outbound_flow_control_window, conn.outbound_flow_control_window,
                           conn.max_outbound_frame_size)
                if n <= room:
                    st.state_machine.process_input(_SEND_DATA)
                    if end_stream:
                        st.state_machine.process_input(_SEND_END)
                    parts.append(_frame(0, _END_STREAM if end_stream else 0, sid, data))
                    st.outbound_flow_control_window -= n
                    conn.outbound_flow_control_window -= n
                    break
                if room > 0:
                    st.state_machine.process_input(_SEND_DATA)
                    parts.append(_frame(0, 0, sid, data[:room]))
                    st.outbound_flow_control_window -= room
                    conn.outbound_flow_control_window -= room
                    data = data[room:]
                    continue
                stream.out = [data]
                stream.out_bytes = len(data)
                stream.out_end = end_stream
                self.blocked[sid] = stream
                self._check_watermark(stream)
                break
        except h2.exceptions.ProtocolError:
            stream.out = None       # the peer reset the stream meanwhile
            return
        if parts:
            self._emit(parts[0] if len(parts) == 1 else b"".join(parts))

    def _drain(self, stream) -> None:
        """WINDOW_UPDATE or SETTINGS made room: send what waits on ``stream``."""
        out = stream.out
        stream.out = None
        self.blocked.pop(stream.sid, None)
        data = b"".join(out)
        end = stream.out_end
        trailers = stream.out_trailers
        self._send(stream, data, end and trailers is None)
        if stream.out is None:
            stream.out_bytes = 0
            if trailers is not None:
                stream.out_trailers = None
                self.encode_trailers(stream, trailers)
            if stream.write_paused:
                stream.write_paused = False
                r = stream.router
                # unless the connection as a whole is still backed up (H2ConnectionManager)
                if r is not None and hasattr(r, "on_downstream_write_paused") and \
                        not self.callbacks.conn.write_paused:
                    r.on_downstream_write_paused(False)
        elif trailers is not None:
            stream.out_trailers = trailers

    def _check_watermark(self, stream) -> None:
        if not stream.write_paused and stream.out_bytes > self.buffer_limit:
            # Envoy's per-stream high watermark: stop reading the upstream response.
            stream.write_paused = True
            r = stream.router
            if r is not None and hasattr(r, "on_downstream_write_paused"):
                r.on_downstream_write_paused(True)
