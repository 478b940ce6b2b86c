"""Differential: outlier detection in Envoy 1.40 and in meshproxy for the same scripted upstream
failures. Each scenario has its own cluster and upstreams; the same script runs through each
proxy and the comparison covers what the client saw (how many failures reached it, which
upstreams answered once the detector acted) and every non-zero
``cluster.<name>.outlier_detection.*`` stat, ``membership_healthy`` and the cluster manager's
update counters (as deltas over the scenario).

Round robin starts at a random host in both proxies, so scripts run "until N failures" rather
than a fixed number of requests, and compare sets rather than sequences.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.test_upstream_servers import wait_for
from tests.support.client import KeepAlive
from tests.support.proxies import ProxyProcess, bootstrap, cluster, find_envoy, hcm, listener
from tests.support.upstream import Reply, Upstream

pytestmark = pytest.mark.oracle

KINDS = ("envoy", "meshproxy")
CM = ("cluster_updated", "cluster_updated_via_merge", "update_merge_cancelled",
      "update_out_of_merge_window")


class Flaky:
    """Answers its name; while ``mode`` is set, that status (or a slow answer, "slow")."""

    def __init__(self, name):
        self.name = name
        self.mode = None
        self.server = Upstream(self.handle)
        self.server.start()

    def handle(self, req):
        m = self.mode
        if m == "slow":
            return Reply(200, body=self.name.encode(), delay=0.6)
        if m is not None:
            return Reply(m, body=b"failing " + self.name.encode())
        return Reply(200, body=self.name.encode())

    @property
    def addr(self):
        return ("127.0.0.1", self.server.port)


FAST = {"interval": "0.1s", "base_ejection_time": "30s", "max_ejection_percent": 50}

SCENARIOS = {
    # name: (outlier_detection, cluster extras, route extras, hosts: "f" flaky, "ok", "dead")
    "c5xx": (FAST, {}, {}, "f ok ok"),
    "overflow": ({"interval": "0.1s"}, {}, {}, "f ok ok"),
    "always1": ({"interval": "0.1s", "always_eject_one_host": True}, {}, {}, "f ok ok"),
    "gateway": ({**FAST, "consecutive_gateway_failure": 3, "consecutive_5xx": 10,
                 "enforcing_consecutive_gateway_failure": 100}, {}, {}, "f ok ok"),
    "enforce0": ({**FAST, "enforcing_consecutive_5xx": 0}, {}, {}, "f ok ok"),
    "connect": (FAST, {}, {}, "dead ok ok"),
    "split": ({**FAST, "split_external_local_origin_errors": True,
               "consecutive_local_origin_failure": 3}, {}, {}, "dead ok ok"),
    "timeout": (FAST, {}, {"timeout": "0.2s"}, "f ok ok"),
    "rate": ({"interval": "1s", "consecutive_5xx": 1000, "max_ejection_percent": 100,
              "success_rate_request_volume": 10, "failure_percentage_request_volume": 10,
              "enforcing_failure_percentage": 100, "base_ejection_time": "30s"},
             # No merging: each of the two ejections is its own update, none left pending
             # to land in a later scenario's counters.
             {"common_lb_config": {"update_merge_window": "0s"}}, {}, "f ok ok ok ok"),
    "return": ({"interval": "0.1s", "base_ejection_time": "0.3s", "max_ejection_percent": 50},
               {}, {}, "f ok ok"),
}


@pytest.fixture(scope="module")
def env():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    # A bound socket that does not listen refuses connections and, unlike a closed one,
    # keeps its port from being handed to a proxy's own listener meanwhile.
    hold = socket.socket()
    hold.bind(("127.0.0.1", 0))
    dead = hold.getsockname()[1]
    flaky, clusters, routes = {}, [], []
    for name, (od, cextra, rextra, spec) in SCENARIOS.items():
        addrs = []
        for i, kind in enumerate(spec.split()):
            if kind == "dead":
                addrs.append(("127.0.0.1", dead))
            else:
                up = Flaky(f"{name}-{i}")
                if kind == "f":
                    flaky[name] = up
                addrs.append(up.addr)
                flaky.setdefault(name + "/all", []).append(up)
        clusters.append(cluster(name, addrs, outlier_detection=od, **cextra))
        routes.append({"match": {"prefix": f"/{name}"}, "route": {"cluster": name, **rextra}})
    boot = bootstrap([listener("l", hcm(routes))], clusters)
    procs = {k: ProxyProcess(k, boot).start() for k in KINDS}
    try:
        yield procs, flaky
    finally:
        for p in procs.values():
            p.stop()
        hold.close()
        for ups in [v for k, v in flaky.items() if k.endswith("/all")]:
            for u in ups:
                u.server.stop()


def outlier_stats(p, name):
    pre = f"cluster.{name}."
    st = p.stats(f"^cluster\\.{name}\\.(outlier_detection\\.|membership_healthy$)")
    return {k[len(pre):]: v for k, v in st.items() if v}


def cm_stats(p):
    st = p.stats("^cluster_manager\\.")
    return {n: st.get("cluster_manager." + n, 0) for n in CM}


def until_failures(ka, path, n, limit=60):
    out = []
    while sum(1 for s, _ in out if s >= 500) < n:
        assert len(out) < limit, out
        r = ka.request(path=path)
        out.append((r.status, r.body.decode()))
    return out


def run(env, name, script):
    """Run ``script(proxy, keep_alive)`` through each proxy; returns {kind: (result, stats)}."""
    procs, flaky = env
    results = {}
    for kind in KINDS:
        p = procs[kind]
        ka = KeepAlive(p.port("l"))
        before = cm_stats(p)
        try:
            out = script(p, ka)
        finally:
            ka.close()
            up = flaky.get(name)
            if up is not None:
                up.mode = None
        after = cm_stats(p)
        results[kind] = (out, outlier_stats(p, name),
                         {n: after[n] - before[n] for n in CM if after[n] != before[n]})
    return results


def consecutive_script(name, mode, failures, then=15):
    def script(p, ka):
        up = None
        if mode is not None:
            up = p._flaky[name]
            up.mode = mode
        seen = until_failures(ka, "/" + name, failures)
        after = {(r.status, r.body.decode()) for r in
                 (ka.request(path="/" + name) for _ in range(then))}
        if up is not None:
            up.mode = None
        return sorted({s for s, _ in seen if s >= 500}), sorted(after)
    return script


@pytest.fixture
def flaky_env(env):
    procs, flaky = env
    for p in procs.values():
        p._flaky = flaky
    return env


@pytest.mark.parametrize("name,mode,failures", [
    ("c5xx", 503, 5),           # ejected on the fifth 503: the others answer from then on
    ("overflow", 503, 7),       # max_ejection_percent 10 of 3 hosts: never ejected
    ("always1", 500, 5),        # ... unless always_eject_one_host
    ("gateway", 502, 3),        # the gateway rule, enforced, at 3
    ("enforce0", 503, 7),       # detected, never enforced
    ("connect", None, 5),       # connect failures count as 503s
    ("split", None, 3),         # ... or as local-origin failures when split
    ("timeout", "slow", 5),     # route timeouts count as 504s
])
def test_consecutive_failures_same_as_envoy(flaky_env, name, mode, failures):
    res = run(flaky_env, name, consecutive_script(name, mode, failures))
    assert res["meshproxy"] == res["envoy"]
    (codes, after), stats, cm = res["envoy"]
    ejected = stats.get("outlier_detection.ejections_active", 0) == 1
    assert ejected == (name not in ("overflow", "enforce0"))
    if ejected:
        assert all(status == 200 for status, _ in after)


def test_success_rate_and_failure_percentage_same_as_envoy(flaky_env):
    """One host of five always 500: success rate (mean 80, threshold 4) and failure percentage
    (100% >= 85%) both find it on the same tick; Envoy ejects it twice (ejections_active 2)."""
    def script(p, ka):
        up = p._flaky["rate"]
        up.mode = 500
        for _ in range(200):
            ka.request(path="/rate")
        assert wait_for(lambda: outlier_stats(p, "rate").get(
            "outlier_detection.ejections_enforced_total"), timeout=5)
        up.mode = None
        return sorted({r.body.decode() for r in (ka.request(path="/rate") for _ in range(12))})
    res = run(flaky_env, "rate", script)
    assert res["meshproxy"] == res["envoy"]
    assert res["envoy"][1]["outlier_detection.ejections_active"] == 2
    assert res["envoy"][2] == {"cluster_updated": 2}


def test_return_is_merged_into_the_next_update_window_as_envoy(flaky_env):
    """Ejected at once (first update of the window); back after 0.3 s, but within 1 s of the
    ejection, so the load balancer learns of it only when the merge window ends."""
    def script(p, ka):
        up = p._flaky["return"]
        up.mode = 503
        until_failures(ka, "/return", 5)
        up.mode = None
        assert wait_for(lambda: outlier_stats(p, "return").get(
            "outlier_detection.ejections_active", 0) == 0 and
            outlier_stats(p, "return").get("outlier_detection.ejections_enforced_total"),
            timeout=5)
        returned = time.monotonic()
        soon = {r.body.decode() for r in (ka.request(path="/return") for _ in range(6))}
        assert time.monotonic() - returned < 0.3
        assert wait_for(lambda: ka.request(path="/return").body == up.name.encode(), timeout=5)
        return sorted(soon), up.name in soon
    res = run(flaky_env, "return", script)
    assert res["meshproxy"] == res["envoy"]
    (soon, back_at_once), stats, cm = res["envoy"]
    assert not back_at_once
    assert cm == {"cluster_updated": 1, "update_out_of_merge_window": 1,
                  "cluster_updated_via_merge": 1}

