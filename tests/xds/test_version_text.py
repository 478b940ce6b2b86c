"""The subscriptions' ``version_text`` text readouts (and ``control_plane.identifier``) in
``/stats`` as Envoy 1.40 prints them: quoted in text, strings in JSON, before the counters and
gauges, kept by ``type=TextReadouts``, in ``usedonly`` once set (as the xDS counters, which
``usedonly`` leaves out until written), absent from Prometheus; after a rejected push the
version stays the last accepted one."""

from __future__ import annotations

import pytest

from meshproxy.xds import types as T
from tests.xds import builders as B
from tests.xds.control_plane import ControlPlane

QUERIES = ("/stats?filter=version_text|identifier", "/stats?usedonly&filter=version_text",
           "/stats?type=TextReadouts", "/stats?format=json&type=TextReadouts",
           "/stats/prometheus?filter=version_text|lds.version",
           # text readouts come first; usedonly leaves out what was never written
           "/stats?usedonly&filter=\\.(update_(success|rejected|attempt|failure|empty|no_rebuild)"
           "|init_fetch_timeout|version_text|config_reload|connected_state|pending_requests"
           "|rate_limit_enforced|identifier)$",
           "/stats?format=json&filter=^(cluster_manager.cds.(version|update_success)|control_plane)")


def scenario(kind: str, delta: bool) -> list:
    with ControlPlane() as cp:
        B.serve_one_of_each(cp)

        def read(proxy):
            seen = [proxy.get_admin(q) for q in QUERIES]
            start = len(cp.requests)
            cp.set_resources(T.ROUTE, [B.route("r", "svc", prefix="/v2")], "r2")
            cp.set_resources(T.CLUSTER, [B.cluster("svc"), B.bad_cluster()], "c2")
            cp.wait_for(lambda reqs: any(r.error for r in reqs[start:]) and any(
                r.type_url == T.ROUTE and r.nonce for r in reqs[start:]))
            return seen + [proxy.get_admin(QUERIES[0])]
        return B.run_proxy(kind, cp, delta, read)[0]


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_version_text_readouts_as_envoy(delta):
    mine = scenario("meshproxy", delta)
    assert mine[0] == (200, 'cluster.svc.version_text: "e1"\n'
                            'cluster_manager.cds.version_text: "c1"\n'
                            'control_plane.identifier: ""\n'
                            'http.in.rds.r.version_text: "r1"\n'
                            'listener_manager.lds.version_text: "l1"\n')
    assert 'http.in.rds.r.version_text: "r2"' in mine[-1][1]
    assert 'cluster_manager.cds.version_text: "c1"' in mine[-1][1]   # c2 was rejected
    B.envoy_agrees(scenario, mine, delta)
