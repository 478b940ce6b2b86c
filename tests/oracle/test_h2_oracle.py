"""Differential downstream HTTP/2 tests: the same bootstrap on Envoy 1.40 and on meshproxy, the
same raw h2c exchanges (tests/support/h2client.py), compared: response status and headers (date,
server time and request ids masked), body, RST_STREAM / GOAWAY error codes, whether the
connection closed, what the HTTP/1.1 upstream received, and the HCM and ``http2.*`` stats.
"""

from __future__ import annotations

import pytest
from hyperframe.frame import DataFrame, PriorityFrame

from tests.integration.test_h2_downstream import (drain_exchange, h2_bootstrap, handler,
                                                  idle_exchange,
                                                  max_requests_exchange, rapid_reset_exchange,
                                                  refused_stream_exchange,
                                                  timeout_exchange)
from tests.support.h2client import H2Client, request_headers
from tests.support.proxies import ProxyProcess, find_envoy
from tests.support.upstream import Reply, Upstream

pytestmark = pytest.mark.oracle

KINDS = ("envoy", "meshproxy")
_MASK_RESP = {b"date", b"x-envoy-upstream-service-time"}
_MASK_UP = {"x-request-id"}


def oracle_handler(req):
    if req.target.startswith("/trailers"):
        return Reply(200, [("content-type", "text/plain")], [b"ab", b"cd"],
                     trailers=[("x-resp-trailer", "t")])
    return handler(req)


@pytest.fixture(scope="module")
def proxies():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed")
    ups, procs = {}, {}
    try:
        for kind in KINDS:
            ups[kind] = Upstream(oracle_handler).__enter__()
            procs[kind] = ProxyProcess(kind, h2_bootstrap(ups[kind].port)).start()
        yield {k: (procs[k], ups[k]) for k in KINDS}
    finally:
        for p in procs.values():
            p.stop()
        for u in ups.values():
            u.stop()


def _exchange(p, listener: str, requests, wait_eof: bool = False) -> dict:
    """Send ``requests`` ([(headers, body, trailers)]) in one write; what came back."""
    with H2Client(p.port(listener)) as c:
        sids = [c.request(h, body=b, trailers=t) for h, b, t in requests]
        c.send()
        c.collect((lambda c: False) if wait_eof else (lambda c: c.done(*sids)), timeout=5)
        out = {"eof": c.eof, "goaway": c.goaway,
               "resets": sorted((sids.index(s), code) for s, code in c.resets.items())}
        for i, s in enumerate(sids):
            blocks = c.headers.get(s, [])
            out[i] = ([[(n, v) for n, v in b if n not in _MASK_RESP] for b in blocks],
                      c.bodies.get(s))
        return out


def _upstream_view(up, before: int):
    # sorted: concurrent streams reach the upstream on parallel connections in either order
    return sorted((r.method, r.target, [(n, v) for n, v in r.headers if n not in _MASK_UP],
                   r.body, r.trailers) for r in up.requests[before:])


CASES = {
    "get": [(request_headers("/get"), None, None)],
    "post_cl": [(request_headers("/echo", "POST", extra=[("content-length", "3")]), b"abc",
                 None)],
    "post_chunked": [(request_headers("/echo", "POST"), b"abcdef", None)],
    "post_trailers": [(request_headers("/echo", "POST"), b"abc", [(b"x-t", b"1")])],
    "host_only": [([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/h"),
                    (b"host", b"hostonly")], None, None)],
    "authority_and_host": [(request_headers("/ah", extra=[("host", "other")]), None, None)],
    "cookies": [(request_headers("/c", extra=[("cookie", "a=1"), ("cookie", "b=2")]), None,
                 None)],
    "te_trailers": [(request_headers("/te", extra=[("te", "trailers")]), None, None)],
    "underscore": [(request_headers("/u", extra=[("x_a", "1")]), None, None)],
    "direct": [(request_headers("/direct"), None, None)],
    "resp_trailers": [(request_headers("/trailers"), None, None)],
    "two_streams": [(request_headers("/one"), None, None), (request_headers("/two"), None, None)],
    "big_headers": [(request_headers(extra=[("x-big", "a" * 70000)]), None, None),
                    (request_headers("/after"), None, None)],
    # one field over nghttp2's 64 KiB wire limit: COMPRESSION_ERROR for the connection
    "huge_field": [(request_headers(extra=[("x-big", "a" * 300000)]), None, None),
                   (request_headers("/after"), None, None)],
    "many_headers": [(request_headers(extra=[(f"x-h{i}", "a") for i in range(120)]), None,
                      None)],
    "headers_at_count_limit": [(request_headers(extra=[(f"x-h{i}", "a") for i in range(96)]),
                                None, None)],
    "headers_over_count_limit": [(request_headers(extra=[(f"x-h{i}", "a") for i in range(97)]),
                                  None, None)],
    # names and values, pseudo-headers included: 44 bytes besides x-big's value
    "headers_at_size_limit": [(request_headers(extra=[("x-big", "a" * (61440 - 44))]), None,
                               None)],
    "headers_over_size_limit": [(request_headers(extra=[("x-big", "a" * (61440 - 43))]), None,
                                 None)],
    "expect_continue": [(request_headers("/echo", "POST", extra=[("expect", "100-continue"),
                                                                  ("content-length", "2")]),
                         b"hi", None)],
    "expect_other": [(request_headers("/e", extra=[("expect", "something")]), None, None)],
    "connect": [([(b":method", b"CONNECT"), (b":authority", b"h:443")], None, None)],
    "https_scheme": [([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/s"),
                       (b":authority", b"h")], None, None)],
    "cl_mismatch": [(request_headers("/echo", "POST", extra=[("content-length", "5")]), b"ab",
                     None)],
    "cl_short_end": [(request_headers("/echo", "POST", extra=[("content-length", "5")]), None,
                      None)],
}

MALFORMED = {
    "no_method": [(b":scheme", b"http"), (b":path", b"/x"), (b":authority", b"h")],
    "no_scheme": [(b":method", b"GET"), (b":path", b"/x"), (b":authority", b"h")],
    "no_path": [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h")],
    "no_authority": [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x")],
    "unknown_pseudo": request_headers(extra=[(b":foo", b"1")]),
    "pseudo_after_regular": [(b":method", b"GET"), (b"x-a", b"1"), (b":scheme", b"http"),
                             (b":path", b"/x"), (b":authority", b"h")],
    "dup_path": request_headers(extra=[(b":path", b"/y")]),
    "upper": request_headers(extra=[(b"X-Upper", b"1")]),
    "connection": request_headers(extra=[(b"connection", b"close")]),
    "keep_alive": request_headers(extra=[(b"keep-alive", b"1")]),
    "transfer_encoding": request_headers(extra=[(b"transfer-encoding", b"chunked")]),
    "te_gzip": request_headers(extra=[(b"te", b"gzip")]),
    "empty_path": request_headers(path=""),
    "authority_space": request_headers(authority="a b"),
    "connect_with_path": [(b":method", b"CONNECT"), (b":scheme", b"http"), (b":path", b"/"),
                          (b":authority", b"h:443")],
    "extended_connect": [(b":method", b"CONNECT"), (b":protocol", b"websocket"),
                         (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"h")],
    "authority_slash": request_headers(authority="a/b"),
    "relative_path": request_headers(path="x"),
}


# meshproxy's HTTP/1 upstream connection fails a chunked response that carries trailers
# (upstream_cx_protocol_error, on HTTP/1 downstreams too); Envoy drops the trailers and relays
# the body. Outside the downstream codec (meshproxy/upstream/h1_connection.py).
_XFAIL: dict = {}


_LOCAL = {"direct", "connect"}     # answered by the proxy itself: nothing upstream


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(
    reason=_XFAIL[c], strict=True)) if c in _XFAIL else c for c in CASES])
def test_exchange_matches_envoy(proxies, case):
    seen = {}
    for kind, (p, up) in proxies.items():
        before = len(up.requests)
        got = _exchange(p, "h2", CASES[case])
        # let the upstream finish recording what reached it (bounded)
        want = 0 if case in _LOCAL else sum(1 for k, v in got.items()
                                            if isinstance(k, int) and v[0])
        if want:
            up.wait_requests(before + want)
        seen[kind] = (got, _upstream_view(up, before))
    assert seen["meshproxy"][0] == seen["envoy"][0]
    assert seen["meshproxy"][1] == seen["envoy"][1]


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_matches_envoy(proxies, case):
    seen = {}
    for kind, (p, _) in proxies.items():
        before = p.stats("http2.").get("http2.rx_messaging_error", 0)
        got = _exchange(p, "h2", [(MALFORMED[case], None, None)], wait_eof=True)
        seen[kind] = (got, p.stats("http2.").get("http2.rx_messaging_error", 0) - before)
    assert seen["meshproxy"] == seen["envoy"]


@pytest.mark.parametrize("case", ["no_method", "upper", "connection", "relative_path",
                                  "authority_space"])
def test_stream_error_on_invalid_messaging_matches_envoy(proxies, case):
    """``stream_error_on_invalid_http_messaging``: only the malformed stream is reset
    (PROTOCOL_ERROR); the next stream on the connection is served."""
    seen = {}
    for kind, (p, _) in proxies.items():
        before = p.stat("http2.rx_messaging_error")
        got = _exchange(p, "lenient", [(MALFORMED[case], None, None),
                                       (request_headers("/next"), None, None)])
        seen[kind] = (got, p.stat("http2.rx_messaging_error") - before)
    assert seen["meshproxy"] == seen["envoy"]


@pytest.mark.parametrize("action", ["reject_request", "drop_header"])
def test_headers_with_underscores_matches_envoy(proxies, action):
    """REJECT_REQUEST resets the stream (INTERNAL_ERROR); DROP_HEADER drops the header; each
    counted in http2.*."""
    names = ("http2.requests_rejected_with_underscores_in_headers",
             "http2.dropped_headers_with_underscores")
    seen = {}
    for kind, (p, up) in proxies.items():
        before = {n: p.stat(n) for n in names}
        n_up = len(up.requests)
        got = _exchange(p, f"us_{action}", [
            (request_headers("/u", extra=[("x_a", "1"), ("x-b", "2")]), None, None),
            (request_headers("/next"), None, None)])
        up.wait_requests(n_up + sum(1 for k, v in got.items() if isinstance(k, int) and v[0]))
        seen[kind] = (got, _upstream_view(up, n_up), {n: p.stat(n) - before[n] for n in names})
    assert seen["meshproxy"] == seen["envoy"]


_STATS = ("downstream_cx_http2_total", "downstream_rq_http2_total", "downstream_rq_2xx",
          "downstream_rq_rx_reset", "downstream_rq_completed", "downstream_cx_protocol_error")


def test_stats_match_envoy(proxies):
    """After the same cases on a fresh listener: the same HCM and http2 codec counters."""
    seen = {}
    for kind, (p, _) in proxies.items():
        for case in ("get", "two_streams", "big_headers", "cl_mismatch"):
            _exchange(p, "small", CASES[case])
        _exchange(p, "small", [(MALFORMED["upper"], None, None)], wait_eof=True)
        st = p.stats("http.small.")
        seen[kind] = {n: st.get("http.small." + n, 0) for n in _STATS}
    assert seen["meshproxy"] == seen["envoy"]


@pytest.mark.parametrize("count", [150, 250])
def test_priority_flood_matches_envoy(proxies, count):
    """PRIORITY frames past max_inbound_priority_frames_per_stream (100) x (1 + streams
    opened) end the connection (http2.inbound_priority_frames_flood)."""
    seen = {}
    for kind, (p, _) in proxies.items():
        before = p.stat("http2.inbound_priority_frames_flood")
        with H2Client(p.port("h2")) as c:
            sid = c.request(request_headers("/prio"))
            frames = []
            for i in range(count):
                f = PriorityFrame(3 + 2 * (i % 50))
                f.depends_on, f.stream_weight = 0, 15
                frames.append(f.serialize())
            c.send(b"".join(frames))
            c.collect(lambda c: c.done(sid) or c.eof, timeout=3)
            seen[kind] = (c.status(sid), c.resets, c.goaway, c.eof,
                          p.stat("http2.inbound_priority_frames_flood") - before)
    assert seen["meshproxy"] == seen["envoy"]


@pytest.mark.parametrize("empty", [1, 2])
def test_empty_data_frame_flood_matches_envoy(proxies, empty):
    """More than max_consecutive_inbound_frames_with_empty_payload (1) empty DATA frames in a
    row end the connection (http2.inbound_empty_frames_flood)."""
    seen = {}
    for kind, (p, _) in proxies.items():
        before = p.stat("http2.inbound_empty_frames_flood")
        with H2Client(p.port("h2")) as c:
            sid = c.request(request_headers("/echo/empty", "POST"), end=False)
            c.conn.send_data(sid, b"x")
            last = DataFrame(sid, b"y")
            last.flags.add("END_STREAM")
            c.send(b"".join(DataFrame(sid).serialize() for _ in range(empty)) + last.serialize())
            c.collect(lambda c: c.done(sid) or c.eof, timeout=3)
            seen[kind] = (c.status(sid), c.bodies.get(sid), c.resets, c.goaway, c.eof,
                          p.stat("http2.inbound_empty_frames_flood") - before)
    assert seen["meshproxy"] == seen["envoy"]


def test_max_requests_per_connection_matches_envoy(proxies):
    stat = "http.mrpc.downstream_cx_max_requests_reached"
    seen = {kind: (max_requests_exchange(p), p.stat(stat)) for kind, (p, _) in proxies.items()}
    assert seen["meshproxy"] == seen["envoy"]


def test_rapid_reset_matches_envoy(proxies):
    names = ("http.h2only.downstream_rq_too_many_premature_resets",
             "http.h2only.downstream_rq_rx_reset", "http.h2only.downstream_rq_total")
    seen = {}
    for kind, (p, _) in proxies.items():
        before = {n: p.stat(n) for n in names}
        seen[kind] = (rapid_reset_exchange(p), {n: p.stat(n) - before[n] for n in names})
    assert seen["meshproxy"] == seen["envoy"]


def test_idle_timeout_matches_envoy(proxies):
    stat = "http.idle.downstream_cx_idle_timeout"
    seen = {}
    for kind, (p, _) in proxies.items():
        before = p.stat(stat)
        seen[kind] = (idle_exchange(p), p.stat(stat) - before)
    assert seen["meshproxy"] == seen["envoy"]


def test_response_before_request_end_matches_envoy(proxies):
    """A direct response while the request body is still open: the response, then
    RST_STREAM NO_ERROR (Envoy's doEndStream), and the connection goes on."""
    names = ("http.h2only.downstream_rq_response_before_rq_complete",
             "http.h2only.downstream_rq_rx_reset", "http2.tx_reset")
    seen = {}
    for kind, (p, _) in proxies.items():
        before = {n: p.stat(n) for n in names}
        with H2Client(p.port("h2")) as c:
            sid = c.request(request_headers("/direct", "POST"), end=False)
            c.send()
            c.collect(lambda c: c.done(sid))
            nxt = c.request(request_headers("/next"))
            c.send()
            c.collect(lambda c: c.done(nxt))
            got = (c.status(sid), c.bodies.get(sid), c.resets, sid in c.ended, c.status(nxt))
        seen[kind] = (got, {n: p.stat(n) - before[n] for n in names})
    assert seen["meshproxy"] == seen["envoy"]


def test_route_timeout_matches_envoy(proxies):
    seen = {kind: timeout_exchange(p) for kind, (p, _) in proxies.items()}
    assert seen["meshproxy"] == seen["envoy"]


def test_refused_stream_matches_envoy(proxies):
    seen = {}
    for kind, (p, _) in proxies.items():
        seen[kind] = (refused_stream_exchange(p), p.stat("http2.stream_refused_errors"),
                      p.stat("http.mcs.downstream_rq_http2_total"))
    assert seen["meshproxy"] == seen["envoy"]


def test_rst_mid_body_matches_envoy(proxies):
    """RST_STREAM (CANCEL) while the request body is still coming: the upstream request is
    abandoned with its connection, and the connection serves the next stream."""
    seen = {}
    names = ("http.ingress.downstream_rq_rx_reset",
             "cluster.up.upstream_cx_destroy_local_with_active_rq")
    for kind, (p, up) in proxies.items():
        before = {n: p.stat(n) for n in names}
        with H2Client(p.port("auto")) as c:
            sid = c.request(request_headers("/echo/rst", "POST"), end=False)
            c.conn.send_data(sid, b"partial")
            c.send()
            for _ in range(200):      # bounded wait for the request to reach the upstream
                if p.stat("cluster.up.upstream_rq_active") == 1:
                    break
                c.collect(timeout=0.01)
            c.conn.reset_stream(sid, 8)
            nxt = c.request(request_headers("/next"))
            c.send()
            c.collect(lambda c: c.done(nxt))
            seen[kind] = (c.status(nxt), c.resets, c.goaway,
                          {n: p.stat(n) - before[n] for n in names})
    assert seen["meshproxy"] == seen["envoy"]


def test_drain_goaway_matches_envoy():
    """Listener drain with Istio's ``--drain-strategy immediate``: the next response is
    preceded by the shutdown-notice GOAWAY (last stream 2^31-1, NO_ERROR)."""
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed")
    seen = {}
    for kind in KINDS:
        with Upstream(handler) as up, ProxyProcess(kind, h2_bootstrap(up.port),
                                                   ["--drain-strategy", "immediate"]) as p:
            seen[kind] = drain_exchange(p)
    assert seen["meshproxy"] == seen["envoy"]
