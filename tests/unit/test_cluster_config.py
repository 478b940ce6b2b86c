"""``envoy.config.cluster.v3.Cluster`` -> ``ClusterConfig``: defaults, validation that names the
field (messages as ``envoy --mode validate`` words them), and the runtime ``Cluster`` built from
it (hosts, membership stats, Envoy's stat names)."""

from __future__ import annotations

import pytest

from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.upstream.cluster import Cluster, code_stat_items
from meshproxy.upstream.cluster_config import build_cluster_config
from tests.support.proxies import cluster

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def build(c: dict):
    msg = parse_json_into(c, message_class("envoy.config.cluster.v3.Cluster")())
    return build_cluster_config(msg, "static_resources.clusters[0]")


def error(c: dict) -> str:
    with pytest.raises(ConfigError) as ei:
        build(c)
    return str(ei.value)


def test_defaults_are_envoys():
    cfg = build({"name": "c"})
    assert cfg.type == "STATIC" and cfg.lb_policy == "ROUND_ROBIN"
    assert cfg.connect_timeout == 5.0
    assert cfg.buffer_limit == 1024 * 1024
    assert cfg.idle_timeout == 3600.0 and cfg.max_requests_per_connection == 0
    th = cfg.thresholds
    assert (th.max_connections, th.max_pending_requests, th.max_requests, th.max_retries) == \
        (1024, 1024, 1024, 3)
    assert cfg.panic_threshold == 50.0 and cfg.lr_choice_count == 2
    assert cfg.dns_refresh_rate == 5.0 and cfg.dns_family == "AUTO"


def test_endpoints_weights_priorities_health():
    c = cluster("c", [("127.0.0.1", 1, 3), ("127.0.0.2", 2)])
    c["load_assignment"]["endpoints"].append({"priority": 1, "lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "::1", "port_value": 3}}},
         "health_status": "DEGRADED"}]})
    cfg = build(c)
    eps = [(e.address, e.weight, e.priority, e.health_status) for e in cfg.endpoints]
    assert eps == [(("127.0.0.1", 1), 3, 0, 0), (("127.0.0.2", 2), 1, 0, 0),
                   (("::1", 3), 1, 1, 5)]


def test_http_protocol_options_and_breakers():
    cfg = build(cluster("c", [("127.0.0.1", 1)], circuit_breakers={"thresholds": [
        {"max_connections": 1, "max_pending_requests": 2, "max_requests": 3},
        {"priority": "HIGH", "max_requests": 9, "track_remaining": True}]},
        typed_extension_protocol_options={HPO: {
            "@type": "type.googleapis.com/" + HPO,
            "common_http_protocol_options": {"idle_timeout": "2.5s",
                                             "max_requests_per_connection": 7},
            "explicit_http_config": {"http_protocol_options": {}}}},
        per_connection_buffer_limit_bytes=4096, connect_timeout="0.25s"))
    assert (cfg.thresholds.max_connections, cfg.thresholds.max_pending_requests,
            cfg.thresholds.max_requests) == (1, 2, 3)
    assert cfg.high_thresholds.max_requests == 9 and cfg.high_thresholds.track_remaining
    assert cfg.idle_timeout == 2.5 and cfg.max_requests_per_connection == 7
    assert cfg.buffer_limit == 4096 and cfg.connect_timeout == 0.25 and not cfg.http2


@pytest.mark.parametrize("extra,field,text", [
    ({"connect_timeout": "0s"}, "connect_timeout", "value must be greater than 0s"),
    ({"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"choice_count": 1}},
     "least_request_lb_config.choice_count", "value must be greater than or equal to 2"),
    ({"common_lb_config": {"healthy_panic_threshold": {"value": 150}}},
     "common_lb_config.healthy_panic_threshold.value", "value must be inside range [0, 100]"),
])
def test_field_validation(extra, field, text):
    msg = error(cluster("c", [("127.0.0.1", 1)], **extra))
    assert f"static_resources.clusters[0].{field}" in msg and text in msg


def test_static_needs_ip_and_logical_dns_one_endpoint():
    msg = error(cluster("c", [("localhost", 1)]))
    assert "malformed IP address: localhost" in msg and "STRICT_DNS" in msg
    msg = error(cluster("c", [("localhost", 1), ("localhost", 2)], type_="LOGICAL_DNS"))
    assert "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single " \
           "lb_endpoint" in msg
    c = cluster("c", [("127.0.0.1", 1)])
    c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] = 0
    assert "load_balancing_weight: value must be greater than or equal to 1" in error(c)
    assert build(cluster("c", [("localhost", 1)], type_="STRICT_DNS",
                         dns_lookup_family="V4_ONLY")).dns_family == "V4_ONLY"


def test_runtime_cluster_membership_and_stats():
    c = cluster("c", [("127.0.0.1", 1), ("127.0.0.2", 1)])
    lbs = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    lbs[1]["health_status"] = "DEGRADED"
    c["load_assignment"]["endpoints"].append({"priority": 1, "lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.3", "port_value": 1}}},
         "health_status": "DRAINING"}]})
    cl = Cluster(build(c), loop=None, pool_factory=None)
    s = cl.stats
    assert (s.membership_total, s.membership_healthy, s.membership_degraded,
            s.membership_excluded) == (3, 1, 1, 1)
    assert s.membership_change == 2           # one per priority level, as Envoy counts
    assert s.max_host_weight == 0             # only dynamic (DNS/EDS) clusters set it
    names = dict((n, v) for n, _, v, _ in cl.stat_items("cluster.c."))
    assert names["cluster.c.default.total_match_count"] == 3
    assert names["cluster.c.circuit_breakers.high.rq_open"] == 0
    assert not any("upstream_rq_2xx" in n for n in names)   # created on first use


def test_code_stats_names():
    cl = Cluster(build(cluster("c", [("127.0.0.1", 1)])), loop=None, pool_factory=None)
    for code, internal in ((200, False), (200, True), (503, False), (100, False), (999, False)):
        cl.charge(code, internal)
    got = {n: v for n, _, v, _ in cl.stat_items("cluster.c.") if "upstream_rq" in n}
    assert got == {
        "cluster.c.upstream_rq_200": 2, "cluster.c.upstream_rq_2xx": 2,
        "cluster.c.upstream_rq_503": 1, "cluster.c.upstream_rq_5xx": 1,
        "cluster.c.upstream_rq_100": 1, "cluster.c.upstream_rq_1xx": 1,
        "cluster.c.upstream_rq_unknown": 1,
        "cluster.c.external.upstream_rq_200": 1, "cluster.c.external.upstream_rq_2xx": 1,
        "cluster.c.external.upstream_rq_503": 1, "cluster.c.external.upstream_rq_5xx": 1,
        "cluster.c.external.upstream_rq_100": 1, "cluster.c.external.upstream_rq_1xx": 1,
        "cluster.c.external.upstream_rq_unknown": 1,
        "cluster.c.external.upstream_rq_completed": 4,
        "cluster.c.internal.upstream_rq_200": 1, "cluster.c.internal.upstream_rq_2xx": 1,
        "cluster.c.internal.upstream_rq_completed": 1,
    }
    assert cl.stats.upstream_rq_completed == 5
    assert code_stat_items("", {2000: 1}) == {"upstream_rq_unknown": 1}


def test_hosts_kept_across_updates_and_removed_hosts_drained():
    class Pool:
        def __init__(self, host, cluster):
            self.drained = False

        def drain(self):
            self.drained = True
    c = build(cluster("c", [("localhost", 1)], type_="STRICT_DNS"))
    cl = Cluster(c, loop=None, pool_factory=Pool)
    from meshproxy.upstream.host import Host
    a, b = Host(cl, ("127.0.0.1", 1)), Host(cl, ("127.0.0.2", 1))
    cl.set_hosts([a, b])
    pa, pb = cl.pool_for(a), cl.pool_for(b)
    cl.set_hosts([Host(cl, ("127.0.0.1", 1)), Host(cl, ("127.0.0.3", 1))])
    assert cl.hosts[0] is a and cl.hosts[0].pool is pa and not pa.drained
    assert pb.drained
    assert cl.stats.membership_change == 2 and cl.stats.max_host_weight == 1
    names = {n: v for n, _, v, _ in cl.stat_items("cluster.c.")}
    assert names["cluster.c.default.total_match_count"] == 3
