"""Raw HTTP/1.1 client helpers: exact bytes out, responses parsed by h11 (not by the proxy's
parser) so tests see what a strict client sees."""

from __future__ import annotations

import dataclasses
import socket
import time

import h11


@dataclasses.dataclass
class Response:
    status: int
    headers: list            # [(name, value)] str, lower-case names
    body: bytes
    raw_head: bytes = b""

    def header(self, name: str):
        for n, v in self.headers:
            if n == name.lower():
                return v
        return None

    @property
    def header_names(self) -> list:
        return [n for n, _ in self.headers]


def exchange(port: int, data: bytes, timeout: float = 2.0, host: str = "127.0.0.1",
             until_close: bool = False, expect: int | None = None,
             head_request: bool = False) -> tuple[bytes, bool]:
    """Send ``data``; read until the peer closes, ``timeout`` passes, or ``expect`` complete
    responses have arrived. Returns (bytes, closed_by_peer)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect((host, port))
    try:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                return out, True
            if not chunk:
                return out, True
            out += chunk
            if expect is not None and not until_close and \
                    len(parse_responses(out, head_request)) >= expect:
                return out, False
        return out, False
    finally:
        s.close()


def parse_responses(data: bytes, head_request: bool = False) -> list[Response]:
    """Every complete response in ``data`` (h11, client side)."""
    out = []
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="HEAD" if head_request else "GET", target="/",
                          headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    status = None
    headers = []
    body = b""
    while True:
        try:
            ev = conn.next_event()
        except h11.RemoteProtocolError:
            break
        if ev is h11.NEED_DATA or ev is h11.PAUSED or isinstance(ev, h11.ConnectionClosed):
            if ev is h11.PAUSED and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    break
                conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
                conn.send(h11.EndOfMessage())
                continue
            break
        if isinstance(ev, h11.InformationalResponse):
            continue
        if isinstance(ev, h11.Response):
            status = ev.status_code
            headers = [(n.decode(), v.decode()) for n, v in ev.headers]
            body = b""
        elif isinstance(ev, h11.Data):
            body += ev.data
        elif isinstance(ev, h11.EndOfMessage):
            out.append(Response(status, headers, body))
            if conn.their_state is h11.MUST_CLOSE:
                break
    return out


def request(port: int, method: str = "GET", path: str = "/", headers=None, body: bytes = b"",
            host_header: str = "example.com", timeout: float = 5.0) -> Response:
    """One request on a new connection; the response parsed."""
    hdrs = [("Host", host_header)] + list(headers or [])
    if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in hdrs):
        hdrs.append(("Content-Length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in hdrs) + "\r\n"
    data, _ = exchange(port, head.encode() + body, timeout=timeout, expect=1,
                       head_request=(method == "HEAD"))
    rs = parse_responses(data, head_request=(method == "HEAD"))
    if not rs:
        raise AssertionError(f"no complete response: {data[:300]!r}")
    return rs[0]


class KeepAlive:
    """A persistent connection for several requests in a row."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.conn = h11.Connection(h11.CLIENT)

    def request(self, method="GET", path="/", headers=None, body=b"") -> Response:
        conn = self.conn
        if conn.our_state is h11.DONE:
            conn.start_next_cycle()
        hdrs = [("host", "example.com")] + list(headers or [])
        if body:
            hdrs.append(("content-length", str(len(body))))
        self.sock.sendall(conn.send(h11.Request(method=method, target=path, headers=hdrs)))
        if body:
            self.sock.sendall(conn.send(h11.Data(data=body)))
        self.sock.sendall(conn.send(h11.EndOfMessage()))
        status, rh, rb = None, [], b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                d = self.sock.recv(65536)
                conn.receive_data(d)
                continue
            if isinstance(ev, h11.Response):
                status, rh = ev.status_code, [(n.decode(), v.decode()) for n, v in ev.headers]
            elif isinstance(ev, h11.Data):
                rb += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                return Response(status, rh, rb)
            elif isinstance(ev, h11.ConnectionClosed):
                raise ConnectionError("closed")

    @property
    def closed_by_peer(self) -> bool:
        return self.conn.their_state in (h11.MUST_CLOSE, h11.CLOSED)

    def close(self):
        self.sock.close()
