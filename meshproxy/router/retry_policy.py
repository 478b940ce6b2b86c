"""``envoy.config.route.v3.RetryPolicy`` as an immutable object.

Istio puts a retry policy on every route (``connect-failure,refused-stream,unavailable,
cancelled,retriable-status-codes`` with 2 retries, previous_hosts predicate); it must load. The
retry state machine that acts on it lives with the router.
"""

from __future__ import annotations

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import duration, wrapped

# x-envoy-retry-on / retry_on values Envoy knows (router/retry_state_impl.cc).
GRPC_RETRY_ON = frozenset(("cancelled", "deadline-exceeded", "internal", "resource-exhausted",
                           "unavailable"))
KNOWN_RETRY_ON = frozenset((
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
    "envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
    "retriable-headers", "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
))


class RetryPolicy:
    __slots__ = ("retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout",
                 "retriable_status_codes", "retriable_headers", "retriable_request_headers",
                 "base_interval", "max_interval", "host_predicates",
                 "host_selection_retry_max_attempts", "retry_priority",
                 # derived once here, read by every request's RetryState
                 "base_ms", "max_ms", "previous_hosts", "retry_statuses", "grpc", "ratelimited",
                 "header_matchers", "request_matchers", "retry_headers")

    def __init__(self, **kw):
        for name in self.__slots__:
            setattr(self, name, kw.get(name))
        self.base_ms = int(self.base_interval * 1000)
        self.max_ms = int(self.max_interval * 1000)
        self.previous_hosts = any(p.endswith("previous_hosts") for p in self.host_predicates)
        on = self.retry_on
        statuses = set()
        if "5xx" in on:
            statuses.update(range(500, 600))
        if "gateway-error" in on:
            statuses.update((502, 503, 504))
        if "retriable-4xx" in on:
            statuses.add(409)
        if "retriable-status-codes" in on:
            statuses.update(self.retriable_status_codes)
        self.retry_statuses = frozenset(statuses)
        self.grpc = bool(on & GRPC_RETRY_ON)
        self.ratelimited = "envoy-ratelimited" in on
        self.header_matchers = self.header_matchers or ()
        self.request_matchers = self.request_matchers or ()
        self.retry_headers = bool(self.header_matchers) and "retriable-headers" in on

    def may_retry_headers(self, resp) -> bool:
        """False when no response with these headers could be retried under this policy
        (then the router skips the retry state altogether); True means: ask RetryState."""
        if resp.status in self.retry_statuses:
            return True
        if self.grpc and resp.get(b"grpc-status") is not None:
            return True
        if self.retry_headers and headers_match(self.header_matchers, resp):
            return True
        return self.ratelimited and resp.get(b"x-envoy-ratelimited") is not None

    def allows_request(self, req) -> bool:
        """``retriable_request_headers``: retry only requests that match one of them."""
        return any(m.match(req) for m in self.request_matchers)

    def __repr__(self):
        return f"<RetryPolicy {','.join(sorted(self.retry_on))} x{self.num_retries}>"


class _ResponseView:
    """A response as header matchers see a request: ``:status`` is a header there."""

    __slots__ = ("headers", "status")

    def __init__(self, resp):
        self.headers = resp.headers
        self.status = resp.status

    def get(self, name: bytes):
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def get_pseudo_or_header(self, name: bytes):
        if name == b":status":
            return b"%d" % self.status
        return None if name[:1] == b":" else self.get(name)


def headers_match(matchers, resp) -> bool:
    """Whether any of ``matchers`` (``retriable_headers``) matches response ``resp``."""
    view = _ResponseView(resp)
    return any(m.match(view) for m in matchers)


def parse_retry_on(value: str) -> frozenset:
    """Comma-separated retry conditions; unknown ones are ignored, as Envoy ignores them."""
    return frozenset(t.strip() for t in value.split(",") if t.strip() in KNOWN_RETRY_ON)


def build_retry_policy(p, path: str) -> RetryPolicy:
    base = 0.025
    max_iv = None
    if p.HasField("retry_back_off"):
        rb = p.retry_back_off
        bpath = join(path, "retry_back_off")
        # PGV: base_interval required and > 0; max_interval > 0 when set.
        if not rb.HasField("base_interval"):
            raise ConfigError(join(bpath, "base_interval"), "value is required")
        base = duration(rb, "base_interval", base)
        if base <= 0:
            raise ConfigError(join(bpath, "base_interval"), "value must be greater than 0s")
        max_iv = duration(rb, "max_interval", None)
        if max_iv is not None:
            if max_iv <= 0:
                raise ConfigError(join(bpath, "max_interval"), "value must be greater than 0s")
            if max_iv < base:
                # RetryPolicyImpl: Envoy's own wording
                raise ConfigError(join(bpath, "max_interval"),
                                  "retry_policy.max_interval must greater than or equal to the "
                                  "base_interval")
    if max_iv is None:
        max_iv = base * 10
    for i, h in enumerate(p.retry_host_predicate):
        if not h.HasField("typed_config"):
            # Envoy 1.40 finds extensions by type URL only (checked with scout's Istio 1.9 dump)
            raise ConfigError(f"{join(path, 'retry_host_predicate')}[{i}]",
                              f"Didn't find a registered implementation for '{h.name}' with "
                              f"type URL: ''")
    from meshproxy.router.matchers import build_header_matcher
    preds = tuple(h.name for h in p.retry_host_predicate)
    header_matchers = tuple(build_header_matcher(h, f"{join(path, 'retriable_headers')}[{i}]")
                            for i, h in enumerate(p.retriable_headers))
    request_matchers = tuple(
        build_header_matcher(h, f"{join(path, 'retriable_request_headers')}[{i}]")
        for i, h in enumerate(p.retriable_request_headers))
    return RetryPolicy(
        retry_on=parse_retry_on(p.retry_on),
        num_retries=wrapped(p, "num_retries", 1),
        per_try_timeout=duration(p, "per_try_timeout", None),
        per_try_idle_timeout=duration(p, "per_try_idle_timeout", None),
        retriable_status_codes=frozenset(p.retriable_status_codes),
        retriable_headers=tuple(p.retriable_headers),
        retriable_request_headers=tuple(p.retriable_request_headers),
        base_interval=base,
        max_interval=max_iv,
        host_predicates=preds,
        host_selection_retry_max_attempts=p.host_selection_retry_max_attempts or 1,
        retry_priority=p.retry_priority.name if p.HasField("retry_priority") else None,
        header_matchers=header_matchers,
        request_matchers=request_matchers,
    )
