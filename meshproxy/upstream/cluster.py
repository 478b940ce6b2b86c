"""A cluster at run time: its hosts, load balancer, connection pools, stats and breakers."""

from __future__ import annotations

from meshproxy.stats import stat_block
from meshproxy.upstream.host import Host
from meshproxy.upstream.lb import make_lb

# Envoy's cluster stats (docs: configuration/upstream/cluster_manager/cluster_stats).
ClusterStats = stat_block(
    "ClusterStats",
    counters=(
        "upstream_cx_total", "upstream_cx_http1_total", "upstream_cx_http2_total",
        "upstream_cx_connect_fail", "upstream_cx_connect_timeout", "upstream_cx_idle_timeout",
        "upstream_cx_max_duration_reached", "upstream_cx_connect_attempts_exceeded",
        "upstream_cx_overflow", "upstream_cx_destroy", "upstream_cx_destroy_local",
        "upstream_cx_destroy_remote", "upstream_cx_destroy_with_active_rq",
        "upstream_cx_destroy_local_with_active_rq", "upstream_cx_destroy_remote_with_active_rq",
        "upstream_cx_close_notify", "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total",
        "upstream_cx_protocol_error", "upstream_cx_max_requests", "upstream_cx_none_healthy",
        "upstream_rq_total", "upstream_rq_completed", "upstream_rq_pending_total",
        "upstream_rq_pending_overflow", "upstream_rq_pending_failure_eject",
        "upstream_rq_cancelled", "upstream_rq_maintenance_mode", "upstream_rq_timeout",
        "upstream_rq_max_duration_reached", "upstream_rq_per_try_timeout",
        "upstream_rq_per_try_idle_timeout", "upstream_rq_rx_reset", "upstream_rq_tx_reset",
        "upstream_rq_retry", "upstream_rq_retry_backoff_exponential",
        "upstream_rq_retry_backoff_ratelimited", "upstream_rq_retry_limit_exceeded",
        "upstream_rq_retry_success", "upstream_rq_retry_overflow", "upstream_flow_control_paused_reading_total",
        "upstream_flow_control_resumed_reading_total", "upstream_flow_control_backed_up_total",
        "upstream_flow_control_drained_total", "upstream_internal_redirect_failed_total",
        "upstream_internal_redirect_succeeded_total",
        "membership_change", "lb_healthy_panic", "lb_zone_no_capacity_left",
        "update_attempt", "update_success", "update_failure", "update_empty",
        "update_no_rebuild", "assignment_timeout_received", "assignment_stale",
        "retry_or_shadow_abandoned", "upstream_rq_1xx", "upstream_rq_2xx", "upstream_rq_3xx",
        "upstream_rq_4xx", "upstream_rq_5xx",
    ),
    gauges=(
        "upstream_cx_active", "upstream_cx_rx_bytes_buffered", "upstream_cx_tx_bytes_buffered",
        "upstream_rq_active", "upstream_rq_pending_active", "membership_healthy",
        "membership_degraded", "membership_excluded", "membership_total", "max_host_weight",
        "version", "warming_state",
    ),
    extra=("codes",),
)

CircuitBreakerStats = stat_block(
    "CircuitBreakerStats",
    gauges=("cx_open", "cx_pool_open", "rq_open", "rq_pending_open", "rq_retry_open",
            "remaining_cx", "remaining_pending", "remaining_rq", "remaining_retries"),
)


class Cluster:
    """Runtime state of one cluster. Hosts come from the config (STATIC), DNS, or EDS."""

    def __init__(self, config, loop, pool_factory):
        self.config = config
        self.name = config.name
        self.loop = loop
        self.stats = ClusterStats()
        self.stats.codes = {}
        self.stats.mark_used("upstream_cx_active", "upstream_rq_active",
                             "upstream_rq_pending_active", "membership_healthy",
                             "membership_total", "warming_state", "membership_degraded",
                             "membership_excluded")
        self.cb_stats = CircuitBreakerStats()
        self.cb_stats.mark_used("cx_open", "cx_pool_open", "rq_open", "rq_pending_open")
        self.thresholds = config.thresholds
        self.pool_factory = pool_factory
        self.lb = make_lb(config.lb_policy, config)
        self.hosts: list[Host] = []
        self.cx_active = 0
        self.pending_active = 0
        self.rq_active = 0
        self.retries_active = 0
        self.added_via_api = False
        self.initialized = config.type == "STATIC" or config.type == "ORIGINAL_DST"
        self.dns = None
        if config.type == "STATIC":
            self.set_hosts([Host(self, e.address, e.hostname, e.weight, e.health_status,
                                 e.priority, e.locality, e.metadata, e.unix)
                            for e in config.endpoints])

    def set_hosts(self, hosts: list[Host]) -> None:
        """Replace the host set; pools of hosts that remain are kept (by address)."""
        old = {h.address: h for h in self.hosts}
        merged = []
        for h in hosts:
            prev = old.pop(h.address, None)
            if prev is not None:
                prev.weight = h.weight
                prev.health_status = h.health_status
                prev.priority = h.priority
                prev.metadata = h.metadata
                prev.locality = h.locality
                merged.append(prev)
            else:
                merged.append(h)
        for gone in old.values():
            if gone.pool is not None:
                gone.pool.close_all()
        changed = len(old) > 0 or len(merged) != len(self.hosts) or \
            any(a is not b for a, b in zip(merged, self.hosts))
        self.hosts = merged
        self.lb.update(merged)
        s = self.stats
        if changed:
            s.membership_change += 1
        s.membership_total = len(merged)
        s.membership_healthy = sum(1 for h in merged if h.healthy)
        s.membership_degraded = sum(1 for h in merged if h.health_status == 5)
        s.max_host_weight = max((h.weight for h in merged), default=0)

    def choose_host(self, ctx=None):
        return self.lb.choose(ctx)

    def pool_for(self, host):
        pool = host.pool
        if pool is None:
            pool = host.pool = self.pool_factory(host, self)
        return pool

    def record_response(self, status: int) -> None:
        s = self.stats
        codes = s.codes
        codes[status] = codes.get(status, 0) + 1
        cls = status // 100
        if cls == 2:
            s.upstream_rq_2xx += 1
        elif cls == 5:
            s.upstream_rq_5xx += 1
        elif cls == 4:
            s.upstream_rq_4xx += 1
        elif cls == 3:
            s.upstream_rq_3xx += 1
        elif cls == 1:
            s.upstream_rq_1xx += 1

    def stat_items(self, prefix: str):
        """Per-code counters (``upstream_rq_200``) and circuit breaker gauges."""
        for code, n in self.stats.codes.items():
            yield f"{prefix}upstream_rq_{code}", "counter", n, None
        cb = self.cb_stats
        th = self.thresholds
        cb.cx_open = int(self.cx_active >= th.max_connections)
        cb.cx_pool_open = cb.cx_open
        cb.rq_open = int(self.rq_active >= th.max_requests)
        cb.rq_pending_open = int(self.pending_active >= th.max_pending_requests)
        cb.rq_retry_open = int(self.retries_active >= th.max_retries)
        names = ["cx_open", "cx_pool_open", "rq_open", "rq_pending_open", "rq_retry_open"]
        if th.track_remaining:
            cb.remaining_cx = max(0, th.max_connections - self.cx_active)
            cb.remaining_pending = max(0, th.max_pending_requests - self.pending_active)
            cb.remaining_rq = max(0, th.max_requests - self.rq_active)
            cb.remaining_retries = max(0, th.max_retries - self.retries_active)
            names += ["remaining_cx", "remaining_pending", "remaining_rq", "remaining_retries"]
        for n in names:
            yield f"{prefix}circuit_breakers.default.{n}", "gauge", getattr(cb, n), True

    def close(self) -> None:
        if self.dns is not None:
            self.dns.stop()
        for h in self.hosts:
            if h.pool is not None:
                h.pool.close_all()

    def __repr__(self):
        return (f"<Cluster {self.name} {self.config.type} {len(self.hosts)} hosts "
                f"rq_active={self.rq_active} cx_active={self.cx_active}>")
