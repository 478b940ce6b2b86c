"""Outlier detection and consistent hashing through a running meshproxy and real loopback
upstreams that fail on command. No fixed sleeps: every wait polls with a deadline. Envoy 1.40's
answers to the same scripts are compared in tests/oracle/test_outlier_oracle.py and
tests/oracle/test_hash_lb_oracle.py."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.integration.test_upstream_servers import wait_for
from tests.support.client import KeepAlive
from tests.support.proxies import ProxyProcess, bootstrap, cluster, hcm, listener
from tests.support.upstream import Reply, Upstream

NO_MERGE = {"common_lb_config": {"update_merge_window": "0s"}}


class Flaky:
    """An upstream answering its name, or 503 while ``failing`` is set."""

    def __init__(self, name: str):
        self.name = name
        self.failing = threading.Event()
        self.server = Upstream(self.handle)

    def handle(self, req):
        if self.failing.is_set():
            return Reply(503, body=b"failing " + self.name.encode())
        return Reply(200, body=self.name.encode())


@pytest.fixture(scope="module")
def env():
    ups = {n: Flaky(n) for n in ("a", "b", "c", "r0", "r1", "r2")}
    for u in ups.values():
        u.server.start()
    # A bound socket that does not listen refuses connections and, unlike a closed one,
    # keeps its port from being handed to a proxy's own listener meanwhile.
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    dead = hold.getsockname()[1]

    def addrs(*names, extra=()):
        return [("127.0.0.1", ups[n].server.port) for n in names] + list(extra)
    fast = {"interval": "0.1s", "base_ejection_time": "0.3s", "max_ejection_percent": 50}
    clusters = [
        cluster("od", addrs("a", "b", "c"), outlier_detection=fast, **NO_MERGE),
        cluster("cf", addrs("b", "c", extra=[("127.0.0.1", dead)]),
                outlier_detection={**fast, "base_ejection_time": "30s"}, **NO_MERGE),
        cluster("split", addrs("b", "c", extra=[("127.0.0.1", dead)]), outlier_detection={
            **fast, "base_ejection_time": "30s", "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 3}, **NO_MERGE),
        cluster("ring", addrs("r0", "r1", "r2"), lb_policy="RING_HASH",
                outlier_detection=fast, **NO_MERGE),
    ]
    hash_policy = [{"header": {"header_name": "x-user"}}]
    routes = [{"match": {"prefix": "/od"}, "route": {"cluster": "od"}},
              {"match": {"prefix": "/cf"}, "route": {"cluster": "cf"}},
              {"match": {"prefix": "/split"}, "route": {"cluster": "split"}},
              {"match": {"prefix": "/ring"}, "route": {"cluster": "ring",
                                                       "hash_policy": hash_policy}}]
    p = ProxyProcess("meshproxy", bootstrap([listener("l", hcm(routes))], clusters)).start()
    try:
        yield p, ups
    finally:
        p.stop()
        hold.close()
        for u in ups.values():
            u.server.stop()


def od_stats(p, name):
    pre = f"cluster.{name}.outlier_detection."
    return {k[len(pre):]: v for k, v in p.stats(f"^cluster\\.{name}\\.").items()
            if k.startswith(pre) and v}


def until_failures(ka, path, n, limit=40, headers=None):
    """Requests until ``n`` answers were 5xx; returns every (status, body)."""
    out = []
    while sum(1 for s, _ in out if s >= 500) < n:
        assert len(out) < limit, out
        r = ka.request(path=path, headers=headers)
        out.append((r.status, r.body))
    return out


def test_host_failing_with_503_is_ejected_and_returns(env):
    p, ups = env
    ka = KeepAlive(p.port("l"))
    ups["a"].failing.set()
    try:
        seen = until_failures(ka, "/od", 5)
        assert [b for s, b in seen if s == 503] == [b"failing a"] * 5
        # Ejected after the fifth 503: the others take all the traffic.
        after = [ka.request(path="/od") for _ in range(20)]
        assert {(r.status, r.body) for r in after} == {(200, b"b"), (200, b"c")}
        assert od_stats(p, "od") == {
            "ejections_active": 1, "ejections_consecutive_5xx": 1,
            "ejections_detected_consecutive_5xx": 1,
            "ejections_detected_consecutive_gateway_failure": 1,
            "ejections_enforced_consecutive_5xx": 1, "ejections_enforced_total": 1,
            "ejections_total": 1}
        assert p.stat("cluster.od.membership_healthy") == 2
    finally:
        ups["a"].failing.clear()
    # Back after base_ejection_time (0.3 s, checked every 0.1 s).
    assert wait_for(lambda: ka.request(path="/od").body == b"a", timeout=5)
    assert od_stats(p, "od").get("ejections_active", 0) == 0
    assert p.stat("cluster.od.membership_healthy") == 3
    ka.close()


def test_connect_failures_count_as_503_without_split(env):
    p, _ = env
    ka = KeepAlive(p.port("l"))
    seen = until_failures(ka, "/cf", 5)
    assert [s for s, _ in seen if s >= 500] == [503] * 5
    after = [ka.request(path="/cf") for _ in range(20)]
    assert {(r.status, r.body) for r in after} == {(200, b"b"), (200, b"c")}
    st = od_stats(p, "cf")
    assert st["ejections_enforced_consecutive_5xx"] == 1 and st["ejections_active"] == 1
    ka.close()


def test_split_local_origin_failures_have_their_own_threshold(env):
    p, _ = env
    ka = KeepAlive(p.port("l"))
    seen = until_failures(ka, "/split", 3)
    assert [s for s, _ in seen if s >= 500] == [503] * 3
    after = [ka.request(path="/split") for _ in range(20)]
    assert all(r.status == 200 for r in after)
    assert od_stats(p, "split") == {
        "ejections_active": 1, "ejections_detected_consecutive_local_origin_failure": 1,
        "ejections_enforced_consecutive_local_origin_failure": 1, "ejections_enforced_total": 1}
    ka.close()


def test_ring_hash_keys_stick_to_a_host_and_follow_its_ejection(env):
    p, ups = env
    ka = KeepAlive(p.port("l"))

    def owner(user):
        return ka.request(path="/ring", headers=[("x-user", user)]).body

    owners = {u: owner(u) for u in (f"user{i}" for i in range(40))}
    assert set(owners.values()) == {b"r0", b"r1", b"r2"}
    assert all(owner(u) == o for u, o in owners.items())          # sticky
    victim = "user0"
    host = owners[victim].decode()
    ups[host].failing.set()
    try:
        statuses = [ka.request(path="/ring", headers=[("x-user", victim)]).status
                    for _ in range(5)]
        assert statuses == [503] * 5
        # Ejected: the key now hashes onto the ring of the two others (how many other keys
        # move with the rebuilt ring is a property of the ring, tested in unit tests).
        assert owner(victim) in {b"r0", b"r1", b"r2"} - {owners[victim]}
    finally:
        ups[host].failing.clear()
    assert wait_for(lambda: owner(victim) == owners[victim], timeout=5)
    ka.close()
