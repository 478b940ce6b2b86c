"""Router retries: the pure decisions of ``upstream.retry_state`` (no sockets, seeded RNG), then
retries through a running meshproxy. Envoy 1.40's answers for the same cases are compared in
tests/oracle/test_upstream_oracle.py::test_retries_same_as_envoy."""

from __future__ import annotations

import itertools
import random
import time
import types

import pytest

from meshproxy.http.headers import ResponseHeaders
from meshproxy.router.retry_policy import RetryPolicy, parse_retry_on
from meshproxy.upstream.retry_state import LIMIT_EXCEEDED, NO, OVERFLOW, YES, RetryState
from tests.integration.test_upstream_servers import dead_port
from tests.support.client import request
from tests.support.proxies import ProxyProcess, bootstrap, cluster, hcm, listener
from tests.support.upstream import Reply, Upstream

BODY_PREFIX = b"upstream connect error or disconnect/reset before headers. "


def policy(retry_on="5xx", num_retries=2, codes=(), per_try=None, preds=()):
    return RetryPolicy(retry_on=parse_retry_on(retry_on), num_retries=num_retries,
                       per_try_timeout=per_try, per_try_idle_timeout=None,
                       retriable_status_codes=frozenset(codes), retriable_headers=(),
                       retriable_request_headers=(), base_interval=0.025, max_interval=0.25,
                       host_predicates=preds, host_selection_retry_max_attempts=5,
                       retry_priority=None)


def fake_cluster(max_retries=3):
    stats = types.SimpleNamespace(
        upstream_rq_retry=0, upstream_rq_retry_success=0, upstream_rq_retry_limit_exceeded=0,
        upstream_rq_retry_overflow=0, upstream_rq_retry_backoff_exponential=0)
    return types.SimpleNamespace(stats=stats, retries_active=0,
                                 thresholds=types.SimpleNamespace(max_retries=max_retries),
                                 max_retries=lambda: max_retries)


def resp(status, *headers):
    return ResponseHeaders(status, list(headers))


# ---------------------------------------------------------------------- pure decisions


@pytest.mark.parametrize("retry_on,codes,status,expected", [
    ("5xx", (), 503, True), ("5xx", (), 404, False),
    ("gateway-error", (), 502, True), ("gateway-error", (), 500, False),
    ("retriable-4xx", (), 409, True), ("retriable-4xx", (), 404, False),
    ("retriable-status-codes", (418,), 418, True), ("retriable-status-codes", (), 418, False),
    ("connect-failure", (), 503, False),
])
def test_would_retry_headers(retry_on, codes, status, expected):
    rs = RetryState(policy(retry_on, codes=codes), fake_cluster())
    assert rs.would_retry_headers(resp(status)) is expected


def test_would_retry_reset_and_grpc_and_ratelimited():
    cf = RetryState(policy("connect-failure"), fake_cluster())
    assert cf.would_retry_reset("remote connection failure")
    assert cf.would_retry_reset("connection timeout")
    assert not cf.would_retry_reset("connection termination")
    assert RetryState(policy("reset"), fake_cluster()).would_retry_reset("connection termination")
    assert not RetryState(policy("5xx"), fake_cluster()).would_retry_reset("overflow")
    grpc = RetryState(policy("unavailable,cancelled"), fake_cluster())
    assert grpc.would_retry_headers(resp(200, (b"grpc-status", b"14")))
    assert not grpc.would_retry_headers(resp(200, (b"grpc-status", b"13")))
    five = RetryState(policy("5xx"), fake_cluster())
    assert not five.would_retry_headers(resp(503, (b"x-envoy-ratelimited", b"true")))


def test_budget_success_limit_and_overflow():
    c = fake_cluster(max_retries=3)
    rs = RetryState(policy(num_retries=2), c)
    assert rs.should_retry(True) == YES and c.retries_active == 1
    assert rs.should_retry(True) == YES and c.retries_active == 1
    assert rs.should_retry(True) == LIMIT_EXCEEDED and c.retries_active == 0
    assert (c.stats.upstream_rq_retry, c.stats.upstream_rq_retry_limit_exceeded) == (2, 1)
    rs = RetryState(policy(num_retries=2), c)
    assert rs.should_retry(True) == YES
    assert rs.should_retry(False) == NO
    assert c.stats.upstream_rq_retry_success == 1 and c.retries_active == 0
    full = fake_cluster(max_retries=0)
    rs = RetryState(policy(), full)
    assert rs.should_retry(True) == OVERFLOW and full.stats.upstream_rq_retry_overflow == 1


def test_headers_override_policy():
    rs = RetryState(None, fake_cluster(), retry_on_header=b"5xx,bogus",
                    max_retries_header=b"5", codes_header=frozenset({418}))
    assert rs.enabled and rs.retry_on == {"5xx"} and rs.retries_left == 5
    assert 418 in rs.codes
    assert not RetryState(None, fake_cluster(), retry_on_header=b"bogus").enabled


def test_jittered_exponential_backoff():
    rs = RetryState(policy(num_retries=10), fake_cluster(), rng=random.Random(1))
    waits = [rs.backoff() for _ in range(6)]
    bounds = [0.025, 0.075, 0.175, 0.25, 0.25, 0.25]
    assert all(0 <= w < b or w == 0.25 for w, b in zip(waits, bounds)), waits
    assert max(waits) <= 0.25


def test_previous_hosts_predicate():
    rs = RetryState(policy(preds=("envoy.retry_host_predicates.previous_hosts",)),
                    fake_cluster())
    rs.host_attempted("h1")
    assert rs.reject_host("h1") and not rs.reject_host("h2")
    assert not RetryState(policy(), fake_cluster()).reject_host("h1")


# ---------------------------------------------------------------------- through meshproxy

_calls = itertools.count()


def handler(req):
    n = next(_calls)
    name = req.target.rsplit("/", 1)[-1]
    if name.startswith("flaky"):
        return Reply(503, body=b"flaky") if n % 2 == 0 else Reply(200, body=b"good " + req.body)
    if name.startswith("always503"):
        return Reply(503, body=b"bad")
    if name.startswith("slowfirst"):
        return Reply(200, body=b"slow", delay=0.6) if n % 2 == 0 else Reply(200, body=b"fast")
    return Reply(200, body=b"ok")


@pytest.fixture(scope="module")
def env():
    global _calls
    with Upstream(handler) as up:
        dead = dead_port()

        def rp(**kw):
            return {"retry_policy": kw}
        routes = [
            ("/cf/", "twohosts", rp(retry_on="connect-failure", num_retries=2,
                                    retry_host_predicate=[{
                                        "name": "envoy.retry_host_predicates.previous_hosts",
                                        "typed_config": {"@type": "type.googleapis.com/envoy."
                                                         "extensions.retry.host.previous_hosts."
                                                         "v3.PreviousHostsPredicate"}}],
                                    host_selection_retry_max_attempts=5)),
            ("/dead/", "dead", rp(retry_on="connect-failure", num_retries=2)),
            ("/5xx/", "up", rp(retry_on="5xx", num_retries=2)),
            ("/codes/", "up", rp(retry_on="retriable-status-codes", retriable_status_codes=[503],
                                 num_retries=1)),
            ("/pertry/", "up", {"timeout": "3s", **rp(retry_on="5xx", num_retries=2,
                                                      per_try_timeout="0.3s")}),
            ("/pertry-noretry/", "up", {"timeout": "3s", **rp(retry_on="connect-failure",
                                                              per_try_timeout="0.3s")}),
            ("/nobudget/", "nobudget", rp(retry_on="5xx", num_retries=2)),
        ]
        vh = [{"name": "v", "domains": ["*"], "include_request_attempt_count": True,
               "routes": [{"match": {"prefix": p}, "route": {"cluster": c, **extra}}
                          for p, c, extra in routes]}]
        clusters = [cluster("up", [("127.0.0.1", up.port)]),
                    cluster("dead", [("127.0.0.1", dead)]),
                    cluster("twohosts", [("127.0.0.1", dead), ("127.0.0.1", up.port)]),
                    cluster("nobudget", [("127.0.0.1", up.port)], circuit_breakers={
                        "thresholds": [{"max_retries": 0}]})]
        p = ProxyProcess("meshproxy", bootstrap([listener("l", hcm(vh))], clusters)).start()
        try:
            yield p, up
        finally:
            p.stop()


def _fresh():
    global _calls
    _calls = itertools.count()


def test_connect_failure_retries_on_another_host(env):
    p, up = env
    for _ in range(10):
        assert request(p.port("l"), path="/cf/x").status == 200
    st = p.stats("^cluster\\.twohosts\\.upstream_rq_retry")
    assert st["cluster.twohosts.upstream_rq_retry"] == st["cluster.twohosts.upstream_rq_retry_success"]
    assert st["cluster.twohosts.upstream_rq_retry"] >= 1        # round robin hits the dead one


def test_retries_exhausted_body_says_retried(env):
    p, _ = env
    r = request(p.port("l"), path="/dead/x")
    assert r.status == 503
    assert r.body == BODY_PREFIX + b"retried and the latest reset reason: remote connection failure"
    st = p.stats("^cluster\\.dead\\.")
    assert st["cluster.dead.upstream_rq_retry"] == 2
    assert st["cluster.dead.upstream_rq_retry_limit_exceeded"] == 1
    assert st["cluster.dead.upstream_rq_pending_failure_eject"] == 3


def test_5xx_retry_replays_body_and_counts_attempts(env):
    p, up = env
    _fresh()
    up.requests.clear()
    r = request(p.port("l"), "POST", "/5xx/flaky", body=b"payload")
    assert (r.status, r.body) == (200, b"good payload")
    seen = [(x.body, x.header("x-envoy-attempt-count")) for x in up.requests]
    assert seen == [(b"payload", "1"), (b"payload", "2")]
    st = p.stats("^cluster\\.up\\.(retry\\.|upstream_rq_retry)")
    assert st["cluster.up.retry.upstream_rq_503"] >= 1
    assert st["cluster.up.upstream_rq_retry_success"] >= 1


def test_retry_limit_passes_last_response_on(env):
    p, _ = env
    before = p.stat("cluster.up.upstream_rq_retry_limit_exceeded")
    r = request(p.port("l"), path="/codes/always503")
    assert (r.status, r.body) == (503, b"bad")
    assert p.stat("cluster.up.upstream_rq_retry_limit_exceeded") == before + 1


def test_per_try_timeout_retries(env):
    p, up = env
    _fresh()
    up.requests.clear()
    t0 = time.monotonic()
    r = request(p.port("l"), path="/pertry/slowfirst")
    assert (r.status, r.body) == (200, b"fast") and time.monotonic() - t0 < 0.6
    assert [x.header("x-envoy-expected-rq-timeout-ms") for x in up.requests] == ["300", "300"]
    assert p.stat("cluster.up.upstream_rq_per_try_timeout") >= 1


def test_per_try_timeout_without_retry_is_504(env):
    p, _ = env
    _fresh()
    r = request(p.port("l"), path="/pertry-noretry/slowfirst")
    assert (r.status, r.body) == (504, b"upstream request timeout")


def test_retry_circuit_breaker(env):
    p, _ = env
    r = request(p.port("l"), path="/nobudget/always503")
    assert r.status == 503
    assert p.stat("cluster.nobudget.upstream_rq_retry_overflow") == 1
    assert p.stat("cluster.nobudget.upstream_rq_retry") == 0
