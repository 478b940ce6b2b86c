"""Side-by-side benchmark: meshproxy, Envoy 1.40, nginx and HAProxy doing the same routing job
against the same upstream, alternating, with CPU per request as the headline.

    python -m benchmarks.run                      # everything (~20 minutes on a quiet machine)
    python -m benchmarks.run --quick              # smaller counts, fewer rounds (~5 minutes)
    python -m benchmarks.run --scenarios route --rounds 5 --proxies meshproxy,envoy

Writes benchmarks/results/<time>/{report.md, results.json, plot.png} and prints the report.
See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

from benchmarks import load, measure, podnet, procs, report
from benchmarks.scenarios import (
    SCENARIOS,
    SERVICE_CLUSTER,
    SERVICE_PORT,
    SERVICE_VIP,
    upstream_conf,
    write_upstream_files,
)

ALL_PROXIES = ("meshproxy", "envoy", "nginx", "haproxy")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated, from {','.join(SCENARIOS)}")
    ap.add_argument("--proxies", default=",".join(ALL_PROXIES),
                    help="comma-separated; ones not installed are skipped")
    ap.add_argument("--rounds", type=int, default=7,
                    help="closed-loop (CPU, req/s) runs per proxy")
    ap.add_argument("--latency-rounds", type=int, default=3,
                    help="open-loop (latency) runs per proxy; 0 skips them")
    ap.add_argument("--max-noise", type=float, default=0.1,
                    help="repeat a run when other processes used more than this many cores")
    ap.add_argument("--retries", type=int, default=2, help="repeats of a noisy run")
    ap.add_argument("--quiet-wait", type=float, default=60.0,
                    help="seconds to wait for the machine to be quiet before each run")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies closed-loop counts")
    ap.add_argument("--rate", type=int, default=2000, help="open-loop requests per second")
    ap.add_argument("--open-requests", type=int, default=10000)
    ap.add_argument("--no-spin", action="store_true",
                    help="let the open-loop generator sleep between sends (its core then halts "
                         "and every wake-up adds the VM's ~100 µs to measured latency)")
    ap.add_argument("--proxy-cpus", default="0", help="taskset list for the proxies")
    ap.add_argument("--load-cpus", default="1",
                    help="taskset list for load generators and the upstream")
    ap.add_argument("--no-pin", action="store_true", help="do not use taskset")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=COMMAND|@REV",
                    help="also run, as NAME, meshproxy at git revision REV, or started by "
                         "COMMAND (e.g. 'python -m benchmarks.experiments coalesce --')")
    ap.add_argument("--meshproxy-rev", default="",
                    help="run meshproxy as of this git revision instead of the working tree")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the no-proxy run (load generators straight to the upstream)")
    ap.add_argument("--quick", action="store_true",
                    help="--rounds 3 --latency-rounds 1 --scale 0.3 --open-requests 4000")
    ap.add_argument("--out", default="",
                    help="results directory (default benchmarks/results/<time>)")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.latency_rounds, a.scale, a.open_requests = 3, 1, 0.3, 4000
    if a.no_pin or not shutil.which("taskset"):
        a.proxy_cpus = a.load_cpus = None
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    for s in a.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}")
    a.proxies = [p for p in a.proxies.split(",") if p]
    a.variants = {}
    for v in a.variant:
        name, sep, cmd = v.partition("=")
        if not sep or not name or not cmd or name in ALL_PROXIES:
            ap.error(f"--variant wants NAME=COMMAND with a new name, got {v!r}")
        if cmd.startswith("@"):
            a.variants[name] = {"rev": cmd[1:]}
            continue
        argv = shlex.split(cmd)
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable   # the harness's interpreter, not whatever PATH finds
        a.variants[name] = {"command": argv}
    # "meshproxy" itself: the working tree unless --meshproxy-rev says otherwise.
    a.variants["meshproxy"] = {"rev": a.meshproxy_rev} if a.meshproxy_rev else {}
    if a.rounds < 1 or a.latency_rounds < 0 or a.rate < 1 or a.open_requests < 1:
        ap.error("rounds, rate and open-requests must be positive")
    a.requests_for = lambda sc: max(1000, int(sc.requests * a.scale))
    return a


def available(proxies: list[str]) -> list[str]:
    have = {"meshproxy": True, "envoy": procs.find_envoy() is not None,
            "nginx": shutil.which("nginx") is not None,
            "haproxy": shutil.which("haproxy") is not None}
    for p in proxies:
        if not have.get(p):
            print(f"benchmarks: {p} not installed or unknown, skipped", file=sys.stderr)
    return [p for p in proxies if have.get(p)]


def start_proxy(name, sc, upstream_port, a, workdir, seq):
    if name == "envoy" or name in a.variants:
        base_id = (os.getpid() % 5000) * 10 + seq
        kind = "envoy" if name == "envoy" else "meshproxy"
        v = a.variants.get(name, {})
        # An experiment command patches the same meshproxy that --meshproxy-rev selects.
        rev = v.get("rev") or (a.meshproxy_rev if "command" in v else None)
        source = procs.checkout(rev, workdir) if rev else None
        p = procs.start_envoy_like(kind, sc.envoy_bootstrap(upstream_port), a.proxy_cpus,
                                   base_id, workdir, command=v.get("command"), source=source)
        p.name = name
        return p
    port = procs.free_port()
    if name == "nginx":
        conf = sc.nginx_conf(port, upstream_port)
        if conf is None:
            return None
        p = procs.start_nginx("nginx", conf, a.proxy_cpus, workdir)
    else:
        p = procs.start_haproxy(sc.haproxy_conf(port, upstream_port), a.proxy_cpus, workdir)
    p.port = port
    return p


def start_sidecar(name, sc, net, a, workdir, seq):
    """``redirect``: meshproxy or Envoy as uid 1337 in a pod namespace of its own, on the
    sidecar bootstrap; the load goes to the service VIP from inside that pod."""
    if name not in ("envoy", *a.variants):
        return None   # nginx / HAProxy have no original-destination listener to compare
    base_id = (os.getpid() % 5000) * 10 + seq
    kind = "envoy" if name == "envoy" else "meshproxy"
    v = a.variants.get(name, {})
    rev = v.get("rev") or (a.meshproxy_rev if "command" in v else None)
    source = procs.checkout(rev, workdir) if rev else None
    pod = net.add_pod()
    p = procs.start_envoy_like(kind, sc.envoy_bootstrap(podnet.UPSTREAM_PORT, net.upstream_ip),
                               a.proxy_cpus, base_id, workdir, command=v.get("command"),
                               source=source, netns=pod, uid=procs.PROXY_UID,
                               listener="virtualOutbound")
    p.name = name
    p.port = SERVICE_PORT
    p.target = load.Target(SERVICE_PORT, SERVICE_VIP, ("ip", "netns", "exec", pod))
    uid = procs.uids(p.pid)
    if uid != [procs.PROXY_UID] * 4:
        p.stop()
        raise RuntimeError(f"{name} runs as uids {uid}, not {procs.PROXY_UID}")
    return p


def sidecar_counts(p) -> dict:
    """Requests the service cluster saw, and connections that went out as passthrough (there
    should be none: a captured baseline or a re-captured upstream connection would show up
    there)."""
    want = {f"cluster.{SERVICE_CLUSTER}.upstream_rq_total": "service_rq",
            "cluster.PassthroughCluster.upstream_cx_total": "passthrough_cx",
            "cluster.BlackHoleCluster.upstream_cx_none_healthy": "blackhole_cx"}
    out = dict.fromkeys(want.values(), 0)
    try:
        text = procs.http_get(f"http://{p.admin}/stats", p.netns)[1].decode()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name in want and value.strip().isdigit():
            out[want[name]] = int(value)
    return out


def start_all(sc, proxies, upstream, a, workdir, log, net=None):
    """Start every proxy for ``sc``; returns ({name: Proc}, names to measure, start errors)."""
    started, errors = {}, []
    names = []
    for i, name in enumerate(proxies):
        try:
            if net is not None:
                p = start_sidecar(name, sc, net, a, workdir, i)
            else:
                p = start_proxy(name, sc, upstream.port, a, workdir, i)
            if p is None:
                continue   # this proxy cannot do this job (nginx-light has no tcp proxying)
            started[name] = p
            t = getattr(p, "target", None) or load.Target(p.port)
            procs.wait_http(t.port, sc.path, p, host=t.host, netns=getattr(p, "netns", None))
        except RuntimeError as exc:
            if name in started:
                started.pop(name).stop()
            log(f"  {name}: failed to start: {exc}")
            errors.append({"proxy": name, "round": 0, "phase": "closed",
                           "error": str(exc).splitlines()[0]})
        names.append(name)
    if not a.no_baseline and sc.kind in ("http", "redirect"):
        names.append(report.NO_PROXY)
    return started, names, errors


def run_phase(run, rounds, names, started, sc, upstream, a, log,
              baseline=None) -> list[dict]:
    """``baseline``: where the no-proxy runs send their load (default: the upstream)."""
    records = []
    for rnd in range(rounds):
        # Serpentine order (A B C D, D C B A, ...) so slow drift hits every proxy alike.
        for name in (names if rnd % 2 == 0 else names[::-1]):
            if name != report.NO_PROXY and name not in started:
                continue
            p = started.get(name)
            if p is not None:
                target = getattr(p, "target", None) or load.Target(p.port)
            else:
                target = baseline or load.Target(upstream.port)
            try:
                r = measure.quietly(run, p, target, sc, upstream, a, log)
            except (load.LoadError, RuntimeError) as exc:
                r = {"phase": run.__name__.split("_")[0], "error": str(exc)[:300]}
            r.update(proxy=name, round=rnd)
            records.append(r)
            if r.get("error"):
                log(f"  {r['phase']} {rnd + 1} {name}: ERROR {r['error']}")
            elif r["phase"] == "closed":
                log(f"  closed {rnd + 1} {name:11s} cpu {report._fmt(r['cpu_us']):>6} µs/req "
                    f"{r['rps']:8.0f} req/s  noise {r['noise']:.2f} cores, "
                    f"{r['preempt_per_1k']:.1f} preemptions/1k req")
            else:
                log(f"  open   {rnd + 1} {name:11s} cpu {report._fmt(r['cpu_us_at_rate']):>6} "
                    f"µs/req  p50 {r['p50']:6.0f} µs  p99 {r['p99']:7.0f} µs  "
                    f"noise {r['noise']:.2f}")
    return records


def run_scenario(sc, proxies, upstream, a, workdir, log) -> dict:
    if sc.kind == "redirect":
        return run_redirect(sc, proxies, a, workdir, log)
    started, names, records = start_all(sc, proxies, upstream, a, workdir, log)
    rss = {}
    try:
        records += run_phase(measure.closed_run, a.rounds, names, started, sc, upstream, a, log)
        if a.latency_rounds and not sc.new_connections:   # the open loop keeps connections
            records += run_phase(measure.open_run, a.latency_rounds, names, started, sc,
                                 upstream, a, log)
        rss = {n: p.rss() for n, p in started.items()}
    finally:
        for p in started.values():
            p.stop()
    return _scenario_result(sc, a, records, names, rss)


def run_redirect(sc, proxies, a, workdir, log) -> dict:
    """The ``redirect`` scenario in namespaces of its own (benchmarks/podnet.py): its own
    upstream (the same nginx configuration) in the node namespace, one pod per proxy. The
    no-proxy baseline runs in the first pod as uid 1337, which the capture rules exempt:
    the same veth hop to the same upstream, without the proxy."""
    why = podnet.usable()
    if why:
        log(f"  redirect skipped: {why}")
        return {"name": sc.name, "title": sc.title, "requests": a.requests_for(sc),
                "connections": sc.connections, "body_bytes": sc.body_bytes, "runs": [],
                "rss_bytes": {}, "summary": [{"proxy": "all", "error": why}]}
    started, names, records, rss = {}, [], [], {}
    upstream = None
    notes = [f"Each proxy runs as uid {procs.PROXY_UID} in a pod namespace of its own with "
             f"meshproxy-iptables REDIRECT rules (`{shlex.join(podnet.CAPTURE)}`); the load "
             f"generators run as root in that pod and call {SERVICE_VIP}:{SERVICE_PORT}, which "
             f"exists nowhere; the upstream is the same nginx, in a node namespace across a "
             f"veth pair. `no-proxy`: the generators as uid {procs.PROXY_UID} (exempt from "
             f"capture) in a pod, straight to the upstream over the same veth.", ""]
    with podnet.PodNet() as net:
        try:
            root = os.path.join(workdir, "www")
            upstream = procs.start_nginx(
                "upstream-node", upstream_conf(podnet.UPSTREAM_PORT, root, net.upstream_ip),
                a.load_cpus, workdir, netns=net.node)
            upstream.port = podnet.UPSTREAM_PORT
            procs.wait_http(upstream.port, "/small", upstream, host=net.upstream_ip,
                            netns=net.node)
            started, names, records = start_all(sc, proxies, upstream, a, workdir, log, net)
            pod0 = next((p.netns for p in started.values()), None) or net.add_pod()
            baseline = load.Target(upstream.port, net.upstream_ip,
                                   tuple(procs.in_netns(pod0, [], procs.PROXY_UID)))
            records += run_phase(measure.closed_run, a.rounds, names, started, sc, upstream,
                                 a, log, baseline)
            if a.latency_rounds and not sc.new_connections:   # the open loop keeps connections
                records += run_phase(measure.open_run, a.latency_rounds, names, started, sc,
                                     upstream, a, log, baseline)
            rss = {n: p.rss() for n, p in started.items()}
            for n, p in started.items():
                c = sidecar_counts(p)
                msg = (f"{n}: {c['service_rq']} requests through {SERVICE_CLUSTER}, "
                       f"{c['passthrough_cx']} passthrough / {c['blackhole_cx']} blackhole "
                       f"connections (both should be 0)")
                log("  " + msg)
                notes.append(f"- {msg}")
                if c["passthrough_cx"] or c["blackhole_cx"]:
                    records.append({"proxy": n, "round": 0, "phase": "check",
                                    "error": f"unexpected capture: {c}"})
        finally:
            for p in started.values():
                p.stop()
            if upstream is not None:
                upstream.stop()
    return _scenario_result(sc, a, records, names, rss, notes)


def _scenario_result(sc, a, records, names, rss, notes=None) -> dict:
    return {"name": sc.name, "title": sc.title, "requests": a.requests_for(sc),
            "connections": sc.connections, "body_bytes": sc.body_bytes, "runs": records,
            "rss_bytes": rss, "summary": report.summarise(records, names, rss),
            "notes": notes or []}


def environment(a) -> dict:
    def first_line(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    envoy = procs.find_envoy()
    rev = (f"at {a.meshproxy_rev} = "
           + first_line(["git", "-C", procs.REPO, "rev-parse", "--short", a.meshproxy_rev])
           if a.meshproxy_rev else
           first_line(["git", "-C", procs.REPO, "describe", "--always", "--dirty"]) +
           " (working tree)")
    versions = (f"meshproxy {rev} on Python {platform.python_version()}; "
                f"{first_line([envoy, '--version']) if envoy else 'no envoy'}; "
                f"{first_line(['nginx', '-v'])}; {first_line(['haproxy', '-v'])}")
    return {"cpu": cpu, "nproc": os.cpu_count(), "kernel": platform.release(),
            "proxy_cpus": a.proxy_cpus, "load_cpus": a.load_cpus, "versions": versions}


def headline(result, meshproxies) -> str:
    lines = []
    for sc in result["scenarios"]:
        for row in sc["summary"]:
            if row["proxy"] not in meshproxies or row.get("error") or row.get("cpu_ratio") is None:
                continue
            per = ", ".join(f"{x:.2f}" for x in row["cpu_ratios"])
            verdict = ""
            if sc["name"] == "route":
                verdict = " — bar (≤ 1.00): **{}**".format(
                    "MET" if row["cpu_ratio"] <= 1.0 else "NOT MET")
            lines.append(
                f"- **{sc['name']}**, {row['proxy']}: CPU per request ×Envoy "
                f"**{row['cpu_ratio']:.2f}** at saturation (per round: {per}){verdict}; "
                f"×{report._fmt(row['cpu_at_rate_ratio'], 2)} at {result['rate']} req/s; "
                f"req/s ×{report._fmt(row['rps_ratio'], 2)}, "
                f"p50 ×{report._fmt(row['p50_ratio'], 2)}, "
                f"p99 ×{report._fmt(row['p99_ratio'], 2)}, RSS ×{report._fmt(row['rss_ratio'], 2)}")
    by_name = {sc["name"]: {r["proxy"]: r for r in sc["summary"] if not r.get("error")}
               for sc in result["scenarios"]}
    for plain, captured in (("route", "redirect"), ("route-close", "redirect-close")):
        if plain not in by_name or captured not in by_name:
            continue
        # What the sidecar hop adds over a plain listener, per proxy: capture, original
        # destination, the hand-off between listeners, and the veth instead of loopback
        # (per connection too in the -close pair).
        deltas = []
        for p in ["envoy", *meshproxies]:
            a, b = by_name[plain].get(p), by_name[captured].get(p)
            if a and b and a.get("cpu_us") is not None and b.get("cpu_us") is not None:
                deltas.append(f"{p} {b['cpu_us'] - a['cpu_us']:+.1f}")
        if deltas:
            lines.append(f"- **{captured} − {plain}** (CPU µs per request the intercepted hop "
                         "adds, medians of the two scenarios): " + ", ".join(deltas))
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    proxies = available(a.proxies) + [v for v in a.variants if v != "meshproxy"]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = a.out or os.path.join(procs.REPO, "benchmarks", "results", stamp)
    os.makedirs(out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="work-", dir=out)

    def log(msg):
        print(msg, flush=True)

    def terminated(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")   # unwind: stop processes, delete netns

    signal.signal(signal.SIGTERM, terminated)

    result = {"started": stamp, "command": "python -m benchmarks.run " + shlex.join(argv),
              "rounds": a.rounds, "latency_rounds": a.latency_rounds, "rate": a.rate,
              "open_requests": a.open_requests,
              "proxies": proxies + ([] if a.no_baseline else [report.NO_PROXY]),
              "environment": environment(a), "scenarios": []}
    root = os.path.join(workdir, "www")
    os.makedirs(root)
    write_upstream_files(root)
    up_port = procs.free_port()
    upstream = procs.start_nginx("upstream", upstream_conf(up_port, root), a.load_cpus, workdir)
    upstream.port = up_port
    try:
        procs.wait_http(up_port, "/small", upstream)
        for name in a.scenarios:
            sc = SCENARIOS[name]
            log(f"== {sc.name}: {sc.title}")
            result["scenarios"].append(run_scenario(sc, proxies, upstream, a, workdir, log))
    finally:
        for p in list(procs.RUNNING):   # whatever an interrupted run left behind
            p.stop()
        podnet.close_all()
    result["headline"] = headline(result, list(a.variants))
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    md = report.markdown(result)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(md)
    try:
        report.plot(result, os.path.join(out, "plot.png"))
    except ImportError:
        log("matplotlib not installed (pip install -e '.[bench]'): no plot")
    print()
    print(md)
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
