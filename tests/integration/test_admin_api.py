"""The admin API of a running meshproxy over real loopback sockets: what pilot-agent reads,
methods and errors, state-changing endpoints, /quitquitquit, and that no data-plane listener
serves admin handlers."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import exchange, parse_responses, request
from tests.support.proxies import ProxyProcess, bootstrap, cluster, hcm, listener
from tests.support.upstream import Upstream


def call(p, path, method="GET", body=b"", headers=()):
    port = int(p.admin.rsplit(":", 1)[1])
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    data, _ = exchange(port, head.encode() + body, expect=1, timeout=5)
    r = parse_responses(data)[0]
    return r.status, dict(r.headers), r.body.decode()


def _boot(up_port):
    return bootstrap([listener("l", hcm([{"match": {"prefix": "/"},
                                          "route": {"cluster": "up"}}]))],
                     [cluster("up", [("127.0.0.1", up_port)])])


@pytest.fixture(scope="module")
def mp():
    with Upstream() as up:
        p = ProxyProcess("meshproxy", _boot(up.port),
                         ["--drain-time-s", "45", "--drain-strategy", "immediate",
                          "--stats-tag", "mesh:m1"]).start()
        request(p.port("l"), "GET", "/warm")
        try:
            yield p
        finally:
            p.stop()


def test_pilot_agent_readiness(mp):
    st, h, body = call(mp, "/stats?usedonly&filter=^(server\\.state|listener_manager\\."
                           "workers_started)")
    assert (st, body) == (200, "listener_manager.workers_started: 1\nserver.state: 0\n")
    assert h["content-type"] == "text/plain; charset=UTF-8"
    st, _, body = call(mp, "/stats?usedonly&filter=^(cluster_manager\\.cds|listener_manager\\."
                           "lds)\\.(update_success|update_rejected)$")
    assert (st, body) == (200, "")   # CDS/LDS stats come with xDS; the query must not fail
    assert call(mp, "/ready")[::2] == (200, "LIVE\n")


def test_methods_and_unknown_paths(mp):
    st, h, body = call(mp, "/nope")
    assert st == 404 and body.startswith("invalid path. admin commands are:\n  /: Admin")
    assert call(mp, "/quitquitquit")[::2] == (405, "Method GET not allowed, POST required.")
    assert call(mp, "/healthcheck/fail", "PUT")[0] == 405
    assert call(mp, "/ready", "POST")[::2] == (200, "LIVE\n")
    st, h, body = call(mp, "/help")
    assert "  /stats/prometheus: print server stats in prometheus format\n" in body
    assert "  /drain_listeners (POST): drain listeners\n" in body
    assert h["transfer-encoding"] == "chunked" and h["cache-control"] == "no-cache, max-age=0"
    st, h, body = call(mp, "/")
    assert st == 200 and h["content-type"] == "text/html; charset=UTF-8" and "<table>" in body


def test_stats_formats(mp):
    st, _, body = call(mp, "/stats?filter=^http\\.ingress\\.downstream_rq_total$")
    assert body == "http.ingress.downstream_rq_total: 1\n"
    st, h, body = call(mp, "/stats?format=json&filter=^server\\.state$")
    assert h["content-type"] == "application/json"
    assert json.loads(body) == {"stats": [{"name": "server.state", "value": 0}]}
    assert call(mp, "/stats?type=Histograms")[::2] == (200, "")
    st, _, body = call(mp, "/stats?type=Counters&filter=^server\\.")
    assert "server.state" not in body and "server.static_unknown_fields: 0" in body
    assert call(mp, "/stats?filter=(")[::2] == (400, "Invalid re2 regex: missing ): (")


def test_prometheus_parses_with_fixed_tag(mp):
    st, h, body = call(mp, "/stats/prometheus")
    assert st == 200 and h["content-type"] == "text/plain; charset=UTF-8"
    fams = list(text_string_to_metric_families(body))
    assert all(s.labels.get("mesh") == "m1" for f in fams for s in f.samples)
    # label order is extraction order: prefix-less extractors, the fixed tag, then
    # extractors keyed by the first token (cluster.$.**), as Envoy prints it
    assert 'envoy_cluster_upstream_rq{envoy_response_code="200",mesh="m1",' \
           'envoy_cluster_name="up"} 1\n' in body
    assert 'envoy_server_state{mesh="m1"} 0\n' in body


def test_server_info_and_listeners(mp):
    st, _, body = call(mp, "/server_info")
    info = json.loads(body)
    assert info["state"] == "LIVE"
    co = info["command_line_options"]
    assert (co["drain_time"], co["drain_strategy"], co["stats_tag"]) == \
        ("45s", "Immediate", ["mesh:m1"])
    assert info["node"]["user_agent_build_version"]["version"] == \
        {"major_number": 1, "minor_number": 40, "patch": 0}
    st, _, body = call(mp, "/listeners?format=json")
    ls = json.loads(body)["listener_statuses"]
    assert [x["name"] for x in ls] == ["l"]
    assert ls[0]["local_address"]["socket_address"]["port_value"] == mp.port("l")
    assert call(mp, "/listeners")[2] == f"l::127.0.0.1:{mp.port('l')}\n"


def test_clusters(mp):
    st, _, body = call(mp, "/clusters")
    assert "up::observability_name::up\n" in body and "::rq_total::1\n" in body
    st, _, body = call(mp, "/clusters?format=json")
    cs = json.loads(body)["cluster_statuses"][0]
    assert cs["name"] == "up"
    stats = {s["name"]: s for s in cs["host_statuses"][0]["stats"]}
    assert stats["rq_total"]["value"] == "1" and stats["cx_active"]["type"] == "GAUGE"
    assert call(mp, "/clusters?filter=(")[::2] == (400, "Invalid re2 regex")
    assert call(mp, "/clusters?filter=^x&format=json")[2] == "{}\n"


def test_config_dump_include_eds(mp):
    st, _, body = call(mp, "/config_dump?resource=static_endpoint_configs&include_eds")
    cfg = json.loads(body)["configs"][0]["endpoint_config"]
    ep = cfg["endpoints"][0]["lb_endpoints"][0]
    assert (ep["health_status"], ep["load_balancing_weight"]) == ("HEALTHY", 1)
    assert cfg["policy"] == {"overprovisioning_factor": 140}
    assert call(mp, "/config_dump?resource=bogus")[::2] == \
        (404, "bogus not found in config dump")


def test_data_plane_listener_never_serves_admin():
    """Admin paths sent to a data-plane listener are proxied to its cluster like any path;
    only a cluster explicitly pointed at an admin port reaches an admin API (Envoy alike)."""
    with Upstream() as up:
        p = ProxyProcess("meshproxy", _boot(up.port)).start()
        try:
            port = p.port("l")
            r = request(port, "GET", "/stats?usedonly")
            assert r.status == 200 and r.body == b"GET /stats?usedonly"
            r = request(port, "POST", "/quitquitquit")
            assert r.body == b"POST /quitquitquit"
            r = request(port, "POST", "/healthcheck/fail")
            assert [q.target for q in up.wait_requests(3)] == \
                ["/stats?usedonly", "/quitquitquit", "/healthcheck/fail"]
            assert call(p, "/ready")[::2] == (200, "LIVE\n")
            assert p.proc.poll() is None
            # A second proxy whose cluster is the first one's admin port: that is the
            # operator's explicit choice (Istio's 15090 -> 15000 for /stats/prometheus).
            admin_port = int(p.admin.rsplit(":", 1)[1])
            q = ProxyProcess("meshproxy", _boot(admin_port)).start()
            try:
                r = request(q.port("l"), "GET", "/ready")
                assert (r.status, r.body) == (200, b"LIVE\n")
            finally:
                q.stop()
        finally:
            p.stop()


def test_state_changes_and_quit():
    with Upstream() as up:
        p = ProxyProcess("meshproxy", _boot(up.port)).start()
        try:
            request(p.port("l"), "GET", "/x")
            assert call(p, "/healthcheck/fail", "POST")[::2] == (200, "OK\n")
            assert call(p, "/ready")[::2] == (503, "DRAINING\n")
            assert json.loads(call(p, "/server_info")[2])["state"] == "DRAINING"
            assert call(p, "/healthcheck/ok", "POST")[::2] == (200, "OK\n")
            assert call(p, "/ready")[::2] == (200, "LIVE\n")
            q = "/stats?usedonly&filter=^http\\.ingress\\.downstream_rq_total$"
            assert call(p, q)[2] == "http.ingress.downstream_rq_total: 1\n"
            assert call(p, "/reset_counters", "POST")[::2] == (200, "OK\n")
            assert call(p, q)[2] == "http.ingress.downstream_rq_total: 0\n"
            # parameters may come as a form body when the URL has none
            st, _, body = call(p, "/logging", "POST", b"level=debug",
                               [("Content-Type", "application/x-www-form-urlencoded")])
            assert st == 200 and "  upstream: debug\n" in body
            st, _, body = call(p, "/logging?upstream=trace", "POST")
            assert "  upstream: trace\n" in body and "  router: debug\n" in body
            assert call(p, "/quitquitquit", "POST")[::2] == (200, "OK\n")
            assert p.proc.wait(10) == 0
        finally:
            p.stop()
