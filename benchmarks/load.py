"""Running the two load generators and reading what they report.

Closed loop (throughput and CPU per request): h2load in HTTP/1.1 mode, one request in flight per
keep-alive connection, a fixed request count (``-n``), so every proxy does exactly the same
work and /proc CPU deltas divide by a known number. h2load is C (nghttp2) and uses ~5 µs of CPU
per request itself, far below any proxy here.

Open loop (latency at a fixed rate): ``benchmarks.openloop`` in a subprocess.

Both run under a wall-clock bound (``subprocess`` timeout) as well as a count bound.

A ``Target`` says where the load goes: 127.0.0.1:port in the harness's own namespace, or (the
``redirect`` scenario) an address inside a pod namespace, the generator started there through
an argv prefix (``ip netns exec POD`` [``setpriv ...``]).
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

from benchmarks.procs import REPO, pinned

_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s, ([\d.]+)([KMG]?B)/s")
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout")
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_UNITS = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3}


class LoadError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Target:
    port: int
    host: str = "127.0.0.1"
    wrap: tuple = ()   # argv prefix the generator runs under (namespace, user)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


def _target(t) -> Target:
    return t if isinstance(t, Target) else Target(int(t))


def h2load(port, path: str, requests: int, connections: int, cpus: str | None,
           timeout: float = 300.0, close: bool = False) -> dict:
    """``port``: a port on 127.0.0.1, or a Target. ``close``: every request on a new
    connection (h2load reconnects after each ``Connection: close`` answer)."""
    t = _target(port)
    extra = ["-H", "Connection: close"] if close else []
    cmd = pinned([*t.wrap, "h2load", "--h1", "-n", str(requests), "-c", str(connections),
                  "-t", "1", "-m", "1", *extra, t.url(path)], cpus)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LoadError(f"h2load did not finish {requests} requests in {timeout:.0f}s") from None
    out = r.stdout
    f, q, s = _FINISHED.search(out), _REQUESTS.search(out), _STATUS.search(out)
    if not (f and q and s):
        raise LoadError(f"h2load output not understood (rc {r.returncode}): {out}{r.stderr}")
    secs = float(f.group(1)) / (1000.0 if f.group(2) == "ms" else 1.0)
    ok2xx = int(s.group(1))
    return {"requests": int(q.group(1)), "succeeded": int(q.group(4)),
            "failed": int(q.group(5)) + int(q.group(6)) + int(q.group(7)),
            "non2xx": int(q.group(3)) - ok2xx, "elapsed_s": secs,
            "rps": float(f.group(3)), "mbps": float(f.group(4)) * _UNITS[f.group(5)]}


def openloop(port, path: str, rate: int, requests: int, connections: int,
             cpus: str | None, spin: bool = False) -> dict:
    """``port``: a port on 127.0.0.1, or a Target."""
    t = _target(port)
    timeout = requests / rate * 3 + 10
    cmd = pinned([*t.wrap, sys.executable, "-m", "benchmarks.openloop", "--host", t.host,
                  "--port", str(t.port),
                  "--path", path, "--rate", str(rate), "--requests", str(requests),
                  "--connections", str(connections), "--timeout", str(timeout)]
                 + (["--spin"] if spin else []), cpus)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise LoadError("open-loop generator hung") from None
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise LoadError(
            f"open-loop generator failed (rc {r.returncode}): {r.stderr[-2000:]}") from None
