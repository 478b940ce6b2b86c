"""Cluster-level wiring of outlier detection and hashing load balancers: config translation
with the field named in errors (messages as ``envoy --mode validate`` words them), the detector
following the host set, ejections leaving the load balancer, Envoy's update merge window, and
the route hash policy."""

from __future__ import annotations

import types

import pytest

from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.http.headers import RequestHeaders
from meshproxy.upstream.cluster import Cluster
from meshproxy.upstream.cluster_config import build_cluster_config
from meshproxy.upstream.hash_policy import build_hash_policy, cookie_value
from meshproxy.upstream.host import Host
from meshproxy.upstream.manager import ClusterManagerStats
from tests.support.clock import FakeClock
from tests.support.proxies import cluster

import xxhash

PATH = "static_resources.clusters[0]"


def build(c: dict):
    msg = parse_json_into(c, message_class("envoy.config.cluster.v3.Cluster")())
    return build_cluster_config(msg, PATH)


def error(c: dict) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        build(c)
    return ei.value


EPS = [("127.0.0.1", 90), ("127.0.0.1", 91), ("127.0.0.1", 92)]


# ---------------------------------------------------------------------- config


def test_ring_hash_and_maglev_config():
    cfg = build(cluster("c", EPS, lb_policy="RING_HASH"))
    assert cfg.hash_lb.kind == "RING_HASH"
    assert (cfg.hash_lb.min_ring_size, cfg.hash_lb.max_ring_size) == (1024, 8388608)
    ring = {"minimum_ring_size": 12, "maximum_ring_size": 64, "hash_function": "MURMUR_HASH_2"}
    chc = {"consistent_hashing_lb_config": {"use_hostname_for_hashing": True}}
    cfg = build(cluster("c", EPS, type_="STRICT_DNS", lb_policy="RING_HASH",
                        ring_hash_lb_config=ring, common_lb_config=chc))
    assert (cfg.hash_lb.min_ring_size, cfg.hash_lb.max_ring_size, cfg.hash_lb.murmur,
            cfg.hash_lb.use_hostname) == (12, 64, True, True)
    cfg = build(cluster("c", EPS, lb_policy="MAGLEV"))
    assert cfg.hash_lb.kind == "MAGLEV" and cfg.hash_lb.table_size == 65537
    assert build(cluster("c", EPS, lb_policy="MAGLEV",
                         maglev_lb_config={"table_size": 7})).hash_lb.table_size == 7
    assert build(cluster("c", EPS)).hash_lb is None


@pytest.mark.parametrize("extra,path,msg", [
    ({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 10,
                                                        "maximum_ring_size": 5}},
     "ring_hash_lb_config", "ring hash: minimum_ring_size (10) > maximum_ring_size (5)"),
    ({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 8388609}},
     "ring_hash_lb_config.minimum_ring_size", "value must be less than or equal to 8388608"),
    ({"ring_hash_lb_config": {"maximum_ring_size": 8388609}},
     "ring_hash_lb_config.maximum_ring_size", "value must be less than or equal to 8388608"),
    ({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 100}},
     "maglev_lb_config.table_size", "The table size of maglev must be prime number"),
    # Envoy 1.40 crashes (SIGFPE) on table_size 1; refused here.
    ({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 1}},
     "maglev_lb_config.table_size", "must be prime number"),
    ({"maglev_lb_config": {"table_size": 5000012}},
     "maglev_lb_config.table_size", "value must be less than or equal to 5000011"),
    ({"lb_policy": "MAGLEV", "common_lb_config": {"consistent_hashing_lb_config": {
        "hash_balance_factor": 99}}},
     "common_lb_config.consistent_hashing_lb_config.hash_balance_factor",
     "value must be greater than or equal to 100"),
    ({"lb_policy": "RING_HASH", "common_lb_config": {"consistent_hashing_lb_config": {
        "hash_balance_factor": 150}}},
     "common_lb_config.consistent_hashing_lb_config.hash_balance_factor", "not supported"),
    ({"lb_policy": "RING_HASH", "common_lb_config": {"consistent_hashing_lb_config": {
        "use_hostname_for_hashing": True}}},
     "common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing",
     "Cannot use hostname for consistent hashing loadbalancing for cluster of type: "
     "'envoy.cluster.static'"),
    ({"outlier_detection": {"max_ejection_percent": 101}},
     "outlier_detection.max_ejection_percent", "value must be less than or equal to 100"),
    ({"outlier_detection": {"interval": "0s"}}, "outlier_detection.interval",
     "value must be greater than 0s"),
    ({"outlier_detection": {"base_ejection_time": "40s", "max_ejection_time": "30s"}},
     "outlier_detection.max_ejection_time",
     "outlier detector's max_ejection_time cannot be smaller than base_ejection_time"),
    ({"common_lb_config": {"update_merge_window": "-1s"}},
     "common_lb_config.update_merge_window", "positive duration"),
])
def test_errors_name_the_field(extra, path, msg):
    e = error(cluster("c", EPS, **extra))
    assert e.path == f"{PATH}.{path}"
    assert msg in e.message


def test_envoy_accepts_what_it_accepts():
    # Each of these passes `envoy --mode validate` (checked while writing this).
    build(cluster("c", EPS, lb_policy="MAGLEV", maglev_lb_config={"table_size": 2}))
    build(cluster("c", EPS, lb_policy="RING_HASH", ring_hash_lb_config={"minimum_ring_size": 0}))
    build(cluster("c", EPS, lb_policy="ROUND_ROBIN", ring_hash_lb_config={}))
    build(cluster("c", EPS, outlier_detection={"consecutive_5xx": 0,
                                               "base_ejection_time": "400s"}))


# ---------------------------------------------------------------------- runtime


def make_cluster(clock, **extra):
    cfg = build(cluster("c", EPS, **extra))
    c = Cluster(cfg, clock, lambda host, cl: None)
    c.cm_stats = ClusterManagerStats()
    return c


def test_cluster_without_outlier_detection_leaves_hosts_unmonitored():
    c = make_cluster(FakeClock())
    assert c.outlier is None and all(h.outlier is None for h in c.hosts)
    assert c.extra_stat_blocks() == []


def test_detector_follows_the_host_set():
    clock = FakeClock()
    c = make_cluster(clock, outlier_detection={"max_ejection_percent": 100})
    assert [h.outlier is not None for h in c.hosts] == [True, True, True]
    assert [p for p, _ in c.extra_stat_blocks()] == ["outlier_detection."]
    h0 = c.hosts[0]
    for _ in range(5):
        h0.outlier.put_http_status(500)
    assert h0.outlier_ejected and c.outlier.stats.ejections_active == 1
    keep = [Host(c, ("127.0.0.1", 91)), Host(c, ("127.0.0.1", 93))]
    c.set_hosts(keep)
    assert h0.outlier is None and c.outlier.stats.ejections_active == 0
    assert c.hosts[0].outlier is not None and c.hosts[1].outlier is not None
    assert set(c.outlier.monitors) == set(c.hosts)


def test_ejection_leaves_the_load_balancer_and_merge_window_delays_the_return():
    clock = FakeClock(now=1000.0)
    c = make_cluster(clock, outlier_detection={
        "max_ejection_percent": 50, "interval": "0.25s", "base_ejection_time": "0.5s"})
    h0 = c.hosts[0]
    for _ in range(5):
        h0.outlier.put_http_status(503)
    # The first update in a window goes out at once (Envoy: update_out_of_merge_window).
    assert {c.choose_host() for _ in range(30)} == set(c.hosts[1:])
    assert c.stats.membership_healthy == 2
    cm = c.cm_stats
    assert (cm.cluster_updated, cm.update_out_of_merge_window) == (1, 1)
    clock.advance(0.5)              # ticks at .25 and .5: back after 0.5 s ...
    assert not h0.outlier_ejected and c.stats.membership_healthy == 3
    # ... but within 1 s of the last update: merged, delivered 1 s later.
    assert h0 not in {c.choose_host() for _ in range(30)}
    clock.advance(0.75)
    assert h0 not in {c.choose_host() for _ in range(30)}
    clock.advance(0.25)             # 1001.5: the merged update is applied
    assert h0 in {c.choose_host() for _ in range(30)}
    assert (cm.cluster_updated, cm.cluster_updated_via_merge) == (1, 1)


def test_merge_window_zero_applies_every_update_at_once():
    clock = FakeClock(now=1000.0)
    c = make_cluster(clock, outlier_detection={
        "max_ejection_percent": 50, "interval": "0.25s", "base_ejection_time": "0.5s"},
        common_lb_config={"update_merge_window": "0s"})
    h0 = c.hosts[0]
    for _ in range(5):
        h0.outlier.put_http_status(503)
    assert h0 not in {c.choose_host() for _ in range(30)}
    clock.advance(0.5)
    assert h0 in {c.choose_host() for _ in range(30)}
    assert (c.cm_stats.cluster_updated, c.cm_stats.update_out_of_merge_window) == (2, 0)


def test_close_stops_the_detector_timer():
    clock = FakeClock()
    c = make_cluster(clock, outlier_detection={})
    assert clock.pending() == 1
    c.close()
    assert clock.pending() == 0


def test_ring_hash_cluster_registers_its_stats():
    c = make_cluster(FakeClock(), lb_policy="RING_HASH")
    (prefix, block), = c.extra_stat_blocks()
    assert prefix == "ring_hash_lb."
    # 3 hosts of 1/3: ceil(1024 / 3) = 342 entries each, 1026 in all (Envoy 1.40 reports the
    # same for this cluster).
    assert {n: v for n, _, v, _ in block.items()} == {
        "max_hashes_per_host": 342, "min_hashes_per_host": 342, "size": 1026}


# ---------------------------------------------------------------------- hash policy


def hp(*policies):
    from envoy.config.route.v3 import route_components_pb2
    from google.protobuf import json_format
    msgs = [json_format.ParseDict(p, route_components_pb2.RouteAction.HashPolicy())
            for p in policies]
    return build_hash_policy(msgs, "route")


def stream(headers=(), path=b"/", remote=("10.1.2.3", 5555), local=("127.0.0.1", 80),
           use_remote_address=True, xff_hops=0):
    req = RequestHeaders(b"GET", path, b"example.com",
                         [(n.encode(), v.encode()) for n, v in headers])
    conn = types.SimpleNamespace(remote_address=remote, local_address=local)
    return types.SimpleNamespace(
        request=req, hcm=types.SimpleNamespace(conn=conn),
        config=types.SimpleNamespace(use_remote_address=use_remote_address,
                                     xff_num_trusted_hops=xff_hops))


X = xxhash.xxh64_intdigest
M = (1 << 64) - 1


def rotl(h):
    return ((h << 1) | (h >> 63)) & M


def test_hash_policies_hash_like_envoy():
    assert hp() is None
    p = hp({"header": {"header_name": "X-Key"}})
    assert p.generate(stream([("x-key", "abc")])) == X(b"abc")
    assert p.generate(stream()) is None
    # Several values: sorted, each hashed with the previous hash as seed.
    assert p.generate(stream([("x-key", "b"), ("x-key", "a")])) == X(b"b", X(b"a"))
    # Policies fold in as rotl(h, 1) ^ new; a terminal one that hashed stops the walk.
    p = hp({"header": {"header_name": "a"}}, {"query_parameter": {"name": "q"}})
    s = stream([("a", "1")], path=b"/x?z=0&q=v&q=w")
    assert p.generate(s) == rotl(X(b"1")) ^ X(b"v")
    p = hp({"header": {"header_name": "a"}, "terminal": True}, {"query_parameter": {"name": "q"}})
    assert p.generate(s) == X(b"1")
    assert p.generate(stream(path=b"/?q=v")) == X(b"v")     # terminal without a hash: go on
    p = hp({"connection_properties": {"source_ip": True}})
    assert p.generate(stream()) == X(b"10.1.2.3")
    xff = stream([("x-forwarded-for", "192.0.2.7, 10.0.0.1")], use_remote_address=False)
    assert p.generate(xff) == X(b"10.0.0.1")
    xff.config.xff_num_trusted_hops = 1
    assert p.generate(xff) == X(b"192.0.2.7")
    p = hp({"header": {"header_name": "x-key", "regex_rewrite": {
        "pattern": {"regex": "^(\\w+)-\\d+$"}, "substitution": "\\1"}}})
    assert p.generate(stream([("x-key", "user-42")])) == X(b"user")
    assert hp({"filter_state": {"key": "k"}}).generate(stream()) is None


def test_cookie_hash():
    p = hp({"cookie": {"name": "sid"}})
    assert p.generate(stream([("cookie", "a=1; sid=\"xyz\"; b=2")])) == X(b"xyz")
    assert p.generate(stream([("cookie", "a=1"), ("cookie", "sid=q")])) == X(b"q")
    assert p.generate(stream([("cookie", "sidx=1")])) is None
    # With a ttl and no cookie, Envoy hashes the cookie it generates:
    # hex(xxHash64(remote address + local address)).
    p = hp({"cookie": {"name": "sid", "ttl": "10s"}})
    value = b"%016x" % X(b"10.1.2.3:5555127.0.0.1:80")
    assert p.generate(stream()) == X(value)
    req = RequestHeaders(b"GET", b"/", b"h", [(b"cookie", b" sid=v;x")])
    assert cookie_value(req, b"sid") == b"v"


@pytest.mark.parametrize("policy,path,msg", [
    ({}, "route.hash_policy[0]", "value is required"),
    ({"header": {"header_name": ""}}, "route.hash_policy[0].header.header_name",
     "at least 1 characters"),
    ({"cookie": {"name": ""}}, "route.hash_policy[0].cookie.name", "at least 1 characters"),
    ({"query_parameter": {"name": ""}}, "route.hash_policy[0].query_parameter.name",
     "at least 1 characters"),
])
def test_hash_policy_errors(policy, path, msg):
    with pytest.raises(ConfigError) as e:
        hp(policy)
    assert e.value.path == path and msg in e.value.message


# ---------------------------------------------------------------------- load_balancing_policy

TYPED = "type.googleapis.com/envoy.extensions.load_balancing_policies."


def policies(*entries):
    return {"load_balancing_policy": {"policies": [
        {"typed_extension_config": {"name": name, "typed_config": {"@type": url, **cfg}}}
        for name, url, cfg in entries]}}


def test_typed_load_balancing_policies():
    cfg = build(cluster("c", EPS, lb_policy="ROUND_ROBIN", **policies(
        ("r", TYPED + "ring_hash.v3.RingHash", {"minimum_ring_size": 64,
                                                "hash_function": "MURMUR_HASH_2"}))))
    assert cfg.lb_policy == "RING_HASH"      # the typed policy wins over lb_policy
    assert (cfg.hash_lb.min_ring_size, cfg.hash_lb.murmur) == (64, True)
    cfg = build(cluster("c", EPS, **policies(("m", TYPED + "maglev.v3.Maglev", {
        "table_size": 7, "consistent_hashing_lb_config": {
            "hash_policy": [{"header": {"header_name": "x-user"}}]}}))))
    assert cfg.hash_lb.kind == "MAGLEV" and cfg.hash_lb.table_size == 7
    assert cfg.hash_lb.hash_policy is not None
    cfg = build(cluster("c", EPS, **policies(("l", TYPED + "least_request.v3.LeastRequest",
                                              {"choice_count": 3}))))
    assert (cfg.lb_policy, cfg.lr_choice_count) == ("LEAST_REQUEST", 3)
    # A type that is no load balancer is skipped, as Envoy skips it.
    cfg = build(cluster("c", EPS, **policies(
        ("x", "type.googleapis.com/google.protobuf.Struct", {"value": {"a": 1}}),
        ("rr", TYPED + "round_robin.v3.RoundRobin", {}))))
    assert cfg.lb_policy == "ROUND_ROBIN"


@pytest.mark.parametrize("entries,path,msg", [
    ((), "load_balancing_policy", "didn't find a registered load balancer factory"),
    ((("w", TYPED + "client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin", {}),
      ("rr", TYPED + "round_robin.v3.RoundRobin", {})),
     "load_balancing_policy.policies[0].typed_extension_config.typed_config",
     "is not supported by meshproxy yet"),
    ((("r", TYPED + "ring_hash.v3.RingHash", {"minimum_ring_size": 10,
                                              "maximum_ring_size": 5}),),
     "load_balancing_policy.policies[0].typed_extension_config.typed_config",
     "ring hash: minimum_ring_size (10) > maximum_ring_size (5)"),
    ((("m", TYPED + "maglev.v3.Maglev", {"table_size": 100}),),
     "load_balancing_policy.policies[0].typed_extension_config.typed_config.table_size",
     "must be prime number"),
    ((("m", TYPED + "maglev.v3.Maglev", {"consistent_hashing_lb_config": {
        "hash_policy": [{}]}}),),
     "load_balancing_policy.policies[0].typed_extension_config.typed_config."
     "consistent_hashing_lb_config.hash_policy[0]", "value is required"),
])
def test_typed_policy_errors(entries, path, msg):
    e = error(cluster("c", EPS, **policies(*entries)))
    assert e.path == f"{PATH}.{path}" and msg in e.message


def test_lb_hash_policy_comes_before_the_routes():
    import xxhash
    cfg = build(cluster("c", EPS, **policies(("m", TYPED + "maglev.v3.Maglev", {
        "consistent_hashing_lb_config": {"hash_policy": [{"header": {"header_name": "a"}}]}}))))
    c = Cluster(cfg, FakeClock(), lambda host, cl: None)
    s = stream([("a", "1"), ("b", "2")])
    s.route = types.SimpleNamespace(action=types.SimpleNamespace(
        hash_policy=hp({"header": {"header_name": "b"}})))
    s.router = types.SimpleNamespace(retry=None)
    table = c.lb.tables[0][0]
    assert c.choose_host(s) is table.choose(xxhash.xxh64_intdigest(b"1"))


def test_envoy_gateway_passive_health_checks_translate():
    """Envoy Gateway's translator output (real-configs): outlier detection and the typed
    least_request policy come through with their values."""
    import os

    import yaml
    from tests.support.proxies import REAL_CONFIGS
    f = os.path.join(REAL_CONFIGS, "envoyproxy_gateway__internal__xds__translator__testdata__"
                                   "out__xds-ir__passive-failure-percentage.clusters.yaml")
    if not os.path.exists(f):
        pytest.skip("real configs not present")
    (c,) = yaml.safe_load(open(f))
    cfg = build(c)
    assert cfg.lb_policy == "LEAST_REQUEST"
    od = cfg.outlier
    assert (od.interval_ms, od.base_ejection_time_ms, od.max_ejection_time_ms,
            od.max_ejection_percent, od.always_eject_one_host, od.consecutive_5xx,
            od.consecutive_gateway_failure, od.enforcing_consecutive_gateway_failure,
            od.failure_percentage_threshold, od.enforcing_failure_percentage) == \
        (5000, 30000, 300000, 50, True, 5, 0, 100, 90, 100)
