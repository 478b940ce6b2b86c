"""One measured run against one proxy, and the guards that keep other tenants of the machine
out of the numbers.

CPU per request is (utime+stime of the proxy's process tree after − before) / requests, from
/proc/PID/stat. The kernel derives that total from the scheduler's exact run time (steal time
excluded) and reports it in 10 ms units, so runs are sized to take seconds of CPU.

``noise`` is the CPU that neither this harness nor anything it started used during a run
(other people's tests, kernel threads), in cores. Before each run we wait for the machine to
be quiet; a run that was noisy anyway is repeated and the quietest attempt kept.
"""

from __future__ import annotations

import time

from benchmarks import load, procs

SETTLE = 0.3   # s after a run before reading CPU: the proxy finishes closing connections


class _Window:
    """CPU of the proxy, of the upstream and of everyone else between start and stop."""

    def __init__(self, proxy, upstream):
        self.proxy, self.upstream = proxy, upstream

    def __enter__(self):
        self.t0, self.b0, self.o0 = time.monotonic(), procs.system_busy(), procs.ours_cpu()
        self.c0 = self.proxy.cpu() if self.proxy else 0.0
        self.p0 = procs.preemptions(self.proxy.pid) if self.proxy else 0
        self.u0 = self.upstream.cpu()
        return self

    def __exit__(self, *exc):
        time.sleep(SETTLE)
        self.proxy_cpu = (self.proxy.cpu() - self.c0) if self.proxy else None
        self.preempted = (procs.preemptions(self.proxy.pid) - self.p0) if self.proxy else 0
        self.upstream_cpu = self.upstream.cpu() - self.u0
        t1, b1, o1 = time.monotonic(), procs.system_busy(), procs.ours_cpu()
        self.noise = ((b1 - self.b0) - (o1 - self.o0)) / (t1 - self.t0)


def closed_run(proxy, port, sc, upstream, a) -> dict:
    """``port``: where the load goes, a port on 127.0.0.1 or a ``load.Target``."""
    """Saturation: h2load sends a fixed count as fast as the proxy answers."""
    n = a.requests_for(sc)
    close = sc.new_connections
    load.h2load(port, sc.path, min(n, 3000), sc.connections, a.load_cpus, close=close)  # warm-up
    time.sleep(SETTLE)
    with _Window(proxy, upstream) as w:
        res = load.h2load(port, sc.path, n, sc.connections, a.load_cpus, close=close)
    if res["failed"] or res["non2xx"]:
        raise load.LoadError(f"{res['failed']} failed, {res['non2xx']} non-2xx answers")
    return {"phase": "closed", "requests": n, "noise": w.noise,
            "preempt_per_1k": w.preempted * 1000.0 / n,
            "cpu_us": w.proxy_cpu * 1e6 / n if proxy else None,
            "upstream_cpu_us": w.upstream_cpu * 1e6 / n if sc.kind != "direct" else None,
            "rps": res["rps"], "mbps": res["mbps"]}


def open_run(proxy, port, sc, upstream, a) -> dict:
    """A fixed rate well below every proxy's capacity: latency, and CPU per request when
    wake-ups carry one or two requests instead of dozens."""
    with _Window(proxy, upstream) as w:
        res = load.openloop(port, sc.path, a.rate, a.open_requests, sc.connections, a.load_cpus,
                            spin=not a.no_spin)
    if res["errors"] or res["non2xx"]:
        raise load.LoadError(f"open loop: {res['errors']} errors, {res['non2xx']} non-2xx")
    lat = res["latency_us"]
    return {"phase": "open", "noise": w.noise,
            "cpu_us_at_rate": w.proxy_cpu * 1e6 / a.open_requests if proxy else None,
            "p50": lat["p50"], "p90": lat["p90"], "p99": lat["p99"], "open": res}


def wait_quiet(a, log) -> None:
    """Hold the next run while other tenants of the machine are busy (up to --quiet-wait s)."""
    deadline = time.monotonic() + a.quiet_wait
    said = False
    while True:
        busy = procs.foreign_load(0.5)
        if busy <= a.max_noise or time.monotonic() > deadline:
            return
        if not said:
            log(f"    machine busy ({busy:.2f} cores elsewhere), waiting up to "
                f"{a.quiet_wait:.0f}s")
            said = True
        time.sleep(1.0)


def quietly(run, proxy, port, sc, upstream, a, log) -> dict:
    """``run`` after waiting for quiet, repeated (up to --retries) when it was noisy anyway;
    the quietest attempt is kept."""
    best = None
    for attempt in range(a.retries + 1):
        wait_quiet(a, log)
        r = run(proxy, port, sc, upstream, a)
        r["attempts"] = attempt + 1
        if best is None or r["noise"] < best["noise"]:
            best = r
        if r["noise"] <= a.max_noise:
            break
        log(f"    noisy run ({r['noise']:.2f} cores busy elsewhere), again")
    return best
