"""RING_HASH and MAGLEV placement. Expected rings, tables and picks are the ones Envoy's own
tests publish (test/extensions/load_balancing_policies/ring_hash/ring_hash_lb_test.cc and
maglev/maglev_lb_test.cc: hosts 127.0.0.1:90..95, ring of 12, tables of 7 and 17), so they
check meshproxy against Envoy's output, not against itself. The router-level differential
test against the Envoy binary is tests/oracle/test_hash_lb_oracle.py."""

from __future__ import annotations

import bisect
import random
import types

import pytest
from envoy.config.core.v3 import base_pb2

from meshproxy.upstream.lb_config import HashLbConfig
from meshproxy.upstream.hash_lb import HashLoadBalancer, Ring, murmur_hash2_64
from meshproxy.upstream.host import UNHEALTHY, Host

U64_MAX = (1 << 64) - 1


def mk_hosts(ports, hostnames=False, hash_keys=False, weights=None, priority=0):
    out = []
    for i, port in enumerate(ports):
        md = None
        if hash_keys:
            md = base_pb2.Metadata()
            md.filter_metadata["envoy.lb"].update({"hash_key": str(port)})
        out.append(Host(None, ("127.0.0.1", port), str(port) if hostnames else "",
                        weights[i] if weights else 1, priority=priority, metadata=md))
    return out


class Ctx:
    """A downstream stream as the LB sees it: a route whose hash policy yields ``h``."""

    def __init__(self, h, retry=None):
        policy = types.SimpleNamespace(generate=lambda stream: h)
        self.route = types.SimpleNamespace(action=types.SimpleNamespace(hash_policy=policy))
        self.router = types.SimpleNamespace(retry=retry)
        self.request = object()


class FixedRng:
    def __init__(self, *values):
        self.values = list(values)

    def getrandbits(self, n):
        return self.values.pop(0)


def ring_lb(hosts, min_size=12, **kw):
    lb = HashLoadBalancer(HashLbConfig("RING_HASH", min_ring_size=min_size, **kw),
                          stats=types.SimpleNamespace(lb_healthy_panic=0))
    lb.update(hosts)
    return lb


def maglev_lb(hosts, size, **kw):
    lb = HashLoadBalancer(HashLbConfig("MAGLEV", table_size=size, **kw),
                          stats=types.SimpleNamespace(lb_healthy_panic=0))
    lb.update(hosts)
    return lb


# ---------------------------------------------------------------------- ring hash


def test_ring_basic_matches_envoy():
    hosts = mk_hosts(range(90, 96))
    lb = ring_lb(hosts)
    st = lb.lb_stats
    assert (st.size, st.min_hashes_per_host, st.max_hashes_per_host) == (12, 2, 2)
    ring = lb.tables[0][0]
    # Envoy's table (port | position), sorted by position.
    assert [(h.address[1], x) for h, x in zip(ring.hosts, ring.hashes)] == [
        (94, 833437586790550860), (92, 928266305478181108), (90, 1033482794131418490),
        (95, 3551244743356806947), (93, 3851675632748031481), (91, 5583722120771150861),
        (91, 6311230543546372928), (93, 7700377290971790572), (95, 13144177310400110813),
        (92, 13444792449719432967), (94, 15516499411664133160), (90, 16117243373044804889)]
    assert lb.choose(Ctx(0)) is hosts[4]
    assert lb.choose(Ctx(U64_MAX)) is hosts[4]
    assert lb.choose(Ctx(3551244743356806947)) is hosts[5]
    assert lb.choose(Ctx(3551244743356806948)) is hosts[3]
    lb.rng = FixedRng(16117243373044804880)       # no hash: Envoy's random() decides
    assert lb.choose(None) is hosts[0]
    assert lb.stats.lb_healthy_panic == 0
    # No healthy host: panic, the ring holds every host again.
    for h in hosts:
        h.health_status = UNHEALTHY
    lb.update(hosts)
    assert lb.choose(Ctx(0)) is hosts[4]
    assert lb.stats.lb_healthy_panic == 1


def test_ring_murmur2_matches_envoy():
    hosts = mk_hosts(range(80, 86))
    lb = ring_lb(hosts, murmur=True)
    ring = lb.tables[0][0]
    assert [(h.address[1], x) for h, x in zip(ring.hosts, ring.hashes)] == [
        (85, 1358027074129602068), (83, 4361834613929391114), (84, 7224494972555149682),
        (81, 7701421856454313576), (82, 8649315368077433379), (84, 8739448859063030639),
        (81, 9887544217113020895), (82, 10150910876324007731), (83, 15168472011420622455),
        (80, 15427156902705414897), (85, 16375050414328759093), (80, 17613279263364193813)]
    assert lb.choose(Ctx(0)) is hosts[5]
    assert lb.choose(Ctx(1358027074129602068)) is hosts[5]
    assert lb.choose(Ctx(1358027074129602069)) is hosts[3]
    assert murmur_hash2_64(b"") == murmur_hash2_64(b"", 0xc70f6907)


@pytest.mark.parametrize("how", ["hostname", "metadata"])
def test_ring_hostname_and_metadata_hash_key_match_envoy(how):
    hosts = mk_hosts(range(90, 96), hostnames=True, hash_keys=how == "metadata")
    lb = ring_lb(hosts, use_hostname=how == "hostname")
    ring = lb.tables[0][0]
    assert [(h.address[1], x) for h, x in zip(ring.hosts, ring.hashes)] == [
        (95, 1975508444536362413), (95, 2376063919839173711), (93, 2386806903309390596),
        (94, 6749904478991551885), (93, 6803900775736438537), (92, 7225015537174310577),
        (90, 8787465352164086522), (92, 11282020843382717940), (91, 13723418369486627818),
        (90, 13776502110861797421), (91, 14338313586354474791), (94, 15364271037087512980)]
    assert lb.choose(Ctx(7225015537174310577)) is hosts[2]
    assert lb.choose(Ctx(6803900775736438537)) is hosts[3]


def test_ring_failover_between_priorities_as_envoy():
    p0 = mk_hosts([80])
    p0[0].health_status = UNHEALTHY
    p1 = mk_hosts([82], priority=1)
    lb = ring_lb(p0 + p1)
    assert lb.lb_stats.size == 12 and lb.lb_stats.min_hashes_per_host == 12
    lb.rng = FixedRng(5)
    assert lb.choose(None) is p1[0]
    # P0 with one of two hosts healthy gets 70% (1.4 * 50), P1 the rest: hash % 100 + 1.
    p0 = mk_hosts([80, 81])
    p0[1].health_status = UNHEALTHY
    lb = ring_lb(p0 + p1)
    lb.rng = FixedRng(69, 71)
    assert lb.choose(None) is p0[0]
    assert lb.choose(None) is p1[0]


def test_ring_size_follows_weights_and_bounds():
    # scale = min(ceil(min_w * min_size) / min_w, max_size); entries by running sums.
    hosts = mk_hosts([1, 2, 3], weights=[1, 2, 1])
    lb = ring_lb(hosts, min_size=1024)
    assert (lb.lb_stats.size, lb.lb_stats.min_hashes_per_host,
            lb.lb_stats.max_hashes_per_host) == (1024, 256, 512)
    lb = ring_lb(mk_hosts(range(90, 96)), min_size=1024, max_ring_size=100)
    # 6 hosts: 1/6 * 1024 -> ceil 171 -> 1026 capped at 100: 16.67 each by running sums.
    assert lb.lb_stats.size == 100
    assert (lb.lb_stats.min_hashes_per_host, lb.lb_stats.max_hashes_per_host) == (16, 17)
    assert len(lb.tables[0][0].hashes) == 100
    # minimum_ring_size 0 is accepted by Envoy and leaves an empty ring: no host.
    lb = ring_lb(mk_hosts([1, 2]), min_size=0)
    assert lb.choose(Ctx(5)) is None


def _ketama(ring: Ring, h: int) -> int:
    """ring_hash_lb.cc's search, literally (signed lowp/highp), for the bisect check."""
    lowp, highp = 0, len(ring.hashes)
    while True:
        midp = (lowp + highp) // 2
        if midp == len(ring.hashes):
            return 0
        midval = ring.hashes[midp]
        midval1 = 0 if midp == 0 else ring.hashes[midp - 1]
        if midval1 < h <= midval:
            return midp
        if midval < h:
            lowp = midp + 1
        else:
            highp = midp - 1
        if lowp > highp:
            return 0


def test_ring_search_is_envoys_ketama_search():
    rng = random.Random(7)
    for n in (1, 2, 3, 12, 1024):
        lb = ring_lb(mk_hosts(range(1000, 1000 + max(1, n // 4))), min_size=n)
        ring = lb.tables[0][0]
        probes = [0, 1, U64_MAX] + ring.hashes + [x + 1 for x in ring.hashes] + \
            [rng.getrandbits(64) for _ in range(300)]
        for h in probes:
            assert ring.choose(h) is ring.hosts[_ketama(ring, h)], (n, h)


# ---------------------------------------------------------------------- maglev


def test_maglev_basic_matches_envoy():
    hosts = mk_hosts(range(90, 96))
    lb = maglev_lb(hosts, 7)
    assert (lb.lb_stats.min_entries_per_host, lb.lb_stats.max_entries_per_host) == (1, 2)
    expected = [2, 4, 0, 1, 5, 0, 3]
    for i in range(3 * len(expected)):
        assert lb.choose(Ctx(i)) is hosts[expected[i % 7]]


def test_maglev_weighted_matches_envoy():
    hosts = mk_hosts([90, 91], weights=[1, 2])
    lb = maglev_lb(hosts, 17)
    assert (lb.lb_stats.min_entries_per_host, lb.lb_stats.max_entries_per_host) == (6, 11)
    expected = [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1]
    assert [lb.choose(Ctx(i)) for i in range(17)] == [hosts[e] for e in expected]


def test_maglev_retry_host_predicate_matches_envoy():
    hosts = mk_hosts(range(90, 96))
    lb = maglev_lb(hosts, 7)
    assert lb.choose(Ctx(10)) is hosts[1]

    def retry(reject):
        return types.SimpleNamespace(previous_hosts=True, max_host_attempts=2,
                                     reject_host=reject)
    assert lb.choose(Ctx(10, retry(lambda h: False))) is hosts[1]
    assert lb.choose(Ctx(10, retry(lambda h: h is hosts[1]))) is hosts[0]
    # Every attempt rejected: the last host checked.
    assert lb.choose(Ctx(10, retry(lambda h: True))) is hosts[5]


def test_maglev_table_ignores_host_order():
    hosts = mk_hosts(range(90, 96))
    a = maglev_lb(hosts, 65537).tables[0][0].table
    b = maglev_lb(list(reversed(hosts)), 65537).tables[0][0].table
    assert a == b


# ---------------------------------------------------------------------- stability


def _mapping(lb, keys):
    return [lb.choose(Ctx(k)) for k in keys]


@pytest.mark.parametrize("kind,max_moved", [("RING_HASH", 0.15), ("MAGLEV", 0.01)])
def test_placement_stable_when_hosts_change(kind, max_moved):
    """Removing one of five hosts moves its keys and few others (measured: ring 12% of the
    surviving keys, because every host's share of a 1024-entry ring grows; maglev 0.1%);
    modulo hashing would move about 80%. Restoring the host set restores every key."""
    hosts = [Host(None, (f"10.0.0.{i}", 80)) for i in range(1, 6)]
    lb = HashLoadBalancer(HashLbConfig(kind))
    lb.update(hosts)
    rng = random.Random(3)
    keys = [rng.getrandbits(64) for _ in range(5000)]
    before = _mapping(lb, keys)
    gone = hosts[2]
    lb.update([h for h in hosts if h is not gone])
    after = _mapping(lb, keys)
    assert gone not in after
    survivors = [(b, a) for b, a in zip(before, after) if b is not gone]
    moved = sum(1 for b, a in survivors if a is not b) / len(survivors)
    assert moved <= max_moved
    lb.update(hosts)
    assert _mapping(lb, keys) == before


def test_ejected_host_leaves_the_table_and_its_keys_come_back():
    hosts = [Host(None, (f"10.0.0.{i}", 80)) for i in range(1, 6)]
    lb = HashLoadBalancer(HashLbConfig("MAGLEV"))
    lb.update(hosts)
    keys = list(range(0, 65537 * 40, 977))
    before = _mapping(lb, keys)
    hosts[0].outlier_ejected = True
    lb.update(hosts)
    assert hosts[0] not in _mapping(lb, keys)
    hosts[0].outlier_ejected = False
    lb.update(hosts)
    assert _mapping(lb, keys) == before


def test_degraded_hosts_are_not_in_the_table():
    """Envoy's thread-aware LBs hash over healthy hosts only; a degraded-only priority
    yields no host."""
    from meshproxy.upstream.host import DEGRADED
    hosts = mk_hosts([1, 2])
    hosts[0].health_status = DEGRADED
    lb = ring_lb(hosts)
    assert {lb.choose(Ctx(k)) for k in range(0, U64_MAX, U64_MAX // 50)} == {hosts[1]}
    hosts[1].health_status = DEGRADED
    lb.update(hosts)
    assert lb.choose(Ctx(1)) is None


def test_bisect_assumption_sorted():
    lb = ring_lb(mk_hosts(range(1, 30)), min_size=500)
    hashes = lb.tables[0][0].hashes
    assert hashes == sorted(hashes)
    assert bisect.bisect_left(hashes, hashes[3]) == 3
