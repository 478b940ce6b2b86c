"""The router's upstream side and the HTTP/1.1 connection pool against real loopback servers.

One meshproxy serves every test here; each test has its own route prefix and cluster, and reads
that cluster's stats (Envoy's names) before and after. What Envoy 1.40 does in the same cases
is checked in tests/oracle/test_upstream_oracle.py; these tests pin the behaviour itself:
keep-alive reuse, an upstream closing an idle connection, connect failure and timeout, resets
before and after headers, malformed responses (502), response framing, circuit breakers
(503 + x-envoy-overloaded), max_requests_per_connection, idle_timeout, route timeouts (504),
and backpressure both ways.
"""

from __future__ import annotations

import select
import socket
import time

import pytest

from tests.integration.test_upstream_servers import (Blackhole, RawServer, dead_port,
                                                     wait_for)
from tests.support.client import KeepAlive, exchange, parse_responses, request
from tests.support.proxies import ProxyProcess, bootstrap, cluster, hcm, listener
from tests.support.upstream import Reply, Upstream

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
BODY_PREFIX = b"upstream connect error or disconnect/reset before headers. reset reason: "


def http_options(**common):
    return {"typed_extension_protocol_options": {HPO: {
        "@type": "type.googleapis.com/" + HPO, "common_http_protocol_options": common,
        "explicit_http_config": {"http_protocol_options": {}}}}}


def handler(req):
    last = req.target.rsplit("/", 1)[-1]
    name, _, arg = last.partition("?")
    if name == "slow":
        return Reply(200, body=b"slow", delay=float(arg.split("&")[0].split("=")[1]))
    if name == "drop":
        return None
    if name == "stream":
        return Reply(200, body=[b"first", b"second", b"third"], chunk_delay=0.05)
    if name == "close":
        return Reply(200, body=b"bye", close=True)
    return Reply(200, body=b"ok " + req.target.encode())


RAW = {
    "garbage": [b"this is not http\r\n\r\n", "close"],
    "dupcl": [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok", "close"],
    "clte": [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"
             b"2\r\nok\r\n0\r\n\r\n", "close"],
    "badte": [b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
              "close"],
    "status99": [b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nok", "close"],
    "partial": [b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789", "close"],
    "eof": [b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\nclose-delimited body", "close"],
    "chunked": [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"2\r\nok\r\n3\r\nabc\r\n0\r\n\r\n"],
    "head": [b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"],
    "204": [b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nx-a: 1\r\n\r\n"],
    "304": [b"HTTP/1.1 304 Not Modified\r\netag: x\r\ncontent-length: 10\r\n\r\n"],
    "100": [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
    "lf": [b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok"],
    "hop": [b"HTTP/1.1 200 OK\r\nconnection: x-foo\r\nx-foo: 1\r\nkeep-alive: timeout=5\r\n"
            b"content-length: 2\r\n\r\nok"],
    "connclose": [b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"],
    "http10": [b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", "close"],
    # Keep-alive answer, then the upstream closes the idle connection a moment later.
    "kaclose": [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", ("sleep", 0.05), "close"],
    "bigresp": [b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (64 << 20),
                ("flood", 64 << 20, 1.5), "close"],
    "holdbody": [("hold", 1.6), "close"],
    # Envoy 1.40's response head limits: 100 headers, 80 KiB (status line and CRLFs included).
    "hdr100": [b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(99)) +
               b"content-length: 2\r\n\r\nok"],
    "hdr101": [b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(100)) +
               b"content-length: 2\r\n\r\nok", "close"],
    "head80k": [b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 81873 +
                b"\r\ncontent-length: 2\r\n\r\nok"],
    "head80k1": [b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 81874 +
                 b"\r\ncontent-length: 2\r\n\r\nok", "close"],
}


def raw_script(path, head, cid):
    name = path.rsplit("/", 1)[-1]
    return RAW.get(name, [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"])


# route prefix -> (cluster name, route extra)
ROUTES = {
    "/up/": ("up", {}),
    "/raw/": ("raw", {}),
    "/dead/": ("dead", {}),
    "/bh/": ("blackhole", {}),
    "/cbp/": ("cbp", {}),
    "/cbr/": ("cbr", {}),
    "/cbc/": ("cbc", {}),
    "/mrpc/": ("mrpc", {}),
    "/idle/": ("idle", {}),
    "/dur/": ("dur", {}),
    "/t/": ("tmo", {"timeout": "0.3s"}),
    "/t0/": ("tmo0", {"timeout": "0s"}),
    "/empty/": ("empty", {}),
}


@pytest.fixture(scope="module")
def env():
    with Upstream(handler) as up, RawServer(raw_script) as raw, Blackhole() as bh:
        dead = dead_port()
        clusters = [
            cluster("up", [("127.0.0.1", up.port)]),
            cluster("raw", [("127.0.0.1", raw.port)]),
            cluster("dead", [("127.0.0.1", dead)]),
            cluster("blackhole", [("127.0.0.1", bh)], connect_timeout="0.2s"),
            cluster("cbp", [("127.0.0.1", up.port)], circuit_breakers={"thresholds": [
                {"max_connections": 1, "max_pending_requests": 1}]}),
            cluster("cbr", [("127.0.0.1", up.port)], circuit_breakers={"thresholds": [
                {"max_requests": 1}]}),
            cluster("cbc", [("127.0.0.1", up.port)], circuit_breakers={"thresholds": [
                {"max_connections": 1}]}),
            cluster("mrpc", [("127.0.0.1", up.port)], **http_options(
                max_requests_per_connection=2)),
            cluster("idle", [("127.0.0.1", up.port)], **http_options(idle_timeout="0.3s")),
            cluster("dur", [("127.0.0.1", up.port)], **http_options(
                max_connection_duration="0.3s")),
            cluster("tmo", [("127.0.0.1", up.port)]),
            cluster("tmo0", [("127.0.0.1", up.port)]),
            cluster("empty", []),
        ]
        routes = [{"match": {"prefix": p}, "route": {"cluster": c, **extra}}
                  for p, (c, extra) in ROUTES.items()]
        p = ProxyProcess("meshproxy", bootstrap([listener("l", hcm(routes))], clusters)).start()
        try:
            yield p, up, raw
        finally:
            p.stop()


def get(p, path, method="GET", **kw):
    if method == "HEAD":
        # tests.support.client.exchange waits for a body after a HEAD response's
        # Content-Length; read just the head.
        s = socket.create_connection(("127.0.0.1", p.port("l")), timeout=5)
        s.sendall(f"HEAD {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        s.close()
        return parse_responses(data, head_request=True)[0]
    return request(p.port("l"), method, path, **kw)


def cstats(p, name):
    return p.stats(f"^cluster\\.{name}\\.")


def delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
            if after.get(k, 0) != before.get(k, 0)}


# ---------------------------------------------------------------------- reuse and idle close


def test_keep_alive_connections_are_reused(env):
    p, up, _ = env
    s0 = cstats(p, "up")
    for i in range(3):
        assert get(p, f"/up/reuse{i}").status == 200
    ids = {r.conn_id for r in up.requests if r.target.startswith("/up/reuse")}
    assert len(ids) == 1
    d = delta(s0, cstats(p, "up"))
    assert d.get("cluster.up.upstream_cx_total", 0) <= 1
    assert d["cluster.up.upstream_rq_total"] == 3 and d["cluster.up.upstream_rq_200"] == 3


def test_upstream_closing_idle_connection_does_not_fail_next_request(env):
    p, _, raw = env
    s0 = cstats(p, "raw")
    assert get(p, "/raw/kaclose").status == 200
    cid = raw.requests[-1][0]
    # The server closes the kept-alive connection; the proxy must notice before reusing it.
    assert wait_for(lambda: cid in raw.closed)
    assert wait_for(lambda: delta(s0, cstats(p, "raw")).get(
        "cluster.raw.upstream_cx_destroy_remote") == 1)
    r = get(p, "/raw/after")
    assert r.status == 200 and r.body == b"ok"
    assert raw.requests[-1][0] != cid
    d = delta(s0, cstats(p, "raw"))
    assert "cluster.raw.upstream_rq_503" not in d
    assert d.get("cluster.raw.upstream_cx_destroy_with_active_rq", 0) == 0


# ---------------------------------------------------------------------- failures before headers


def test_connect_failure_is_503_uf(env):
    p, _, _ = env
    s0 = cstats(p, "dead")
    r = get(p, "/dead/x")
    assert r.status == 503 and r.body == BODY_PREFIX + b"remote connection failure"
    assert r.header("content-type") == "text/plain"
    d = delta(s0, cstats(p, "dead"))
    assert d["cluster.dead.upstream_cx_connect_fail"] == 1
    assert d["cluster.dead.upstream_rq_pending_failure_eject"] == 1
    assert d["cluster.dead.upstream_cx_destroy_remote"] == 1
    assert d["cluster.dead.upstream_rq_503"] == 1
    assert d["cluster.dead.external.upstream_rq_503"] == 1
    assert "cluster.dead.upstream_rq_total" not in d      # never attached to a connection


def test_connect_timeout_is_503(env):
    p, _, _ = env
    s0 = cstats(p, "blackhole")
    t0 = time.monotonic()
    r = get(p, "/bh/x")
    assert time.monotonic() - t0 < 2
    assert r.status == 503 and r.body == BODY_PREFIX + b"connection timeout"
    d = delta(s0, cstats(p, "blackhole"))
    assert d["cluster.blackhole.upstream_cx_connect_timeout"] == 1
    assert d["cluster.blackhole.upstream_cx_destroy_local"] == 1


def test_reset_before_headers_is_503_uc(env):
    p, _, _ = env
    s0 = cstats(p, "up")
    r = get(p, "/up/drop")
    assert r.status == 503 and r.body == BODY_PREFIX + b"connection termination"
    d = delta(s0, cstats(p, "up"))
    assert d["cluster.up.upstream_cx_destroy_remote_with_active_rq"] == 1
    assert d["cluster.up.upstream_rq_503"] == 1


@pytest.mark.parametrize("case", ["garbage", "dupcl", "clte", "badte", "status99", "hdr101",
                                  "head80k1"])
def test_malformed_response_is_502_protocol_error(env, case):
    p, _, _ = env
    s0 = cstats(p, "raw")
    r = get(p, f"/raw/{case}")
    assert r.status == 502 and r.body == BODY_PREFIX + b"protocol error"
    d = delta(s0, cstats(p, "raw"))
    assert d["cluster.raw.upstream_cx_protocol_error"] == 1
    assert d["cluster.raw.upstream_cx_destroy_local_with_active_rq"] == 1
    assert d["cluster.raw.upstream_rq_502"] == 1


def test_reset_after_headers_resets_downstream(env):
    p, _, _ = env
    s0 = cstats(p, "raw")
    data, closed = exchange(p.port("l"), b"GET /raw/partial HTTP/1.1\r\nhost: x\r\n\r\n",
                            timeout=3, until_close=True)
    assert closed and data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"0123456789")
    assert parse_responses(data) == []          # never a complete response
    d = delta(s0, cstats(p, "raw"))
    assert d["cluster.raw.upstream_cx_protocol_error"] == 1
    assert d["cluster.raw.upstream_rq_200"] == 1


def test_no_healthy_upstream(env):
    p, _, _ = env
    s0 = cstats(p, "empty")
    r = get(p, "/empty/x")
    assert r.status == 503 and r.body == b"no healthy upstream"
    d = delta(s0, cstats(p, "empty"))
    assert d["cluster.empty.upstream_cx_none_healthy"] == 1
    assert d["cluster.empty.lb_healthy_panic"] == 1 and d["cluster.empty.upstream_rq_503"] == 1


# ---------------------------------------------------------------------- response framing


@pytest.mark.parametrize("case,method,status,body,headers", [
    ("chunked", "GET", 200, b"okabc", {}),
    ("eof", "GET", 200, b"close-delimited body", {"x-a": "1"}),
    ("head", "HEAD", 200, b"", {"content-length": "1234"}),
    ("204", "GET", 204, b"", {"x-a": "1", "content-length": None}),
    ("304", "GET", 304, b"", {"etag": "x", "content-length": "10"}),
    ("100", "GET", 200, b"ok", {}),
    ("lf", "GET", 200, b"ok", {}),
    ("hop", "GET", 200, b"ok", {"x-foo": "1", "keep-alive": None, "connection": None}),
    ("http10", "GET", 200, b"ok", {}),
    ("hdr100", "GET", 200, b"ok", {"x-h98": "v"}),
    ("head80k", "GET", 200, b"ok", {}),
])
def test_response_framing(env, case, method, status, body, headers):
    p, _, _ = env
    r = get(p, f"/raw/{case}", method=method)
    assert (r.status, r.body) == (status, body)
    for n, v in headers.items():
        assert r.header(n) == v, n


def test_close_delimited_body_is_rechunked_and_not_active_on_close(env):
    p, _, _ = env
    s0 = cstats(p, "raw")
    data, _ = exchange(p.port("l"), b"GET /raw/eof HTTP/1.1\r\nhost: x\r\n\r\n", expect=1)
    assert b"transfer-encoding: chunked" in data.lower()
    d = delta(s0, cstats(p, "raw"))
    assert d["cluster.raw.upstream_cx_destroy_remote"] == 1
    assert "cluster.raw.upstream_cx_destroy_with_active_rq" not in d


def test_1xx_is_dropped_but_counted(env):
    p, _, _ = env
    s0 = cstats(p, "raw")
    data, _ = exchange(p.port("l"), b"GET /raw/100 HTTP/1.1\r\nhost: x\r\n\r\n", expect=1)
    assert data.startswith(b"HTTP/1.1 200 OK") and b"100 Continue" not in data
    d = delta(s0, cstats(p, "raw"))
    assert d["cluster.raw.upstream_rq_100"] == 1 and d["cluster.raw.upstream_rq_200"] == 1
    assert d["cluster.raw.upstream_rq_completed"] == 2


def test_upstream_connection_close_is_honoured(env):
    p, _, raw = env
    s0 = cstats(p, "raw")
    assert get(p, "/raw/connclose").status == 200
    first = raw.requests[-1][0]
    assert get(p, "/raw/next").status == 200
    assert raw.requests[-1][0] != first
    d = delta(s0, cstats(p, "raw"))
    assert d["cluster.raw.upstream_cx_close_notify"] == 1
    assert d["cluster.raw.upstream_cx_destroy_local"] >= 1


def test_streaming_response_is_relayed_as_it_comes(env):
    p, _, _ = env
    s = socket.create_connection(("127.0.0.1", p.port("l")), timeout=5)
    s.sendall(b"GET /up/stream HTTP/1.1\r\nhost: x\r\n\r\n")
    data = b""
    while b"first" not in data:
        data += s.recv(65536)
    # The first chunk arrives before the upstream has sent the last one (50 ms apart).
    assert b"third" not in data
    while b"0\r\n\r\n" not in data:
        data += s.recv(65536)
    s.close()
    assert parse_responses(data)[0].body == b"firstsecondthird"


# ---------------------------------------------------------------------- circuit breakers


def _start_slow(p, path):
    s = socket.create_connection(("127.0.0.1", p.port("l")), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return s


def _finish(s):
    data = b""
    while not parse_responses(data):
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    return parse_responses(data)[0]


def test_max_pending_requests_overflow(env):
    p, up, _ = env
    s0 = cstats(p, "cbp")
    a = _start_slow(p, "/cbp/slow?s=0.6")
    assert wait_for(lambda: any(r.target == "/cbp/slow?s=0.6" for r in up.requests))
    b = _start_slow(p, "/cbp/slow?s=0.01")
    assert wait_for(lambda: p.stat("cluster.cbp.upstream_rq_pending_active") == 1)
    r = get(p, "/cbp/third")
    assert r.status == 503 and r.body == BODY_PREFIX + b"overflow"
    assert r.header("x-envoy-overloaded") == "true"
    assert _finish(a).status == 200 and _finish(b).status == 200
    d = delta(s0, cstats(p, "cbp"))
    assert d["cluster.cbp.upstream_rq_pending_overflow"] == 1
    assert d["cluster.cbp.upstream_cx_overflow"] >= 1 and d["cluster.cbp.upstream_cx_total"] == 1
    assert d["cluster.cbp.upstream_rq_total"] == 2 and d["cluster.cbp.upstream_rq_503"] == 1


def test_max_requests_overflow(env):
    p, up, _ = env
    s0 = cstats(p, "cbr")
    a = _start_slow(p, "/cbr/slow?s=0.5")
    assert wait_for(lambda: any(r.target == "/cbr/slow?s=0.5" for r in up.requests))
    r = get(p, "/cbr/second")
    assert r.status == 503 and r.header("x-envoy-overloaded") == "true"
    assert _finish(a).status == 200
    d = delta(s0, cstats(p, "cbr"))
    assert d["cluster.cbr.upstream_rq_active_overflow"] == 1
    assert d["cluster.cbr.upstream_rq_total"] == 1


def test_max_connections_queues_requests(env):
    p, up, _ = env
    s0 = cstats(p, "cbc")
    socks = [_start_slow(p, f"/cbc/slow?s=0.2&n={i}") for i in range(3)]
    assert [_finish(s).status for s in socks] == [200, 200, 200]
    ids = {r.conn_id for r in up.requests if r.target.startswith("/cbc/")}
    assert len(ids) == 1
    d = delta(s0, cstats(p, "cbc"))
    assert d["cluster.cbc.upstream_cx_total"] == 1 and d["cluster.cbc.upstream_cx_overflow"] >= 1
    assert d["cluster.cbc.upstream_rq_pending_total"] >= 2


def test_circuit_breaker_gauges(env):
    p, _, _ = env
    st = p.stats("^cluster\\.cbp\\.circuit_breakers\\.")
    assert set(st) == {f"cluster.cbp.circuit_breakers.{prio}.{n}"
                       for prio in ("default", "high")
                       for n in ("cx_open", "cx_pool_open", "rq_open", "rq_pending_open",
                                 "rq_retry_open")}


# ---------------------------------------------------------------------- connection lifetime


def test_max_requests_per_connection(env):
    p, up, _ = env
    s0 = cstats(p, "mrpc")
    ka = KeepAlive(p.port("l"))
    for i in range(5):
        assert ka.request(path=f"/mrpc/{i}").status == 200
    ka.close()
    ids = [r.conn_id for r in up.requests if r.target.startswith("/mrpc/")]
    assert ids[0] == ids[1] != ids[2] == ids[3] != ids[4]
    d = delta(s0, cstats(p, "mrpc"))
    assert d["cluster.mrpc.upstream_cx_max_requests"] == 2
    assert d["cluster.mrpc.upstream_cx_total"] == 3


def test_idle_timeout_closes_upstream_connection(env):
    p, up, _ = env
    s0 = cstats(p, "idle")
    assert get(p, "/idle/a").status == 200
    assert wait_for(lambda: p.stat("cluster.idle.upstream_cx_idle_timeout") >
                    s0.get("cluster.idle.upstream_cx_idle_timeout", 0), timeout=5)
    assert get(p, "/idle/b").status == 200
    ids = [r.conn_id for r in up.requests if r.target.startswith("/idle/")]
    assert ids[-1] != ids[-2]
    d = delta(s0, cstats(p, "idle"))
    assert d["cluster.idle.upstream_cx_destroy_local"] == 1


def test_max_connection_duration_drains_busy_and_closes_idle(env):
    p, up, _ = env
    assert get(p, "/dur/a").status == 200
    assert wait_for(lambda: p.stat("cluster.dur.upstream_cx_max_duration_reached") == 1)
    # A connection that reaches its age mid-request finishes it, then closes.
    assert get(p, "/dur/slow?s=0.5").status == 200
    assert get(p, "/dur/c").status == 200
    ids = [r.conn_id for r in up.requests if r.target.startswith("/dur/")]
    assert len(set(ids)) == 3
    st = cstats(p, "dur")
    assert st["cluster.dur.upstream_cx_max_duration_reached"] == 2
    assert st["cluster.dur.upstream_cx_destroy_with_active_rq"] == 0


# ---------------------------------------------------------------------- timeouts and headers


def test_route_timeout_is_504(env):
    p, up, _ = env
    s0 = cstats(p, "tmo")
    t0 = time.monotonic()
    r = get(p, "/t/slow?s=1.5")
    assert 0.25 < time.monotonic() - t0 < 1.4
    assert r.status == 504 and r.body == b"upstream request timeout"
    seen = [x for x in up.requests if x.target == "/t/slow?s=1.5"][0]
    assert seen.header("x-envoy-expected-rq-timeout-ms") == "300"
    d = delta(s0, cstats(p, "tmo"))
    assert d["cluster.tmo.upstream_rq_timeout"] == 1 and d["cluster.tmo.upstream_rq_504"] == 1
    assert d["cluster.tmo.upstream_cx_destroy_local_with_active_rq"] == 1


def test_timeout_zero_disables_and_default_is_15s(env):
    p, up, _ = env
    r = get(p, "/t0/slow?s=0.4")
    assert r.status == 200
    seen = [x for x in up.requests if x.target == "/t0/slow?s=0.4"][0]
    assert seen.header("x-envoy-expected-rq-timeout-ms") is None
    r = get(p, "/up/deadline")
    seen = [x for x in up.requests if x.target == "/up/deadline"][0]
    assert seen.header("x-envoy-expected-rq-timeout-ms") == "15000"
    assert r.header("x-envoy-upstream-service-time").isdigit()


def test_request_header_timeout_override(env):
    p, up, _ = env
    # Sidecar default: x-envoy-* headers from an external client are not trusted.
    r = get(p, "/t/slow?s=0.6", headers=[("x-envoy-upstream-rq-timeout-ms", "2000")])
    assert r.status == 504


# ---------------------------------------------------------------------- backpressure


def test_slow_reader_stalls_the_upstream(env):
    p, _, raw = env
    s = socket.create_connection(("127.0.0.1", p.port("l")))
    raw.flood_done.clear()
    s.sendall(b"GET /raw/bigresp HTTP/1.1\r\nhost: x\r\n\r\n")
    # The client reads nothing: the upstream must stall after kernel buffers plus the proxy's
    # per-connection limits (1 MiB each way), far below the 64 MiB it tries for 1.5 s.
    assert raw.flood_done.wait(5)
    sent = raw.flooded
    s.close()
    assert 0 < sent < 24 << 20, sent


def test_slow_upstream_stalls_the_client(env):
    p, _, _ = env
    s = socket.create_connection(("127.0.0.1", p.port("l")))
    s.sendall(b"POST /raw/holdbody HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
              % (64 << 20))
    s.setblocking(False)
    chunk = b"y" * 65536
    sent = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and sent < 64 << 20:
        select.select([], [s], [], 0.05)
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            pass
    s.close()
    assert 0 < sent < 24 << 20, sent


def test_reset_counters_zeroes_code_stats(env):
    p, _, _ = env
    assert get(p, "/up/before-reset").status == 200
    assert p.stat("cluster.up.upstream_rq_200") > 0
    active = p.stat("cluster.up.upstream_cx_active")
    assert active > 0                                         # the kept-alive connection
    assert p.get_admin("/reset_counters", method="POST")[0] == 200
    st = cstats(p, "up")
    assert st["cluster.up.upstream_rq_200"] == 0 and st["cluster.up.upstream_rq_2xx"] == 0
    assert st["cluster.up.external.upstream_rq_completed"] == 0
    assert st["cluster.up.upstream_cx_active"] == active      # gauges are not counters
