"""DNS clusters and load balancing through a running meshproxy.

STRICT_DNS / LOGICAL_DNS resolve ``localhost`` the way Envoy 1.40 (c-ares) does: AUTO prefers
IPv6 and so gives ``[::1]``, V4_ONLY ``127.0.0.1``, ALL both. Re-resolution every
``dns_refresh_rate`` counts ``update_attempt``/``update_success``/``update_no_rebuild``; a name
that does not exist is an empty, successful answer (checked with a fake resolver: no DNS query
leaves the machine). Weighted round robin, health status and
priorities pick hosts as the pure tests in tests/unit/test_lb.py say.
"""

from __future__ import annotations

import asyncio
import collections
import socket

import pytest

from meshproxy.upstream.dns import resolve
from tests.integration.test_upstream_servers import wait_for
from tests.support.client import KeepAlive
from tests.support.proxies import ProxyProcess, bootstrap, cluster, hcm, listener
from tests.support.upstream import Reply, Upstream


def handler(req):
    return Reply(200, body=b"ok")


@pytest.fixture(scope="module")
def env():
    ups = [Upstream(handler).__enter__() for _ in range(3)]
    v6 = Upstream(handler, host="::1").__enter__()
    ports = [u.port for u in ups]
    health = cluster("health", [("127.0.0.1", p) for p in ports])
    for lbe, st in zip(health["load_assignment"]["endpoints"][0]["lb_endpoints"],
                       ("UNHEALTHY", "DRAINING", "HEALTHY")):
        lbe["health_status"] = st
    prio = cluster("prio", [])
    prio["load_assignment"]["endpoints"] = [
        {"priority": 0, "lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": ports[0]}}},
             "health_status": "UNHEALTHY"}]},
        {"priority": 1, "lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": ports[1]}}}}]}]
    clusters = [
        cluster("v4", [("localhost", ports[0])], type_="STRICT_DNS", dns_lookup_family="V4_ONLY",
                dns_refresh_rate="0.1s"),
        cluster("auto", [("localhost", v6.port)], type_="STRICT_DNS"),
        cluster("all", [("localhost", ports[0])], type_="STRICT_DNS", dns_lookup_family="ALL"),
        cluster("logical", [("localhost", v6.port)], type_="LOGICAL_DNS",
                dns_refresh_rate="0.1s"),
        cluster("wrr", [("127.0.0.1", p, w) for p, w in zip(ports, (1, 2, 3))]),
        cluster("lr", [("127.0.0.1", p, w) for p, w in zip(ports, (1, 2, 3))],
                lb_policy="LEAST_REQUEST"),
        health, prio,
    ]
    routes = [{"match": {"prefix": f"/{c['name']}/"}, "route": {"cluster": c["name"]}}
              for c in clusters]
    p = ProxyProcess("meshproxy", bootstrap([listener("l", hcm(routes))], clusters)).start()
    try:
        yield p, ups, v6
    finally:
        p.stop()
        for u in ups + [v6]:
            u.__exit__()


def hosts_of(p, name):
    return [line[len(name) + 2:-len("::hostname::localhost")]
            for line in p.get_admin("/clusters")[1].splitlines()
            if line.startswith(name + "::") and line.endswith("::hostname::localhost")]


def spread(p, ups, path, n):
    for u in ups:
        u.requests.clear()
    ka = KeepAlive(p.port("l"))
    statuses = collections.Counter(ka.request(path=path).status for _ in range(n))
    ka.close()
    return statuses, [len(u.requests) for u in ups]


def test_dns_families_for_localhost(env):
    p, ups, v6 = env
    assert hosts_of(p, "v4") == [f"127.0.0.1:{ups[0].port}"]
    assert hosts_of(p, "auto") == [f"[::1]:{v6.port}"]
    assert hosts_of(p, "all") == [f"127.0.0.1:{ups[0].port}", f"[::1]:{ups[0].port}"]
    assert hosts_of(p, "logical") == [f"[::1]:{v6.port}"]
    v6.requests.clear()
    ka = KeepAlive(p.port("l"))
    assert ka.request(path="/auto/x").status == 200
    assert ka.request(path="/logical/x").status == 200
    ka.close()
    assert len(v6.requests) == 2


def test_dns_refresh_and_missing_names(env):
    p, _, _ = env
    assert wait_for(lambda: p.stat("cluster.v4.update_attempt") >= 3, timeout=5)
    st = p.stats("^cluster\\.(v4|logical)\\.(update|membership_change|max_host)")
    assert st["cluster.v4.update_success"] >= 3 and st["cluster.v4.update_failure"] == 0
    assert st["cluster.v4.membership_change"] == 1       # same answer: no rebuild
    assert st["cluster.v4.update_no_rebuild"] >= 2 and st["cluster.v4.max_host_weight"] == 1
    assert st["cluster.logical.max_host_weight"] == 0


class FakeResolverLoop:
    """``getaddrinfo`` answers from a table, so no query leaves the machine."""

    def __init__(self, answers):
        self.answers = answers      # (name, family) -> [addresses] or an exception

    async def getaddrinfo(self, name, port, family=0, type=0):
        a = self.answers.get((name, family), socket.gaierror(socket.EAI_NONAME, "unknown"))
        if isinstance(a, Exception):
            raise a
        return [(family, type, 6, "", (addr, port)) for addr in a]


@pytest.mark.parametrize("family,expected", [
    ("AUTO", ["10.0.0.1"]),                     # no AAAA answer: fall back to A
    ("V4_PREFERRED", ["10.0.0.1"]),
    ("V6_ONLY", []),
    ("ALL", ["10.0.0.1"]),
])
def test_resolve_families_without_network(family, expected):
    loop = FakeResolverLoop({("svc", socket.AF_INET): ["10.0.0.1", "10.0.0.1"]})
    assert asyncio.run(resolve(loop, "svc", 80, family)) == expected


def test_resolve_orders_and_failures():
    both = FakeResolverLoop({("svc", socket.AF_INET): ["10.0.0.1"],
                             ("svc", socket.AF_INET6): ["fd00::1"]})
    assert asyncio.run(resolve(both, "svc", 80, "AUTO")) == ["fd00::1"]
    assert asyncio.run(resolve(both, "svc", 80, "V4_PREFERRED")) == ["10.0.0.1"]
    assert asyncio.run(resolve(both, "svc", 80, "ALL")) == ["10.0.0.1", "fd00::1"]
    # NXDOMAIN is an empty answer (Envoy: update_success with no hosts); a resolver that
    # cannot answer is a failure.
    assert asyncio.run(resolve(FakeResolverLoop({}), "nx", 80, "AUTO")) == []
    down = FakeResolverLoop({("x", socket.AF_INET): socket.gaierror(socket.EAI_AGAIN, "again"),
                             ("x", socket.AF_INET6): socket.gaierror(socket.EAI_AGAIN, "again")})
    with pytest.raises(OSError):
        asyncio.run(resolve(down, "x", 80, "AUTO"))
    assert asyncio.run(resolve(FakeResolverLoop({}), "LocalHost.", 80, "V6_ONLY")) == ["::1"]


def test_weighted_round_robin_and_least_request(env):
    p, ups, _ = env
    assert spread(p, ups, "/wrr/x", 60) == ({200: 60}, [10, 20, 30])
    # Sequential requests leave no active requests: LEAST_REQUEST with unequal weights is then
    # a weighted schedule too (Envoy's EDF with weight / (active + 1)).
    assert spread(p, ups, "/lr/x", 60) == ({200: 60}, [10, 20, 30])


def test_health_status_and_priorities(env):
    p, ups, _ = env
    # 1 healthy, 1 unhealthy, 1 draining (excluded): 50% healthy, no panic.
    assert spread(p, ups, "/health/x", 20) == ({200: 20}, [0, 0, 20])
    # P0's only host is unhealthy: all of the load spills to P1.
    assert spread(p, ups, "/prio/x", 20) == ({200: 20}, [0, 20, 0])
    st = p.stats("^cluster\\.(health|prio)\\.(membership|lb_healthy_panic)")
    assert st["cluster.health.membership_excluded"] == 1
    assert st["cluster.health.membership_healthy"] == 1
    assert st["cluster.health.lb_healthy_panic"] == 0
    assert st["cluster.prio.membership_change"] == 2
    flags = [line.rsplit("::", 1)[1] for line in p.get_admin("/clusters")[1].splitlines()
             if line.startswith("health::") and "::health_flags::" in line]
    assert flags == ["/failed_eds_health", "/eds_status_draining", "healthy"]
