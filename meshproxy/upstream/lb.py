"""Load balancers: pure decision objects (no sockets), rebuilt when membership changes.

Host selection follows Envoy's ``source/common/upstream/load_balancer_impl.cc`` in outline:
the lowest priority level with healthy hosts serves; if the healthy share of the hosts falls
below ``healthy_panic_threshold`` (50% by default) the balancer panics and uses every host.
ROUND_ROBIN rotates over equal weights and spreads unequal weights smoothly; LEAST_REQUEST picks
the host with fewer active requests among ``choice_count`` (2) random ones; RANDOM is uniform.
"""

from __future__ import annotations

import random


class LoadBalancer:
    """Base: keeps the host set the subclass chooses from (``self.hosts``)."""

    def __init__(self, panic_threshold: float = 50.0, rng: random.Random | None = None):
        self.panic_threshold = panic_threshold
        self.rng = rng or random.Random()
        self.hosts: list = []
        self.panic = False

    def update(self, hosts) -> None:
        """Rebuild from the cluster's hosts (all priorities)."""
        by_prio: dict[int, list] = {}
        for h in hosts:
            by_prio.setdefault(h.priority, []).append(h)
        chosen: list = []
        self.panic = False
        for prio in sorted(by_prio):
            level = by_prio[prio]
            healthy = [h for h in level if h.healthy]
            if healthy:
                if 100.0 * len(healthy) / len(level) < self.panic_threshold:
                    self.panic = True
                    chosen = level
                else:
                    chosen = healthy
                break
        else:
            if hosts:
                # No healthy host anywhere: Envoy panics on priority 0 and uses all of it.
                self.panic = True
                chosen = by_prio[min(by_prio)]
        self.hosts = chosen
        self._rebuild()

    def _rebuild(self) -> None:
        pass

    def choose(self, ctx=None):
        raise NotImplementedError


class RoundRobin(LoadBalancer):
    def _rebuild(self):
        hosts = self.hosts
        self.index = self.rng.randrange(len(hosts)) if hosts else 0
        self.weighted = len({h.weight for h in hosts}) > 1
        self.current = [0] * len(hosts)
        self.total = sum(h.weight for h in hosts)

    def choose(self, ctx=None):
        hosts = self.hosts
        n = len(hosts)
        if n == 0:
            return None
        if not self.weighted:
            i = self.index
            self.index = i + 1 if i + 1 < n else 0
            return hosts[i]
        # Smooth weighted round robin: each pick adds every weight to its host's credit and
        # takes the host with the most credit, which then pays the total.
        cur = self.current
        best = 0
        for i in range(n):
            cur[i] += hosts[i].weight
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self.total
        return hosts[best]


class LeastRequest(LoadBalancer):
    def __init__(self, choice_count: int = 2, active_request_bias: float = 1.0, **kw):
        super().__init__(**kw)
        self.choice_count = max(2, choice_count)
        self.bias = active_request_bias

    def choose(self, ctx=None):
        hosts = self.hosts
        n = len(hosts)
        if n == 0:
            return None
        if n == 1:
            return hosts[0]
        rnd = self.rng.randrange
        best = hosts[rnd(n)]
        for _ in range(self.choice_count - 1):
            h = hosts[rnd(n)]
            if self._score(h) < self._score(best):
                best = h
        return best

    def _score(self, h) -> float:
        active = h.stats.rq_active
        if h.weight == 1:
            return active
        return (active + 1) ** self.bias / h.weight


class Random(LoadBalancer):
    def choose(self, ctx=None):
        hosts = self.hosts
        return hosts[self.rng.randrange(len(hosts))] if hosts else None


def make_lb(policy: str, cfg):
    kw = dict(panic_threshold=cfg.panic_threshold)
    if policy == "ROUND_ROBIN":
        return RoundRobin(**kw)
    if policy == "LEAST_REQUEST":
        return LeastRequest(cfg.lr_choice_count, cfg.lr_active_request_bias, **kw)
    if policy in ("RANDOM", "CLUSTER_PROVIDED"):
        return Random(**kw)
    raise ValueError(policy)
