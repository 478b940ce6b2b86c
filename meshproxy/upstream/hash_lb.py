"""Consistent-hashing load balancers: RING_HASH and MAGLEV, placed exactly as Envoy places them.

Both follow Envoy's ``ThreadAwareLoadBalancerBase`` (``thread_aware_lb_impl.cc``): the request
hash (from the route's ``hash_policy``, else a random 64-bit number) picks the priority with
``hash % 100 + 1`` against the healthy then degraded priority loads, and that priority's table
picks the host. A table holds the priority's *healthy* hosts (all hosts when it is in panic),
each with ``weight / sum(weights)``; degraded hosts are not in it. Tables are rebuilt whenever
membership or health changes (outlier ejections included).

Host keys are ``filter_metadata["envoy.lb"]["hash_key"]`` when set, else the hostname with
``use_hostname_for_hashing``, else the address as Envoy prints it (``10.0.0.1:80``).

* Ring (``ring_hash_lb.cc``): ``scale = min(ceil(min_w * minimum_ring_size) / min_w,
  maximum_ring_size)``; walking the hosts in order, a running target of ``scale * w`` decides
  how many entries ``xxHash64("<key>_<i>")`` each host gets; sorted by hash; a request goes to
  the first entry whose hash is >= its hash (wrapping to the first).
* Maglev (``maglev_lb.cc``, table 65537 by default): hosts sorted by key, each with
  ``offset = xxHash64(key) % M`` and ``skip = xxHash64(key, seed 1) % (M - 1) + 1``; rounds
  fill the table in that order, a host taking its next free permutation slot each round its
  weight allows; a request goes to ``table[hash % M]``.
"""

from __future__ import annotations

import array
import bisect
import functools
import math
import random

import xxhash

from meshproxy.stats import stat_block
from meshproxy.upstream.lb import PriorityLoads, priority_levels

RingHashStats = stat_block("RingHashStats",
                           gauges=("max_hashes_per_host", "min_hashes_per_host", "size"))
MaglevStats = stat_block("MaglevStats", gauges=("max_entries_per_host", "min_entries_per_host"))

_xxh64 = xxhash.xxh64_intdigest
_MASK = (1 << 64) - 1


def murmur_hash2_64(key: bytes, seed: int = 0xc70f6907) -> int:
    """``MurmurHash::murmurHash2_64`` (libstdc++'s ``std::hash<string>``), for
    ``hash_function: MURMUR_HASH_2``."""
    mul = 0xc6a4a7935bd1e995
    n = len(key)
    aligned = n & ~7
    h = (seed ^ (n * mul)) & _MASK
    for p in range(0, aligned, 8):
        d = int.from_bytes(key[p:p + 8], "little") * mul & _MASK
        d = (d ^ (d >> 47)) * mul & _MASK
        h = (h ^ d) * mul & _MASK
    if n & 7:
        h = (h ^ int.from_bytes(key[aligned:], "little")) * mul & _MASK
    h = (h ^ (h >> 47)) * mul & _MASK
    return h ^ (h >> 47)


def host_key(host, use_hostname: bool) -> bytes:
    """``ThreadAwareLoadBalancerBase::hashKey``."""
    md = host.metadata
    if md is not None and "envoy.lb" in md.filter_metadata:
        v = md.filter_metadata["envoy.lb"].fields.get("hash_key")
        if v is not None and v.WhichOneof("kind") == "string_value" and v.string_value:
            return v.string_value.encode()
    if use_hostname:
        return host.hostname.encode()
    return host.address_bytes


def _normalized(hosts) -> tuple[list, float, float]:
    """``normalizeHostWeights`` (flat, no locality weighting): [(host, weight/sum)]."""
    total = sum(h.weight for h in hosts)
    out = []
    lo, hi = 1.0, 0.0
    for h in hosts:
        w = h.weight * 1.0 / total
        out.append((h, w))
        lo = min(lo, w)
        hi = max(hi, w)
    return out, lo, hi


class Ring:
    """One priority's ring: sorted hashes and the host at each."""

    __slots__ = ("hashes", "hosts", "size", "min_per_host", "max_per_host")

    def __init__(self, weighted, min_w, min_size, max_size, use_hostname, murmur=False):
        self.hashes: list[int] = []
        self.hosts: list = []
        self.size = 0
        if not weighted:
            return
        scale = min(math.ceil(min_w * min_size) / min_w, float(max_size))
        ring_size = self.size = math.ceil(scale)
        entries = []
        current = target = 0.0
        lo, hi = ring_size, 0
        hash_fn = murmur_hash2_64 if murmur else _xxh64
        for host, w in weighted:
            prefix = host_key(host, use_hostname) + b"_"
            target += scale * w
            i = 0
            while current < target:
                entries.append((hash_fn(prefix + str(i).encode()), host))
                i += 1
                current += 1
            lo = min(lo, i)
            hi = max(hi, i)
        entries.sort(key=lambda e: e[0])
        self.hashes = [e[0] for e in entries]
        self.hosts = [e[1] for e in entries]
        self.min_per_host, self.max_per_host = lo, hi

    def choose(self, h: int, attempt: int = 0):
        """The ketama search: the first entry with hash >= h, wrapping to the first."""
        hashes = self.hashes
        if not hashes:
            return None
        i = bisect.bisect_left(hashes, h)
        if i == len(hashes):
            i = 0
        if attempt:
            i = (i + attempt) % len(hashes)
        return self.hosts[i]


class MaglevTable:
    __slots__ = ("table", "size", "min_per_host", "max_per_host")

    def __init__(self, weighted, max_w, size, use_hostname):
        self.size = size
        self.table: list = []
        if not weighted:
            return
        if len(weighted) == 1:
            # Envoy 1.40 reports 1 entry for a lone host (min/max_entries_per_host 1, measured),
            # not a table full of it; every hash picks that host either way.
            self.size = 1
            self.table = [weighted[0][0]]
            self.min_per_host = self.max_per_host = 1
            return
        keyed = sorted(((host_key(h, use_hostname), h, w) for h, w in weighted),
                       key=lambda e: e[0])
        slots, counts = _maglev_slots(tuple((k, w) for k, _, w in keyed), max_w, size)
        hosts = [h for _, h, _ in keyed]
        self.table = [hosts[i] for i in slots]
        self.min_per_host = min(counts)
        self.max_per_host = max(counts)

    def choose(self, h: int, attempt: int = 0):
        if not self.table:
            return None
        if attempt:
            # "By using value with most bits set for the retry attempts, we achieve a larger
            # change in the hash" (maglev_lb.cc).
            h ^= (_MASK - attempt + 1) & _MASK
        return self.table[h % self.size]


@functools.lru_cache(maxsize=8)
def _maglev_slots(keys_weights: tuple, max_w: float, size: int):
    """The table as indices into ``keys_weights`` (sorted by key), and each entry's count.
    Filling 65537 slots takes tens of milliseconds in Python; an ejection and the return that
    follows flip between two host sets, so recent tables are kept (by key and weight, not by
    host object)."""
    n = len(keys_weights)
    offsets = [_xxh64(k) % size for k, _ in keys_weights]
    skips = [_xxh64(k, 1) % (size - 1) + 1 for k, _ in keys_weights]
    weights = [w for _, w in keys_weights]
    nexts = [0] * n
    counts = [0] * n
    targets = [0.0] * n
    slots = [-1] * size
    filled = 0
    iteration = 1
    while filled < size:
        for i in range(n):
            if filled >= size:
                break
            if iteration * weights[i] < targets[i]:
                continue
            targets[i] += max_w
            off, skip, nxt = offsets[i], skips[i], nexts[i]
            c = (off + skip * nxt) % size
            while slots[c] >= 0:
                nxt += 1
                c = (off + skip * nxt) % size
            slots[c] = i
            nexts[i] = nxt + 1
            counts[i] += 1
            filled += 1
        iteration += 1
    return array.array("I", slots), tuple(counts)


class HashLoadBalancer:
    """The per-cluster object the router asks (``choose(ctx)``); ``ctx`` is the downstream
    stream (its route's compiled ``hash_policy`` gives the hash) or None."""

    def __init__(self, cfg, panic_threshold: float = 50.0, rng=None, stats=None):
        self.cfg = cfg                   # HashLbConfig
        self.panic_threshold = panic_threshold
        self.rng = rng or random.Random()
        self.stats = stats               # the cluster's (lb_healthy_panic)
        self.lb_stats = RingHashStats() if cfg.kind == "RING_HASH" else MaglevStats()
        self.stat_prefix = "ring_hash_lb." if cfg.kind == "RING_HASH" else "maglev_lb."
        self.prio_table: list = []       # [(cumulative load, priority)]
        self.tables: list = []           # per priority: (table, panic)

    def update(self, hosts) -> None:
        levels = priority_levels(hosts)
        loads = PriorityLoads(levels, self.panic_threshold)
        acc = 0
        prio_table = []
        for per_level in (loads.healthy_load, loads.degraded_load):
            for prio, load in enumerate(per_level):
                if load > 0:
                    acc += load
                    prio_table.append((acc, prio))
        cfg = self.cfg
        s = self.lb_stats
        tables = []
        for prio, lv in enumerate(levels):
            panic = loads.panic[prio]
            chosen = [h for h in lv[0] if not h.excluded] if panic else lv[1]
            weighted, lo, hi = _normalized(chosen) if chosen else ([], 1.0, 0.0)
            if cfg.kind == "RING_HASH":
                t = Ring(weighted, lo, cfg.min_ring_size, cfg.max_ring_size, cfg.use_hostname,
                         cfg.murmur)
                if weighted:
                    s.size, s.min_hashes_per_host, s.max_hashes_per_host = \
                        t.size, t.min_per_host, t.max_per_host
            else:
                t = MaglevTable(weighted, hi, cfg.table_size, cfg.use_hostname)
                if weighted:
                    s.min_entries_per_host, s.max_entries_per_host = \
                        t.min_per_host, t.max_per_host
            tables.append((t, panic))
        self.prio_table = prio_table
        self.tables = tables

    def choose(self, ctx=None):
        h = None
        if ctx is not None:
            # The load balancer's own hash policy (typed consistent_hashing_lb_config) comes
            # first; else the route's.
            policy = self.cfg.hash_policy
            if policy is None:
                route = getattr(ctx, "route", None)
                action = route.action if route is not None else None
                policy = action.hash_policy if action is not None else None
            if policy is not None and getattr(ctx, "request", None) is not None:
                h = policy.generate(ctx)
        if h is None:
            h = self.rng.getrandbits(64)
        r = h % 100 + 1
        prio = 0
        for acc, prio in self.prio_table:
            if r <= acc:
                break
        table, panic = self.tables[prio]
        if panic and self.stats is not None:
            self.stats.lb_healthy_panic += 1
        host = table.choose(h, 0)
        if host is None or ctx is None:
            return host
        # A retry host predicate (previous_hosts) is applied here, as Envoy's thread-aware LB
        # does: up to host_selection_retry_max_attempts more tries, each moving the hash.
        router = getattr(ctx, "router", None)
        retry = router.retry if router is not None else None
        if retry is not None and retry.previous_hosts:
            for attempt in range(1, retry.max_host_attempts + 1):
                if not retry.reject_host(host):
                    break
                host = table.choose(h, attempt)
        return host
