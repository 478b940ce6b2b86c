"""Scripted loopback servers for the upstream tests (also used by the oracle tests), and checks
that they behave as scripted.

* ``RawServer``: an HTTP/1.1-ish server that answers each request with the exact bytes a script
  gives (so a test can send malformed, close-delimited or keep-alive-then-close responses), and
  can flood a response body without blocking to measure how much a proxy lets it write.
* ``TcpServer``: echo / read-to-EOF-then-reply / greet / reset servers for tcp_proxy.
* ``blackhole()``: a listener whose accept queue is full, so connects to it hang (the kernel
  drops the SYNs): the way to hit ``connect_timeout`` on loopback.
* ``dead_port()``: a port nobody listens on (connection refused).
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

_RST = struct.pack("ii", 1, 0)


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Blackhole:
    """``with Blackhole() as port:`` connects to ``port`` neither succeed nor fail."""

    def __enter__(self) -> int:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        port = self.listener.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            try:
                f.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            self.fillers.append(f)
        return port

    def __exit__(self, *exc):
        for f in self.fillers:
            f.close()
        self.listener.close()


def _read_head(c: socket.socket, buf: bytes):
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            return None, buf
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


class RawServer:
    """``script(path, head, conn_id) -> [action]``; actions: ``bytes`` (sent), ``("sleep", s)``,
    ``"close"``, ``"rst"``, ``("flood", nbytes, seconds)`` (non-blocking writes for at most
    ``seconds``; the count lands in ``flooded``, ``flood_done`` is set at the end), ``("hold", seconds)`` (stop reading, e.g. a request body)."""

    def __init__(self, script, host: str = "127.0.0.1"):
        self.script = script
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []
        self.closed: list[int] = []       # conn ids this server closed
        self.flooded = 0
        self.flood_done = threading.Event()
        self.lock = threading.Lock()
        self.stopping = False
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass

    def _serve(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                cid = self.connections
                self.conns.append(c)
            threading.Thread(target=self._conn, args=(c, cid), daemon=True).start()

    def _conn(self, c, cid):
        buf = b""
        try:
            while not self.stopping:
                head, buf = _read_head(c, buf)
                if head is None:
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    n, _, v = line.partition(b":")
                    if n.strip().lower() == b"content-length":
                        length = int(v)
                path = head.split(b" ", 2)[1].decode()
                with self.lock:
                    self.requests.append((cid, head))
                actions = self.script(path, head, cid)
                holding = any(isinstance(a, tuple) and a[0] == "hold" for a in actions)
                while not holding and len(buf) < length:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                if not holding:
                    buf = buf[length:]
                for a in actions:
                    if a == "close":
                        self.closed.append(cid)
                        c.close()
                        return
                    if a == "rst":
                        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
                        self.closed.append(cid)
                        c.close()
                        return
                    if isinstance(a, bytes):
                        c.sendall(a)
                    elif a[0] == "sleep" or a[0] == "hold":
                        time.sleep(a[1])
                    elif a[0] == "flood":
                        self._flood(c, a[1], a[2])
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def _flood(self, c, total, seconds):
        self.flood_done.clear()
        self.flooded = 0
        c.setblocking(False)
        chunk = b"x" * 65536
        deadline = time.monotonic() + seconds
        sent = 0
        while sent < total and time.monotonic() < deadline:
            select.select([], [c], [], 0.05)
            try:
                sent += c.send(chunk[:total - sent])
            except BlockingIOError:
                pass
            self.flooded = sent
        c.setblocking(True)
        self.flood_done.set()


class TcpServer:
    """``mode``: ``echo``; ``eofreply`` (read to EOF, answer ``got N``, close); ``greet``
    (``hello`` first, then echo); ``rst`` (reset after 0.1 s); ``close`` (FIN at once); ``flood`` (write without reading,
    count in ``flooded``); ``silent`` (read, never write); ``stall`` (never read or write, for
    1.6 s)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.ends: list[str] = []        # how each connection ended: "FIN" or "RST"
        self.flooded = 0
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c):
        mode = self.mode
        try:
            if mode == "rst":
                # Not at once: an RST racing the handshake can look like a connect failure.
                time.sleep(0.1)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
                c.close()
                return
            if mode == "close":
                c.close()
                return
            if mode == "stall":
                time.sleep(1.6)
                return
            if mode == "flood":
                c.setblocking(False)
                chunk = b"z" * 65536
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    select.select([], [c], [], 0.05)
                    try:
                        self.flooded += c.send(chunk)
                    except BlockingIOError:
                        pass
                    except OSError:
                        return
                return
            if mode == "greet":
                c.sendall(b"hello")
            data = b""
            while True:
                try:
                    d = c.recv(65536)
                except ConnectionResetError:
                    self.ends.append("RST")
                    return
                if not d:
                    self.ends.append("FIN")
                    break
                data += d
                if mode in ("echo", "greet"):
                    c.sendall(d)
            self.received.append(data)
            if mode == "eofreply":
                c.sendall(b"got %d" % len(data))
        except OSError:
            pass
        finally:
            c.close()


def wait_for(pred, timeout: float = 5.0, interval: float = 0.01):
    """Poll ``pred`` until it returns something truthy (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


# ---------------------------------------------------------------------- the helpers themselves


def test_blackhole_connect_hangs_and_dead_port_refuses():
    with Blackhole() as port:
        s = socket.socket()
        s.settimeout(0.2)
        t0 = time.monotonic()
        try:
            s.connect(("127.0.0.1", port))
            connected = True
        except (socket.timeout, BlockingIOError):
            connected = False
        s.close()
        assert not connected and time.monotonic() - t0 >= 0.15
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", dead_port()))
        refused = False
    except ConnectionRefusedError:
        refused = True
    s.close()
    assert refused


def test_raw_server_scripts_keep_alive_and_close():
    def script(path, head, cid):
        if path == "/close":
            return [b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx", "close"]
        return [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
    with RawServer(script) as srv:
        c = socket.create_connection(("127.0.0.1", srv.port), timeout=2)
        c.sendall(b"GET /a HTTP/1.1\r\n\r\nGET /close HTTP/1.1\r\n\r\n")
        data = b""
        while True:
            d = c.recv(1000)
            if not d:
                break
            data += d
        assert data.count(b"HTTP/1.1 200 OK") == 2 and data.endswith(b"x")
        assert [cid for cid, _ in srv.requests] == [1, 1] and srv.closed == [1]
