"""A cluster modified over CDS keeps its ``cluster.<name>.*`` counters, as in Envoy 1.40 (the new
ClusterInfo finds the same counters in the store): requests and connections go on counting from
where the old version stopped, membership_change counts the new host set, while the per-code
counters (``upstream_rq_200``) start afresh. (An EDS cluster is left unchanged here: Envoy
re-warms a modified one until a new assignment or its 15 s initial fetch timeout, where
meshproxy reuses the assignment it holds - catalog.py.)"""

from __future__ import annotations

import pytest

from meshproxy.xds import types as T
from tests.support.proxies import ProxyProcess
from tests.support.upstream import Reply, Upstream
from tests.xds import builders as B
from tests.xds.control_plane import ControlPlane
from tests.xds.test_server_xds import get, listener_port

NAMES = ("upstream_rq_total", "upstream_cx_total", "upstream_rq_200", "upstream_rq_2xx",
         "membership_change", "membership_total", "update_success", "update_attempt")


def scenario(kind: str, delta: bool) -> list:
    with Upstream(lambda r: Reply(200, body=b"x")) as up, ControlPlane() as cp:
        svc = B.static_cluster("svc", up.port)
        cp.set_resources(T.CLUSTER, [svc, B.cluster("e")], "c1")
        cp.set_resources(T.ENDPOINT, [B.cla("e", up.port)], "e1")
        cp.set_resources(T.LISTENER, [B.listener("l", "r")], "l1")
        r = B.route("r", "svc")
        r["virtual_hosts"][0]["routes"].insert(0, {"match": {"prefix": "/e"},
                                                   "route": {"cluster": "e"}})
        cp.set_resources(T.ROUTE, [r], "r1")
        proxy = ProxyProcess(kind, B.sidecar_bootstrap(cp, delta, "n", "c",
                                                       initial_fetch_timeout="0s")).start()
        try:
            port = listener_port(proxy, "l")
            for path in ("/x", "/e", "/x", "/e", "/x"):
                assert get(port, path)[0] == 200

            def snap():
                s = proxy.stats()
                return {k: s.get(k) for k in (f"cluster.{c}.{n}" for c in ("svc", "e")
                                              for n in NAMES)}
            seen = [snap()]
            start = len(cp.requests)
            cp.set_resources(T.CLUSTER, [dict(svc, connect_timeout="2s"), B.cluster("e")], "c2")
            cp.wait_for(lambda reqs: any(q.type_url == T.CLUSTER and q.nonce and
                                         (q.delta or q.version_info == "c2")
                                         for q in reqs[start:]))
            assert get(port, "/x")[0] == 200
            seen.append(snap())
        finally:
            proxy.stop()
    return seen


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_modified_cluster_keeps_counting_as_envoy(delta):
    before, after = scenario("meshproxy", delta)
    assert after["cluster.svc.upstream_rq_total"] == before["cluster.svc.upstream_rq_total"] + 1
    assert after["cluster.svc.upstream_rq_200"] == 1
    assert after["cluster.e.upstream_rq_total"] == before["cluster.e.upstream_rq_total"] == 2
    B.envoy_agrees(scenario, [before, after], delta)
