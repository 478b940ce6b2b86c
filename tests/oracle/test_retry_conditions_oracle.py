"""Differential: the retry conditions on response and request headers, and the retry budget, in
meshproxy and in Envoy 1.40 on the same bootstrap: ``retriable_headers`` (``retry_on:
retriable-headers``, also matching ``:status``), ``retriable_request_headers``,
``x-envoy-retriable-header-names``, ``x-envoy-retry-grpc-on`` and the circuit breakers'
``retry_budget``. Compared per request: the client's status, how many attempts the upstream
saw; and each case's cluster retry counters."""

from __future__ import annotations

import collections
import itertools
import threading

import pytest

from tests.support.client import request
from tests.support.proxies import (ProxyProcess, bootstrap, cluster, find_envoy, hcm, listener)
from tests.support.upstream import Reply, Upstream

pytestmark = pytest.mark.oracle

_attempts: collections.Counter = collections.Counter()
_lock = threading.Lock()


def _handler(req):
    """First attempt of each request (by x-request-id) fails the way x-fail says; later
    attempts succeed."""
    rid = req.header("x-request-id")
    with _lock:
        _attempts[rid] += 1
        n = _attempts[rid]
    how = req.header("x-fail") or ""
    if n > 1 or not how:
        return Reply(200, [("content-length", "2")], b"ok")
    if how == "hint":
        return Reply(200, [("x-retry-me", "yes"), ("x-upstream-hint", "1"),
                           ("content-length", "2")], b"ok")
    if how == "grpc":
        return Reply(200, [("grpc-status", "14"), ("content-length", "0")], b"")
    return Reply(int(how), [("content-length", "0")], b"")


INTERNAL = ("x-forwarded-for", "127.0.0.1")
RETRY = {"num_retries": 2, "retry_back_off": {"base_interval": "0.001s"}}
CASES = {
    # name: (route retry policy, request headers, x-fail, cluster)
    "retriable_header_value": ({**RETRY, "retry_on": "retriable-headers", "retriable_headers": [
        {"name": "x-retry-me", "string_match": {"exact": "yes"}}]}, [], "hint", "a"),
    "retriable_header_status_range": ({**RETRY, "retry_on": "retriable-headers",
                                       "retriable_headers": [{"name": ":status", "range_match": {
                                           "start": 418, "end": 419}}]}, [], "418", "b"),
    "retriable_header_not_matching": ({**RETRY, "retry_on": "retriable-headers",
                                       "retriable_headers": [{"name": "x-other",
                                                              "present_match": True}]},
                                      [], "hint", "c"),
    "request_header_matches": ({**RETRY, "retry_on": "5xx", "retriable_request_headers": [
        {"name": "x-can-retry", "present_match": True}]}, [("x-can-retry", "1")], "503", "d"),
    "request_header_missing": ({**RETRY, "retry_on": "5xx", "retriable_request_headers": [
        {"name": "x-can-retry", "present_match": True}]}, [], "503", "e"),
    "request_header_missing_despite_header_retry_on": (
        {**RETRY, "retry_on": "5xx", "retriable_request_headers": [
            {"name": "x-can-retry", "present_match": True}]},
        [INTERNAL, ("x-envoy-retry-on", "5xx")], "503", "f"),
    # x-envoy-* request headers count only from an internal client (single XFF address in
    # internal_address_config).
    "retriable_header_names_header": ({**RETRY, "retry_on": "connect-failure"},
                                      [INTERNAL, ("x-envoy-retry-on", "retriable-headers"),
                                       ("x-envoy-retriable-header-names", "X-Upstream-Hint")],
                                      "hint", "g"),
    "retry_grpc_on_header": ({**RETRY, "retry_on": "connect-failure"},
                             [INTERNAL, ("x-envoy-retry-grpc-on", "unavailable")], "grpc", "h"),
    "retry_on_and_grpc_on_headers_join": ({**RETRY, "retry_on": "connect-failure"},
                                          [INTERNAL, ("x-envoy-retry-on", "5xx"),
                                           ("x-envoy-retry-grpc-on", "unavailable")], "grpc", "i"),
    "budget_allows_min_concurrency": ({**RETRY, "retry_on": "5xx"}, [], "503", "budget3"),
    "budget_of_zero": ({**RETRY, "retry_on": "5xx"}, [], "503", "budget0"),
}


def _boot(port):
    routes, clusters = [], []
    for name, (policy, _, _, cl) in CASES.items():
        routes.append({"match": {"prefix": f"/{name}"},
                       "route": {"cluster": cl, "retry_policy": policy}})
    for cl in sorted({c[3] for c in CASES.values()}):
        extra = {}
        if cl.startswith("budget"):
            extra = {"circuit_breakers": {"thresholds": [{"retry_budget": {
                "budget_percent": {"value": 0.0},
                "min_retry_concurrency": 3 if cl == "budget3" else 0}}]}}
        clusters.append(cluster(cl, [("127.0.0.1", port)], **extra))
    return bootstrap([listener("l", hcm(routes, stat_prefix="rt", internal_address_config={
        "cidr_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]}))], clusters)


@pytest.fixture(scope="module")
def rig():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    with Upstream(_handler) as up:
        boot = _boot(up.port)
        envoy = ProxyProcess("envoy", boot).start()
        mesh = ProxyProcess("meshproxy", boot).start()
        try:
            yield envoy, mesh, up
        finally:
            envoy.stop()
            mesh.stop()


_seq = itertools.count()


def _one(proxy, up, name):
    _, headers, fail, _ = CASES[name]
    before = len(up.requests)
    # A fresh x-request-id per request so that the upstream counts attempts per request.
    rid = f"00000000-0000-4000-8000-{next(_seq):012d}"
    r = request(proxy.port("l"), "GET", f"/{name}",
                headers=[("x-fail", fail), ("x-request-id", rid), *headers])
    return r.status, len(up.requests) - before


@pytest.mark.parametrize("name", list(CASES))
def test_retry_decisions_are_envoys(rig, name):
    envoy, mesh, up = rig
    e = _one(envoy, up, name)
    m = _one(mesh, up, name)
    assert m == e


def test_retry_counters_are_envoys(rig):
    envoy, mesh, up = rig
    for name in CASES:
        _one(envoy, up, name)
        _one(mesh, up, name)
    pat = r"^cluster\.[a-z0-9]+\.(upstream_rq_retry|circuit_breakers\.default\.rq_retry_open)"
    e = envoy.stats(pat)
    m = mesh.stats(pat)
    assert e["cluster.a.upstream_rq_retry"] > 0 and e["cluster.budget0.upstream_rq_retry_overflow"]
    assert m == e
