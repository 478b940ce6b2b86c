"""Differential: ``envoy.filters.http.fault`` in meshproxy and in Envoy 1.40 on the same
bootstrap and the same requests. Compared: what the client gets (status, headers minus date,
body), whether the upstream saw the request, and the ``http.<prefix>.fault.*`` stats.

The bootstrap is Istio's shape for a VirtualService ``fault``: an empty HTTPFault in the HCM's
filters and the real settings in each route's ``typed_per_filter_config`` (plus one route on
the filter-level settings). Percentages are 0 or 100 so that both proxies draw the same."""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.support.client import KeepAlive
from tests.support.proxies import bootstrap, cluster, find_envoy, hcm, listener
from tests.support.upstream import Upstream

pytestmark = pytest.mark.oracle

_T = "type.googleapis.com/"
_FAULT = _T + "envoy.extensions.filters.http.fault.v3.HTTPFault"
_ROUTER = {"name": "envoy.filters.http.router",
           "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"}}
ALL = {"numerator": 100}
NONE = {"numerator": 0}

# path prefix -> the route's HTTPFault (None: the filter-level one applies)
ROUTES = {
    "/abort503": {"abort": {"http_status": 503, "percentage": ALL}},
    "/abort0": {"abort": {"http_status": 503, "percentage": NONE}},
    "/abortmillion": {"abort": {"http_status": 418,
                                "percentage": {"numerator": 1000000, "denominator": "MILLION"}}},
    "/delay": {"delay": {"fixed_delay": "0.3s", "percentage": ALL}},
    "/dabort": {"delay": {"fixed_delay": "0.2s", "percentage": ALL},
                    "abort": {"http_status": 502, "percentage": ALL}},
    "/grpc": {"abort": {"grpc_status": 14, "percentage": ALL}},
    "/header": {"abort": {"header_abort": {}, "percentage": ALL},
                "delay": {"header_delay": {}, "percentage": ALL}},
    "/matched": {"abort": {"http_status": 429, "percentage": ALL},
                 "headers": [{"name": "x-fault", "string_match": {"exact": "yes"}}]},
    "/othercluster": {"abort": {"http_status": 503, "percentage": ALL},
                      "upstream_cluster": "elsewhere"},
    "/nodes": {"abort": {"http_status": 503, "percentage": ALL},
               "downstream_nodes": ["node-a"]},
    "/overflow": {"abort": {"http_status": 503, "percentage": ALL}, "max_active_faults": 0},
    "/filterlevel": None,
}

CASES = [
    ("abort503", "/abort503", {}),
    ("abort_zero_percent", "/abort0", {}),
    ("abort_million_denominator", "/abortmillion", {}),
    ("delay_then_upstream", "/delay", {}),
    ("delay_then_abort", "/dabort", {}),
    ("grpc_abort_for_grpc_request", "/grpc", {"content-type": "application/grpc"}),
    ("grpc_abort_for_plain_request", "/grpc", {}),
    ("abort_503_for_grpc_request", "/abort503", {"content-type": "application/grpc"}),
    ("header_abort", "/header", {"x-envoy-fault-abort-request": "429"}),
    ("header_abort_out_of_range", "/header", {"x-envoy-fault-abort-request": "700"}),
    ("header_grpc_abort", "/header", {"x-envoy-fault-abort-grpc-request": "4",
                                      "content-type": "application/grpc"}),
    ("header_abort_zero_percent", "/header", {"x-envoy-fault-abort-request": "429",
                                              "x-envoy-fault-abort-request-percentage": "0"}),
    ("header_delay_and_abort", "/header", {"x-envoy-fault-delay-request": "150",
                                           "x-envoy-fault-abort-request": "503"}),
    ("header_nothing_asked", "/header", {}),
    ("headers_match", "/matched", {"x-fault": "yes"}),
    ("headers_do_not_match", "/matched", {"x-fault": "no"}),
    ("upstream_cluster_mismatch", "/othercluster", {}),
    ("downstream_node_matches", "/nodes", {"x-envoy-downstream-service-node": "node-a"}),
    ("downstream_node_other", "/nodes", {"x-envoy-downstream-service-node": "node-b"}),
    ("max_active_faults_zero", "/overflow", {}),
    ("filter_level_settings", "/filterlevel", {}),
]


def _boot(upstream_port: int) -> dict:
    routes = []
    for prefix, fault in ROUTES.items():
        r = {"match": {"prefix": prefix}, "route": {"cluster": "up"}}
        if fault is not None:
            r["typed_per_filter_config"] = {"envoy.filters.http.fault": {"@type": _FAULT,
                                                                         **fault}}
        routes.append(r)
    filters = [{"name": "envoy.filters.http.fault",
                "typed_config": {"@type": _FAULT,
                                 "abort": {"http_status": 451, "percentage": ALL}}},
               _ROUTER]
    return bootstrap([listener("l", hcm(routes, stat_prefix="fi", http_filters=filters))],
                     [cluster("up", [("127.0.0.1", upstream_port)])])


def _outcome(proxy, upstream, path, headers):
    before = len(upstream.requests)
    c = KeepAlive(proxy.port("l"))
    t0 = time.monotonic()
    r = c.request("GET", path, headers=list(headers.items()))
    elapsed = time.monotonic() - t0
    c.close()
    heads = [(n, re.sub(r"^\d+$", "<n>", v) if n == "x-envoy-upstream-service-time" else v)
             for n, v in r.headers if n != "date"]
    return {"status": r.status, "headers": heads, "body": r.body,
            "upstream_saw_it": len(upstream.requests) > before}, elapsed


@pytest.fixture(scope="module")
def proxies():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    from tests.support.proxies import ProxyProcess
    with Upstream() as up:
        boot = _boot(up.port)
        envoy = ProxyProcess("envoy", boot).start()
        mesh = ProxyProcess("meshproxy", boot).start()
        try:
            yield envoy, mesh, up
        finally:
            envoy.stop()
            mesh.stop()


@pytest.mark.parametrize("name,path,headers", CASES, ids=[c[0] for c in CASES])
def test_fault_outcomes_are_envoys(proxies, name, path, headers):
    envoy, mesh, up = proxies
    e, e_time = _outcome(envoy, up, path, headers)
    m, m_time = _outcome(mesh, up, path, headers)
    assert m == e
    if name.startswith(("delay", "header_delay")):
        # The delay happened (a lower bound, not a timing benchmark; Envoy's timers have
        # millisecond granularity and can fire a little early).
        want = 0.3 if path == "/delay" else (0.2 if path == "/dabort" else 0.15)
        assert e_time >= want - 0.01 and m_time >= want - 0.01


def test_fault_stats_are_envoys(proxies):
    envoy, mesh, up = proxies
    for _, path, headers in CASES:
        _outcome(envoy, up, path, headers)
        _outcome(mesh, up, path, headers)
    e = envoy.stats(r"^http\.fi\.fault\.")
    m = mesh.stats(r"^http\.fi\.fault\.")
    assert e and m == e
    assert e["http.fi.fault.aborts_injected"] > 0 and e["http.fi.fault.delays_injected"] > 0


def test_body_sent_during_a_delay_reaches_the_upstream_after_it(proxies):
    envoy, mesh, up = proxies
    body = bytes(range(256)) * 64
    seen = []
    for p in (envoy, mesh):
        before = len(up.requests)
        c = KeepAlive(p.port("l"))
        r = c.request("POST", "/delay", body=body)
        c.close()
        assert r.status == 200
        got = up.wait_requests(before + 1)[before]
        seen.append((got.method, got.target, got.body))
    assert seen[0] == seen[1] == ("POST", "/delay", body)


def test_client_gone_during_a_delay_ends_the_fault(proxies):
    """The request never reaches the upstream and active_faults goes back to 0."""
    envoy, mesh, up = proxies
    for p in (envoy, mesh):
        before = len(up.requests)
        s = socket.create_connection(("127.0.0.1", p.port("l")))
        s.sendall(b"GET /delay HTTP/1.1\r\nhost: x\r\n\r\n")
        deadline = time.monotonic() + 3
        while p.stat("http.fi.fault.active_faults") != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.stat("http.fi.fault.active_faults") == 1
        s.close()
        while p.stat("http.fi.fault.active_faults") != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.stat("http.fi.fault.active_faults") == 0
        time.sleep(0.4)      # past the 0.3 s delay: nothing may be sent after all
        assert len(up.requests) == before
