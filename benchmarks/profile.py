"""Where meshproxy's per-request CPU goes: py-spy samples meshproxy while h2load drives a
scenario (default "route", the performance-bar scenario), then the samples are folded into
top functions by self time and by inclusive time, and shares by source file.

    pip install py-spy
    python -m benchmarks.profile                       # Python frames
    python -m benchmarks.profile --native              # plus C frames (uvloop, httptools, libc)

Samples count only while meshproxy is on CPU (py-spy drops idle samples), so the shares are
shares of the per-request CPU that ``benchmarks.run`` measures. py-spy stops the process for
each sample; CPU per request is not measured in this mode. Output goes to
benchmarks/results/profile-<time>/ (raw folded stacks, summary.md).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks import load, procs
from benchmarks.scenarios import SCENARIOS, upstream_conf, write_upstream_files

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def fold(raw_path: str):
    """Parse py-spy's raw (collapsed) output into [(frames, count)], root first."""
    stacks = []
    with open(raw_path) as f:
        for line in f:
            m = _LINE.match(line.rstrip("\n"))
            if m:
                frames = [fr for fr in m.group(1).split(";") if not fr.startswith("process ")
                          and not fr.startswith("thread ")]
                stacks.append((frames, int(m.group(2))))
    return stacks


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        i = path.find(marker)
        if i >= 0:
            path = path[i + len(marker):]
            break
    return f"{m.group('func')} ({path})"


def _file_of(frame: str) -> str:
    m = _FRAME.match(frame)
    return _short(frame).split(" (", 1)[1][:-1] if m else frame


def summarise(stacks, top: int = 30) -> str:
    total = sum(c for _, c in stacks) or 1
    self_t, incl, files = collections.Counter(), collections.Counter(), collections.Counter()
    for frames, c in stacks:
        if not frames:
            continue
        self_t[_short(frames[-1])] += c
        files[_file_of(frames[-1])] += c
        for fr in {_short(f) for f in frames}:
            incl[fr] += c
    out = [f"{total} samples on CPU", "", "### Top functions by self time", "",
           "| self % | function |", "|---:|---|"]
    out += [f"| {100.0 * c / total:.1f} | `{f}` |" for f, c in self_t.most_common(top)]
    out += ["", "### Top functions by inclusive time", "", "| incl % | function |", "|---:|---|"]
    out += [f"| {100.0 * c / total:.1f} | `{f}` |" for f, c in incl.most_common(top)]
    out += ["", "### Self time by source file", "", "| self % | file |", "|---:|---|"]
    out += [f"| {100.0 * c / total:.1f} | `{f}` |" for f, c in files.most_common(top)]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="route", choices=sorted(SCENARIOS))
    ap.add_argument("--requests", type=int, default=150000)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true", help="include C frames")
    ap.add_argument("--proxy-cpus", default="0")
    ap.add_argument("--load-cpus", default="1")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--meshproxy-rev", default="",
                    help="profile meshproxy as of this git revision instead of the working tree")
    a = ap.parse_args(argv)
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 1
    sc = SCENARIOS[a.scenario]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.join(procs.REPO, "benchmarks", "results", f"profile-{stamp}")
    os.makedirs(out)
    workdir = tempfile.mkdtemp(prefix="work-", dir=out)
    root = os.path.join(workdir, "www")
    os.makedirs(root)
    write_upstream_files(root)
    up_port = procs.free_port()
    running = []
    try:
        up = procs.start_nginx("upstream", upstream_conf(up_port, root), a.load_cpus, workdir)
        running.append(up)
        procs.wait_http(up_port, "/small", up)
        source = procs.checkout(a.meshproxy_rev, workdir) if a.meshproxy_rev else None
        mp = procs.start_envoy_like("meshproxy", sc.envoy_bootstrap(up_port), a.proxy_cpus, 0,
                                    workdir, source=source)
        running.append(mp)
        procs.wait_http(mp.port, sc.path, mp)
        load.h2load(mp.port, sc.path, 3000, sc.connections, a.load_cpus,
                    close=sc.new_connections)
        raw = os.path.join(out, "stacks.txt")
        cmd = [pyspy, "record", "--pid", str(mp.pid), "--format", "raw", "--function",
               "--rate", str(a.rate), "-o", raw] + (["--native"] if a.native else [])
        spy = subprocess.Popen(procs.pinned(cmd, a.load_cpus), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        time.sleep(1.0)   # py-spy attaches
        c0 = mp.cpu()
        res = load.h2load(mp.port, sc.path, a.requests, sc.connections, a.load_cpus, timeout=600,
                          close=sc.new_connections)
        c1 = mp.cpu()
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    finally:
        for p in running:
            p.stop()
    stacks = fold(raw)
    text = (f"# meshproxy profile: {sc.name} ({sc.title})\n\n"
            f"`python -m benchmarks.profile {' '.join(argv if argv is not None else sys.argv[1:])}`"
            f"\n\n{res['requests']} requests, {res['rps']:.0f} req/s under py-spy, "
            f"{(c1 - c0) * 1e6 / res['requests']:.1f} µs CPU/request including sampling "
            f"overhead.\n\n" + summarise(stacks, a.top) + "\n")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"raw stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
