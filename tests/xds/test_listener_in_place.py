"""A listener update that changes only its filter chains is an in-place update in Envoy 1.40
(listener_impl.cc supportUpdateFilterChain): connections on filter chains that are still there
unchanged go on untouched - no ``Connection: close`` - while those on a chain that changed or
went away drain like any replaced listener's (meshproxy drains at once, as with
``--drain-strategy immediate``; Envoy's default gradual strategy closes them over the drain
time, so that side is not compared here)."""

from __future__ import annotations

import pytest

from meshproxy.xds import types as T
from tests.support.client import KeepAlive
from tests.support.upstream import Reply, Upstream
from tests.xds import builders as B
from tests.xds.control_plane import ControlPlane
from tests.xds.test_server_xds import listener_port, until


def _two_chains(listener_name, route_a, route_b):
    """Chain 0 for connections from 127.0.0.1 (route_a), chain 1 for the rest (route_b)."""
    ls = B.listener(listener_name, route_a)
    keep = ls["filter_chains"][0]
    keep["filter_chain_match"] = {"source_prefix_ranges": [{"address_prefix": "127.0.0.1",
                                                            "prefix_len": 32}]}
    other = B.listener(listener_name, route_b)["filter_chains"][0]
    ls["filter_chains"].append(other)
    return ls


def scenario(kind: str, delta: bool, own_chain_changes: bool = False) -> list:
    with Upstream(lambda r: Reply(200, body=b"ok")) as up, ControlPlane() as cp:
        cp.set_resources(T.CLUSTER, [B.static_cluster("svc", up.port)], "c1")
        cp.set_resources(T.ROUTE, [B.route("r", "svc"), B.route("r2", "svc"),
                                   B.route("r3", "svc")], "r1")
        cp.set_resources(T.LISTENER, [_two_chains("in", "r", "r2")], "l1")

        def read(proxy):
            port = listener_port(proxy, "in")
            conn = KeepAlive(port)
            seen = [("before", conn.request(path="/1").header("connection"))]
            start = len(cp.requests)
            # only the other chain changes (its routes): the connection's chain is the same;
            # or the connection's own chain changes
            update = _two_chains("in", "r3", "r2") if own_chain_changes else \
                _two_chains("in", "r", "r3")
            cp.set_resources(T.LISTENER, [update], "l2")
            cp.wait_for(lambda reqs: any(r.type_url == T.LISTENER and r.nonce and not r.error
                                         for r in reqs[start:]))
            # the ACK can come before the new version is in place (Envoy: on its workers;
            # meshproxy: a task): wait for it, bounded
            until(lambda: proxy.stat("listener_manager.listener_modified") == 1)
            reply = conn.request(path="/2")
            seen.append(("after", reply.status, reply.header("connection")))
            if reply.header("connection") is None:
                reply = conn.request(path="/3")
                seen.append(("again", reply.status, reply.header("connection")))
            seen.append(("new", KeepAlive(port).request(path="/4").status))
            seen.append(("stats", {k: v for k, v in proxy.stats().items() if k in (
                "listener_manager.listener_modified", "listener_manager.listener_in_place_updated",
                "listener_manager.listener_added", "listener_manager.listener_removed")}))
            return seen
        seen, nacks = B.run_proxy(kind, cp, delta, read)
    assert nacks == []
    return seen


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_unchanged_chain_keeps_its_connections_as_envoy(delta):
    mine = scenario("meshproxy", delta)
    assert mine[:4] == [("before", None), ("after", 200, None), ("again", 200, None),
                        ("new", 200)]
    assert mine[4][1]["listener_manager.listener_in_place_updated"] == 1
    B.envoy_agrees(scenario, mine, delta)

