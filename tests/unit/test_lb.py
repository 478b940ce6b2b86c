"""Load balancers as pure decision objects: seeded RNG, fake hosts, no sockets.

The expected numbers are Envoy's (``load_balancer_impl.cc``; docs: load_balancing/priority,
panic_threshold, degraded), several of them checked against Envoy 1.40 in
tests/oracle/test_upstream_oracle.py.
"""

from __future__ import annotations

import collections
import random
import types

import pytest

from meshproxy.upstream.host import DEGRADED, DRAINING, HEALTHY, TIMEOUT, UNHEALTHY, Host
from meshproxy.upstream.lb import LeastRequest, PriorityLoads, Random, RoundRobin, make_lb


def hosts(spec):
    """spec: [(weight, health, priority)] or ints (weights)."""
    out = []
    for i, s in enumerate(spec):
        w, health, prio = (s, HEALTHY, 0) if isinstance(s, int) else s
        out.append(Host(None, ("10.0.0.%d" % (i + 1), 80), weight=w, health_status=health,
                        priority=prio))
    return out


def counts(lb, n):
    c = collections.Counter()
    for _ in range(n):
        h = lb.choose()
        c[h.address[0] if h is not None else None] += 1
    return c


def stats():
    return types.SimpleNamespace(lb_healthy_panic=0)


# ---------------------------------------------------------------------- round robin


def test_round_robin_rotates_from_a_random_start():
    hs = hosts([1, 1, 1])
    lb = RoundRobin(rng=random.Random(7))
    lb.update(hs)
    picks = [lb.choose() for _ in range(6)]
    assert picks[:3] == picks[3:] and sorted(h.address for h in picks[:3]) == \
        sorted(h.address for h in hs)
    starts = set()
    for seed in range(20):
        lb = RoundRobin(rng=random.Random(seed))
        lb.update(hs)
        starts.add(lb.choose().address)
    assert len(starts) == 3


def test_weighted_round_robin_is_exact_per_cycle():
    lb = RoundRobin(rng=random.Random(1))
    lb.update(hosts([1, 2, 3]))
    c = counts(lb, 600)
    assert c == {"10.0.0.1": 100, "10.0.0.2": 200, "10.0.0.3": 300}
    # Smooth: no host gets more than its share in any window of one cycle (6 picks).
    lb = RoundRobin(rng=random.Random(1))
    lb.update(hosts([1, 5]))
    seq = [lb.choose().address[0] for _ in range(12)]
    assert seq.count("10.0.0.1") == 2 and seq[:6].count("10.0.0.1") == 1


# ---------------------------------------------------------------------- least request


def test_least_request_p2c_prefers_fewer_active_requests():
    hs = hosts([1, 1, 1, 1])
    for h, active in zip(hs, (5, 0, 5, 5)):
        h.stats.rq_active = active
    lb = LeastRequest(choice_count=2, rng=random.Random(3))
    lb.update(hs)
    c = counts(lb, 4000)
    # The idle host wins every draw it is part of: 1 - (3/4)^2 = 7/16 of picks.
    assert 0.40 < c["10.0.0.2"] / 4000 < 0.48
    lb = LeastRequest(choice_count=10, rng=random.Random(3))
    lb.update(hs)
    assert counts(lb, 1000)["10.0.0.2"] > 900


def test_least_request_equal_load_spreads_evenly():
    lb = LeastRequest(rng=random.Random(11))
    lb.update(hosts([1, 1, 1]))
    c = counts(lb, 3000)
    assert all(900 < v < 1100 for v in c.values())


def test_least_request_weighted_uses_weight_over_active_requests():
    hs = hosts([1, 2, 3])
    lb = LeastRequest(rng=random.Random(5))
    lb.update(hs)
    assert counts(lb, 600) == {"10.0.0.1": 100, "10.0.0.2": 200, "10.0.0.3": 300}
    # With the heavy host busy (3 active -> weight 3/4), the weight-2 host gets the most.
    hs[2].stats.rq_active = 3
    lb = LeastRequest(rng=random.Random(5))
    lb.update(hs)
    c = counts(lb, 3750)
    assert c == {"10.0.0.1": 1000, "10.0.0.2": 2000, "10.0.0.3": 750}
    lb = LeastRequest(active_request_bias=0.0, rng=random.Random(5))
    lb.update(hs)
    assert counts(lb, 600)["10.0.0.3"] == 300


# ---------------------------------------------------------------------- random


def test_random_is_uniform_and_ignores_weights():
    lb = Random(rng=random.Random(2))
    lb.update(hosts([1, 2, 7]))
    c = counts(lb, 6000)
    assert all(1800 < v < 2200 for v in c.values()), c


# ---------------------------------------------------------------------- priorities, health


def _levels(*spec):
    """spec per level: (hosts, healthy, degraded)."""
    out = []
    for n, h, d in spec:
        hs = list(range(n))
        out.append((hs, hs[:h], hs[h:h + d], 0))
    return out


def test_priority_loads_envoy_doc_example():
    # Docs (priority levels): health 10/20/10 % and degraded 20/10/0 % across three levels give
    # 16/28/14 % of the load to healthy hosts and 28/14/0 % to degraded hosts.
    loads = PriorityLoads(_levels((14, 1, 2), (14, 2, 1), (14, 1, 0)), panic_threshold=0)
    assert loads.healthy_load == [16, 28, 14]
    assert loads.degraded_load == [28, 14, 0]
    assert loads.panic == [False, False, False]


def test_overprovisioning_spills_to_next_priority():
    # P0 half healthy: 50% * 1.4 = 70% of the load stays, 30% spills to P1.
    loads = PriorityLoads(_levels((2, 1, 0), (1, 1, 0)), panic_threshold=50)
    assert loads.healthy_load == [70, 30] and loads.panic == [False, False]
    # 80% healthy is still 100% (capped).
    loads = PriorityLoads(_levels((5, 4, 0), (1, 1, 0)), panic_threshold=50)
    assert loads.healthy_load == [100, 0]


def test_priority_choice_follows_loads():
    hs = hosts([(1, UNHEALTHY, 0), (1, HEALTHY, 0), (1, HEALTHY, 1)])
    lb = RoundRobin(rng=random.Random(9))
    lb.update(hs)
    c = counts(lb, 10000)
    assert c["10.0.0.1"] == 0
    assert 0.67 < c["10.0.0.2"] / 10000 < 0.73


def test_degraded_hosts_take_the_degraded_share():
    hs = hosts([(1, UNHEALTHY, 0), (1, DEGRADED, 0), (1, HEALTHY, 0)])
    loads = PriorityLoads([(hs, [hs[2]], [hs[1]], 0)], 50)
    assert loads.healthy_load == [50] and loads.degraded_load == [50]
    lb = RoundRobin(rng=random.Random(4))
    lb.update(hs)
    c = counts(lb, 4000)
    assert c["10.0.0.1"] == 0 and 1800 < c["10.0.0.2"] < 2200
    # Degraded hosts only take what the healthy share leaves: 2 of 3 healthy is 93%, so 7%
    # goes to the degraded host; 4 of 5 healthy is 100% (overprovisioned), so none.
    hs = hosts([(1, HEALTHY, 0), (1, HEALTHY, 0), (1, DEGRADED, 0)])
    lb.update(hs)
    assert lb.loads.healthy_load == [93] and lb.loads.degraded_load == [7]
    hs = hosts([(1, HEALTHY, 0)] * 4 + [(1, DEGRADED, 0)])
    lb.update(hs)
    assert counts(lb, 300)["10.0.0.5"] == 0


def test_panic_uses_all_hosts_and_counts():
    st = stats()
    lb = RoundRobin(rng=random.Random(1), stats=st)
    lb.update(hosts([(1, UNHEALTHY, 0), (1, TIMEOUT, 0), (1, HEALTHY, 0)]))
    c = counts(lb, 300)
    assert c == {"10.0.0.1": 100, "10.0.0.2": 100, "10.0.0.3": 100}
    assert st.lb_healthy_panic == 300


def test_panic_threshold_zero_disables_panic():
    st = stats()
    lb = RoundRobin(panic_threshold=0, rng=random.Random(1), stats=st)
    lb.update(hosts([(1, UNHEALTHY, 0), (1, UNHEALTHY, 0), (1, HEALTHY, 0)]))
    assert counts(lb, 30) == {"10.0.0.3": 30} and st.lb_healthy_panic == 0
    lb.update(hosts([(1, UNHEALTHY, 0)]))
    assert lb.choose() is None


def test_panic_threshold_boundary():
    # Exactly at the threshold is not panic (Envoy: healthy% < threshold).
    lb = RoundRobin(panic_threshold=50, rng=random.Random(1), stats=stats())
    lb.update(hosts([(1, UNHEALTHY, 0), (1, HEALTHY, 0)]))
    assert counts(lb, 20) == {"10.0.0.2": 20}
    lb = RoundRobin(panic_threshold=51, rng=random.Random(1), stats=stats())
    lb.update(hosts([(1, UNHEALTHY, 0), (1, HEALTHY, 0)]))
    assert counts(lb, 20) == {"10.0.0.1": 10, "10.0.0.2": 10}


def test_all_levels_in_panic_share_load_by_host_count():
    hs = hosts([(1, UNHEALTHY, 0), (1, UNHEALTHY, 1), (1, UNHEALTHY, 1), (1, UNHEALTHY, 1)])
    lb = RoundRobin(rng=random.Random(1), stats=stats())
    lb.update(hs)
    assert lb.loads.healthy_load == [25, 75] and lb.loads.panic == [True, True]
    c = counts(lb, 8000)
    assert 1800 < c["10.0.0.1"] < 2200


def test_draining_hosts_are_excluded():
    st = stats()
    lb = RoundRobin(rng=random.Random(1), stats=st)
    lb.update(hosts([(1, DRAINING, 0), (1, HEALTHY, 0)]))
    assert counts(lb, 10) == {"10.0.0.2": 10} and st.lb_healthy_panic == 0


def test_empty_cluster_gives_no_host_and_counts_panic():
    st = stats()
    for cls in (RoundRobin, LeastRequest, Random):
        lb = cls(rng=random.Random(1), stats=st)
        lb.update([])
        assert lb.choose() is None
    assert st.lb_healthy_panic == 3


def test_make_lb_policies():
    cfg = types.SimpleNamespace(panic_threshold=50.0, lr_choice_count=3,
                                lr_active_request_bias=1.0)
    assert isinstance(make_lb("ROUND_ROBIN", cfg), RoundRobin)
    lr = make_lb("LEAST_REQUEST", cfg)
    assert isinstance(lr, LeastRequest) and lr.choice_count == 3
    assert isinstance(make_lb("RANDOM", cfg), Random)
    with pytest.raises(ValueError):
        make_lb("MAGLEV", cfg)


def test_host_health_flags_as_envoy_prints_them():
    h = hosts([(1, UNHEALTHY, 0), (1, DEGRADED, 0), (1, DRAINING, 0), (1, HEALTHY, 0)])
    assert [x.health_flags() for x in h] == ["/failed_eds_health", "/degraded_eds_health",
                                             "/eds_status_draining", "healthy"]
    h[3].outlier_ejected = True
    assert h[3].health_flags() == "/failed_outlier_check" and not h[3].healthy
