"""Differential: the upstream side of meshproxy and of Envoy 1.40 on the same bootstrap and the
same traffic. Compared: what the client gets (status, headers, body; volatile values masked),
and every ``cluster.<name>.*`` counter and gauge Envoy reports for the cluster the case used
(each case has its own cluster, so connection reuse between cases cannot blur the numbers).

Covered: malformed and unusual upstream responses (502 protocol error, close-delimited,
HEAD/204/304/1xx, hop-by-hop, Connection: close, HTTP/1.0), connect failure and timeout, reset
before headers, no healthy upstream, route timeout, circuit breakers, max_requests_per_connection,
idle timeouts, load balancing over weights/health/priorities, DNS families for ``localhost``,
tcp_proxy (half-close, resets, idle timeout, connect failure) and cluster config validation.
"""

from __future__ import annotations

import collections
import re
import socket
import struct
import subprocess
import sys
import time

import pytest
import yaml

from tests.integration.test_upstream_http import RAW, BODY_PREFIX, handler, http_options, \
    raw_script
from tests.integration.test_upstream_servers import (Blackhole, RawServer, TcpServer, dead_port,
                                                     wait_for)
from tests.support.client import KeepAlive, exchange, parse_responses
from tests.support.proxies import (REPO, ProxyProcess, bootstrap, cluster, find_envoy, hcm,
                                   listener)
from tests.support.upstream import Upstream

pytestmark = pytest.mark.oracle

# Gauges whose value is an artefact of Envoy's buffer accounting, not of the traffic.
IGNORED = ("upstream_cx_rx_bytes_buffered", "upstream_cx_tx_bytes_buffered")


@pytest.fixture(scope="module", autouse=True)
def _need_envoy():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")


def normalise(data: bytes) -> bytes:
    data = re.sub(rb"(?im)^date: .*\r\n", b"", data)
    return re.sub(rb"(?im)^(x-envoy-upstream-service-time): \d+\r\n", rb"\1: *\r\n", data)


def _head_exchange(port, data: bytes) -> bytes:
    """A HEAD exchange: the response ends with its head, whatever Content-Length says."""
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    s.sendall(data)
    out = b""
    while b"\r\n\r\n" not in out:
        d = s.recv(65536)
        if not d:
            break
        out += d
    s.close()
    return out


def cluster_stats(p, name):
    st = p.stats(f"^cluster\\.{re.escape(name)}\\.")
    return {k: v for k, v in st.items() if not k.endswith(IGNORED)}


def settled_stats(p, names):
    """Stats once nothing changes any more (connection closes land asynchronously)."""
    prev = None
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        cur = {n: cluster_stats(p, n) for n in names}
        if cur == prev:
            return cur
        prev = cur
        time.sleep(0.15)
    return prev


def run_both(make_boot, action, servers=()):
    """Start Envoy, run ``action(proxy)``, stop; the same for meshproxy."""
    out = {}
    for kind in ("envoy", "meshproxy"):
        p = ProxyProcess(kind, make_boot()).start()
        try:
            out[kind] = action(p)
        finally:
            p.stop()
    return out["envoy"], out["meshproxy"]


# ---------------------------------------------------------------------- HTTP cases

HTTP_CASES = [("GET", f"/raw_{c}/{c}") for c in RAW
              if c not in ("kaclose", "bigresp", "holdbody", "partial")]
HTTP_CASES[[p for _, p in HTTP_CASES].index("/raw_head/head")] = ("HEAD", "/raw_head/head")
HTTP_CASES += [("GET", "/dead/x"), ("GET", "/bh/x"), ("GET", "/up/drop"), ("GET", "/empty/x"),
               ("GET", "/tmo/slow?s=1"), ("GET", "/up/ok"), ("POST", "/up/post"),
               ("GET", "/mrpc/a")]


@pytest.fixture(scope="module")
def http_results():
    with Upstream(handler) as up, RawServer(raw_script) as raw, Blackhole() as bh:
        dead = dead_port()
        raw_clusters = [cluster(f"raw_{c}", [("127.0.0.1", raw.port)]) for c in RAW]
        clusters = raw_clusters + [
            cluster("up", [("127.0.0.1", up.port)]),
            cluster("dead", [("127.0.0.1", dead)]),
            cluster("bh", [("127.0.0.1", bh)], connect_timeout="0.2s"),
            cluster("empty", []),
            cluster("tmo", [("127.0.0.1", up.port)]),
            cluster("mrpc", [("127.0.0.1", up.port)], **http_options(
                max_requests_per_connection=2, idle_timeout="0.2s")),
        ]
        routes = [{"match": {"prefix": f"/{c['name']}/"}, "route": {"cluster": c["name"],
                   **({"timeout": "0.3s"} if c["name"] == "tmo" else {})}} for c in clusters]
        names = [c["name"] for c in clusters]

        def action(p):
            port = p.port("l")
            got = {}
            for method, path in HTTP_CASES:
                head = f"{method} {path} HTTP/1.1\r\nhost: x\r\n"
                if method == "POST":
                    data, _ = exchange(port, (head + "content-length: 5\r\n\r\nhello").encode(),
                                       expect=1, timeout=3)
                elif method == "HEAD":
                    data = _head_exchange(port, (head + "\r\n").encode())
                else:
                    data, _ = exchange(port, (head + "\r\n").encode(), expect=1, timeout=3)
                got[path] = normalise(data)
            # Keep-alive then an upstream close; then a fresh request must work.
            got["kaclose"] = [KeepAlive(port).request(path="/raw_kaclose/kaclose").status]
            wait_for(lambda: p.stat("cluster.raw_kaclose.upstream_cx_destroy") == 1)
            got["kaclose"].append(KeepAlive(port).request(path="/raw_kaclose/again").status)
            # Four more on a max_requests_per_connection=2 cluster (connections 1 and 2 are
            # used up, 3 stays idle), then its idle timeout.
            ka = KeepAlive(port)
            got["mrpc"] = [ka.request(path=f"/mrpc/{i}").status for i in range(4)]
            ka.close()
            wait_for(lambda: p.stat("cluster.mrpc.upstream_cx_idle_timeout") == 1)
            st = settled_stats(p, names)
            host_stats = sorted(line for line in p.get_admin("/clusters")[1].splitlines()
                                if re.search(r"::(cx|rq)_[a-z_]+::\d+$", line))
            return got, st, host_stats

        boot = bootstrap([listener("l", hcm(routes))], clusters)
        return run_both(lambda: boot, action)


@pytest.mark.parametrize("method,path", HTTP_CASES + [("", "kaclose"), ("", "mrpc")],
                         ids=[p for _, p in HTTP_CASES] + ["kaclose", "mrpc"])
def test_http_response_same_as_envoy(http_results, method, path):
    (env_got, _, _), (mp_got, _, _) = http_results
    assert mp_got[path] == env_got[path]


def stat_diffs(env_st, mp_st) -> dict:
    """{stat: (envoy value, meshproxy value)} for every stat that differs."""
    diffs = {}
    for name, est in env_st.items():
        mst = mp_st[name]
        for k in sorted(set(est) | set(mst)):
            if est.get(k) != mst.get(k):
                diffs[k] = (est.get(k, "-"), mst.get(k, "-"))
    return diffs


def test_http_cluster_stats_same_as_envoy(http_results):
    (_, env_st, _), (_, mp_st, _) = http_results
    assert stat_diffs(env_st, mp_st) == {}


def test_http_host_stats_same_as_envoy(http_results):
    (_, _, env_hosts), (_, _, mp_hosts) = http_results
    assert mp_hosts == env_hosts


# ---------------------------------------------------------------------- circuit breakers


def test_circuit_breakers_same_as_envoy():
    with Upstream(handler) as up:
        def boot():
            return bootstrap(
                [listener("l", hcm([
                    {"match": {"prefix": "/cbp/"}, "route": {"cluster": "cbp"}},
                    {"match": {"prefix": "/cbr/"}, "route": {"cluster": "cbr"}}]))],
                [cluster("cbp", [("127.0.0.1", up.port)], circuit_breakers={"thresholds": [
                    {"max_connections": 1, "max_pending_requests": 1}]}),
                 cluster("cbr", [("127.0.0.1", up.port)], circuit_breakers={"thresholds": [
                     {"max_requests": 1}]})])

        def slow(p, path):
            s = socket.create_connection(("127.0.0.1", p.port("l")), timeout=5)
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            return s

        def finish(s):
            data = b""
            while not parse_responses(data):
                d = s.recv(65536)
                if not d:
                    break
                data += d
            s.close()
            return normalise(data)

        def action(p):
            up.requests.clear()
            out = []
            a = slow(p, "/cbp/slow?s=0.6")
            wait_for(lambda: len(up.requests) == 1)
            b = slow(p, "/cbp/slow?s=0.01")
            wait_for(lambda: p.stat("cluster.cbp.upstream_rq_pending_active") == 1)
            gauges = p.stats("^cluster\\.cbp\\.(circuit_breakers|upstream_(rq|cx)_"
                             "(active|pending_active))")
            data, _ = exchange(p.port("l"), b"GET /cbp/c HTTP/1.1\r\nhost: x\r\n\r\n", expect=1)
            out += [normalise(data), finish(a), finish(b), gauges]
            a = slow(p, "/cbr/slow?s=0.5")
            wait_for(lambda: len(up.requests) == 3)
            for _ in range(2):
                data, _ = exchange(p.port("l"), b"GET /cbr/d HTTP/1.1\r\nhost: x\r\n\r\n",
                                   expect=1)
                out.append(normalise(data))
            out.append(finish(a))
            return out, settled_stats(p, ["cbp", "cbr"])

        env, mp = run_both(boot, action)

    assert mp[0] == env[0]
    assert mp[1] == env[1]


def test_overflow_reply_header_order_same_as_envoy():
    with Upstream(handler) as up:
        def boot():
            return bootstrap([listener("l", hcm([{"match": {"prefix": "/"},
                                                  "route": {"cluster": "c"}}]))],
                             [cluster("c", [("127.0.0.1", up.port)], circuit_breakers={
                                 "thresholds": [{"max_pending_requests": 0}]})])

        def action(p):
            data, _ = exchange(p.port("l"), b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", expect=1)
            return normalise(data)
        env, mp = run_both(boot, action)
    assert BODY_PREFIX + b"overflow" in env
    assert mp == env


# ---------------------------------------------------------------------- load balancing, DNS


def test_load_balancing_and_dns_same_as_envoy():
    ups = [Upstream(handler).__enter__() for _ in range(3)]
    v6 = Upstream(handler, host="::1").__enter__()
    try:
        ports = [u.port for u in ups]

        def boot():
            health = cluster("health", [("127.0.0.1", p) for p in ports])
            for lbe, st in zip(health["load_assignment"]["endpoints"][0]["lb_endpoints"],
                               ("UNHEALTHY", "DRAINING", "HEALTHY")):
                lbe["health_status"] = st
            panic = cluster("panic", [("127.0.0.1", p) for p in ports])
            for lbe in panic["load_assignment"]["endpoints"][0]["lb_endpoints"][:2]:
                lbe["health_status"] = "TIMEOUT"
            clusters = [
                cluster("wrr", [("127.0.0.1", p, w) for p, w in zip(ports, (1, 2, 3))]),
                cluster("lr", [("127.0.0.1", p, w) for p, w in zip(ports, (3, 1, 2))],
                        lb_policy="LEAST_REQUEST"),
                health, panic,
                cluster("auto", [("localhost", v6.port)], type_="STRICT_DNS"),
                cluster("all", [("localhost", ports[0])], type_="STRICT_DNS",
                        dns_lookup_family="ALL"),
                cluster("logical", [("localhost", ports[0])], type_="LOGICAL_DNS",
                        dns_lookup_family="V4_ONLY"),
            ]
            routes = [{"match": {"prefix": f"/{c['name']}/"}, "route": {"cluster": c["name"]}}
                      for c in clusters]
            return bootstrap([listener("l", hcm(routes))], clusters)

        def action(p):
            out = {}
            for name, n in (("wrr", 60), ("lr", 60), ("health", 10), ("panic", 30),
                            ("auto", 2), ("logical", 2)):
                for u in ups + [v6]:
                    u.requests.clear()
                ka = KeepAlive(p.port("l"))
                statuses = collections.Counter(ka.request(path=f"/{name}/x").status
                                               for _ in range(n))
                ka.close()
                out[name] = (statuses, [len(u.requests) for u in ups + [v6]])
            clusters = sorted(line for line in p.get_admin("/clusters")[1].splitlines()
                              if re.search(r"::(hostname|health_flags|weight|priority)::", line))
            names = ["wrr", "lr", "health", "panic", "auto", "all", "logical"]
            stats = {n: {k: v for k, v in s.items() if "upstream_cx" not in k and
                         "upstream_rq" not in k or k.endswith(("_2xx", "_200", "_503"))}
                     for n, s in settled_stats(p, names).items()}
            return out, clusters, stats

        env, mp = run_both(boot, action)
    finally:
        for u in ups + [v6]:
            u.__exit__()
    assert mp[0] == env[0]
    assert mp[1] == env[1]
    assert mp[2] == env[2]


# ---------------------------------------------------------------------- tcp_proxy

TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TCP_CASES = ("halfclose", "greet", "refused", "upclose", "uprst", "idle", "downrst")


def _tcp_client(p, case):
    c = socket.create_connection(("127.0.0.1", p.port(case)), timeout=3)
    out = []
    try:
        if case == "halfclose":
            c.sendall(b"x" * 1000)
            c.shutdown(socket.SHUT_WR)
        elif case == "greet":
            out.append(c.recv(100))
            c.sendall(b"abc")
            out.append(c.recv(100))
            c.shutdown(socket.SHUT_WR)
        elif case == "downrst":
            c.sendall(b"abc")
            out.append(c.recv(100))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            return out
        data = b""
        while True:
            d = c.recv(65536)
            if not d:
                break
            data += d
        out += [data, "eof"]
    except OSError as exc:
        out.append(type(exc).__name__)
    c.close()
    return out


def _tcp_run():
    servers = {"halfclose": TcpServer("eofreply"), "greet": TcpServer("greet"),
               "upclose": TcpServer("close"), "uprst": TcpServer("rst"),
               "idle": TcpServer("silent"), "downrst": TcpServer("echo")}
    ports = {k: s.port for k, s in servers.items()}
    ports["refused"] = dead_port()
    try:
        def boot():
            listeners = []
            for case in TCP_CASES:
                cfg = {"@type": TCP, "stat_prefix": case, "cluster": case}
                if case == "idle":
                    cfg["idle_timeout"] = "0.3s"
                listeners.append(listener(case, cfg, filter_name="envoy.filters.network.tcp_proxy"))
            return bootstrap(listeners, [cluster(c, [("127.0.0.1", ports[c])]) for c in TCP_CASES])

        def action(p):
            got = {}
            for case in TCP_CASES:
                got[case] = _tcp_client(p, case)
            wait_for(lambda: servers["downrst"].ends)
            saw = list(servers["downrst"].ends)
            servers["downrst"].ends.clear()
            st = settled_stats(p, list(TCP_CASES))
            tcp = {k: v for k, v in p.stats("^tcp\\.").items()
                   if not k.endswith(("_buffered",))}
            return got, st, tcp, saw

        return run_both(boot, action)
    finally:
        for s in servers.values():
            s.__exit__()


@pytest.fixture(scope="module")
def tcp_results():
    return _tcp_run()


def test_tcp_proxy_same_as_envoy(tcp_results):
    env, mp = tcp_results
    assert mp[0] == env[0]
    assert mp[1] == env[1]
    assert mp[2] == env[2]


def test_tcp_proxy_passes_downstream_reset_on(tcp_results):
    env, mp = tcp_results
    assert env[3] == ["RST"]
    assert mp[3] == env[3]


# ---------------------------------------------------------------------- config validation


@pytest.mark.parametrize("extra", [
    {"connect_timeout": "0s"},
    {"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"choice_count": 1}},
    {"common_lb_config": {"healthy_panic_threshold": {"value": 101}}},
    {"lb_policy": "RANDOM", "common_lb_config": {"healthy_panic_threshold": {"value": 0}}},
    {"type": "LOGICAL_DNS", "dns_lookup_family": "V6_ONLY"},
    {"type": "STATIC"},
    {"upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0},
                              "extra_source_addresses": [{"address": {"address": "::6",
                                                                      "port_value": 0}}]}},
    {"upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0},
                              "extra_source_addresses": [{"address": {"address": "127.0.0.7",
                                                                      "port_value": 0}}]}},
    {"upstream_bind_config": {"extra_source_addresses": [{"address": {"address": "::6",
                                                                      "port_value": 0}}]}},
    {"upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0},
                              "extra_source_addresses": [
                                  {"address": {"address": "::6", "port_value": 0}},
                                  {"address": {"address": "::7", "port_value": 0}}]}},
], ids=["connect_timeout", "choice_count", "panic_range", "ok_random", "logical_multi",
        "static_name", "bind_extra_ok", "bind_extra_same_family", "bind_extra_no_source",
        "bind_extra_two"])
def test_cluster_validation_same_as_envoy(tmp_path, extra):
    eps = [("127.0.0.1", 1)]
    if extra.get("type") == "LOGICAL_DNS":
        eps = [("localhost", 1), ("localhost", 2)]
    elif extra.get("type") == "STATIC":
        eps = [("localhost", 1)]
    extra = {k: v for k, v in extra.items() if k != "type"}
    typ = "LOGICAL_DNS" if eps[0][0] == "localhost" and len(eps) == 2 else "STATIC"
    c = cluster("c", eps, type_=typ, **extra)
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(bootstrap([], [c])))
    codes = []
    for cmd in ([find_envoy(), "--mode", "validate", "-c", str(path), "-l", "critical"],
                [sys.executable, "-m", "meshproxy", "--mode", "validate", "-c", str(path)]):
        codes.append(subprocess.run(cmd, capture_output=True, cwd=REPO, timeout=30).returncode)
    assert codes[1] == codes[0]


# ---------------------------------------------------------------------- retries


def test_retries_same_as_envoy():
    import itertools
    from tests.support.upstream import Reply
    calls = {"n": itertools.count()}

    def h(req):
        n = next(calls["n"])
        name = req.target.rsplit("/", 1)[-1]
        if name == "flaky":
            return Reply(503, body=b"flaky") if n % 2 == 0 else Reply(200, body=b"ok " + req.body)
        if name == "always503":
            return Reply(503, body=b"bad")
        if name == "slowfirst":
            return Reply(200, body=b"slow", delay=0.6) if n % 2 == 0 else Reply(200, body=b"fast")
        return Reply(200, body=b"ok")

    with Upstream(h) as up:
        dead = dead_port()

        def boot():
            def rp(**kw):
                return {"retry_policy": kw}
            routes = [("/dead/", "dead", rp(retry_on="connect-failure", num_retries=2)),
                      ("/5xx/", "c5xx", rp(retry_on="5xx", num_retries=2)),
                      ("/codes/", "codes", rp(retry_on="retriable-status-codes",
                                               retriable_status_codes=[503], num_retries=1)),
                      ("/pertry/", "pertry", {"timeout": "3s", **rp(
                          retry_on="5xx", num_retries=2, per_try_timeout="0.3s")}),
                      ("/pt504/", "pt504", {"timeout": "3s", **rp(
                          retry_on="connect-failure", per_try_timeout="0.3s")}),
                      ("/nobudget/", "nobudget", rp(retry_on="5xx", num_retries=2))]
            vh = [{"name": "v", "domains": ["*"], "include_request_attempt_count": True,
                   "routes": [{"match": {"prefix": p}, "route": {"cluster": c, **extra}}
                              for p, c, extra in routes]}]
            clusters = [cluster(c, [("127.0.0.1", dead if c == "dead" else up.port)])
                        for _, c, _ in routes]
            clusters[-1]["circuit_breakers"] = {"thresholds": [{"max_retries": 0}]}
            return bootstrap([listener("l", hcm(vh))], clusters)

        cases = [("GET", "/dead/x"), ("POST", "/5xx/flaky"), ("GET", "/codes/always503"),
                 ("GET", "/pertry/slowfirst"), ("GET", "/pt504/slowfirst"),
                 ("GET", "/nobudget/always503")]

        def action(p):
            got = []
            for method, path in cases:
                calls["n"] = itertools.count()
                up.requests.clear()
                body = b"payload" if method == "POST" else b""
                head = f"{method} {path} HTTP/1.1\r\nhost: x\r\n"
                if body:
                    head += f"content-length: {len(body)}\r\n"
                data, _ = exchange(p.port("l"), head.encode() + b"\r\n" + body, expect=1,
                                   timeout=4)
                seen = [(r.body, r.header("x-envoy-attempt-count")) for r in up.requests]
                got.append((normalise(data), seen))
            time.sleep(0.7)     # let the slow first attempts finish upstream
            return got, settled_stats(p, ["dead", "c5xx", "codes", "pertry", "pt504",
                                          "nobudget"])
        env, mp = run_both(boot, action)
    for (case, e), m in zip(zip(cases, env[0]), mp[0]):
        assert m == e, case
    assert stat_diffs(env[1], mp[1]) == {}
