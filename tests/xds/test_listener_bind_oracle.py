"""Listeners over LDS whose sockets cannot be made, as Envoy 1.40 handles them: a listener on an
address the host does not have is rejected (NACK naming it, ``cannot bind``) while the others
in the same response are added; ``deprecated_v1.bind_to_port: false`` (Istio <= 1.9's outbound
port listeners) means no socket, as ``bind_to_port: false`` does. Found serving scout's real
sidecar dump (tests/xds/test_real_dumps.py)."""

from __future__ import annotations

import pytest

from meshproxy.xds import types as T
from tests.xds import builders as B
from tests.xds.control_plane import ControlPlane


def _at(name: str, ip: str, port: int, **extra) -> dict:
    ls = B.listener(name, "r")
    ls["address"] = {"socket_address": {"address": ip, "port_value": port}}
    ls.update(extra)
    return ls


def scenario(kind: str, delta: bool):
    with ControlPlane() as cp:
        cp.set_resources(T.CLUSTER, [B.static_cluster("svc", 1)], "c1")
        # 192.0.2.0/24 is TEST-NET-1: never an address of this host
        cp.set_resources(T.LISTENER, [
            B.listener("good", "r"), _at("bad", "192.0.2.7", 8080),
            _at("v1", "192.0.2.8", 80, deprecated_v1={"bind_to_port": False})], "l1")
        cp.set_resources(T.ROUTE, [B.route("r", "svc")], "r1")

        def read(proxy):
            cp.wait_for(lambda reqs: any(r.type_url == T.LISTENER and r.nonce for r in reqs))
            names = sorted(line.split("::")[0] for line in
                           proxy.get_admin("/listeners")[1].split())
            return names, {k: v for k, v in proxy.stats().items()
                           if k in ("listener_manager.lds.update_rejected",
                                    "listener_manager.listener_added",
                                    "listener_manager.listener_create_failure",
                                    "listener_manager.listener_create_success",
                                    "listener_manager.total_listeners_active")}
        (names, stats), nacks = B.run_proxy(kind, cp, delta, read)
    return nacks, names, stats


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_unbindable_listener_is_rejected_as_envoy(delta):
    mine = scenario("meshproxy", delta)
    assert mine[0] == [(13, "Error adding/updating listener(s) bad: cannot bind "
                            "'192.0.2.7:8080': Cannot assign requested address\n")]
    assert mine[1] == ["good", "v1"]
    B.envoy_agrees(scenario, mine, delta)
