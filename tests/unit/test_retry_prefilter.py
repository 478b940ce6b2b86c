"""The router skips the retry state for responses its route's policy could never retry
(``RetryPolicy.may_retry_headers``); that shortcut must never hide a response
``RetryState.would_retry_headers`` would retry."""

from __future__ import annotations

import itertools
import types

import pytest

from meshproxy.http.headers import ResponseHeaders
from meshproxy.router.retry_policy import KNOWN_RETRY_ON, RetryPolicy, parse_retry_on
from meshproxy.upstream.retry_state import RetryState

CONDITIONS = sorted(KNOWN_RETRY_ON)
ISTIO = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"


def policy(retry_on: str, codes=(503,)) -> RetryPolicy:
    return RetryPolicy(retry_on=parse_retry_on(retry_on), num_retries=2, per_try_timeout=None,
                       per_try_idle_timeout=None, retriable_status_codes=frozenset(codes),
                       retriable_headers=(), retriable_request_headers=(), base_interval=0.025,
                       max_interval=0.25, host_predicates=(),
                       host_selection_retry_max_attempts=1, retry_priority=None)


def responses():
    for status in (200, 204, 404, 409, 429, 500, 502, 503, 504, 599):
        for extra in ((), ((b"grpc-status", b"14"),), ((b"grpc-status", b"0"),),
                      ((b"grpc-status", b"1"),), ((b"x-envoy-ratelimited", b"true"),)):
            yield ResponseHeaders(status, [(b"content-type", b"text/plain"), *extra])


POLICIES = [ISTIO, "5xx", "gateway-error", "retriable-4xx", "envoy-ratelimited,5xx"] + \
    [",".join(c) for c in itertools.combinations(CONDITIONS, 2)]


@pytest.mark.parametrize("retry_on", POLICIES)
def test_prefilter_never_hides_a_retry(retry_on):
    p = policy(retry_on)
    cluster = types.SimpleNamespace(stats=None)
    for resp in responses():
        would = RetryState(p, cluster).would_retry_headers(resp)
        if would:
            assert p.may_retry_headers(resp), (retry_on, resp.status, resp.headers)


def test_prefilter_skips_the_common_success():
    p = policy(ISTIO)
    assert not p.may_retry_headers(ResponseHeaders(200, [(b"content-length", b"64")]))
    assert p.may_retry_headers(ResponseHeaders(503, []))
    assert p.may_retry_headers(ResponseHeaders(200, [(b"grpc-status", b"14")]))
