"""The open-loop generator's own limits: it fires at increasing rates straight at the nginx
upstream (no proxy) and reports what it achieved, how late its timer fired, the latency it
measured and the CPU it used per request.

    python -m benchmarks.calibrate                    # rates 1000..20000
    python -m benchmarks.calibrate --rates 2000,5000 --upstream-cpus 0

The rate used by ``benchmarks.run`` must sit where ``achieved`` equals the target, the queue
stays near zero and lateness p99 is small against the proxies' latency.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from benchmarks import load, procs
from benchmarks.scenarios import upstream_conf, write_upstream_files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.calibrate",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="1000,2000,5000,10000,15000,20000")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--load-cpus", default="1")
    ap.add_argument("--upstream-cpus", default="0",
                    help="the upstream's core; the load generator's own core shows the "
                         "same-core floor, another core adds the cross-core wake-up")
    ap.add_argument("--spin", action="store_true", help="generator busy-polls (see openloop)")
    a = ap.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="calibrate-")
    root = os.path.join(workdir, "www")
    os.makedirs(root)
    write_upstream_files(root)
    port = procs.free_port()
    up = procs.start_nginx("upstream", upstream_conf(port, root), a.upstream_cpus, workdir)
    print("| target req/s | achieved | max queue | lateness p99 µs | latency p50 µs | p90 µs "
          "| p99 µs | generator CPU µs/req |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        procs.wait_http(port, "/small", up)
        for rate in (int(r) for r in a.rates.split(",")):
            n = int(rate * a.seconds)
            r = load.openloop(port, "/small", rate, n, a.connections, a.load_cpus, a.spin)
            cpu = r["own_cpu_us_per_req"]
            lat, late = r["latency_us"], r["lateness_us"]
            print(f"| {rate} | {r['achieved_rps']:.0f} | {r['max_queue']} | {late['p99']:.0f} | "
                  f"{lat['p50']:.0f} | {lat['p90']:.0f} | {lat['p99']:.0f} | {cpu:.1f} |",
                  flush=True)
    finally:
        up.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
