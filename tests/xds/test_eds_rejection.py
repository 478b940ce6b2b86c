"""A ClusterLoadAssignment refused over EDS, as Envoy 1.40 refuses it: the NACK carries the
error alone (no "Error adding/updating" prefix; meshproxy puts the field path in front), the
refused assignment's cluster gets no hosts, and start-up goes on - also over delta with a
control plane that has no listeners at all (an empty LDS answer still initialises LDS).
Whether the other assignments of that response are taken varies between Envoy runs (its mux
stops at the first failure, in an order not fixed); it is not compared."""

from __future__ import annotations

import pytest

from meshproxy.xds import types as T
from tests.xds import builders as B
from tests.xds.control_plane import ControlPlane


def scenario(kind: str, delta: bool):
    with ControlPlane() as cp:
        cp.set_resources(T.CLUSTER, [B.cluster("a"), B.cluster("b")], "c1")
        bad = B.cla("b", 1)
        bad["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "address"] = "not-an-ip"
        cp.set_resources(T.ENDPOINT, [B.cla("a", 1), bad], "e1")

        def read(proxy):
            return (proxy.get_admin("/ready")[1].strip(),
                    [line for line in proxy.get_admin("/clusters")[1].splitlines()
                     if line.startswith("b::") and "::cx_total::" in line])
        (ready, b_hosts), nacks = B.run_proxy(kind, cp, delta, read)
    return ready, b_hosts, nacks


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_refused_assignment_as_envoy(delta):
    mine = scenario("meshproxy", delta)
    envoy_text = ("malformed IP address: not-an-ip. Consider setting resolver_name or setting "
                  "cluster type to 'STRICT_DNS' or 'LOGICAL_DNS'")
    assert mine == ("LIVE", [], [(13, "endpoints[0].lb_endpoints[0].endpoint.address."
                                      "socket_address.address: " + envoy_text)])
    B.envoy_agrees(scenario, ("LIVE", [], [(13, envoy_text)]), delta)
