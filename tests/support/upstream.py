"""A real HTTP/1.1 upstream for tests: a threaded server on 127.0.0.1 port 0 that records every
request exactly as it arrived (raw head bytes, header names in their case, body) and answers with
whatever the test's handler returns.

It parses with h11, a different parser from the proxy's default httptools, so a framing bug in
the proxy shows up as a disagreement rather than being hidden by the same parser twice.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

import h11


@dataclasses.dataclass
class Received:
    method: str
    target: str
    headers: list          # [(name, value)] as str, names lower-cased by h11 on .headers
    raw_headers: list      # [(name, value)] with the case as sent
    body: bytes
    raw_head: bytes
    conn_id: int
    trailers: list = dataclasses.field(default_factory=list)

    def header(self, name: str):
        name = name.lower()
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def header_all(self, name: str) -> list:
        name = name.lower()
        return [v for n, v in self.headers if n == name]

    @property
    def header_names(self) -> list:
        return [n for n, _ in self.headers]


@dataclasses.dataclass
class Reply:
    status: int = 200
    headers: list = dataclasses.field(default_factory=lambda: [("content-type", "text/plain")])
    body: bytes | list = b"ok"        # a list of chunks streams them with Transfer-Encoding
    delay: float = 0.0                 # seconds before answering
    close: bool = False                # close the connection after this response
    raw: bytes | None = None           # send these bytes verbatim instead
    chunk_delay: float = 0.0
    trailers: list = dataclasses.field(default_factory=list)


def default_handler(req: Received) -> Reply:
    return Reply(200, [("content-type", "text/plain"), ("x-upstream", "1")],
                 f"{req.method} {req.target}".encode())


class Upstream:
    """``with Upstream(handler) as up:`` ... ``up.port``, ``up.requests``."""

    def __init__(self, handler=default_handler, host: str = "127.0.0.1", read_body: bool = True):
        self.handler = handler
        self.host = host
        self.read_body = read_body
        self.requests: list[Received] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._sock = None
        self._thread = None
        self._stop = False
        self._clients: list = []

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, 0))
        s.listen(128)
        s.settimeout(0.2)
        self._sock = s
        self.port = s.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop = True
        if self._thread:
            self._thread.join(timeout=2)
        for c in list(self._clients):
            try:
                c.close()
            except OSError:
                pass
        if self._sock:
            self._sock.close()

    def wait_requests(self, n: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.005)
        raise AssertionError(f"upstream saw {len(self.requests)} requests, wanted {n}")

    # ------------------------------------------------------------------ serving

    def _serve(self):
        while not self._stop:
            try:
                c, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                cid = self.connections
            self._clients.append(c)
            threading.Thread(target=self._conn, args=(c, cid), daemon=True).start()

    def _conn(self, c: socket.socket, cid: int):
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        c.settimeout(0.2)
        raw = bytearray()
        current = None
        body = bytearray()
        try:
            while not self._stop:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    try:
                        data = c.recv(65536)
                    except socket.timeout:
                        continue
                    except OSError:
                        return
                    raw += data
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if ev is h11.PAUSED:
                    conn.start_next_cycle()
                    continue
                if isinstance(ev, h11.Request):
                    head_end = raw.find(b"\r\n\r\n")
                    raw_head = bytes(raw[:head_end + 4]) if head_end >= 0 else bytes(raw)
                    raw = raw[head_end + 4:] if head_end >= 0 else bytearray()
                    current = ev
                    body = bytearray()
                    if not self.read_body:
                        self._record_and_reply(c, conn, ev, b"", raw_head, cid, [])
                        return
                    current_head = raw_head
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    raw = bytearray()
                    trailers = [(n.decode(), v.decode()) for n, v in ev.headers]
                    keep = self._record_and_reply(c, conn, current, bytes(body), current_head,
                                                  cid, trailers)
                    if not keep:
                        return
                elif isinstance(ev, h11.ConnectionClosed):
                    return
        except h11.RemoteProtocolError:
            try:
                c.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            except OSError:
                pass
        except OSError:
            # The peer (the proxy) went away mid-reply, or the test stopped the server.
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def _record_and_reply(self, c, conn, ev, body, raw_head, cid, trailers) -> bool:
        req = Received(
            method=ev.method.decode(), target=ev.target.decode(),
            headers=[(n.decode(), v.decode()) for n, v in ev.headers],
            raw_headers=[(n.decode(), v.decode()) for n, v in ev.headers.raw_items()],
            body=body, raw_head=raw_head, conn_id=cid, trailers=trailers)
        with self._lock:
            self.requests.append(req)
        reply = self.handler(req)
        if reply is None:  # the handler wants the connection dropped without an answer
            return False
        if reply.delay:
            time.sleep(reply.delay)
        if reply.raw is not None:
            c.sendall(reply.raw)
            return False if reply.close else self._reset(conn)
        headers = list(reply.headers)
        if isinstance(reply.body, list):
            headers.append(("transfer-encoding", "chunked"))
            head = self._head(reply.status, headers)
            c.sendall(head)
            for chunk in reply.body:
                if reply.chunk_delay:
                    time.sleep(reply.chunk_delay)
                c.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            tr = b"".join(f"{n}: {v}\r\n".encode() for n, v in reply.trailers)
            c.sendall(b"0\r\n" + tr + b"\r\n")
        else:
            if ev.method != b"HEAD" or not any(n.lower() == "content-length" for n, _ in headers):
                if not any(n.lower() == "content-length" for n, _ in headers):
                    headers.append(("content-length", str(len(reply.body))))
            if reply.close:
                headers.append(("connection", "close"))
            c.sendall(self._head(reply.status, headers) +
                      (b"" if ev.method == b"HEAD" else reply.body))
        if reply.close:
            return False
        return self._reset(conn)

    @staticmethod
    def _head(status, headers) -> bytes:
        reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(status, "X")
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        lines += [f"{n}: {v}\r\n" for n, v in headers]
        return ("".join(lines) + "\r\n").encode()

    @staticmethod
    def _reset(conn) -> bool:
        # We wrote the response ourselves; tell h11 the server side is done so it parses the
        # next request on this connection.
        try:
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return False
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return False
        return True
