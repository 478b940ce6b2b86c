"""A raw HTTP/2 (h2c, prior knowledge) client for edge cases real clients will not send:
the ``h2`` library with its own validation off, on a blocking loopback socket, reporting what
came back frame by frame (``hyperframe``) so RST_STREAM and GOAWAY codes can be compared.

Every read is bounded: ``collect`` stops at a predicate, at EOF, or after ``timeout`` seconds.
"""

from __future__ import annotations

import socket
import time

import h2.config
import h2.connection
from hyperframe.frame import (DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame,
                              SettingsFrame)

_CONFIG = h2.config.H2Configuration(
    client_side=True, header_encoding=None, validate_outbound_headers=False,
    normalize_outbound_headers=False, validate_inbound_headers=False)


def request_headers(path: str = "/x", method: str = "GET", authority: str = "h", extra=()):
    return [(b":method", method.encode()), (b":scheme", b"http"), (b":path", path.encode()),
            (b":authority", authority.encode())] + [(n.encode() if isinstance(n, str) else n,
                                                      v.encode() if isinstance(v, str) else v)
                                                     for n, v in extra]


class H2Client:
    """``with H2Client(port) as c:`` ... ``c.conn`` (an ``h2`` connection) queues frames,
    ``c.send()`` writes them, ``c.collect(...)`` reads frames back."""

    def __init__(self, port: int, host: str = "127.0.0.1", settings=None, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.conn = h2.connection.H2Connection(_CONFIG)
        if settings:
            self.conn.local_settings.update(settings)
            self.conn.local_settings.acknowledge()
        self.conn.initiate_connection()
        self.frames: list = []        # every frame received, in order
        self.eof = False
        self._buf = b""
        self.bodies: dict = {}        # stream id -> bytes
        self.headers: dict = {}       # stream id -> [list of header blocks]
        self.ended: set = set()       # stream ids that got END_STREAM
        self.resets: dict = {}        # stream id -> RST_STREAM error code
        self.goaway = None            # (last_stream_id, error_code)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, extra: bytes = b"") -> None:
        data = self.conn.data_to_send() + extra
        if data:
            self.sock.sendall(data)

    def request(self, headers, body: bytes | None = None, trailers=None, sid=None,
                end: bool = True) -> int:
        """Queue a request; ``end=False`` leaves the stream open after the headers."""
        sid = sid or self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers,
                               end_stream=body is None and trailers is None and end)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=trailers is None)
        if trailers is not None:
            self.conn.send_headers(sid, trailers, end_stream=True)
        return sid

    def collect(self, until=None, timeout: float = 5.0) -> None:
        """Read frames until ``until(self)`` is true, EOF, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.eof and not (until is not None and until(self)):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(262144)
            except socket.timeout:
                return
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                return
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        self._buf += data
        buf = self._buf
        while len(buf) >= 9:
            f, n = Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + n:
                break
            f.parse_body(memoryview(buf[9:9 + n]))
            buf = buf[9 + n:]
            self._on_frame(f)
        self._buf = buf

    def _on_frame(self, f) -> None:
        self.frames.append(f)
        sid = f.stream_id
        if isinstance(f, HeadersFrame):
            # Headers are decoded with the h2 connection's HPACK decoder, in order.
            self.headers.setdefault(sid, []).append(self.conn.decoder.decode(f.data, raw=True))
        elif isinstance(f, DataFrame):
            self.bodies[sid] = self.bodies.get(sid, b"") + f.data
        elif isinstance(f, RstStreamFrame):
            self.resets[sid] = f.error_code
        elif isinstance(f, GoAwayFrame):
            self.goaway = (f.last_stream_id, f.error_code)
        elif isinstance(f, SettingsFrame) and "ACK" not in f.flags:
            # acknowledge the server's SETTINGS (RFC 9113 §6.5.3), if the server still listens
            try:
                self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
            except OSError:
                pass
        if "END_STREAM" in getattr(f, "flags", ()) and sid:
            self.ended.add(sid)

    def status(self, sid: int) -> int | None:
        blocks = self.headers.get(sid)
        if not blocks:
            return None
        return int(dict(blocks[0])[b":status"])

    def response_headers(self, sid: int) -> list:
        return list(self.headers.get(sid, [[]])[0])

    def done(self, *sids) -> bool:
        return all(s in self.ended or s in self.resets for s in sids)
