"""A cluster at run time: its hosts, load balancer, connection pools, stats and breakers."""

from __future__ import annotations

from meshproxy.stats import stat_block
from meshproxy.upstream.host import Host
from meshproxy.upstream.lb import make_lb

# Envoy's cluster stats (docs: configuration/upstream/cluster_manager/cluster_stats), the names
# Envoy 1.40 lists for every cluster. Per-response-code counters are created on first use, as
# Envoy's CodeStats does, so they are not in the block (see ``Cluster.charge``).
ClusterStats = stat_block(
    "ClusterStats",
    counters=(
        "assignment_stale", "assignment_timeout_received", "assignment_use_cached", "bind_errors",
        "lb_healthy_panic", "lb_local_cluster_not_ok", "lb_recalculate_zone_structures",
        "lb_subsets_created", "lb_subsets_fallback", "lb_subsets_fallback_panic",
        "lb_subsets_removed", "lb_subsets_selected", "lb_zone_cluster_too_small",
        "lb_zone_no_capacity_left", "lb_zone_routing_all_directly", "lb_zone_routing_cross_zone",
        "lb_zone_routing_sampled", "membership_change", "original_dst_host_invalid",
        "retry_or_shadow_abandoned", "update_attempt", "update_empty", "update_failure",
        "update_no_rebuild", "update_success", "upstream_cx_close_notify",
        "upstream_cx_connect_attempts_exceeded", "upstream_cx_connect_fail",
        "upstream_cx_connect_timeout", "upstream_cx_connect_with_0_rtt", "upstream_cx_destroy",
        "upstream_cx_destroy_local", "upstream_cx_destroy_local_with_active_rq",
        "upstream_cx_destroy_remote", "upstream_cx_destroy_remote_with_active_rq",
        "upstream_cx_destroy_with_active_rq", "upstream_cx_http1_total",
        "upstream_cx_http2_total", "upstream_cx_http3_total", "upstream_cx_idle_timeout",
        "upstream_cx_max_duration_reached", "upstream_cx_max_requests",
        "upstream_cx_none_healthy", "upstream_cx_overflow", "upstream_cx_pool_overflow",
        "upstream_cx_preconnect_skipped", "upstream_cx_protocol_error",
        "upstream_cx_rx_bytes_total", "upstream_cx_total", "upstream_cx_tx_bytes_total",
        "upstream_flow_control_backed_up_total", "upstream_flow_control_drained_total",
        "upstream_flow_control_paused_reading_total",
        "upstream_flow_control_resumed_reading_total", "upstream_http3_broken",
        "upstream_internal_redirect_failed_total", "upstream_internal_redirect_succeeded_total",
        "upstream_rq_0rtt", "upstream_rq_active_overflow", "upstream_rq_cancelled",
        "upstream_rq_completed", "upstream_rq_maintenance_mode",
        "upstream_rq_max_duration_reached", "upstream_rq_pending_failure_eject",
        "upstream_rq_pending_overflow", "upstream_rq_pending_total",
        "upstream_rq_per_try_idle_timeout", "upstream_rq_per_try_timeout", "upstream_rq_retry",
        "upstream_rq_retry_backoff_exponential", "upstream_rq_retry_backoff_ratelimited",
        "upstream_rq_retry_limit_exceeded", "upstream_rq_retry_overflow",
        "upstream_rq_retry_success", "upstream_rq_rx_reset", "upstream_rq_rx_reset_no_error",
        "upstream_rq_timeout", "upstream_rq_total", "upstream_rq_tx_reset",
    ),
    gauges=(
        "lb_subsets_active", "max_host_weight", "membership_degraded", "membership_excluded",
        "membership_healthy", "membership_total", "upstream_cx_active",
        "upstream_cx_rx_bytes_buffered", "upstream_cx_tx_bytes_buffered",
        "upstream_queue_overloaded", "upstream_rq_active", "upstream_rq_pending_active",
        "version", "warming_state",
    ),
    # Response codes charged by the router (Envoy's CodeStats), by origin; reported through
    # ``Cluster.stat_items`` and zeroed by /reset_counters.
    counter_maps=("external_codes", "internal_codes", "retry_codes"),
)

# Used gauges in Envoy's ``/stats?usedonly`` for a fresh cluster.
_USED_GAUGES = ("upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active",
                "membership_healthy", "membership_total", "warming_state",
                "membership_degraded", "membership_excluded")
_CB_GAUGES = ("cx_open", "cx_pool_open", "rq_open", "rq_pending_open", "rq_retry_open")
_HTTP1_COUNTERS = ("dropped_headers_with_underscores", "metadata_not_supported_error",
                   "requests_rejected_with_underscores_in_headers", "response_flood")
_GROUPS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def code_stat_items(prefix: str, codes: dict):
    """Envoy's CodeStats names for per-code counts: ``upstream_rq_<code>`` (``unknown`` outside
    100-599), ``upstream_rq_<N>xx`` and ``upstream_rq_completed``."""
    out: dict[str, int] = {}
    for code, n in codes.items():
        if 100 <= code < 600:
            key = f"{prefix}upstream_rq_{code}"
            g = f"{prefix}upstream_rq_{_GROUPS[code // 100]}"
            out[g] = out.get(g, 0) + n
        else:
            key = f"{prefix}upstream_rq_unknown"
        out[key] = out.get(key, 0) + n
    return out


def _open(count: int, limit: int) -> int:
    """A breaker's ``*_open`` gauge. Envoy sets it when the resource count changes, so a
    limit of 0 that nothing ever took shows 0, not 1."""
    return int(count >= limit and (count > 0 or limit > 0))


class Cluster:
    """Runtime state of one cluster. Hosts come from the config (STATIC), DNS, or EDS."""

    def __init__(self, config, loop, pool_factory, rng=None):
        self.config = config
        self.name = config.name
        self.loop = loop
        self.stats = ClusterStats()
        self.stats.mark_used(*_USED_GAUGES)
        # Response codes charged by the router (Envoy's CodeStats), by internal/external origin,
        # and those of responses that were retried (``retry.``).
        self.external_codes = self.stats.external_codes
        self.internal_codes = self.stats.internal_codes
        self.retry_codes = self.stats.retry_codes
        self.transport_matches = 0   # default.total_match_count: hosts given a transport socket
        # Envoy's circuit breaker gauges show as used once a pool has touched them.
        self.cb_used = False
        self.thresholds = config.thresholds
        self.pool_factory = pool_factory
        self.lb = make_lb(config.lb_policy, config, self.stats, rng)
        if type(self).choose_host is Cluster.choose_host:
            # One frame less per request: the load balancer's own method stands in.
            self.choose_host = self.lb.choose
        self.hosts: list[Host] = []
        self.cx_active = 0
        self.pending_active = 0
        self.rq_active = 0
        self.retries_active = 0
        self.added_via_api = False
        self.initialized = config.type == "STATIC" or config.type == "ORIGINAL_DST"
        self.dns = None
        self.lb.update(())
        self.cm_stats = None        # the cluster manager's stats (update merging), if managed
        self._last_update = None    # when the load balancer last took a host-set update
        self._merge_timer = None
        self.outlier = None
        if config.outlier is not None:
            from meshproxy.upstream.outlier import Detector
            self.outlier = Detector(config.outlier, loop, self._outlier_changed, rng)
            if loop is not None:
                self.outlier.start()
        if config.type == "STRICT_DNS":
            self.stats.max_host_weight = 1
        if config.type == "STATIC":
            self.set_hosts([Host(self, e.address, e.hostname, e.weight, e.health_status,
                                 e.priority, e.locality, e.metadata, e.unix, e.locality_weight)
                            for e in config.endpoints])

    def set_hosts(self, hosts: list[Host]) -> None:
        """Replace the host set; hosts that remain (same address) keep their pools and stats."""
        old = {h.address: h for h in self.hosts}
        before = self._by_priority(self.hosts)
        merged = []
        for h in hosts:
            prev = old.pop(h.address, None)
            if prev is not None:
                prev.weight = h.weight
                prev.health_status = h.health_status
                prev.priority = h.priority
                prev.metadata = h.metadata
                prev.locality = h.locality
                prev.hostname = h.hostname
                merged.append(prev)
            else:
                self.transport_matches += 1
                merged.append(h)
        detector = self.outlier
        for gone in old.values():
            if gone.pool is not None:
                gone.pool.drain()
            if detector is not None:
                detector.remove_host(gone)
        if detector is not None:
            for h in merged:
                if h.outlier is None:
                    detector.add_host(h)
        if self._merge_timer is not None:
            # A membership update goes out at once and carries any merged health change.
            self._merge_timer.cancel()
            self._merge_timer = None
            if self.cm_stats is not None:
                self.cm_stats.update_merge_cancelled += 1
        if self.hosts and self.loop is not None:
            self._last_update = self.loop.time()
        self.hosts = merged
        self.lb.update(merged)
        s = self.stats
        # Envoy counts membership_change once per priority level whose host list changed.
        after = self._by_priority(merged)
        for prio in set(before) | set(after):
            a, b = before.get(prio, []), after.get(prio, [])
            if len(a) != len(b) or any(x is not y for x, y in zip(a, b)):
                s.membership_change += 1
        s.membership_total = len(merged)
        self._count_health()
        s.membership_excluded = sum(1 for h in merged if h.excluded)
        if self.config.type == "STRICT_DNS" or self.config.type == "EDS":
            # Only dynamic host lists (BaseDynamicClusterImpl::updateDynamicHostList) set it,
            # starting from 1 (Envoy 1.40 shows 1 for a STRICT_DNS name with no addresses).
            s.max_host_weight = max([1] + [h.weight for h in merged])

    def _count_health(self) -> None:
        s = self.stats
        s.membership_healthy = sum(1 for h in self.hosts if h.healthy)
        s.membership_degraded = sum(1 for h in self.hosts if h.degraded)

    def _outlier_changed(self, host) -> None:
        """A host was ejected or returned (Envoy's ``reloadHealthyHosts``): the membership
        gauges change at once; the load balancer takes it now or, as Envoy's cluster manager
        merges health-only updates (``scheduleUpdate``), at the end of the
        ``update_merge_window`` (1 s) when the previous update was less than a window ago."""
        self._count_health()
        cm = self.cm_stats
        window = self.config.update_merge_window_ms
        loop = self.loop
        if window and loop is not None:
            now = loop.time()
            last = self._last_update
            if last is not None and int((now - last) * 1000) <= window:
                if self._merge_timer is None:
                    self._merge_timer = loop.call_later(window / 1000.0, self._apply_merged)
                return
            if cm is not None:
                cm.update_out_of_merge_window += 1
            self._last_update = now
        if cm is not None:
            cm.cluster_updated += 1
        self.lb.update(self.hosts)

    def _apply_merged(self) -> None:
        self._merge_timer = None
        self._last_update = self.loop.time()
        if self.cm_stats is not None:
            self.cm_stats.cluster_updated_via_merge += 1
        self.lb.update(self.hosts)

    @staticmethod
    def _by_priority(hosts) -> dict:
        out: dict[int, list] = {}
        for h in hosts:
            out.setdefault(h.priority, []).append(h)
        return out

    def choose_host(self, ctx=None):
        return self.lb.choose(ctx)

    def pool_for(self, host):
        pool = host.pool
        if pool is None:
            pool = host.pool = self.pool_factory(host, self)
            self.cb_used = True
        return pool

    def max_retries(self) -> int:
        """The retry circuit breaker's limit now: ``max_retries``, or with a ``retry_budget``
        ``max(budget_percent% of active + pending requests, min_retry_concurrency)``
        (``ResourceManagerImpl::RetryBudgetImpl::max``)."""
        budget = self.thresholds.retry_budget
        if budget is None:
            return self.thresholds.max_retries
        return max(int(budget[0] / 100.0 * (self.pending_active + self.rq_active)), budget[1])

    def charge(self, status: int, internal: bool) -> None:
        """Count a response (from the upstream or the router's own) as Envoy's router does
        (``Filter::chargeUpstreamCode`` -> ``CodeStats::chargeResponseStat``)."""
        codes = self.internal_codes if internal else self.external_codes
        codes[status] = codes.get(status, 0) + 1
        self.stats.upstream_rq_completed += 1

    def charge_retry(self, status: int) -> None:
        """A response the router retries (``chargeBasicResponseStat`` under ``retry.``)."""
        codes = self.retry_codes
        codes[status] = codes.get(status, 0) + 1

    def stat_items(self, prefix: str):
        """Dynamic stats: per-code counters, circuit breaker gauges, HTTP/1 codec counters."""
        both: dict[int, int] = dict(self.external_codes)
        for code, n in self.internal_codes.items():
            both[code] = both.get(code, 0) + n
        for name, n in code_stat_items(prefix, both).items():
            if not name.endswith("upstream_rq_completed"):
                yield name, "counter", n, None
        for origin, codes in (("external.", self.external_codes),
                              ("internal.", self.internal_codes), ("retry.", self.retry_codes)):
            if codes:
                for name, n in code_stat_items(prefix + origin, codes).items():
                    yield name, "counter", n, None
                yield f"{prefix}{origin}upstream_rq_completed", "counter", sum(codes.values()), None
        yield f"{prefix}default.total_match_count", "counter", self.transport_matches, None
        if self.stats.upstream_cx_http1_total:
            for n in _HTTP1_COUNTERS:
                yield f"{prefix}http1.{n}", "counter", 0, None
        for prio, th in (("default", self.thresholds), ("high", self.config.high_thresholds)):
            default = prio == "default"
            cx = self.cx_active if default else 0
            pending = self.pending_active if default else 0
            rq = self.rq_active if default else 0
            retries = self.retries_active if default else 0
            vals = {"cx_open": _open(cx, th.max_connections), "cx_pool_open": 0,
                    "rq_open": _open(rq, th.max_requests),
                    "rq_pending_open": _open(pending, th.max_pending_requests),
                    "rq_retry_open": _open(retries, self.max_retries() if default
                                           else th.max_retries)}
            if th.track_remaining:
                vals.update(remaining_cx=max(0, th.max_connections - cx),
                            remaining_pending=max(0, th.max_pending_requests - pending),
                            remaining_rq=max(0, th.max_requests - rq),
                            remaining_retries=max(0, (self.max_retries() if default
                                                      else th.max_retries) - retries))
            for n, v in vals.items():
                used = (self.cb_used and default and n != "rq_retry_open") or None
                yield f"{prefix}circuit_breakers.{prio}.{n}", "gauge", v, used

    def extra_stat_blocks(self):
        """(name prefix, block) of the stats a cluster has only with some features:
        ``outlier_detection.*``, ``ring_hash_lb.*`` / ``maglev_lb.*``."""
        out = []
        if self.outlier is not None:
            out.append(("outlier_detection.", self.outlier.stats))
        lb_stats = getattr(self.lb, "lb_stats", None)
        if lb_stats is not None:
            out.append((self.lb.stat_prefix, lb_stats))
        return out

    def drain(self) -> None:
        """Removed or replaced over CDS: requests in flight finish on their connections, which
        then close; idle connections close now (Envoy drains the old cluster's pools)."""
        if self.dns is not None:
            self.dns.stop()
        for h in self.hosts:
            if h.pool is not None:
                h.pool.drain()

    def close(self) -> None:
        if self.dns is not None:
            self.dns.stop()
        if self.outlier is not None:
            self.outlier.stop()
        if self._merge_timer is not None:
            self._merge_timer.cancel()
            self._merge_timer = None
        for h in self.hosts:
            if h.pool is not None:
                h.pool.close_all()

    def __repr__(self):
        return (f"<Cluster {self.name} {self.config.type} {len(self.hosts)} hosts "
                f"rq_active={self.rq_active} cx_active={self.cx_active}>")
