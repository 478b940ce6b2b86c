"""Differential HTTP/1.1 tests: raw requests through Envoy 1.40 and through meshproxy on both
parser backends (httptools and h11), comparing every response byte (date and ids masked),
whether the connection was closed, what reached the upstream, and the ``http.<prefix>.`` stats.

One bootstrap with one listener per HCM configuration is started once per proxy (module
scope); the three proxies run side by side and the cases run in parallel across them.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time

import pytest

from tests.integration.test_http1_cases import (CASES, _read, g, h1_bootstrap, normalise,
                                                run_table, statuses, upstream_handler)
from tests.support.client import exchange
from tests.support.proxies import ProxyProcess, find_envoy
from tests.support.upstream import Upstream

pytestmark = pytest.mark.oracle

KINDS = ("envoy", "httptools", "h11")
H = b"Host: h\r\n"

# HCM options, one listener each: name -> (extra HCM fields, {case: request bytes, or
# (bytes, number of responses Envoy sends) when several requests are pipelined}).
SCENARIOS = {
    "http10": ({"http_protocol_options": {"accept_http_10": True,
                                          "default_host_for_http_10": "dflt.example"}}, {
        "nohost": g(b"GET /x HTTP/1.0", b""),
        "host": g(b"GET /x HTTP/1.0", H),
        "keep_alive": g(b"GET /x HTTP/1.0", H + b"Connection: keep-alive\r\n"),
        "chunked_resp": g(b"GET /chunked HTTP/1.0", H),
        "chunked_resp_ka": g(b"GET /chunked HTTP/1.0", H + b"Connection: keep-alive\r\n"),
        "direct": g(b"GET /direct HTTP/1.0", b""),
        "direct_ka": g(b"GET /direct HTTP/1.0", b"Connection: keep-alive\r\n"),
        "noroute": g(b"GET /zz HTTP/1.0", b"Host: noroute.com\r\n"),
        "post": g(b"POST /x HTTP/1.0", H + b"Content-Length: 3\r\n", b"abc"),
        "post_nolen": g(b"POST /x HTTP/1.0", H, b"abc"),
        "te": g(b"POST /x HTTP/1.0", H + b"Transfer-Encoding: chunked\r\n",
                b"3\r\nabc\r\n0\r\n\r\n"),
        "pipelined_ka": (g(b"GET /x HTTP/1.0", H + b"Connection: keep-alive\r\n") +
                         g(b"GET /y HTTP/1.0", H + b"Connection: keep-alive\r\n"), 2),
    }),
    "rid_off": ({"generate_request_id": False}, {
        "none": g(), "given": g(hdrs=b"Host: a\r\nX-Request-Id: abc\r\n")}),
    "rid_always": ({"always_set_request_id_in_response": True}, {
        "given": g(hdrs=b"Host: a\r\nX-Request-Id: abc\r\n"),
        "direct": g(b"GET /direct HTTP/1.1", b"Host: a\r\nX-Request-Id: abc\r\n"),
        "noroute": g(b"GET /zz HTTP/1.1", b"Host: noroute.com\r\nX-Request-Id: abc\r\n")}),
    "edge": ({"use_remote_address": True}, {
        "xff": g(hdrs=b"Host: a\r\nX-Request-Id: abc\r\nX-Forwarded-Proto: https\r\n"
                      b"X-Forwarded-For: 9.9.9.9\r\n"),
        "plain": g()}),
    "edge_preserve": ({"use_remote_address": True, "preserve_external_request_id": True}, {
        "given": g(hdrs=b"Host: a\r\nX-Request-Id: abc\r\n")}),
    "server_append": ({"server_name": "meshy",
                       "server_header_transformation": "APPEND_IF_ABSENT"}, {
        "upstream_server": g(b"GET /server HTTP/1.1"), "plain": g(),
        "direct": g(b"GET /direct HTTP/1.1")}),
    "server_pass": ({"server_header_transformation": "PASS_THROUGH"}, {
        "upstream_server": g(b"GET /server HTTP/1.1"), "plain": g(),
        "direct": g(b"GET /direct HTTP/1.1")}),
    "server_over": ({"server_name": "meshy"}, {"upstream_server": g(b"GET /server HTTP/1.1")}),
    "us_reject": ({"common_http_protocol_options": {
        "headers_with_underscores_action": "REJECT_REQUEST"}}, {
        "underscore": g(hdrs=b"Host: a\r\nX_Y: 1\r\n"),
        "direct": g(b"GET /direct HTTP/1.1", b"Host: a\r\nX_Y: 1\r\n")}),
    "us_drop": ({"common_http_protocol_options": {
        "headers_with_underscores_action": "DROP_HEADER"}}, {
        "underscore": g(hdrs=b"Host: a\r\nX_Y: 1\r\nX-Z: 2\r\n")}),
    "mrpc": ({"common_http_protocol_options": {"max_requests_per_connection": 2}}, {
        "three": (g(b"GET /a HTTP/1.1") + g(b"GET /b HTTP/1.1") + g(b"GET /c HTTP/1.1"), 2),
        "one": g(b"GET /a HTTP/1.1")}),
    "via": ({"via": "1.1 meshproxy"}, {
        "via": g(hdrs=b"Host: a\r\nVia: 1.0 client\r\n"), "direct": g(b"GET /direct HTTP/1.1")}),
    "limits": ({"max_request_headers_kb": 1,
                "common_http_protocol_options": {"max_headers_count": 5}}, {
        "5": g(hdrs=b"Host: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(4))),
        "6": g(hdrs=b"Host: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5))),
        "kb_ok": g(hdrs=b"Host: a\r\nX-A: " + b"v" * 900 + b"\r\n"),
        "kb_bad": g(hdrs=b"Host: a\r\nX-A: " + b"v" * 1100 + b"\r\n"),
        "kb_url": g(b"GET /" + b"u" * 1030 + b" HTTP/1.1")}),
}

# Stats scenarios: listener (stat_prefix) -> requests, one connection each.
STATS = {
    "st_ok": [g(), g(b"GET /direct HTTP/1.1"), g(b"GET /zz HTTP/1.1", b"Host: noroute.com\r\n")],
    "st_bad": [b"GARBAGE\r\n\r\n"],
    "st_bad_te": [g(b"POST /x HTTP/1.1", b"Host: a\r\nTransfer-Encoding: gzip\r\n", b"abc")],
    "st_431": [g(hdrs=b"Host: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(100)))],
    "st_nohost": [g(hdrs=b"")],
    "st_early": [g(b"POST /direct HTTP/1.1", b"Host: a\r\nContent-Length: 10\r\n", b"abc")],
    "st_pipe_bad": [g() + b"GARBAGE\r\n\r\n"],
    "st_flood": [g(b"GET /direct1 HTTP/1.1") * 3],
    "st_upgrade": [g(hdrs=b"Host: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n")],
    "st_connect": [b"CONNECT foo:443 HTTP/1.1\r\nHost: foo:443\r\n\r\n"],
    "st_http10": [g(b"GET /x HTTP/1.0", b"")],
    "st_expect": [g(b"POST /x HTTP/1.1", b"Host: a\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 3\r\n", b"abc")],
    "st_keepalive": [g() + g(b"GET /direct HTTP/1.1") + g(b"GET /y HTTP/1.1", b"Host: a\r\n"
                                                          b"Connection: close\r\n"), 3],
}

# Timeouts, 0.3 s each: listener -> (extra HCM fields, [(name, [bytes or pause seconds])]).
TIMEOUTS = {
    "to_idle": ({"common_http_protocol_options": {"idle_timeout": "0.3s"}},
                [("no_request", []), ("after_direct", [g(b"GET /direct HTTP/1.1")])]),
    "to_stream_idle": ({"stream_idle_timeout": "0.3s"},
                       [("body_pending", [g(b"POST /x HTTP/1.1", b"Host: a\r\n"
                                            b"Content-Length: 10\r\n", b"abc")]),
                        ("head_pending", [b"GET /x HTTP/1.1\r\nHost: a\r\n"]),
                        ("upstream_slow", [g(b"GET /slow HTTP/1.1")])]),
    "to_request": ({"request_timeout": "0.3s"},
                   [("body_pending", [g(b"POST /x HTTP/1.1", b"Host: a\r\n"
                                        b"Content-Length: 10\r\n", b"abc")]),
                    ("head_pending", [b"GET /x HTTP/1.1\r\nHost: a\r\n"])]),
    "to_headers": ({"request_headers_timeout": "0.3s"},
                   [("head_pending", [b"GET /x HTTP/1.1\r\nHost: a\r\n"])]),
    "to_max_conn": ({"common_http_protocol_options": {"max_connection_duration": "0.3s"}},
                    [("no_request", []), ("slow", [g(b"GET /slow HTTP/1.1")])]),
    "to_max_stream": ({"common_http_protocol_options": {"max_stream_duration": "0.3s"}},
                      [("slow", [g(b"GET /slow HTTP/1.1")])]),
}


def _listeners():
    ls = {"l": {}, "dc_default": {"delayed_close_timeout": None}}
    for name, (extra, _) in {**SCENARIOS, **TIMEOUTS}.items():
        ls[name] = extra
    for name in STATS:
        ls[name] = {}
    return ls


def _boot(port):
    b = h1_bootstrap(port, _listeners())
    for lst in b["static_resources"]["listeners"]:
        tc = lst["filter_chains"][0]["filters"][0]["typed_config"]
        if tc.get("delayed_close_timeout", "") is None:
            del tc["delayed_close_timeout"]      # Envoy's default, 1 s
    return b


class _Proxy:
    def __init__(self, kind):
        self.kind = kind
        self.up = Upstream(upstream_handler)

    def start(self):
        self.up.start()
        # Istio's drain flags: every response closes once a drain starts (the default
        # "gradual" strategy closes with a probability growing over the drain time).
        args = ["--drain-strategy", "immediate", "--drain-time-s", "5"]
        if self.kind == "envoy":
            self.p = ProxyProcess("envoy", _boot(self.up.port), args).start()
        else:
            self.p = ProxyProcess("meshproxy", _boot(self.up.port), args,
                                  env={"MESHPROXY_HTTP1_CODEC": self.kind}).start()
        return self

    def stop(self):
        self.p.stop()
        self.up.stop()


def _each(fn):
    """Run fn(proxy) for the three proxies in parallel; {kind: result}."""
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        futs = {k: ex.submit(fn, p) for k, p in _PROXIES.items()}
        return {k: f.result() for k, f in futs.items()}


_PROXIES: dict = {}


@pytest.fixture(scope="module")
def proxies():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        started = list(ex.map(lambda k: _Proxy(k).start(), KINDS))
    _PROXIES.update({p.kind: p for p in started})
    yield _PROXIES
    for p in started:
        p.stop()
    _PROXIES.clear()


def _table(px, cases, listener="l"):
    return run_table(px.p.port(listener), px.up, cases)


def _same(results: dict):
    """Normalised raw bytes, closure and upstream requests of the three proxies."""
    norm = {k: {c: (normalise(raw), closed, reqs) for c, (raw, closed, reqs) in r.items()}
            for k, r in results.items()}
    return norm


@pytest.fixture(scope="module")
def table(proxies):
    return _same(_each(lambda px: _table(px, CASES)))


@pytest.mark.parametrize("case", list(CASES))
def test_raw_table_matches_envoy(table, case):
    env = table["envoy"][case]
    _, want_statuses, want_closed, want_up = CASES[case]
    # The table's expectations are Envoy's ...
    assert (statuses(env[0]), env[1], len(env[2])) == (want_statuses, want_closed, want_up)
    # ... and meshproxy answers byte for byte the same, on both parser backends.
    assert table["httptools"][case] == env
    assert table["h11"][case] == env


@pytest.fixture(scope="module")
def scenarios(proxies):
    def run(px):
        out = {}
        for name, (_, cases) in SCENARIOS.items():
            cases4 = {c: (d[0], [200] * d[1], False, 0) if isinstance(d, tuple)
                      else (d, [200], False, 0) for c, d in cases.items()}
            for c, v in run_table(px.p.port(name), px.up, cases4, close_wait=0.3).items():
                out[f"{name}/{c}"] = v
        return out
    return _same(_each(run))


@pytest.mark.parametrize("case", [f"{n}/{c}" for n, (_, cs) in SCENARIOS.items() for c in cs])
def test_hcm_options_match_envoy(scenarios, case):
    env = scenarios["envoy"][case]
    assert env[0], "Envoy sent nothing"
    assert scenarios["httptools"][case] == env
    assert scenarios["h11"][case] == env


def _http_stats(px, prefix):
    st = px.p.stats(f"^http\\.{prefix}\\.")
    return {k: v for k, v in st.items() if v and "bytes" not in k and not k.endswith("_ms")}


@pytest.fixture(scope="module")
def stats(proxies):
    def run(px):
        for prefix, reqs in STATS.items():
            n = reqs[1] if len(reqs) == 2 and isinstance(reqs[1], int) else 1
            reqs = reqs[:1] if n > 1 else reqs
            cases = {str(i): (data, [200] * n, False, 0) for i, data in enumerate(reqs)}
            run_table(px.p.port(prefix), px.up, cases, close_wait=0.3)
        time.sleep(0.2)
        return {prefix: _http_stats(px, prefix) for prefix in STATS}
    return _each(run)


@pytest.mark.parametrize("prefix", list(STATS))
def test_hcm_stats_match_envoy(stats, prefix):
    env = stats["envoy"][prefix]
    assert env
    for kind in ("httptools", "h11"):
        assert _stat_diff(stats[kind][prefix], env) == {}, kind


def _timed(port, parts, total=1.6):
    """Send ``parts``; returns (normalised bytes, how the connection ended, seconds)."""
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.monotonic()
    for p in parts:
        s.sendall(p)
    out, how = b"", "open"
    s.settimeout(total)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                how = "eof"
                break
            out += d
    except socket.timeout:
        pass
    except ConnectionResetError:
        how = "rst"
    s.close()
    return normalise(out), how, time.monotonic() - t0


@pytest.fixture(scope="module")
def timeouts(proxies):
    def run(px):
        jobs = [(name, case, parts) for name, (_, cs) in TIMEOUTS.items() for case, parts in cs]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
            res = list(ex.map(lambda j: _timed(px.p.port(j[0]), j[2]), jobs))
        out = {f"{j[0]}/{j[1]}": r for j, r in zip(jobs, res)}
        out["stats"] = {n: _http_stats(px, n) for n in TIMEOUTS}
        return out
    return _each(run)


@pytest.mark.parametrize("case", [f"{n}/{c}" for n, (_, cs) in TIMEOUTS.items() for c, _ in cs])
def test_timeouts_match_envoy(timeouts, case):
    env = timeouts["envoy"][case]
    for kind in ("httptools", "h11"):
        got = timeouts[kind][case]
        assert got[:2] == env[:2], kind
        # when it ended, within scheduling noise (deadlines are 0.3 s; runs take 1.6 s)
        assert abs(got[2] - env[2]) < 0.25, (kind, got[2], env[2])


def _stat_diff(got: dict, want: dict) -> dict:
    return {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}


@pytest.mark.parametrize("listener", list(TIMEOUTS))
def test_timeout_stats_match_envoy(timeouts, listener):
    env = timeouts["envoy"]["stats"][listener]
    assert env
    for kind in ("httptools", "h11"):
        assert _stat_diff(timeouts[kind]["stats"][listener], env) == {}, kind


def test_delayed_close_default_one_second(proxies):
    """After a 400 Envoy waits delayed_close_timeout (1 s) for the client to close first; bytes
    the client sends meanwhile stay unread, so the close is a reset."""
    def run(px):
        port = px.p.port("dc_default")
        quiet = _timed(port, [b"GARBAGE\r\n\r\n"], total=3)
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GARBAGE\r\n\r\n")
        s.settimeout(3)
        first = s.recv(65536)
        s.sendall(b"more bytes" * 10)
        t0 = time.monotonic()
        how = "open"
        try:
            while s.recv(65536):
                pass
            how = "eof"
        except ConnectionResetError:
            how = "rst"
        s.close()
        return quiet[0], quiet[1], round(quiet[2]), statuses(first), how, \
            round(time.monotonic() - t0)
    res = _each(run)
    assert res["envoy"] == (res["envoy"][0], "eof", 1, [400], "rst", 1)
    assert res["httptools"] == res["envoy"]
    assert res["h11"] == res["envoy"]


def test_drain_listeners_announces_close(proxies, table, scenarios, stats, timeouts):
    """During a listener drain the next response says ``Connection: close`` (and the drain
    counter moves); idle connections are left alone. Runs last: it drains every listener."""
    def run(px):
        port = px.p.port("l")
        busy = socket.create_connection(("127.0.0.1", port), timeout=3)
        busy.sendall(g(b"GET /direct HTTP/1.1"))
        first = _read(busy, 1, 3)[0]
        idle = socket.create_connection(("127.0.0.1", port), timeout=3)
        idle.sendall(g(b"GET /direct HTTP/1.1"))
        _read(idle, 1, 3)
        assert px.p.get_admin("/drain_listeners?graceful", method="POST")[0] == 200
        time.sleep(0.2)
        busy.sendall(g(b"GET /direct HTTP/1.1"))
        second = normalise(_read(busy, 1, 3)[0])
        idle.setblocking(False)
        try:
            idle_state = "eof" if idle.recv(100) == b"" else "data"
        except BlockingIOError:
            idle_state = "open"
        busy.close()
        idle.close()
        return b"connection: close" in first, second, idle_state, \
            px.p.stat("http.l.downstream_cx_drain_close")
    res = _each(run)
    assert res["envoy"][0] is False and b"connection: close" in res["envoy"][1]
    assert res["httptools"] == res["envoy"]
    assert res["h11"] == res["envoy"]


def test_reason_phrases_are_envoys(start_envoy, start_meshproxy_default):
    """Every status a direct response can carry gets Envoy's reason phrase (not the RFC's:
    Envoy says "Payload Too Large", "Unknown" for 418, ...)."""
    from tests.support.proxies import bootstrap, hcm, listener
    codes = list(range(200, 600))
    routes = [{"match": {"path": f"/{c}"}, "direct_response": {"status": c}} for c in codes]
    boot = bootstrap([listener("l", hcm(routes))])
    lines = {}
    for name, start in (("envoy", start_envoy), ("meshproxy", start_meshproxy_default)):
        p = start(boot)
        got = []
        for c in codes:
            d, _ = exchange(p.port("l"), f"GET /{c} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
                            timeout=2, expect=1)
            got.append(d.split(b"\r\n", 1)[0])
        lines[name] = got
    assert lines["meshproxy"] == lines["envoy"]
