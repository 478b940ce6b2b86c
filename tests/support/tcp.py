"""A raw TCP upstream for tests: records every byte per connection, echoes them back (or sends
a fixed reply), and shows half-close: when the peer shuts down its write side, the server
sends "<EOF>" and closes."""

from __future__ import annotations

import socket
import threading
import time


class TcpEcho:
    def __init__(self, reply: bytes | None = None, host: str = "127.0.0.1"):
        self.reply = reply
        self.host = host
        self.received: list[bytearray] = []
        self._lock = threading.Lock()
        self._stop = False

    def __enter__(self):
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop = True
        self.thread.join(2)
        self.sock.close()

    def _serve(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            buf = bytearray()
            with self._lock:
                self.received.append(buf)
            threading.Thread(target=self._conn, args=(c, buf), daemon=True).start()

    def _conn(self, c, buf):
        c.settimeout(0.2)
        try:
            while not self._stop:
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    continue
                if not d:
                    c.sendall(b"<EOF>")
                    break
                buf += d
                c.sendall(self.reply if self.reply is not None else d)
        except OSError:
            pass
        finally:
            c.close()

    def wait_bytes(self, n: int, conn: int = 0, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) > conn and len(self.received[conn]) >= n:
                    return bytes(self.received[conn])
            time.sleep(0.005)
        raise AssertionError(f"upstream got {self.received!r}, wanted {n} bytes")
