"""The HTTP connection manager with a fake connection and a fake clock: timeouts, the drain
sequence, delayed close and the stats Envoy counts, without sockets or sleeping."""

from __future__ import annotations

import types

import pytest

from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.http.conn_manager import HttpConnectionManager
from meshproxy.http.hcm_config import HcmStats, build_hcm_config
from tests.support.clock import FakeClock
from tests.support.proxies import hcm

HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTES = [{"match": {"prefix": "/direct"},
           "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
          {"match": {"prefix": "/bad"}, "direct_response": {"status": 400}}]
GET = b"GET /direct HTTP/1.1\r\nHost: h\r\n\r\n"


def config(**extra):
    d = hcm(ROUTES, **extra)
    d.pop("@type")
    msg = message_class(HCM)()
    parse_json_into(d, msg)
    c = build_hcm_config(msg, "hcm")
    c.stats = HcmStats()
    return c


class Transport:
    def __init__(self):
        self.out = []

    def write(self, data):
        self.out.append(data)

    def get_extra_info(self, name):
        return None


class Conn:
    """The DownstreamConnection surface the connection manager uses."""

    def __init__(self):
        self.listener = types.SimpleNamespace(config=types.SimpleNamespace(buffer_limit=1 << 20))
        self.transport = Transport()
        self.out = self.transport      # the batched writer: here writes land at once
        self.remote_address = ("10.0.0.9", 5555)
        self.read_disabled = 0
        self.closed = None
        self.filter_chain = None

    def read_disable(self, disable):
        self.read_disabled += 1 if disable else -1

    def close(self, flush=True):
        self.closed = "flush" if flush else "abort"

    @property
    def data(self):
        return b"".join(self.transport.out)


@pytest.fixture(params=["httptools", "h11"])
def make(request, monkeypatch):
    monkeypatch.setenv("MESHPROXY_HTTP1_CODEC", request.param)

    def make(draining=False, **extra):
        clock = FakeClock()
        cfg = config(**extra)
        conn = Conn()
        ctx = types.SimpleNamespace(loop=clock, cluster_manager=None, draining=draining,
                                    global_stats=None)
        h = HttpConnectionManager(cfg, conn, ctx)
        return h, conn, clock, cfg.stats
    return make


def test_keep_alive_direct_response(make):
    h, conn, clock, st = make()
    h.on_data(GET, False)
    h.on_data(GET, False)
    assert conn.data.count(b"HTTP/1.1 200 OK") == 2 and conn.closed is None
    assert (st.downstream_rq_total, st.downstream_rq_2xx, st.rq_direct_response) == (2, 2, 2)
    assert st.downstream_cx_http1_total == 1 and st.downstream_rq_active == 0


def test_connection_close_waits_delayed_close_timeout(make):
    h, conn, clock, st = make()
    h.on_data(b"GET /direct HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False)
    assert b"connection: close" in conn.data
    assert conn.closed is None              # Envoy waits for the client to close first ...
    clock.advance(0.99)
    assert conn.closed is None
    clock.advance(0.02)
    assert conn.closed == "flush"           # ... for delayed_close_timeout (1 s)
    assert st.downstream_cx_delayed_close_timeout == 1


def test_bytes_during_delayed_close_are_not_read_and_reset(make):
    h, conn, clock, st = make()
    h.on_data(b"GARBAGE\r\n\r\n", False)
    assert conn.data.startswith(b"HTTP/1.1 400 Bad Request")
    h.on_data(GET, False)                   # never parsed
    assert conn.data.count(b"HTTP/1.1") == 1
    clock.advance(1.0)
    assert conn.closed == "abort"
    assert st.downstream_cx_protocol_error == 1
    assert st.downstream_rq_response_before_rq_complete == 1
    assert st.downstream_rq_rx_reset == 1


def test_no_delay_when_disabled(make):
    h, conn, clock, st = make(delayed_close_timeout="0s")
    h.on_data(b"GARBAGE\r\n\r\n", False)
    assert conn.closed == "flush"


def test_400_local_reply_closes(make):
    h, conn, clock, st = make()
    h.on_data(b"GET /bad HTTP/1.1\r\nHost: h\r\n\r\n", False)
    assert conn.data.startswith(b"HTTP/1.1 400 Bad Request") and b"connection: close" in conn.data


def test_idle_timeout_without_any_request_closes_at_once(make):
    h, conn, clock, st = make(common_http_protocol_options={"idle_timeout": "0.3s"})
    clock.advance(0.29)
    assert conn.closed is None
    clock.advance(0.02)
    assert conn.closed == "flush" and st.downstream_cx_idle_timeout == 1
    assert st.downstream_cx_http1_total == 0


def test_idle_timeout_after_a_request_drains(make):
    h, conn, clock, st = make(common_http_protocol_options={"idle_timeout": "0.3s"},
                              drain_timeout="2s")
    h.on_data(GET, False)
    clock.advance(0.31)
    assert st.downstream_cx_idle_timeout == 1 and conn.closed is None
    h.on_data(GET, False)                   # during the drain: Connection: close, still open
    assert conn.data.count(b"connection: close") == 1 and conn.closed is None
    clock.advance(2.0)                      # end of drain_timeout, then the delayed close
    assert conn.closed is None
    clock.advance(1.0)
    assert conn.closed == "flush"


def test_listener_drain_marks_the_next_response(make):
    h, conn, clock, st = make(drain_timeout="1s")
    h.start_drain()
    assert conn.closed is None              # idle connections stay (Envoy)
    h.on_data(GET, False)
    assert b"connection: close" in conn.data and st.downstream_cx_drain_close == 1
    clock.advance(2.1)
    assert conn.closed == "flush"


def test_server_shutdown_closes_idle_connections(make):
    h, conn, clock, st = make()
    h.ctx.state = 1                         # meshproxy.server.DRAINING
    h.start_drain()
    assert conn.closed == "flush"


@pytest.mark.parametrize("body,status,text", [
    (b"GET /direct HTTP/1.1\r\nHost: h\r\n", 408, b"stream timeout"),
    (b"POST /direct HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nab", 200, b"direct"),
])
def test_stream_idle_timeout(make, body, status, text):
    h, conn, clock, st = make(stream_idle_timeout="0.3s")
    h.on_data(body, False)
    clock.advance(0.31)
    if status == 408:
        assert conn.data.startswith(b"HTTP/1.1 408 Request Timeout")
        assert st.downstream_rq_idle_timeout == 1
    assert text in conn.data


def test_request_and_header_timeouts(make):
    h, conn, clock, st = make(request_timeout="0.5s", request_headers_timeout="0.2s")
    h.on_data(b"POST /x HTTP/1.1\r\n", False)
    clock.advance(0.21)
    assert conn.data.endswith(b"request header timeout")
    assert st.downstream_rq_header_timeout == 1

    h, conn, clock, st = make(request_timeout="0.5s", request_headers_timeout="0.2s")
    h.on_data(b"POST /direct HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n", False)
    assert conn.data.startswith(b"HTTP/1.1 200")      # direct response before the body
    h2, conn2, clock2, st2 = make(request_timeout="0.5s")
    h2.on_data(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n", False)
    clock2.advance(0.51)
    assert conn2.data.endswith(b"request timeout") and st2.downstream_rq_timeout == 1


def test_max_connection_duration(make):
    h, conn, clock, st = make(common_http_protocol_options={"max_connection_duration": "1s"},
                              drain_timeout="1s")
    h.on_data(GET, False)
    clock.advance(1.01)
    assert st.downstream_cx_max_duration_reached == 1 and conn.closed is None
    h.on_data(GET, False)
    assert conn.data.count(b"connection: close") == 1


def test_max_requests_per_connection(make):
    h, conn, clock, st = make(common_http_protocol_options={"max_requests_per_connection": 2})
    h.on_data(GET, False)
    h.on_data(GET, False)
    assert conn.data.count(b"HTTP/1.1 200") == 2 and conn.data.count(b"connection: close") == 1
    assert st.downstream_cx_max_requests_reached == 1


def test_pipelined_flood_closes_without_a_reply(make):
    h, conn, clock, st = make()
    h.on_data(GET * 3, False)
    assert conn.data.count(b"HTTP/1.1 200") == 2
    assert st.downstream_rq_total == 3 and st.downstream_cx_protocol_error == 0
    clock.advance(1.0)
    assert conn.closed == "flush"


def test_expect_100_continue_counts_as_a_1xx(make):
    h, conn, clock, st = make()
    h.on_data(b"POST /direct HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
              b"Content-Length: 1\r\n\r\nx", False)
    assert conn.data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert (st.downstream_rq_1xx, st.downstream_rq_2xx, st.downstream_rq_completed) == (1, 1, 2)
