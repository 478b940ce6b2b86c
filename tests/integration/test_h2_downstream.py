"""Downstream HTTP/2 (h2c) through meshproxy to an HTTP/1.1 upstream, with real clients (curl
``--http2-prior-knowledge``, nghttp, h2load) and a raw ``h2`` client for what real clients do
not send: malformed pseudo-headers, oversize header lists, RST_STREAM mid-body, many streams,
request trailers, a client that withholds WINDOW_UPDATE, GOAWAY on drain, rapid reset.

What Envoy 1.40 does in the same cases is compared in tests/oracle/test_h2_oracle.py.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from hyperframe.frame import PingFrame

from tests.support.h2client import H2Client, request_headers
from tests.support.proxies import ProxyProcess, bootstrap, cluster, hcm, listener
from tests.support.upstream import Reply, Upstream

BIG = 1 << 20


def handler(req):
    if req.target.startswith("/big"):
        return Reply(200, body=[b"x" * 16384] * (BIG // 16384))
    if req.target.startswith("/slow"):
        return Reply(200, body=b"slow", delay=0.3)
    if req.target.startswith("/hang"):
        return Reply(200, body=b"late", delay=3.0)
    if req.target.startswith("/echo"):
        return Reply(200, [("x-body-len", str(len(req.body)))], req.body)
    return Reply(200, [("content-type", "text/plain"), ("x-upstream", "1")],
                 f"{req.method} {req.target}".encode())


def h2_bootstrap(up_port: int) -> dict:
    routes = [{"match": {"prefix": "/hang"}, "route": {"cluster": "up", "timeout": "0.05s"}},
              {"match": {"prefix": "/direct"}, "direct_response": {
                  "status": 200, "body": {"inline_string": "direct"}}},
              {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    return bootstrap(
        [listener("auto", hcm(routes)),
         listener("h2", hcm(routes, stat_prefix="h2only", codec_type="HTTP2")),
         listener("small", hcm(routes, stat_prefix="small", codec_type="HTTP2"),
                  per_connection_buffer_limit_bytes=32768),
         listener("mcs", hcm(routes, stat_prefix="mcs", codec_type="HTTP2",
                             http2_protocol_options={"max_concurrent_streams": 2})),
         listener("lenient", hcm(routes, stat_prefix="lenient", codec_type="HTTP2",
                                 http2_protocol_options={
                                     "stream_error_on_invalid_http_messaging": True})),
         *[listener(f"us_{a.lower()}", hcm(routes, stat_prefix=f"us_{a.lower()}",
                                           codec_type="HTTP2", common_http_protocol_options={
                                               "headers_with_underscores_action": a}))
           for a in ("REJECT_REQUEST", "DROP_HEADER")],
         listener("mrpc", hcm(routes, stat_prefix="mrpc", codec_type="HTTP2",
                              drain_timeout="0.3s",
                              common_http_protocol_options={"max_requests_per_connection": 2})),
         listener("idle", hcm(routes, stat_prefix="idle", codec_type="HTTP2",
                              drain_timeout="0.2s",
                              common_http_protocol_options={"idle_timeout": "0.2s"}))],
        [cluster("up", [("127.0.0.1", up_port)])])


@pytest.fixture(scope="module")
def env():
    with Upstream(handler) as up:
        p = ProxyProcess("meshproxy", h2_bootstrap(up.port)).start()
        try:
            yield p, up
        finally:
            p.stop()


def _curl(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-s", "--max-time", "10", *args], capture_output=True,
                          text=True, timeout=20)


@pytest.mark.parametrize("name", ["auto", "h2"])
def test_curl_prior_knowledge(env, name):
    p, up = env
    port = p.port(name)
    before = len(up.requests)
    r = _curl("--http2-prior-knowledge", "-D", "-", "-d", "hello",
              f"http://127.0.0.1:{port}/echo/{name}")
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition("\n\n")   # (text mode: CRLF read as LF)
    assert head.startswith("HTTP/2 200")
    assert "x-body-len: 5" in head and "server: envoy" in head
    assert body == "hello"
    got = up.wait_requests(before + 1)[before]
    assert (got.method, got.target, got.body) == ("POST", f"/echo/{name}", b"hello")
    assert got.header("host") == f"127.0.0.1:{port}"
    assert got.header("content-length") == "5"


def test_large_bodies_both_ways(env):
    """A 3 MiB request body (chunked to the HTTP/1 upstream) and the 1 MiB response, through
    curl's flow control and ours."""
    p, up = env
    body = bytes(range(256)) * (3 * 4096)
    r = subprocess.run(["curl", "-s", "--max-time", "20", "--http2-prior-knowledge",
                        "--data-binary", "@-", "-D", "/dev/stderr",
                        f"http://127.0.0.1:{p.port('h2')}/echo/large"],
                       input=body, capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == body, r.stderr[-300:]
    got = [x for x in up.requests if x.target == "/echo/large"][-1]
    assert got.body == body
    r = subprocess.run(["curl", "-s", "--max-time", "20", "--http2-prior-knowledge",
                        f"http://127.0.0.1:{p.port('h2')}/big"], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == b"x" * BIG


def test_auto_still_serves_http1(env):
    p, _ = env
    r = _curl("-D", "-", f"http://127.0.0.1:{p.port('auto')}/one")
    assert r.stdout.startswith("HTTP/1.1 200") and r.stdout.endswith("GET /one")


def test_nghttp_concurrent_streams_and_stats(env):
    p, _ = env
    before = p.stats("http.h2only.")
    urls = [f"http://127.0.0.1:{p.port('h2')}/n/{i}" for i in range(8)]
    r = subprocess.run(["nghttp", "-ns", *urls], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    after = p.stats("http.h2only.")

    def delta(name):
        name = "http.h2only." + name
        return after.get(name, 0) - before.get(name, 0)
    assert (delta("downstream_rq_http2_total"), delta("downstream_cx_http2_total"),
            delta("downstream_rq_2xx")) == (8, 1, 8)


def test_h2load_bounded(env):
    p, _ = env
    r = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "10",
                        f"http://127.0.0.1:{p.port('h2')}/load"],
                       capture_output=True, text=True, timeout=60)
    assert "400 succeeded, 0 failed, 0 errored" in r.stdout, r.stdout
    assert "status codes: 400 2xx" in r.stdout
    # nothing left behind once h2load's connections are gone (bounded wait for the closes)
    for _ in range(100):
        if p.stat("http.h2only.downstream_cx_http2_active") == 0:
            break
        time.sleep(0.02)
    assert p.stat("http.h2only.downstream_cx_http2_active") == 0
    assert p.stat("http.h2only.downstream_rq_active") == 0


def test_many_streams_one_connection(env):
    p, up = env
    with H2Client(p.port("h2")) as c:
        sids = [c.request(request_headers(f"/many/{i}")) for i in range(60)]
        c.send()
        c.collect(lambda c: c.done(*sids), timeout=10)
        assert [c.status(s) for s in sids] == [200] * 60
        assert all(c.bodies[s] == f"GET /many/{i}".encode() for i, s in enumerate(sids))


def refused_stream_exchange(p) -> tuple:
    """Three streams at once on a listener allowing two: (statuses, RST_STREAM codes by
    stream position, GOAWAY)."""
    with H2Client(p.port("mcs")) as c:
        sids = [c.request(request_headers(f"/slow/{i}")) for i in range(3)]
        c.send()
        c.collect(lambda c: c.done(*sids), timeout=5)
        return ([c.status(s) for s in sids], {sids.index(s): e for s, e in c.resets.items()},
                c.goaway)


def timeout_exchange(p) -> tuple:
    """A stream whose route times out (the upstream answers seconds later) beside one that
    completes: (statuses, local reply body, RST_STREAMs, GOAWAY)."""
    with H2Client(p.port("h2")) as c:
        hang = c.request(request_headers("/hang"))
        ok = c.request(request_headers("/fine"))
        c.send()
        c.collect(lambda c: c.done(hang, ok), timeout=5)
        return [c.status(hang), c.status(ok)], c.bodies.get(hang), c.resets, c.goaway


def test_route_timeout_ends_only_its_stream(env):
    p, _ = env
    assert timeout_exchange(p) == ([504, 200], b"upstream request timeout", {}, None)


def max_requests_exchange(p) -> tuple:
    """Two requests one after the other where max_requests_per_connection is 2: the second
    starts the drain (shutdown-notice GOAWAY before its response), drain_timeout later the
    final GOAWAY and the close."""
    with H2Client(p.port("mrpc")) as c:
        seen = []
        for i in range(2):
            sid = c.request(request_headers(f"/mrpc/{i}"))
            c.send()
            c.collect(lambda c: c.done(sid))
            seen.append((c.status(sid), c.goaway))
        c.collect(lambda c: c.eof, timeout=5)
        kinds = [type(f).__name__ for f in c.frames if type(f).__name__ in
                 ("HeadersFrame", "GoAwayFrame", "RstStreamFrame")]
        return seen, c.goaway, c.eof, kinds


def test_max_requests_per_connection_drains(env):
    p, _ = env
    assert max_requests_exchange(p) == (
        [(200, None), (200, (2 ** 31 - 1, 0))], (3, 0), True,
        ["HeadersFrame", "GoAwayFrame", "HeadersFrame", "GoAwayFrame"])


def idle_exchange(p) -> tuple:
    """One request, then silence past idle_timeout: the drain sequence (notice GOAWAY, final
    GOAWAY after drain_timeout) and the close."""
    with H2Client(p.port("idle")) as c:
        sid = c.request(request_headers("/idle"))
        c.send()
        c.collect(lambda c: c.eof, timeout=5)
        frames = [(type(f).__name__, getattr(f, "last_stream_id", None)) for f in c.frames
                  if type(f).__name__ in ("HeadersFrame", "GoAwayFrame")]
        return c.status(sid), frames, c.eof


def test_idle_timeout_drains(env):
    p, _ = env
    assert idle_exchange(p) == (200, [("HeadersFrame", None), ("GoAwayFrame", 2 ** 31 - 1),
                                      ("GoAwayFrame", 1)], True)
    assert p.stat("http.idle.downstream_cx_idle_timeout") == 1


def test_streams_past_max_concurrent_are_refused(env):
    p, _ = env
    assert refused_stream_exchange(p) == ([200, 200, None], {2: 7}, None)  # REFUSED_STREAM
    assert p.stat("http2.stream_refused_errors") == 1


@pytest.mark.parametrize("headers", [
    [(b":scheme", b"http"), (b":path", b"/x"), (b":authority", b"h")],         # no :method
    [(b":method", b"GET"), (b":path", b"/x"), (b":authority", b"h")],         # no :scheme
    [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h")],     # no :path
    request_headers(extra=[(b":foo", b"1")]),                                 # unknown pseudo
    request_headers(extra=[(b"X-Upper", b"1")]),                              # upper case
    request_headers(extra=[(b"connection", b"close")]),                      # connection-specific
    request_headers(extra=[(b"te", b"gzip")]),
    request_headers(path="relative"),
], ids=["method", "scheme", "path", "pseudo", "upper", "connection", "te", "relpath"])
def test_malformed_request_closes_connection(env, headers):
    p, _ = env
    before = p.stats("http2.").get("http2.rx_messaging_error", 0)
    with H2Client(p.port("h2")) as c:
        c.request(headers)
        c.send()
        c.collect(timeout=5)
        assert c.eof
        assert not c.headers and not c.resets
    assert p.stats("http2.")["http2.rx_messaging_error"] == before + 1


def test_oversize_header_list_resets_stream(env):
    p, _ = env
    with H2Client(p.port("h2")) as c:
        big = c.request(request_headers(extra=[("x-big", "a" * 70000)]))
        many = c.request(request_headers(extra=[(f"x-h{i}", "a") for i in range(120)]))
        ok = c.request(request_headers("/after"))
        c.send()
        c.collect(lambda c: c.done(big, many, ok))
        assert c.resets == {big: 2, many: 2}      # INTERNAL_ERROR, as nghttp2 in Envoy
        assert c.status(ok) == 200 and not c.eof


def test_content_length_mismatch_resets_stream(env):
    p, _ = env
    with H2Client(p.port("h2")) as c:
        sid = c.request(request_headers("/echo", "POST", extra=[("content-length", "5")]),
                        body=b"ab")
        c.send()
        c.collect(lambda c: c.done(sid))
        assert c.resets == {sid: 1}               # PROTOCOL_ERROR


def test_rst_mid_body_resets_upstream_request(env):
    p, up = env
    before = p.stats("http.h2only.")
    destroyed = "cluster.up.upstream_cx_destroy_local_with_active_rq"
    destroyed_before = p.stat(destroyed)
    with H2Client(p.port("h2")) as c:
        sid = c.request(request_headers("/echo/rst", "POST"), end=False)
        c.conn.send_data(sid, b"partial")
        c.send()
        # wait (bounded) until the request is on an upstream connection, then reset it
        for _ in range(200):
            if p.stat("cluster.up.upstream_rq_active") == 1:
                break
            c.collect(timeout=0.01)
        assert p.stat("cluster.up.upstream_rq_active") == 1
        c.conn.reset_stream(sid, 8)               # CANCEL
        c.send()
        after_sid = c.request(request_headers("/after-rst"))
        c.send()
        c.collect(lambda c: c.done(after_sid))
        assert c.status(after_sid) == 200
    after = p.stats("http.h2only.")
    assert after["http.h2only.downstream_rq_rx_reset"] == \
        before.get("http.h2only.downstream_rq_rx_reset", 0) + 1
    # the half-sent upstream request was abandoned with its connection
    assert p.stat(destroyed) == destroyed_before + 1
    assert not any(r.target == "/echo/rst" for r in up.requests)


def test_request_trailers_end_the_request(env):
    p, up = env
    with H2Client(p.port("h2")) as c:
        sid = c.request(request_headers("/echo/trailers", "POST"), body=b"body",
                        trailers=[(b"x-trailer", b"t")])
        c.send()
        c.collect(lambda c: c.done(sid))
        assert c.status(sid) == 200 and c.bodies[sid] == b"body"
    got = [r for r in up.requests if r.target == "/echo/trailers"][-1]
    assert got.body == b"body" and got.header("transfer-encoding") == "chunked"


def test_flow_control_backpressure(env):
    """The client opens no window beyond the initial 64 KiB: the proxy sends that much, holds
    the rest, stops reading the upstream past its buffer limit, and finishes after
    WINDOW_UPDATE."""
    p, _ = env
    cstats = "cluster.up.upstream_flow_control_paused_reading_total"
    paused_before = p.stats("cluster.up.").get(cstats, 0)
    with H2Client(p.port("small")) as c:
        sid = c.request(request_headers("/big"))
        c.send()
        c.collect(lambda c: len(c.bodies.get(sid, b"")) >= 65535)
        assert len(c.bodies[sid]) == 65535 and sid not in c.ended
        # the proxy buffers at most about its limit before pausing the upstream read
        for _ in range(100):
            if p.stats("cluster.up.").get(cstats, 0) > paused_before:
                break
            c.collect(timeout=0.05)
        assert p.stats("cluster.up.")[cstats] > paused_before
        c.conn.increment_flow_control_window(BIG)
        c.conn.increment_flow_control_window(BIG, stream_id=sid)
        c.send()
        c.collect(lambda c: c.done(sid), timeout=10)
        assert len(c.bodies[sid]) == BIG and sid in c.ended


def test_client_that_does_not_read_is_not_read(env):
    """A client that sends PINGs and never reads what comes back: once the proxy's output
    backs up it stops reading the client, so its memory holds a bounded amount, not the
    64 MiB of PING ACKs the client asks for."""
    p, _ = env
    ping = PingFrame(0, opaque_data=b"12345678").serialize() * 4096      # 69 KiB
    before = p.stat("http.h2only.downstream_cx_rx_bytes_total")
    with H2Client(p.port("h2")) as c:
        c.send()
        c.sock.setblocking(False)
        sent, stalled_since = 0, None
        deadline = time.monotonic() + 20
        while sent < (64 << 20) and time.monotonic() < deadline:
            try:
                # whole frames only: a partial send continues where it stopped
                off = sent % len(ping)
                sent += c.sock.send(ping[off:])
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 1.0:
                    break                   # the proxy stopped reading
                time.sleep(0.01)
        read = p.stat("http.h2only.downstream_cx_rx_bytes_total") - before
        assert sent < (64 << 20) and read < (24 << 20), (sent, read)


def drain_exchange(p) -> tuple:
    """A request, ``/drain_listeners?graceful``, another request on the same connection:
    (first status, second status, GOAWAY seen, order of HEADERS and GOAWAY frames)."""
    with H2Client(p.port("auto")) as c:
        first = c.request(request_headers("/before-drain"))
        c.send()
        c.collect(lambda c: c.done(first))
        assert p.get_admin("/drain_listeners?graceful", "POST")[0] == 200
        second = c.request(request_headers("/during-drain"))
        c.send()
        c.collect(lambda c: c.done(second) and c.goaway is not None)
        kinds = [type(f).__name__ for f in c.frames
                 if type(f).__name__ in ("GoAwayFrame", "HeadersFrame")]
        third = c.request(request_headers("/after-notice"))
        c.send()
        c.collect(lambda c: c.done(third))
        return c.status(first), c.status(second), c.goaway, kinds, c.status(third)


def test_goaway_on_drain(start_meshproxy_default):
    """Listener drain: the next response is preceded by the shutdown-notice GOAWAY (last
    stream 2^31-1, NO_ERROR: nothing refused, as Envoy with --drain-strategy immediate)."""
    with Upstream(handler) as up:
        p = start_meshproxy_default(h2_bootstrap(up.port))
        assert drain_exchange(p) == (200, 200, (2 ** 31 - 1, 0),
                                     ["HeadersFrame", "GoAwayFrame", "HeadersFrame"], 200)


def test_sigterm_finishes_streams_in_flight(start_meshproxy_default):
    """Shutdown: the final GOAWAY names the stream in flight, which completes; then the
    connection closes and the process exits 0 (meshproxy's lifecycle policy, as for HTTP/1)."""
    with Upstream(handler) as up:
        p = start_meshproxy_default(h2_bootstrap(up.port))
        with H2Client(p.port("h2")) as c:
            sid = c.request(request_headers("/slow/term"))
            c.send()
            up.wait_requests(1)
            p.proc.send_signal(signal.SIGTERM)
            c.collect(lambda c: c.eof, timeout=10)
            assert (c.status(sid), c.bodies.get(sid), c.goaway, c.eof) == \
                (200, b"slow", (sid, 0), True)
        assert p.proc.wait(10) == 0


def rapid_reset_exchange(p, listener: str = "h2") -> tuple:
    """600 streams each reset by the client at once (CVE-2023-44487): (EOF, GOAWAY, replies)."""
    with H2Client(p.port(listener)) as c:
        try:
            for i in range(600):
                sid = c.request(request_headers(f"/rr/{i}"))
                c.conn.reset_stream(sid, 8)
                if i % 50 == 49:
                    c.send()
            c.send()
        except (BrokenPipeError, ConnectionResetError):
            pass                      # the proxy closed the connection while we still sent
        c.collect(timeout=10)
        return c.eof, c.goaway, len(c.headers)


def test_rapid_reset_closes_connection(start_meshproxy_default):
    with Upstream(handler) as up:
        p = start_meshproxy_default(h2_bootstrap(up.port))
        assert rapid_reset_exchange(p) == (True, None, 0)
        # closed at 250 premature resets (half of Envoy's 500-stream floor), nothing after
        assert p.stat("http.h2only.downstream_rq_too_many_premature_resets") == 1
        assert p.stat("http.h2only.downstream_rq_rx_reset") == 250
