"""Outlier detection: Envoy's ``source/common/upstream/outlier_detection_impl.cc``, sans-IO.

One ``Detector`` per cluster with outlier_detection. It owns a ``HostMonitor`` per host
(``host.outlier``); the router reports each attempt's outcome to it:

* ``put_http_status(code)`` for every response head (``Filter::onUpstreamHeaders``),
* ``put_result(LOCAL_ORIGIN_CONNECT_SUCCESS)`` when a connection is handed to the request
  (``UpstreamRequest::onPoolReady``),
* ``put_result(LOCAL_ORIGIN_CONNECT_FAILED)`` for a reset or connect failure other than a circuit
  breaker overflow (``Filter::onUpstreamReset``),
* ``put_result(LOCAL_ORIGIN_TIMEOUT, 504)`` for a per-try or route timeout before the response.

Without ``split_external_local_origin_errors`` local-origin results count as HTTP codes (connect
failure 503, timeout its code, connect success nothing); with it they feed their own
consecutive counter and success-rate monitor.

Detection rules, as Envoy:

* consecutive: the counter reaching exactly the threshold reports the host (a host already
  ejected is ignored and its counter not reset; unejection resets all counters). A 502/503/504
  counts as gateway failure *and* 5xx; the gateway report comes first.
* every ``interval``: hosts whose ``min(base * backoff, max) + jitter`` has elapsed since their
  ejection return; each host's success-rate bucket rolls over; success-rate ejection (hosts
  with ``success_rate_request_volume`` requests, at least ``success_rate_minimum_hosts`` of
  them, rate below ``mean - stdev * factor / 1000``, population stdev) and failure-percentage
  ejection (``100 - rate >= threshold``) run for external then local-origin results; hosts not
  ejected that were returned at least one interval ago have their backoff decremented.
* ``ejectHost``: allowed while ``100 * (active + 1) / hosts <= max_ejection_percent`` (or, with
  ``always_eject_one_host``, when none is ejected), else ``ejections_overflow``; then enforced
  with probability ``enforcing_*`` %; an enforced ejection takes a jitter
  ``rng % (max_jitter + 1)`` ms and raises the backoff while ``backoff * base < max + base``.

Envoy posts consecutive-error ejections to its main thread; here there is one thread, so they
happen at once, in the same order. Like Envoy, a success-rate pass does not re-check whether an
earlier rule of the same pass already ejected the host.

Time comes from an injected clock (``time()`` seconds, ``call_at``): the event loop, or a fake.
"""

from __future__ import annotations

import math
import random

from meshproxy.stats import stat_block

# Stats in the order Envoy 1.40 lists them under cluster.<name>.outlier_detection.
# (ejections_detected_degradation belongs to detect_degraded_hosts, not implemented: stays 0.)
OutlierStats = stat_block(
    "OutlierStats",
    counters=(
        "ejections_consecutive_5xx", "ejections_detected_consecutive_5xx",
        "ejections_detected_consecutive_gateway_failure",
        "ejections_detected_consecutive_local_origin_failure", "ejections_detected_degradation",
        "ejections_detected_failure_percentage",
        "ejections_detected_local_origin_failure_percentage",
        "ejections_detected_local_origin_success_rate", "ejections_detected_success_rate",
        "ejections_enforced_consecutive_5xx", "ejections_enforced_consecutive_gateway_failure",
        "ejections_enforced_consecutive_local_origin_failure",
        "ejections_enforced_failure_percentage",
        "ejections_enforced_local_origin_failure_percentage",
        "ejections_enforced_local_origin_success_rate", "ejections_enforced_success_rate",
        "ejections_enforced_total", "ejections_overflow", "ejections_success_rate",
        "ejections_total",
    ),
    gauges=("ejections_active",),
)

# envoy.data.cluster.v3.OutlierEjectionType
CONSECUTIVE_5XX = "CONSECUTIVE_5XX"
CONSECUTIVE_GATEWAY_FAILURE = "CONSECUTIVE_GATEWAY_FAILURE"
CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "CONSECUTIVE_LOCAL_ORIGIN_FAILURE"
SUCCESS_RATE = "SUCCESS_RATE"
SUCCESS_RATE_LOCAL_ORIGIN = "SUCCESS_RATE_LOCAL_ORIGIN"
FAILURE_PERCENTAGE = "FAILURE_PERCENTAGE"
FAILURE_PERCENTAGE_LOCAL_ORIGIN = "FAILURE_PERCENTAGE_LOCAL_ORIGIN"

# type -> (detected counter, enforced counter, enforcing_* config field)
_TYPES = {
    CONSECUTIVE_5XX: ("ejections_detected_consecutive_5xx", "ejections_enforced_consecutive_5xx",
                      "enforcing_consecutive_5xx"),
    CONSECUTIVE_GATEWAY_FAILURE: ("ejections_detected_consecutive_gateway_failure",
                                  "ejections_enforced_consecutive_gateway_failure",
                                  "enforcing_consecutive_gateway_failure"),
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE: ("ejections_detected_consecutive_local_origin_failure",
                                       "ejections_enforced_consecutive_local_origin_failure",
                                       "enforcing_consecutive_local_origin_failure"),
    SUCCESS_RATE: ("ejections_detected_success_rate", "ejections_enforced_success_rate",
                   "enforcing_success_rate"),
    SUCCESS_RATE_LOCAL_ORIGIN: ("ejections_detected_local_origin_success_rate",
                                "ejections_enforced_local_origin_success_rate",
                                "enforcing_local_origin_success_rate"),
    FAILURE_PERCENTAGE: ("ejections_detected_failure_percentage",
                         "ejections_enforced_failure_percentage", "enforcing_failure_percentage"),
    FAILURE_PERCENTAGE_LOCAL_ORIGIN: ("ejections_detected_local_origin_failure_percentage",
                                      "ejections_enforced_local_origin_failure_percentage",
                                      "enforcing_failure_percentage_local_origin"),
}

# Upstream::Outlier::Result
EXT_ORIGIN_REQUEST_SUCCESS = 0
EXT_ORIGIN_REQUEST_FAILED = 1
LOCAL_ORIGIN_CONNECT_SUCCESS = 2
LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL = 3
LOCAL_ORIGIN_CONNECT_FAILED = 4
LOCAL_ORIGIN_TIMEOUT = 5

EXTERNAL, LOCAL = 0, 1   # success-rate monitor kinds


class _Rate:
    """``SuccessRateMonitor``: the current interval's counts and the last complete interval's."""

    __slots__ = ("total", "success", "last_total", "last_success", "rate")

    def __init__(self):
        self.total = self.success = self.last_total = self.last_success = 0
        self.rate = -1.0          # shown by /clusters as success_rate

    def roll(self):
        self.last_total, self.last_success = self.total, self.success
        self.total = self.success = 0


class HostMonitor:
    """``DetectorHostMonitorImpl``: one host's counters and ejection state."""

    __slots__ = ("detector", "host", "consecutive_5xx", "consecutive_gateway_failure",
                 "consecutive_local_origin_failure", "rates", "num_ejections", "last_ejection",
                 "last_unejection", "backoff", "jitter_us")

    def __init__(self, detector, host):
        self.detector = detector
        self.host = host
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.consecutive_local_origin_failure = 0
        self.rates = (_Rate(), _Rate())
        self.num_ejections = 0
        self.last_ejection = None     # µs on the detector's clock
        self.last_unejection = None
        self.backoff = 0              # eject_time_backoff_
        self.jitter_us = 0

    # ------------------------------------------------------------------ results

    def put_http_status(self, code: int) -> None:
        ext = self.rates[EXTERNAL]
        ext.total += 1
        if 500 <= code < 600:
            d = self.detector
            cfg = d.config
            if code == 502 or code == 503 or code == 504:
                self.consecutive_gateway_failure += 1
                if self.consecutive_gateway_failure == cfg.consecutive_gateway_failure:
                    d.on_consecutive_error(self, CONSECUTIVE_GATEWAY_FAILURE)
            else:
                self.consecutive_gateway_failure = 0
            self.consecutive_5xx += 1
            if self.consecutive_5xx == cfg.consecutive_5xx:
                d.on_consecutive_error(self, CONSECUTIVE_5XX)
        else:
            ext.success += 1
            self.consecutive_5xx = 0
            self.consecutive_gateway_failure = 0

    def put_result(self, result: int, code: int | None = None) -> None:
        if self.detector.config.split_external_local_origin_errors:
            if result == LOCAL_ORIGIN_CONNECT_SUCCESS or \
                    result == LOCAL_ORIGIN_CONNECT_SUCCESS_FINAL:
                self._local_success()
            elif result == LOCAL_ORIGIN_TIMEOUT or result == LOCAL_ORIGIN_CONNECT_FAILED:
                self._local_failure()
            elif result == EXT_ORIGIN_REQUEST_FAILED:
                self.put_http_status(503)
            else:   # EXT_ORIGIN_REQUEST_SUCCESS
                self.put_http_status(200)
                self._local_success()
            return
        # putResultNoLocalExternalSplit: everything is an HTTP code (resultToHttpCode).
        if code is not None:
            self.put_http_status(code)
        elif result == LOCAL_ORIGIN_CONNECT_FAILED:
            self.put_http_status(503)
        elif result == LOCAL_ORIGIN_TIMEOUT:
            self.put_http_status(504)
        elif result == EXT_ORIGIN_REQUEST_FAILED:
            self.put_http_status(500)
        elif result != LOCAL_ORIGIN_CONNECT_SUCCESS:
            self.put_http_status(200)

    def _local_failure(self) -> None:
        self.rates[LOCAL].total += 1
        self.consecutive_local_origin_failure += 1
        if self.consecutive_local_origin_failure == \
                self.detector.config.consecutive_local_origin_failure:
            self.detector.on_consecutive_error(self, CONSECUTIVE_LOCAL_ORIGIN_FAILURE)

    def _local_success(self) -> None:
        r = self.rates[LOCAL]
        r.total += 1
        r.success += 1
        self.consecutive_local_origin_failure = 0

    # ------------------------------------------------------------------ for /clusters

    def success_rate(self, kind: int = EXTERNAL) -> float:
        return self.rates[kind].rate

    def __repr__(self):
        return (f"<HostMonitor {self.host.address_str} 5xx={self.consecutive_5xx} "
                f"gw={self.consecutive_gateway_failure} "
                f"local={self.consecutive_local_origin_failure} "
                f"ejections={self.num_ejections} backoff={self.backoff}"
                f"{' ejected' if self.host.outlier_ejected else ''}>")


class Detector:
    """``DetectorImpl``. ``on_change(host)`` runs after a host is ejected or returned (the
    cluster rebuilds its load balancer); ``rng`` has ``getrandbits`` (Envoy's random())."""

    def __init__(self, config, clock, on_change=None, rng=None):
        self.config = config
        self.clock = clock
        self.on_change = on_change
        self.rng = rng or random.Random()
        self.stats = OutlierStats()
        self.monitors: dict = {}          # host -> HostMonitor, in insertion order
        self.active = 0                   # ejections_active_helper_ value
        self.sr_average = [-1.0, -1.0]    # success_rate_average / ejection threshold, by kind
        self.sr_threshold = [-1.0, -1.0]
        self._timer = None

    def _now(self) -> int:
        # Whole microseconds: float seconds from the clock would make exact boundaries
        # (ejected for exactly base_ejection_time) depend on rounding.
        return round(self.clock.time() * 1e6)

    # ------------------------------------------------------------------ membership

    def add_host(self, host) -> None:
        m = host.outlier = HostMonitor(self, host)
        self.monitors[host] = m

    def remove_host(self, host) -> None:
        m = self.monitors.pop(host, None)
        if m is None:
            return
        if host.outlier_ejected:
            self.active -= 1
            self.stats.ejections_active -= 1
        host.outlier = None

    def start(self) -> None:
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._timer = self.clock.call_later(self.config.interval_ms / 1000.0, self.on_interval)

    # ------------------------------------------------------------------ ejection

    def _enforced(self, type_) -> bool:
        """``runtime.featureEnabled(key, percent)``: ``random % 100 < percent``."""
        pct = getattr(self.config, _TYPES[type_][2])
        return self.rng.getrandbits(64) % 100 < pct

    def on_consecutive_error(self, monitor, type_) -> None:
        """``onConsecutiveErrorWorker``."""
        host = monitor.host
        if self.monitors.get(host) is not monitor or host.outlier_ejected:
            return
        s = self.stats
        setattr(s, _TYPES[type_][0], getattr(s, _TYPES[type_][0]) + 1)
        self._eject(monitor, type_)
        if type_ == CONSECUTIVE_5XX:
            s.ejections_consecutive_5xx += 1     # deprecated counter, still kept by Envoy
            monitor.consecutive_5xx = 0
        elif type_ == CONSECUTIVE_GATEWAY_FAILURE:
            monitor.consecutive_gateway_failure = 0
        else:
            monitor.consecutive_local_origin_failure = 0

    def _eject(self, monitor, type_) -> None:
        """``ejectHost``."""
        cfg = self.config
        s = self.stats
        max_pct = min(100, cfg.max_ejection_percent)
        should = 100.0 * (self.active + 1) / len(self.monitors) <= max_pct
        if cfg.always_eject_one_host:
            should = self.active == 0 or should
        if not should:
            s.ejections_overflow += 1
            return
        if type_ == CONSECUTIVE_5XX or type_ == SUCCESS_RATE:
            s.ejections_total += 1               # deprecated
        if not self._enforced(type_):
            return
        self.active += 1
        s.ejections_active += 1
        s.mark_used("ejections_active")
        s.ejections_enforced_total += 1
        setattr(s, _TYPES[type_][1], getattr(s, _TYPES[type_][1]) + 1)
        host = monitor.host
        host.outlier_ejected = True
        monitor.num_ejections += 1
        monitor.last_ejection = self._now()
        jitter_ms = self.rng.getrandbits(64) % (cfg.max_ejection_time_jitter_ms + 1)
        monitor.jitter_us = jitter_ms * 1000
        base = cfg.base_ejection_time_ms
        if monitor.backoff * base < cfg.max_ejection_time_ms + base:
            monitor.backoff += 1
        if self.on_change is not None:
            self.on_change(host)

    def uneject(self, monitor) -> None:
        """``unejectHost``: back in service, consecutive counters cleared."""
        self.active -= 1
        self.stats.ejections_active -= 1
        host = monitor.host
        host.outlier_ejected = False
        monitor.consecutive_5xx = 0
        monitor.consecutive_gateway_failure = 0
        monitor.consecutive_local_origin_failure = 0
        monitor.last_unejection = self._now()
        if self.on_change is not None:
            self.on_change(host)

    # ------------------------------------------------------------------ interval

    def on_interval(self) -> None:
        """``onIntervalTimer``."""
        self._timer = None
        cfg = self.config
        now = self._now()
        base_us = cfg.base_ejection_time_ms * 1000
        max_us = cfg.max_ejection_time_ms * 1000
        for host, m in list(self.monitors.items()):
            if host.outlier_ejected and \
                    min(base_us * m.backoff, max_us) + m.jitter_us <= now - m.last_ejection:
                self.uneject(m)
            for r in m.rates:
                r.roll()
                r.rate = -1.0
        self._success_rate_pass(EXTERNAL)
        self._success_rate_pass(LOCAL)
        interval_us = cfg.interval_ms * 1000
        for host, m in self.monitors.items():
            if not host.outlier_ejected and m.last_unejection is not None and \
                    now - m.last_unejection >= interval_us and m.backoff:
                m.backoff -= 1
        self._arm()

    def _success_rate_pass(self, kind: int) -> None:
        """``processSuccessRateEjections`` for external (0) or local-origin (1) results."""
        cfg = self.config
        s = self.stats
        self.sr_average[kind] = self.sr_threshold[kind] = -1.0
        n = len(self.monitors)
        if n < cfg.success_rate_minimum_hosts and n < cfg.failure_percentage_minimum_hosts:
            return
        sr_volume = cfg.success_rate_request_volume
        fp_volume = cfg.failure_percentage_request_volume
        sr_hosts, fp_hosts = [], []
        total = 0.0
        for host, m in self.monitors.items():
            if host.outlier_ejected:
                continue
            r = m.rates[kind]
            if not r.last_total:
                continue
            rate = r.last_success * 100.0 / r.last_total
            volume = r.last_total
            if volume >= min(sr_volume, fp_volume):
                r.rate = rate
            if volume >= sr_volume:
                sr_hosts.append((m, rate))
                total += rate
            if volume >= fp_volume:
                fp_hosts.append((m, rate))
        if sr_hosts and len(sr_hosts) >= cfg.success_rate_minimum_hosts:
            mean, threshold = success_rate_threshold(
                total, [r for _, r in sr_hosts], cfg.success_rate_stdev_factor / 1000.0)
            self.sr_average[kind] = mean
            self.sr_threshold[kind] = threshold
            type_ = SUCCESS_RATE if kind == EXTERNAL else SUCCESS_RATE_LOCAL_ORIGIN
            for m, rate in sr_hosts:
                if rate < threshold:
                    s.ejections_success_rate += 1    # deprecated
                    setattr(s, _TYPES[type_][0], getattr(s, _TYPES[type_][0]) + 1)
                    self._eject(m, type_)
        if fp_hosts and len(fp_hosts) >= cfg.failure_percentage_minimum_hosts:
            threshold = float(cfg.failure_percentage_threshold)
            type_ = FAILURE_PERCENTAGE if kind == EXTERNAL else FAILURE_PERCENTAGE_LOCAL_ORIGIN
            for m, rate in fp_hosts:
                if 100.0 - rate >= threshold:
                    setattr(s, _TYPES[type_][0], getattr(s, _TYPES[type_][0]) + 1)
                    self._eject(m, type_)

    def __repr__(self):
        return (f"<Detector {len(self.monitors)} hosts, {self.active} ejected, "
                f"interval={self.config.interval_ms}ms>")


def success_rate_threshold(total: float, rates: list, factor: float) -> tuple[float, float]:
    """``successRateEjectionThreshold``: (mean, mean - factor * population stdev)."""
    mean = total / len(rates)
    variance = 0.0
    for r in rates:
        variance += (r - mean) ** 2
    variance /= len(rates)
    return mean, mean - factor * math.sqrt(variance)
