"""Retry decisions for one routed request (Envoy's ``router/retry_state_impl.cc``), pure: the
router asks, this answers, the router does the I/O (STYLE.md §7). The RNG is injected.

What may be retried (docs: config/http/http_filters/router_filter, x-envoy-retry-on):

* a reset (connect failure, termination, protocol error, per-try timeout; never a circuit
  breaker overflow): with ``5xx``, ``gateway-error`` or ``reset``; connect failures also with
  ``connect-failure``;
* response headers: ``5xx`` any 5xx, ``gateway-error`` 502/503/504, ``retriable-4xx`` 409,
  ``retriable-status-codes`` the listed codes, gRPC conditions by ``grpc-status``,
  ``envoy-ratelimited`` only for responses carrying ``x-envoy-ratelimited``.

``should_retry`` then applies the budget: ``num_retries`` (or ``x-envoy-max-retries``) and the
cluster's ``max_retries`` circuit breaker (or its ``retry_budget``), counting ``upstream_rq_retry``,
``upstream_rq_retry_limit_exceeded``, ``upstream_rq_retry_overflow``,
``upstream_rq_retry_success`` (a retried request that ends without wanting another) and
``upstream_rq_retry_backoff_exponential``. Backoff is Envoy's jittered exponential: the n-th
retry waits ``random % ((2^n - 1) * base)`` ms, capped at ``max_interval`` (25 ms / 250 ms).

This module sits in ``upstream/`` only because of file ownership; it belongs beside the router.
"""

from __future__ import annotations

import random

from meshproxy.router.matchers import PRESENT, HeaderMatcher
from meshproxy.router.retry_policy import headers_match, parse_retry_on

YES, NO, LIMIT_EXCEEDED, OVERFLOW = "yes", "no", "limit_exceeded", "overflow"
_CONNECT_FAILURES = frozenset(("remote connection failure", "connection timeout",
                               "local connection failure"))
_GRPC = {b"1": "cancelled", b"4": "deadline-exceeded", b"8": "resource-exhausted",
         b"13": "internal", b"14": "unavailable"}


class RetryState:
    __slots__ = ("retry_on", "retries_left", "codes", "base_ms", "max_ms", "cluster", "rng",
                 "armed", "backoff_exp", "previous_hosts", "max_host_attempts", "attempted",
                 "per_try_timeout", "header_matchers")

    def __init__(self, policy, cluster, rng=None, retry_on_header: bytes | None = None,
                 max_retries_header: bytes | None = None, codes_header=None,
                 header_names: tuple | None = None):
        # Per request on every Istio route: take the policy's frozen values as they are.
        if policy is not None:
            retry_on = policy.retry_on
            n = policy.num_retries
            self.codes = policy.retriable_status_codes
            self.base_ms = policy.base_ms
            self.max_ms = policy.max_ms
            self.per_try_timeout = policy.per_try_timeout
            self.previous_hosts = policy.previous_hosts
            self.max_host_attempts = policy.host_selection_retry_max_attempts
            self.header_matchers = policy.header_matchers
        else:
            retry_on = frozenset()
            n = 1
            self.codes = frozenset()
            self.base_ms, self.max_ms = 25, 250
            self.per_try_timeout = None
            self.previous_hosts = False
            self.max_host_attempts = 1
            self.header_matchers = ()
        if retry_on_header:
            retry_on = retry_on | parse_retry_on(retry_on_header.decode("latin-1"))
        self.retry_on = retry_on
        if max_retries_header is not None and max_retries_header.isdigit():
            n = int(max_retries_header)
        self.retries_left = n
        if codes_header:
            self.codes = self.codes | codes_header    # x-envoy-retriable-status-codes
        if header_names:
            # x-envoy-retriable-header-names: a response carrying any of them is retriable
            # (under retriable-headers), as the route's retriable_headers.
            self.header_matchers = self.header_matchers + tuple(
                HeaderMatcher(n, PRESENT) for n in header_names)
        self.cluster = cluster
        self.rng = rng or random
        self.armed = False       # a retry was granted and holds a max_retries slot
        self.backoff_exp = 1
        self.attempted: list = []

    @property
    def enabled(self) -> bool:
        return bool(self.retry_on)

    # ---------------------------------------------------------------- decisions

    def would_retry_reset(self, reason: str) -> bool:
        on = self.retry_on
        if reason == "overflow":
            return False
        if "5xx" in on or "gateway-error" in on or "reset" in on:
            return True
        if "connect-failure" in on and reason in _CONNECT_FAILURES:
            return True
        return "refused-stream" in on and reason == "remote refused stream reset"

    def would_retry_headers(self, resp) -> bool:
        on = self.retry_on
        if resp.get(b"x-envoy-ratelimited") is not None:
            return "envoy-ratelimited" in on
        status = resp.status
        if "5xx" in on and 500 <= status < 600:
            return True
        if "gateway-error" in on and status in (502, 503, 504):
            return True
        if "retriable-4xx" in on and status == 409:
            return True
        if "retriable-status-codes" in on and status in self.codes:
            return True
        if "retriable-headers" in on and self.header_matchers and \
                headers_match(self.header_matchers, resp):
            return True
        grpc = resp.get(b"grpc-status")
        return grpc is not None and _GRPC.get(grpc) in on

    def should_retry(self, would: bool) -> str:
        """Apply the budget to a decision; YES means wait ``backoff()`` and try again."""
        stats = self.cluster.stats
        if self.armed and not would:
            stats.upstream_rq_retry_success += 1
        self.release()
        if not would:
            return NO
        if self.retries_left == 0:
            stats.upstream_rq_retry_limit_exceeded += 1
            return LIMIT_EXCEEDED
        self.retries_left -= 1
        cluster = self.cluster
        if cluster.retries_active >= cluster.max_retries():
            stats.upstream_rq_retry_overflow += 1
            return OVERFLOW
        self.armed = True
        cluster.retries_active += 1
        stats.upstream_rq_retry += 1
        stats.upstream_rq_retry_backoff_exponential += 1
        return YES

    def backoff(self) -> float:
        """Seconds to wait before the next attempt (jittered exponential backoff)."""
        base = ((1 << self.backoff_exp) - 1) * self.base_ms
        if base <= self.max_ms:
            self.backoff_exp += 1
        if base <= 0:
            return 0.0
        return min(self.rng.randrange(base), self.max_ms) / 1000.0

    def release(self) -> None:
        """Give back the max_retries slot a granted retry holds."""
        if self.armed:
            self.armed = False
            self.cluster.retries_active -= 1

    # ---------------------------------------------------------------- host selection

    def host_attempted(self, host) -> None:
        self.attempted.append(host)

    def reject_host(self, host) -> bool:
        """``previous_hosts`` predicate: avoid hosts this request already tried."""
        return self.previous_hosts and host in self.attempted

    def __repr__(self):
        return f"<RetryState {','.join(sorted(self.retry_on))} left={self.retries_left}>"
