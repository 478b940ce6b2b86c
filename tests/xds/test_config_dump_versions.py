"""``/config_dump`` version readouts after pushes that change some resources and repeat others,
as Envoy 1.40 shows them: a resource sent again unchanged keeps the ``version_info`` and
``last_updated`` it came with (Envoy does not apply it: cluster and listener hashes, RDS config
hash), a changed one takes the new version, and the clusters' and listeners' top-level
``version_info`` moves only when a push applied something (``cds_api_helper.cc``,
``lds_api.cc``: ``if (any_applied)``); a listener whose filter chains alone changed keeps its
version with a new time (Envoy's in-place filter chain update)."""

from __future__ import annotations

import json

import pytest

from meshproxy.xds import types as T
from tests.support.proxies import ProxyProcess
from tests.xds import builders as B
from tests.xds.control_plane import ControlPlane


def readout(proxy) -> dict:
    """{section.name: (version_info, last_updated)} and {dump.version_info: value}."""
    out = {}
    for c in json.loads(proxy.get_admin("/config_dump")[1])["configs"]:
        kind = c["@type"].rsplit(".", 1)[-1]
        if kind == "BootstrapConfigDump":
            continue
        out[f"{kind}.version_info"] = c.get("version_info")
        for section, entries in c.items():
            if not isinstance(entries, list) or not section.startswith("dynamic"):
                continue
            for e in entries:
                st = e.get("active_state", e)
                inner = st.get("cluster") or st.get("listener") or st.get("route_config")
                out[f"{section}.{inner['name']}"] = (st.get("version_info"),
                                                      st.get("last_updated"))
    return out


def _listener(name, route, prefix):
    ls = B.listener(name, route)
    ls["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"] = prefix
    return ls


def _timeout(name, t):
    # STATIC: a changed EDS cluster re-warms in Envoy until an assignment comes again, which a
    # control plane without a change to it never sends (the 15 s initial fetch timeout)
    c = B.static_cluster(name, 2)
    c["connect_timeout"] = t
    return c


def _acked(start, version, types):
    def pred(reqs):
        return all(any(r.type_url == t and r.nonce and not r.error and not r.stale and
                       (r.delta or r.version_info == version) for r in reqs[start:])
                   for t in types)
    return pred


def scenario(kind: str, delta: bool) -> list:
    changes = []
    with ControlPlane() as cp:
        def push(v, clusters, listeners, routes, wait=True):
            start = len(cp.requests)
            cp.set_resources(T.ROUTE, routes, "r" + v, push=False)
            cp.set_resources(T.CLUSTER, clusters, "c" + v)
            cp.set_resources(T.LISTENER, listeners, "l" + v)
            cp.set_resources(T.ROUTE, routes, "r" + v)
            # delta sends only what changed: wait for the types that have a change
            types = (T.CLUSTER, T.LISTENER, T.ROUTE) if wait and (not delta or v == "2") else ()
            cp.wait_for(_acked(start, "c" + v, types[:1]) if types else (lambda r: True))
            cp.wait_for(_acked(start, "l" + v, types[1:2]) if types else (lambda r: True))
            cp.wait_for(_acked(start, "r" + v, types[2:]) if types else (lambda r: True))

        cp.set_resources(T.ENDPOINT, [B.cla("a", 1)], "e1")
        push("1", [B.cluster("a"), _timeout("b", "1s")],
             [_listener("l", "r", "l"), _listener("m", "s", "m")],
             [B.route("r", "a"), B.route("s", "b")], wait=False)
        proxy = ProxyProcess(kind, B.sidecar_bootstrap(cp, delta, "n", "c",
                                                       initial_fetch_timeout="0s")).start()
        try:
            before = readout(proxy)
            # b, m and s change; a, l and r are sent again as they were
            push("2", [B.cluster("a"), _timeout("b", "2s")],
                 [_listener("l", "r", "l"), _listener("m", "s", "m2")],
                 [B.route("r", "a"), B.route("s", "a")])
            middle = readout(proxy)
            # everything again, unchanged
            push("3", [B.cluster("a"), _timeout("b", "2s")],
                 [_listener("l", "r", "l"), _listener("m", "s", "m2")],
                 [B.route("r", "a"), B.route("s", "a")])
            after = readout(proxy)
        finally:
            proxy.stop()
    for a, b in ((before, middle), (middle, after)):
        step = {}
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if isinstance(x, tuple) and isinstance(y, tuple):
                step[key] = (x[0] if not delta else "", y[0] if not delta else "",
                             x[0] != y[0], x[1] != y[1])
            else:
                step[key] = (x, y)
        changes.append(step)
    return changes


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_versions_of_unchanged_resources_stay_as_envoy(delta):
    mine = scenario("meshproxy", delta)
    first, second = mine
    assert first["dynamic_active_clusters.a"][2:] == (False, False)
    assert first["dynamic_active_clusters.b"][2:] == (True, True)
    assert first["dynamic_route_configs.r"][2:] == (False, False)
    assert first["dynamic_route_configs.s"][2:] == (True, True)
    # a change to the filter chains only is an in-place update in Envoy: new time, the old
    # version (newListenerWithFilterChain keeps version_info_)
    assert first["dynamic_listeners.m"][2:] == (False, True)
    assert first["ClustersConfigDump.version_info"] == ("c1", "c2")
    assert all(v[2:] == (False, False) for k, v in second.items() if k.startswith("dynamic"))
    assert second["ClustersConfigDump.version_info"] == ("c2", "c2")
    B.envoy_agrees(scenario, mine, delta)
