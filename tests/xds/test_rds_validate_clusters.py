"""RDS ``validate_clusters``: false by default for route configurations over RDS (a route to a
cluster that does not exist yet is accepted and answers 503), and when a route configuration
sets it, a cluster the cluster manager does not have (static or from CDS) refuses that route
configuration, as Envoy 1.40 does: the NACK says ``route: unknown weighted cluster 'ghost'``
(meshproxy puts the field path in front) and every listener waiting for routes stops warming
and serves without them (404). What else of that RDS response is applied follows Envoy: over
SotW the route configurations subscribed after the bad one (handled first) are in, those
before it are not; over delta Envoy's order varies between runs, and meshproxy takes or refuses
each on its own."""

from __future__ import annotations

import pytest

from meshproxy.xds import types as T
from tests.support.proxies import ProxyProcess, find_envoy
from tests.support.upstream import Reply, Upstream
from tests.xds import builders as B
from tests.xds.control_plane import ControlPlane
from tests.xds.test_server_xds import get, listener_port


def _validated(name, cluster, extra_route=None):
    r = B.route(name, cluster)
    r["validate_clusters"] = True
    if extra_route:
        r["virtual_hosts"][0]["routes"].insert(0, extra_route)
    return r


def scenario(kind: str, delta: bool):
    with Upstream(lambda req: Reply(200, body=b"svc")) as up, ControlPlane() as cp:
        cp.set_resources(T.CLUSTER, [B.static_cluster("svc", up.port)], "c1")
        cp.set_resources(T.LISTENER, [B.listener("ok", "r"), B.listener("bad", "r2"),
                                      B.listener("lax", "r3")], "l1")
        cp.set_resources(T.ROUTE, [
            # names the dynamic cluster and the bootstrap's static one: fine
            _validated("r", "svc", {"match": {"prefix": "/static"},
                                    "route": {"cluster": "xds-grpc"}}),
            _validated("r2", "svc", {"match": {"prefix": "/w"}, "route": {"weighted_clusters": {
                "clusters": [{"name": "svc", "weight": 1}, {"name": "ghost", "weight": 1}]}}}),
            B.route("r3", "nope")], "r1")
        proxy = ProxyProcess(kind, B.sidecar_bootstrap(cp, delta, "n", "c",
                                                       initial_fetch_timeout="0s")).start()
        try:
            cp.wait_for(lambda reqs: any(r.type_url == T.ROUTE and r.nonce for r in reqs))
            ports = {name: listener_port(proxy, name) for name in ("ok", "bad", "lax")}
            seen = [(name, port and get(port, "/x")[0]) for name, port in ports.items()]
        finally:
            proxy.stop()
        nacks = [r.error for r in cp.requests if r.error]
    return nacks, seen


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_validate_clusters_over_rds_as_envoy(delta):
    nacks, seen = scenario("meshproxy", delta)
    assert [code for code, _ in nacks] == [13]
    assert nacks[0][1].endswith("route: unknown weighted cluster 'ghost'"), nacks
    # SotW: r3 (a route to a missing cluster, not validated: 503) was subscribed last, so it
    # was handled before r2 failed, and r after it was not
    assert seen == [("ok", 200 if delta else 404), ("bad", 404), ("lax", 503)]
    if find_envoy() is None:
        pytest.skip("Envoy 1.40 oracle not installed (run ./scripts/test): meshproxy's side "
                    "passed on its own")
    envoy_nacks, envoy_seen = scenario("envoy", delta)
    if delta:
        # Envoy's delta mux hands the response to the watches in hash order and stops at the
        # first failure, so which good ones are in varies from run to run (all, or none, seen
        # here); meshproxy takes each on its own, one of the outcomes Envoy has.
        assert envoy_seen[1] == seen[1]
        assert all(e == m or e[1] == 404 for e, m in zip(envoy_seen, seen)), envoy_seen
    else:
        assert envoy_seen == seen
    assert envoy_nacks == [(13, "route: unknown weighted cluster 'ghost'")]
    assert nacks[0][1] == "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[1].name: " \
                          + envoy_nacks[0][1]
