"""The router's request control headers (Envoy's router filter docs, "HTTP header manipulation":
``x-envoy-upstream-rq-timeout-ms``, ``-per-try-timeout-ms``, ``x-envoy-retry-on``,
``x-envoy-max-retries``, ``x-envoy-retriable-status-codes``, ``x-envoy-retry-grpc-on``,
``x-envoy-retriable-header-names``, ``x-envoy-hedge-on-per-try-timeout``, ``x-envoy-internal``). Only a trusted client's reach the router (the HCM strips the rest); they
are consumed here and do not travel upstream, except ``x-envoy-internal``.
"""

from __future__ import annotations

RQ_TIMEOUT_HDR = b"x-envoy-upstream-rq-timeout-ms"
PER_TRY_HDR = b"x-envoy-upstream-rq-per-try-timeout-ms"
EXPECTED_HDR = b"x-envoy-expected-rq-timeout-ms"
RETRY_ON_HDR = b"x-envoy-retry-on"
MAX_RETRIES_HDR = b"x-envoy-max-retries"
RETRIABLE_CODES_HDR = b"x-envoy-retriable-status-codes"
HEDGE_HDR = b"x-envoy-hedge-on-per-try-timeout"
RETRY_GRPC_ON_HDR = b"x-envoy-retry-grpc-on"
RETRIABLE_NAMES_HDR = b"x-envoy-retriable-header-names"
INTERNAL_HDR = b"x-envoy-internal"


def consume_control_headers(req, timeout: float, per_try: float):
    """Strip the control headers from ``req``; returns (timeout, per_try, retry_on,
    max_retries, retriable codes, hedge, internal, retriable header names) with the route's
    values overridden. ``x-envoy-retry-grpc-on`` joins ``retry_on`` (its conditions are the
    gRPC ones)."""
    retry_on = max_retries = codes = names = None
    hedge = internal = False
    kept = []
    for n, v in req.headers:
        if n[:8] != b"x-envoy-":
            kept.append((n, v))
        elif n == RQ_TIMEOUT_HDR:
            if v.isdigit():
                timeout = int(v) / 1000.0
        elif n == PER_TRY_HDR:
            if v.isdigit():
                per_try = int(v) / 1000.0
        elif n == RETRY_ON_HDR or n == RETRY_GRPC_ON_HDR:
            retry_on = v if retry_on is None else retry_on + b"," + v
        elif n == RETRIABLE_NAMES_HDR:
            names = tuple(x.strip().lower() for x in v.split(b",") if x.strip())
        elif n == MAX_RETRIES_HDR:
            max_retries = v
        elif n == RETRIABLE_CODES_HDR:
            codes = frozenset(int(c) for c in v.split(b",") if c.strip().isdigit())
        elif n == HEDGE_HDR:
            # Hedging itself is not implemented; the header still shapes the expected-timeout
            # header as in Envoy (the whole global timeout).
            hedge = v == b"true"
        elif n == INTERNAL_HDR:
            internal = v == b"true"
            kept.append((n, v))
        elif n != EXPECTED_HDR:
            kept.append((n, v))
    req.headers = kept
    return timeout, per_try, retry_on, max_retries, codes, hedge, internal, names
