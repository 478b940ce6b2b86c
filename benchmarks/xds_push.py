"""xDS push cost, meshproxy against Envoy 1.40 in the same run: ``python -m benchmarks.xds_push``.

For N in ``--sizes`` (100 and 1000): N EDS clusters with one endpoint each, N route
configurations (one virtual host each, to its cluster) and N listeners (Istio's outbound port
listener shape: ``bind_to_port: false``, an HCM taking its routes over RDS), served by the test
control plane (tests/xds/control_plane.py, real gRPC ADS) to a proxy that started with nothing.
Per proxy and N it measures:

- ``push_ms``: from the push to the last ACK (CDS, EDS, LDS and RDS at the new version, every
  name), and ``push_cpu_ms``, the proxy's CPU time over the same span;
- ``rss_mb`` once everything is applied;
- ``repush_cpu_ms``: CPU to take an identical re-push (every type at a new version with the same
  resources; SotW sends them all again), per re-push, over ``--repeats`` re-pushes (SotW only:
  over ``--delta`` nothing is sent, and it reads 0);
- ``change_cpu_ms``: CPU to take a change of one route configuration, per change, over
  ``--repeats`` changes.

Every wait is bounded (``--timeout``); nothing is sent to the data plane. CPU is utime+stime
from /proc (10 ms ticks, hence the repeats). Ratios are meshproxy/Envoy in the same run; the
proxies run one after the other on the same control plane build, alternating per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks.procs import cpu_seconds, rss_bytes
from meshproxy.xds import types as T
from tests.support.proxies import ProxyProcess, find_envoy
from tests.xds import builders as B
from tests.xds.control_plane import ControlPlane

NODE = "sidecar~127.0.0.1~bench.default~default.svc.cluster.local"
ALL = (T.CLUSTER, T.ENDPOINT, T.LISTENER, T.ROUTE)


def resources(n: int, change: int = 0) -> dict:
    """The N-sized config; ``change`` > 0 points route configuration r0 elsewhere (a one-
    resource change whose content differs per value)."""
    clusters = [B.cluster(f"c{i}") for i in range(n)]
    clas = [B.cla(f"c{i}", 10000 + i % 50000) for i in range(n)]
    listeners = []
    for i in range(n):
        ls = B.listener(f"l{i}", f"r{i}", port=20000 + i)
        ls["bind_to_port"] = False
        listeners.append(ls)
    routes = [B.route(f"r{i}", f"c{i}") for i in range(n)]
    for i, r in enumerate(routes):
        r["virtual_hosts"][0]["domains"] = [f"svc{i}.bench.svc.cluster.local"]
    if change:
        routes[0] = B.route("r0", f"c{change % n}", prefix=f"/v{change}")
    return {T.CLUSTER: clusters, T.ENDPOINT: clas, T.LISTENER: listeners, T.ROUTE: routes}


def serve(cp, res: dict, version: str, types=(T.ENDPOINT, T.ROUTE, T.CLUSTER, T.LISTENER)):
    """Set every type; push once all are in (EDS and RDS first, so the proxy finds them)."""
    for t in types:
        cp.set_resources(t, res[t], version, push=False)
    for t in types:
        cp.set_resources(t, res[t], version)


def _acked(start: int, version: str, n: int, types, delta: bool = False):
    """Every type in ``types`` ACKed at ``version`` with all N names (SotW); over delta, ACKed
    after the request that subscribed its N names (EDS, RDS) or at all (CDS, LDS)."""
    def pred(reqs):
        got, subscribed = set(), set()
        for r in reqs[start:]:
            if delta:
                if len(r.subscribe) == n:
                    subscribed.add(r.type_url)
                if r.nonce and not r.error and not r.stale and \
                        (r.type_url in (T.CLUSTER, T.LISTENER) or r.type_url in subscribed):
                    got.add(r.type_url)
            elif r.nonce and not r.error and not r.stale and r.version_info == version and \
                    (r.type_url in (T.CLUSTER, T.LISTENER) or len(r.names) == n):
                got.add(r.type_url)
        return got >= set(types)
    return pred


def measure(kind: str, n: int, repeats: int, timeout: float, delta: bool = False) -> dict:
    with ControlPlane() as cp:
        boot = B.sidecar_bootstrap(cp, delta, NODE, "bench.default", initial_fetch_timeout="0s")
        proxy = ProxyProcess(kind, boot).start(timeout=60)   # LIVE on an empty config
        try:
            pid = proxy.proc.pid
            res = resources(n)
            start, c0, t0 = len(cp.requests), cpu_seconds(pid), time.monotonic()
            serve(cp, res, "v1")
            cp.wait_for(_acked(start, "v1", n, ALL, delta), timeout)
            out = {"push_ms": (time.monotonic() - t0) * 1e3,
                   "push_cpu_ms": (cpu_seconds(pid) - c0) * 1e3,
                   "rss_mb": rss_bytes(pid) / 2**20}
            c0 = cpu_seconds(pid)
            # over delta an identical push sends nothing: measured over SotW only
            for k in range(0 if delta else repeats):
                start, v = len(cp.requests), f"same{k}"
                serve(cp, res, v)
                cp.wait_for(_acked(start, v, n, ALL), timeout)
            out["repush_cpu_ms"] = (cpu_seconds(pid) - c0) * 1e3 / repeats
            c0 = cpu_seconds(pid)
            for k in range(repeats):
                start, v = len(cp.requests), f"chg{k}"
                serve(cp, resources(n, change=k + 1), v, types=(T.ROUTE,))
                cp.wait_for(_changed(start, v, n, delta), timeout)
            out["change_cpu_ms"] = (cpu_seconds(pid) - c0) * 1e3 / repeats
            if proxy.proc.poll() is not None:
                raise RuntimeError(f"{kind} exited: {proxy.log()}")
        finally:
            proxy.stop()
    return out


def _changed(start: int, version: str, n: int, delta: bool):
    if not delta:
        return _acked(start, version, n, (T.ROUTE,))
    return lambda reqs: any(r.type_url == T.ROUTE and r.nonce and not r.error and not r.stale
                            for r in reqs[start:])


KEYS = ("push_ms", "push_cpu_ms", "rss_mb", "repush_cpu_ms", "change_cpu_ms")


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per size (1-5)")
    ap.add_argument("--repeats", type=int, default=5, help="re-pushes and changes (1-20)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--delta", action="store_true", help="delta xDS (Istio's default)")
    a = ap.parse_args(argv)
    if find_envoy() is None:
        print("Envoy 1.40 not found (.venv-envoy/bin/envoy or $MESHPROXY_ENVOY)", file=sys.stderr)
        return 2
    rounds, repeats = max(1, min(a.rounds, 5)), max(1, min(a.repeats, 20))
    for n in [int(s) for s in a.sizes.split(",")][:4]:
        runs = {"meshproxy": [], "envoy": []}
        for r in range(rounds):
            order = ("meshproxy", "envoy") if r % 2 == 0 else ("envoy", "meshproxy")
            for kind in order:
                runs[kind].append(measure(kind, n, repeats, a.timeout, a.delta))
        print(f"\nN = {n} clusters + endpoints + route configurations + listeners "
              f"({'delta' if a.delta else 'SotW'}, {rounds} round(s), {repeats} repeats)")
        print(f"{'':16}{'meshproxy':>12}{'envoy':>12}{'ratio':>10}")
        for key in KEYS:
            m = statistics.median(x[key] for x in runs["meshproxy"])
            e = statistics.median(x[key] for x in runs["envoy"])
            ratios = [_ratio(x[key], y[key]) for x, y in zip(runs["meshproxy"], runs["envoy"])]
            ratios = [q for q in ratios if q is not None]
            ratio = f"x{statistics.median(ratios):.2f}" if ratios else "n/a"
            print(f"{key:16}{m:12.1f}{e:12.1f}{ratio:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
