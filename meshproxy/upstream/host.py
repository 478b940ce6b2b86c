"""Upstream hosts (endpoints) and their per-host stats."""

from __future__ import annotations

from meshproxy.stats import stat_block

HostStats = stat_block(
    "HostStats",
    counters=("cx_total", "cx_connect_fail", "rq_total", "rq_success", "rq_error", "rq_timeout"),
    gauges=("cx_active", "rq_active", "rq_pending_active"),
)

# envoy.config.core.v3.HealthStatus
UNKNOWN, HEALTHY, UNHEALTHY, DRAINING, TIMEOUT, DEGRADED = range(6)
_HEALTH_NAMES = {UNKNOWN: "healthy", HEALTHY: "healthy", UNHEALTHY: "/eds_health_status/unhealthy",
                 DRAINING: "/eds_health_status/draining", TIMEOUT: "/eds_health_status/timeout",
                 DEGRADED: "/eds_health_status/degraded"}


class Host:
    """One endpoint of a cluster. ``address`` is ``(ip, port)`` for TCP or a path for a pipe."""

    __slots__ = ("cluster", "address", "hostname", "weight", "health_status", "priority",
                 "locality", "metadata", "stats", "pool", "address_bytes", "address_str",
                 "outlier_ejected", "unix")

    def __init__(self, cluster, address, hostname: str = "", weight: int = 1,
                 health_status: int = UNKNOWN, priority: int = 0, locality=None, metadata=None,
                 unix: bool = False):
        self.cluster = cluster
        self.address = address
        self.unix = unix
        self.hostname = hostname
        self.weight = weight or 1
        self.health_status = health_status
        self.priority = priority
        self.locality = locality
        self.metadata = metadata
        self.stats = HostStats()
        self.pool = None
        self.outlier_ejected = False
        if unix:
            self.address_str = str(address)
        elif ":" in address[0]:
            self.address_str = f"[{address[0]}]:{address[1]}"
        else:
            self.address_str = f"{address[0]}:{address[1]}"
        self.address_bytes = self.address_str.encode()

    @property
    def healthy(self) -> bool:
        return self.health_status in (UNKNOWN, HEALTHY) and not self.outlier_ejected

    def health_flags(self) -> str:
        return _HEALTH_NAMES.get(self.health_status, "healthy")

    def __repr__(self):
        return (f"<Host {self.address_str} w={self.weight} "
                f"{'healthy' if self.healthy else 'unhealthy'} rq_active={self.stats.rq_active}>")
