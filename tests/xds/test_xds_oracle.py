"""Envoy 1.40 and meshproxy's xDS client, driven through the same script of pushes by the test
control plane, must send the same sequence of requests: type URLs in the same order, the same
names (SotW resource_names; delta subscribe/unsubscribe), the same version_info and nonces
echoed, the node on the same requests, NACKs in the same places.

The script: one EDS cluster and one HCM listener using RDS; an endpoint update; a second
cluster; a route update; a bad cluster next to good ones (NACKed, the rest kept); the listener
moved to another route configuration; a cluster removed; the control plane restarted. SotW runs
over TCP, delta over a Unix socket (as Istio's sidecars do).
"""

from __future__ import annotations

import asyncio
import difflib
import threading

import pytest
from envoy.config.core.v3 import base_pb2

from meshproxy.xds import types as T
from meshproxy.xds.ads_client import AdsClient
from meshproxy.xds.catalog import Catalog
from tests.support.proxies import ProxyProcess, find_envoy
from tests.xds import builders as B
from tests.xds.control_plane import ControlPlane
from tests.xds.sequences import steps

pytestmark = [pytest.mark.oracle,
              pytest.mark.skipif(find_envoy() is None,
                                 reason="Envoy 1.40 oracle not installed (run ./scripts/test, "
                                        "or set MESHPROXY_ENVOY)")]

NODE_ID, NODE_CLUSTER = "sidecar~127.0.0.1~app.default~default.svc.cluster.local", "app"


def _first(reqs, pred, start=0):
    return next((i for i in range(start, len(reqs)) if pred(reqs[i])), None)


def _ack(t):
    return lambda r: r.type_url == t and r.nonce and not r.error and not r.stale


def _ack_then(first_type, then_type):
    """An ACK of ``first_type``, and after it an ACK of ``then_type``."""
    def pred(reqs):
        i = _first(reqs, _ack(first_type))
        return i is not None and _first(reqs, _ack(then_type), i + 1) is not None
    return pred


def _has(pred_one):
    return lambda reqs: _first(reqs, pred_one) is not None


def _script(delta: bool):
    """[(name, action(cp), done(requests since the step began))]."""
    def add_cluster(cp):
        cp.set_resources(T.ENDPOINT, [B.cla("backend", 9002), B.cla("b2", 9003)], "e3",
                         push=False)
        cp.set_resources(T.CLUSTER, [B.cluster("backend"), B.cluster("b2")], "c2")

    def move_listener(cp):
        cp.set_resources(T.ROUTE, [B.route("route1", "b2"), B.route("route2", "backend")], "r3",
                         push=False)
        cp.set_resources(T.LISTENER, [B.listener("http", "route2")], "l2")

    return [
        ("endpoint update",
         lambda cp: cp.set_resources(T.ENDPOINT, [B.cla("backend", 9002)], "e2"),
         _has(_ack(T.ENDPOINT))),
        ("second cluster", add_cluster, _ack_then(T.CLUSTER, T.ENDPOINT)),
        ("route update", lambda cp: cp.set_resources(T.ROUTE, [B.route("route1", "b2")], "r2"),
         _has(_ack(T.ROUTE))),
        ("bad cluster",
         lambda cp: cp.set_resources(T.CLUSTER, [B.cluster("backend"), B.cluster("b2"),
                                                 B.bad_cluster("bad")], "c3"),
         _has(lambda r: r.type_url == T.CLUSTER and r.error)),
        ("listener moved to route2", move_listener, _ack_then(T.LISTENER, T.ROUTE)),
        ("cluster removed", lambda cp: cp.set_resources(T.CLUSTER, [B.cluster("backend")], "c4"),
         _has(_ack(T.CLUSTER)) if delta else _ack_then(T.CLUSTER, T.ENDPOINT)),
        # the control plane goes away and comes back: a new stream re-subscribes everything
        # with what the client holds, and ACKs the answers
        ("control plane restarted", lambda cp: cp.restart(),
         lambda reqs: sum(1 for r in reqs if r.stream == 2 and r.nonce) >= 4),
    ]


def _serve_initial(cp):
    cp.set_resources(T.CLUSTER, [B.cluster("backend")], "c1")
    cp.set_resources(T.ENDPOINT, [B.cla("backend", 9001)], "e1")
    cp.set_resources(T.LISTENER, [B.listener("http", "route1")], "l1")
    cp.set_resources(T.ROUTE, [B.route("route1", "backend")], "r1")


def _run_script(cp, delta) -> list[tuple[str, list[str]]]:
    """Initial sync (the client is already started), then each step; the steps seen."""
    cp.wait_for(_has(_ack(T.ROUTE)))
    out = [("initial sync", steps(cp.requests))]
    for name, action, done in _script(delta):
        n = len(cp.requests)
        action(cp)
        cp.wait_for(lambda reqs: done(reqs[n:]))
        out.append((name, steps(cp.requests[n:])))
    return out


def _envoy_bootstrap(cp, delta):
    return B.sidecar_bootstrap(cp, delta, NODE_ID, NODE_CLUSTER)


class _MeshproxyXds:
    """meshproxy's xDS side (AdsClient + Catalog) on its own event loop thread, so the same
    blocking script drives it as drives Envoy."""

    def __init__(self, cp, delta):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        node = base_pb2.Node(id=NODE_ID, cluster=NODE_CLUSTER)

        async def start():
            self.client = AdsClient(cp.target, node, {}, delta=delta)
            self.catalog = Catalog(self.client)
            self.client.mux.handlers.update(self.catalog.handlers())
            self.client.start()
            self.catalog.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.client.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _record(delta, tmp_path, who):
    cp = ControlPlane(unix_path=str(tmp_path / f"{who}.sock") if delta else None).start()
    _serve_initial(cp)
    try:
        if who == "envoy":
            proxy = ProxyProcess("envoy", _envoy_bootstrap(cp, delta))
            # ProxyProcess.start returns once /ready says LIVE: after the initial sync
            proxy.start()
        else:
            proxy = _MeshproxyXds(cp, delta)
        try:
            seen = _run_script(cp, delta)
            nacks = [r.error for r in cp.requests if r.error]
        finally:
            proxy.stop() if who == "envoy" else proxy.close()
    finally:
        cp.close()
    return seen, nacks


@pytest.mark.parametrize("api", ["sotw-tcp", "delta-unix"])
def test_same_request_sequence_as_envoy(api, tmp_path):
    delta = api.startswith("delta")
    envoy, envoy_nacks = _record(delta, tmp_path, "envoy")
    mesh, mesh_nacks = _record(delta, tmp_path, "meshproxy")
    if envoy != mesh:
        a = [f"{name}: {s}" for name, ss in envoy for s in ss]
        b = [f"{name}: {s}" for name, ss in mesh for s in ss]
        diff = "\n".join(difflib.unified_diff(a, b, "envoy", "meshproxy", lineterm=""))
        pytest.fail(f"request sequences differ ({api}):\n{diff}")
    # The NACKs say the same thing; meshproxy's message also names the field.
    assert [code for code, _ in envoy_nacks] == [code for code, _ in mesh_nacks] == [13]
    prefix = "Error adding/updating cluster(s) bad: "
    core = ("LB policy ROUND_ROBIN is not valid for Cluster type ORIGINAL_DST. Only "
            "'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'")
    assert envoy_nacks[0][1] == prefix + "cluster: " + core
    assert mesh_nacks[0][1] == prefix + "lb_policy: cluster: " + core
