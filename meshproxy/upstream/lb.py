"""Load balancers: pure decision objects (no sockets, injected RNG), rebuilt on membership change.

Host selection follows Envoy's ``source/common/upstream/load_balancer_impl.cc``
(docs: intro/arch_overview/upstream/load_balancing/priority, panic_threshold, degraded):

* Each priority level gets a *health* and a *degraded* availability:
  ``min(100, 140 * healthy / hosts)`` (overprovisioning factor 1.4), excluded (draining) hosts
  not counted. Load goes to the healthy hosts of the first priorities, then to degraded hosts,
  scaled by the total availability (capped at 100); rounding leftovers go to the first
  available level. A request draws a number in 1..100 to pick (priority, healthy|degraded).
* A level whose healthy+degraded share is below ``healthy_panic_threshold`` (50% by default) is
  in panic unless the total availability is 100: it then uses all of its hosts, and each pick
  counts ``lb_healthy_panic``. When every level panics, load follows host counts.
* ROUND_ROBIN: equal weights rotate from a random start; unequal weights use an earliest-
  deadline-first schedule (deadline += 1/weight), Envoy's EDF scheduler.
  LEAST_REQUEST: equal weights pick the host with the fewest active requests among
  ``choice_count`` random draws (P2C); unequal weights use EDF with the weight divided by
  ``(active_requests + 1) ** active_request_bias``. RANDOM: uniform, ignoring weights (as Envoy).
  RING_HASH and MAGLEV are in ``hash_lb``.
"""

from __future__ import annotations

import heapq
import random

OVERPROVISIONING = 140  # Envoy's default overprovisioning_factor, in percent


class PriorityLoads:
    """The pure load computation for one host set. ``levels`` are (hosts, healthy, degraded,
    excluded_count) per priority, in priority order."""

    __slots__ = ("healthy_load", "degraded_load", "panic")

    def __init__(self, levels, panic_threshold: float):
        n = len(levels)
        health = [0] * n
        degraded = [0] * n
        for i, (hosts, hl, dl, excluded) in enumerate(levels):
            count = len(hosts) - excluded
            if count > 0:
                health[i] = min(100, OVERPROVISIONING * len(hl) // count)
                degraded[i] = min(100, OVERPROVISIONING * len(dl) // count)
        total = min(100, sum(health) + sum(degraded))
        self.healthy_load = hload = [0] * n
        self.degraded_load = dload = [0] * n
        if total:
            first_h, rest = _distribute(hload, health, 100, total)
            first_d, rest = _distribute(dload, degraded, rest, total)
            if rest:
                if first_h >= 0:
                    hload[first_h] += rest
                else:
                    dload[first_d] += rest
        threshold = min(100.0, panic_threshold)
        self.panic = panic = [False] * n
        if threshold == 0 and total == 0:
            hload[0] = 100
            return
        if total != 100:
            for i, (hosts, hl, dl, excluded) in enumerate(levels):
                count = len(hosts) - excluded
                share = 100.0 * (len(hl) + len(dl)) / count if count else 0.0
                panic[i] = share < threshold
        if all(panic):
            # Every level panics: load follows the number of hosts per level.
            hosts_total = sum(len(lv[0]) for lv in levels)
            dload[:] = [0] * n
            if hosts_total == 0:
                hload[:] = [100] + [0] * (n - 1)
                return
            left = 100
            first = -1
            for i, lv in enumerate(levels):
                if first < 0 and lv[0]:
                    first = i
                hload[i] = 100 * len(lv[0]) // hosts_total
                left -= hload[i]
            hload[first] += left


def _distribute(load, availability, total_load, total_availability):
    first = -1
    for i, a in enumerate(availability):
        if first < 0 and a > 0:
            first = i
        load[i] = min(total_load, a * 100 // total_availability)
        total_load -= load[i]
    return first, total_load


class _Edf:
    """Earliest-deadline-first schedule (Envoy's ``EdfScheduler``): a host's next deadline is
    the current time plus 1/weight; ties go to the earlier entry."""

    __slots__ = ("heap", "seq")

    def __init__(self, hosts, weight):
        self.heap = [(1.0 / weight(h), i, h) for i, h in enumerate(hosts)]
        heapq.heapify(self.heap)
        self.seq = len(hosts)

    def pick(self, weight):
        deadline, _, host = self.heap[0]
        self.seq += 1
        heapq.heapreplace(self.heap, (deadline + 1.0 / weight(host), self.seq, host))
        return host


def priority_levels(hosts) -> list:
    """Per priority 0..max: (hosts, healthy, degraded, excluded count), what PriorityLoads
    takes (a priority with no hosts is an empty level)."""
    by_prio: dict[int, list] = {}
    for h in hosts:
        by_prio.setdefault(h.priority, []).append(h)
    levels = []
    for prio in range(max(by_prio) + 1 if by_prio else 1):
        level = by_prio.get(prio, [])
        levels.append((level, [h for h in level if h.healthy],
                       [h for h in level if h.degraded], sum(1 for h in level if h.excluded)))
    return levels


class LoadBalancer:
    """Base: splits hosts into sources (priority x healthy/degraded/all) and picks a source per
    request; subclasses pick a host within it (``_pick``)."""

    def __init__(self, panic_threshold: float = 50.0, rng: random.Random | None = None,
                 stats=None):
        self.panic_threshold = panic_threshold
        self.rng = rng or random.Random()
        self.stats = stats          # anything with an ``lb_healthy_panic`` counter
        self.table: list = []       # [(cumulative load, hosts, panic, state)]
        self.single = None          # the only source when one takes all the load
        self.loads = None

    def update(self, hosts) -> None:
        """Rebuild from the cluster's hosts (all priorities)."""
        levels = priority_levels(hosts)
        self.loads = loads = PriorityLoads(levels, self.panic_threshold)
        table = []
        acc = 0
        for kind, per_level in ((0, loads.healthy_load), (1, loads.degraded_load)):
            for i, load in enumerate(per_level):
                if load <= 0:
                    continue
                acc += load
                panic = loads.panic[i]
                lv = levels[i]
                chosen = [h for h in lv[0] if not h.excluded] if panic else lv[1 + kind]
                table.append((acc, chosen, panic, self._state(chosen)))
        self.table = table
        self.single = table[0] if len(table) == 1 else None

    def choose(self, ctx=None):
        src = self.single
        if src is None:
            if not self.table:
                return None
            r = self.rng.randrange(100) + 1
            for src in self.table:
                if r <= src[0]:
                    break
        if src[2] and self.stats is not None:
            self.stats.lb_healthy_panic += 1
        hosts = src[1]
        if not hosts:
            return None
        return self._pick(hosts, src[3])

    def _state(self, hosts):
        return None

    def _pick(self, hosts, state):
        raise NotImplementedError


def _weighted(hosts) -> bool:
    return len({h.weight for h in hosts}) > 1


class RoundRobin(LoadBalancer):
    def _state(self, hosts):
        if _weighted(hosts):
            return _Edf(hosts, _static_weight)
        return [self.rng.randrange(len(hosts)) if hosts else 0]

    def _pick(self, hosts, state):
        if type(state) is list:
            i = state[0]
            state[0] = i + 1
            return hosts[i % len(hosts)]
        return state.pick(_static_weight)


def _static_weight(h) -> float:
    return h.weight


class LeastRequest(LoadBalancer):
    def __init__(self, choice_count: int = 2, active_request_bias: float = 1.0, **kw):
        super().__init__(**kw)
        self.choice_count = choice_count
        self.bias = active_request_bias
        bias = active_request_bias
        if bias == 1.0:
            self._weight = lambda h: h.weight / (h.stats.rq_active + 1)
        elif bias == 0.0:
            self._weight = _static_weight
        else:
            self._weight = lambda h: h.weight / (h.stats.rq_active + 1) ** bias

    def _state(self, hosts):
        return _Edf(hosts, self._weight) if _weighted(hosts) else None

    def _pick(self, hosts, state):
        if state is not None:
            return state.pick(self._weight)
        n = len(hosts)
        rnd = self.rng.randrange
        best = hosts[rnd(n)]
        for _ in range(self.choice_count - 1):
            h = hosts[rnd(n)]
            if h.stats.rq_active < best.stats.rq_active:
                best = h
        return best


class Random(LoadBalancer):
    def _pick(self, hosts, state):
        return hosts[self.rng.randrange(len(hosts))]


def make_lb(policy: str, cfg, stats=None, rng=None):
    kw = dict(panic_threshold=cfg.panic_threshold, stats=stats, rng=rng)
    if policy == "ROUND_ROBIN":
        return RoundRobin(**kw)
    if policy == "LEAST_REQUEST":
        return LeastRequest(cfg.lr_choice_count, cfg.lr_active_request_bias, **kw)
    if policy in ("RANDOM", "CLUSTER_PROVIDED"):
        return Random(**kw)
    if policy in ("RING_HASH", "MAGLEV") and getattr(cfg, "hash_lb", None) is not None:
        from meshproxy.upstream.hash_lb import HashLoadBalancer
        return HashLoadBalancer(cfg.hash_lb, **kw)
    raise ValueError(policy)
