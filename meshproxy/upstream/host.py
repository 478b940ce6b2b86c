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


class Host:
    """One endpoint of a cluster. ``address`` is ``(ip, port)`` for TCP or a path for a pipe.

    Health follows Envoy's EDS mapping (``upstream_impl.cc``, ``HostImpl`` health flags):
    UNHEALTHY and TIMEOUT set ``/failed_eds_health``, DEGRADED ``/degraded_eds_health`` (the host
    serves only the load the priority's degraded share is given), DRAINING
    ``/eds_status_draining`` (excluded from load balancing and from the health percentages).
    """

    __slots__ = ("cluster", "address", "hostname", "weight", "health_status", "priority",
                 "locality", "metadata", "stats", "pool", "address_bytes", "address_str",
                 "outlier_ejected", "outlier", "unix", "locality_weight")

    def __init__(self, cluster, address, hostname: str = "", weight: int = 1,
                 health_status: int = UNKNOWN, priority: int = 0, locality=None, metadata=None,
                 unix: bool = False, locality_weight: int = 0):
        self.cluster = cluster
        self.locality_weight = locality_weight    # LocalityLbEndpoints.load_balancing_weight
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
        self.outlier = None     # the outlier detector's HostMonitor, when the cluster has one
        self.set_address(address)

    def set_address(self, address) -> None:
        self.address = address
        if self.unix:
            self.address_str = str(address)
        elif ":" in address[0]:
            self.address_str = f"[{address[0]}]:{address[1]}"
        else:
            self.address_str = f"{address[0]}:{address[1]}"
        self.address_bytes = self.address_str.encode()

    @property
    def healthy(self) -> bool:
        return self.health_status in (UNKNOWN, HEALTHY) and not self.outlier_ejected

    @property
    def degraded(self) -> bool:
        return self.health_status == DEGRADED and not self.outlier_ejected

    @property
    def excluded(self) -> bool:
        return self.health_status == DRAINING

    def health_flags(self) -> str:
        """Envoy's ``healthFlagsToString``: the set flags in enum order, or ``healthy``."""
        out = ""
        if self.outlier_ejected:
            out += "/failed_outlier_check"
        st = self.health_status
        if st == UNHEALTHY or st == TIMEOUT:
            out += "/failed_eds_health"
        elif st == DEGRADED:
            out += "/degraded_eds_health"
        elif st == DRAINING:
            out += "/eds_status_draining"
        return out or "healthy"

    def __repr__(self):
        return (f"<Host {self.address_str} w={self.weight} p={self.priority} "
                f"{self.health_flags()} rq_active={self.stats.rq_active}>")
