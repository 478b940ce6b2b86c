"""An identical state-of-the-world re-push, counted as Envoy 1.40 counts it: every subscription
has one more update_success, but nothing is reloaded - ``cluster_manager.cds.config_reload``
and the RDS ``config_reload`` stay (the config did not change) and the EDS cluster counts
``update_no_rebuild`` (the same hosts)."""

from __future__ import annotations

from meshproxy.xds import types as T
from tests.xds import builders as B
from tests.xds.control_plane import ControlPlane

PREFIXES = ("cluster.svc.update", "cluster.svc.assignment", "http.in.rds.r.",
            "cluster_manager.cds.update", "cluster_manager.cds.config_reload")


def scenario(kind: str) -> dict:
    with ControlPlane() as cp:
        B.serve_one_of_each(cp)

        def read(proxy):
            start = len(cp.requests)
            for t, v, res in ((T.ENDPOINT, "e2", [B.cla("svc", 1)]),
                              (T.ROUTE, "r2", [B.route("r", "svc")]),
                              (T.CLUSTER, "c2", [B.cluster("svc")])):
                cp.set_resources(t, res, v)
            cp.wait_for(lambda reqs: all(any(
                r.type_url == t and r.nonce and r.version_info.endswith("2")
                for r in reqs[start:]) for t in (T.ENDPOINT, T.ROUTE, T.CLUSTER)))
            # values that are times or hashes differ between runs; zeros are left out
            return {k: v for k, v in proxy.stats().items() if k.startswith(PREFIXES) and v
                    and not k.endswith(("_time", "_time_ms", ".version"))}
        return B.run_proxy(kind, cp, False, read)[0]


def test_identical_repush_counts_as_envoy():
    mine = scenario("meshproxy")
    assert mine["cluster.svc.update_no_rebuild"] == 1
    assert mine["cluster_manager.cds.config_reload"] == 1
    assert mine["http.in.rds.r.config_reload"] == 1
    assert mine["cluster.svc.update_success"] == 2
    B.envoy_agrees(scenario, mine)
