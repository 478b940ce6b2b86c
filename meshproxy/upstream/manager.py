"""The cluster manager: owns clusters by name, initialises DNS clusters before listeners start
(as Envoy's cluster manager init does), and exposes ``cluster_manager.*`` stats."""

from __future__ import annotations

import asyncio
import logging
import socket

from meshproxy.stats import stat_block
from meshproxy.upstream.cluster import Cluster
from meshproxy.upstream.dns import DnsResolver
from meshproxy.upstream.h1_pool import H1Pool

log = logging.getLogger("meshproxy.upstream")

ClusterManagerStats = stat_block(
    "ClusterManagerStats",
    counters=("cluster_added", "cluster_modified", "cluster_removed", "cluster_updated",
              "cluster_updated_via_merge", "update_merge_cancelled", "update_out_of_merge_window"),
    gauges=("active_clusters", "warming_clusters"),
)


_LOCAL_IPS: dict[str, bool] = {}


def _is_local_ip(ip: str) -> bool:
    """An address of this host (binding to it succeeds), cached."""
    hit = _LOCAL_IPS.get(ip)
    if hit is None:
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.bind((ip, 0))
            hit = True
        except OSError:
            hit = False
        finally:
            s.close()
        if len(_LOCAL_IPS) < 4096:
            _LOCAL_IPS[ip] = hit
    return hit


class ClusterManager:
    def __init__(self, loop, store):
        self.loop = loop
        self.store = store
        self.clusters: dict[str, Cluster] = {}
        self.own_addresses: set = set()
        self.stats = ClusterManagerStats()
        self.stats.mark_used("active_clusters", "warming_clusters")
        store.register("cluster_manager.", self.stats)

    def is_own_address(self, addr) -> bool:
        """Whether ``addr`` is one of this proxy's listening sockets (``own_addresses`` is set
        by the server once they are bound): an ORIGINAL_DST connection there would loop."""
        if addr in self.own_addresses:
            return True
        ip, port = addr
        wildcard = ("::", port) if ":" in ip else ("0.0.0.0", port)
        return wildcard in self.own_addresses and _is_local_ip(ip)

    def _pool_factory(self, host, cluster):
        return H1Pool(host, cluster, self.loop)

    def add(self, config, added_via_api: bool = False) -> Cluster:
        old = self.clusters.get(config.name)
        if config.type == "ORIGINAL_DST":
            from meshproxy.upstream.original_dst import OriginalDstCluster
            cluster = OriginalDstCluster(config, self.loop, self._pool_factory,
                                         is_own_address=self.is_own_address)
        else:
            cluster = Cluster(config, self.loop, self._pool_factory)
        cluster.added_via_api = added_via_api
        cluster.cm_stats = self.stats
        if old is not None:
            # over CDS the old version drains (make-before-break); a static one never changes
            _carry_counters(old.stats, cluster.stats)
            self.remove(config.name, modified=True, drain=added_via_api)
            self.stats.cluster_modified += 1
        else:
            self.stats.cluster_added += 1
        self.clusters[config.name] = cluster
        self.stats.active_clusters = len(self.clusters)
        prefix = f"cluster.{config.stat_name}."
        self.store.register(prefix, cluster.stats)
        for sub, block in cluster.extra_stat_blocks():
            self.store.register(prefix + sub, block)
        cluster._stat_source = lambda c=cluster, p=prefix: c.stat_items(p)
        self.store.add_source(cluster._stat_source)
        if config.type in ("STRICT_DNS", "LOGICAL_DNS"):
            cluster.dns = DnsResolver(cluster, self.loop)
            cluster.dns.start()
        return cluster

    def remove(self, name: str, modified: bool = False, drain: bool = False) -> None:
        cluster = self.clusters.pop(name, None)
        if cluster is None:
            return
        if drain:
            cluster.drain()
        else:
            cluster.close()
        self.store.unregister(cluster.stats)
        for _, block in cluster.extra_stat_blocks():
            self.store.unregister(block)
        self.store.remove_source(cluster._stat_source)
        if not modified:
            self.stats.cluster_removed += 1
        self.stats.active_clusters = len(self.clusters)

    def get(self, name: str) -> Cluster | None:
        return self.clusters.get(name)

    async def initialize(self, timeout: float = 10.0) -> None:
        """Wait for every DNS cluster's first resolution (bounded), like Envoy's secondary
        cluster init before the listeners start."""
        waits = [c.dns.first.wait() for c in self.clusters.values() if c.dns is not None]
        if not waits:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except asyncio.TimeoutError:
            log.warning("DNS clusters not resolved after %.0fs; starting anyway", timeout)

    def close(self) -> None:
        for c in self.clusters.values():
            c.close()

    def __repr__(self):
        return f"<ClusterManager {len(self.clusters)} clusters>"


def _carry_counters(old, new) -> None:
    """A cluster modified over CDS keeps counting where the old version stopped: Envoy's new
    ClusterInfo finds the same ``cluster.<name>.*`` counters in the store, while the per-code
    ones (``upstream_rq_200``, ...) and the gauges start afresh (checked against Envoy 1.40:
    tests/xds/test_cluster_modify_stats.py)."""
    for slot in type(old).COUNTERS:
        setattr(new, slot, getattr(new, slot) + getattr(old, slot))
    new.mark_used(*(n for n, kind, _, used in old.items() if used and kind == "counter"))
