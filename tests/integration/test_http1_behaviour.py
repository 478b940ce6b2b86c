"""HTTP/1.1 behaviour through a running meshproxy, on both parser backends (``codec``):
keep-alive, request bodies streamed to the upstream as they arrive (never buffered whole),
100-continue, pipelining order, HTTP/1.0, request ids and the stream timeouts."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid

from tests.support.client import KeepAlive, exchange, parse_responses, request
from tests.support.proxies import simple_proxy_bootstrap
from tests.support.upstream import Reply, Upstream


class RawUpstream:
    """Accepts one connection and records the bytes as they arrive; answers 200 once it has
    seen ``done`` at the end of what it read."""

    def __init__(self, done: bytes):
        self.done = done
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.got = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(5)
        c, _ = self.sock.accept()
        c.settimeout(5)
        with c:
            while not self.got.endswith(self.done):
                d = c.recv(65536)
                if not d:
                    return
                self.got += d
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            time.sleep(0.2)

    def wait_for(self, needle: bytes, timeout=3.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.got:
                return True
            time.sleep(0.005)
        return False

    def close(self):
        self.sock.close()


def test_keep_alive_reuses_both_connections(codec, upstream, start_meshproxy):
    p = start_meshproxy(simple_proxy_bootstrap(upstream.port))
    c = KeepAlive(p.port("l"))
    for i in range(5):
        r = c.request("POST" if i % 2 else "GET", f"/k{i}", body=b"x" * i)
        assert r.status == 200 and r.header("connection") is None
    c.close()
    reqs = upstream.wait_requests(5)
    assert {r.conn_id for r in reqs} == {reqs[0].conn_id}
    assert [r.body for r in reqs] == [b"x" * i for i in range(5)]


def _stream_body(p, up, head: bytes, parts: list):
    s = socket.create_connection(("127.0.0.1", p.port("l")), timeout=5)
    s.sendall(head)
    for part, seen in parts:
        s.sendall(part)
        # the upstream has this part before the client sends the next one: nothing waits
        # for the whole body
        assert up.wait_for(seen), (part, up.got)
    r = parse_responses(_recv_response(s))
    s.close()
    return r


def _recv_response(s) -> bytes:
    data = b""
    while not parse_responses(data):
        d = s.recv(65536)
        if not d:
            break
        data += d
    return data


def test_content_length_body_is_streamed(codec, start_meshproxy):
    up = RawUpstream(b"part-three")
    try:
        p = start_meshproxy(simple_proxy_bootstrap(up.port))
        r = _stream_body(p, up, b"POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: 28\r\n\r\n",
                         [(b"part-one|", b"part-one|"), (b"part-two|", b"part-two|"),
                          (b"part-three", b"part-three")])
        assert r[0].status == 200
        assert b"content-length: 28\r\n" in up.got
    finally:
        up.close()


def test_chunked_body_is_streamed_chunk_by_chunk(codec, start_meshproxy):
    up = RawUpstream(b"0\r\n\r\n")
    try:
        p = start_meshproxy(simple_proxy_bootstrap(up.port))
        r = _stream_body(p, up, b"POST /s HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                         [(b"5\r\nfirst\r\n", b"first"), (b"6\r\nsecond\r\n", b"second"),
                          (b"0\r\n\r\n", b"0\r\n\r\n")])
        assert r[0].status == 200 and b"transfer-encoding: chunked\r\n" in up.got
    finally:
        up.close()


def test_expect_100_continue(codec, upstream, start_meshproxy):
    p = start_meshproxy(simple_proxy_bootstrap(upstream.port))
    s = socket.create_connection(("127.0.0.1", p.port("l")), timeout=5)
    s.sendall(b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert s.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"   # before any body byte
    s.sendall(b"body")
    resp = _recv_response(s)
    s.close()
    assert parse_responses(resp)[0].status == 200
    (req,) = upstream.wait_requests(1)
    assert req.header("expect") is None and req.body == b"body"


def test_pipelined_request_starts_after_the_previous_response(codec, start_meshproxy):
    sent = {}

    def handler(req):
        sent[req.target] = time.monotonic()
        if req.target == "/slow":
            return Reply(200, [("content-length", "4")], b"slow", delay=0.3)
        return Reply(200, [("content-length", "4")], b"fast")

    with Upstream(handler) as up:
        p = start_meshproxy(simple_proxy_bootstrap(up.port))
        t0 = time.monotonic()
        data, _ = exchange(p.port("l"), b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
                                        b"GET /fast HTTP/1.1\r\nHost: h\r\n\r\n", expect=2)
        rs = parse_responses(data)
        assert [r.body for r in rs] == [b"slow", b"fast"]
        assert sent["/fast"] - t0 >= 0.3          # /fast reached the upstream only then
        assert up.requests[0].conn_id == up.requests[1].conn_id


def test_http10_client(codec, upstream, start_meshproxy):
    boot = simple_proxy_bootstrap(upstream.port, hcm_extra={
        "http_protocol_options": {"accept_http_10": True}})
    p = start_meshproxy(boot)
    data, closed = exchange(p.port("l"), b"GET /ten HTTP/1.0\r\nHost: h\r\n\r\n",
                            until_close=True)
    assert data.startswith(b"HTTP/1.0 200 OK\r\n") and b"connection: close\r\n" in data
    assert closed
    data, closed = exchange(p.port("l"), b"GET /ten HTTP/1.0\r\nHost: h\r\n"
                                         b"Connection: keep-alive\r\n\r\n", expect=1)
    assert b"connection: keep-alive\r\n" in data and not closed


def test_http10_refused_by_default(codec, upstream, start_meshproxy):
    p = start_meshproxy(simple_proxy_bootstrap(upstream.port))
    data, _ = exchange(p.port("l"), b"GET / HTTP/1.0\r\n\r\n", expect=1)
    assert data.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert upstream.requests == []


def test_request_ids(codec, upstream, start_meshproxy):
    boot = simple_proxy_bootstrap(upstream.port, hcm_extra={
        "always_set_request_id_in_response": True})
    p = start_meshproxy(boot)
    r = request(p.port("l"), "GET", "/id")
    rid = upstream.wait_requests(1)[0].header("x-request-id")
    assert uuid.UUID(rid).version == 4 and r.header("x-request-id") == rid
    r = request(p.port("l"), "GET", "/id", [("X-Request-Id", "mine")])
    assert r.header("x-request-id") == "mine"
    assert upstream.wait_requests(2)[1].header("x-request-id") == "mine"


def test_stream_idle_timeout_on_a_stalled_request(codec, upstream, start_meshproxy):
    boot = simple_proxy_bootstrap(upstream.port, hcm_extra={
        "stream_idle_timeout": "0.2s", "delayed_close_timeout": "0.05s"})
    p = start_meshproxy(boot)
    t0 = time.monotonic()
    data, closed = exchange(p.port("l"), b"POST /x HTTP/1.1\r\nHost: h\r\n"
                                         b"Content-Length: 10\r\n\r\nabc", until_close=True)
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and data.endswith(b"stream timeout")
    assert closed and 0.15 < time.monotonic() - t0 < 1.5
    assert re.search(rb"connection: close\r\n", data)
