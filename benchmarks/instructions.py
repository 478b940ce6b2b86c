"""Instructions per request of meshproxy's Python hot path, counted by callgrind: a stable A/B
metric when timings are too noisy (a shared machine, other work running).

    python -m benchmarks.instructions                  # this tree
    python -m benchmarks.instructions --src /tmp/wt    # another checkout (git worktree add ...)
    python -m benchmarks.instructions --scenario route-close     # a new connection per request
    python -m benchmarks.instructions --scenario redirect-close  # ... intercepted (port 15001)

It runs ``benchmarks.micro``'s objects (scenario "route": fake transports, no syscalls) under
``valgrind --tool=callgrind`` for two request counts and reports
(Ir(large) - Ir(small)) / (large - small). Only the request loop is counted: it runs inside
``exec`` and callgrind collects only there (``--toggle-collect=builtin_exec``), because start-up
and config building vary by a few percent from run to run (import caches refresh when files
change). Repeated runs agree to about 0.1 %. Needs valgrind and a python that is not a shell
shim (pyenv's shims are scripts; the real interpreter is ``sys.executable``'s target).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile


CLOSE_REQUEST = (b"GET /small HTTP/1.1\r\nHost: bench\r\nUser-Agent: h2load\r\nAccept: */*\r\n"
                 b"Connection: close\r\n\r\n")


SERVICE = ("10.0.0.9", 80)       # where an intercepted connection was going (iptables REDIRECT)


def _loop(n: int, scenario: str) -> None:
    import asyncio
    import gc

    import uvloop
    asyncio.set_event_loop(uvloop.new_event_loop())
    from benchmarks import micro
    from benchmarks.scenarios import SERVICE_CLUSTER
    from meshproxy.network.batch import batch_for
    from meshproxy.network.connection import DownstreamConnection

    micro.run("route", 50)
    redirect = scenario == "redirect-close"
    ctx, listener = micro.build("redirect" if redirect else "route")
    batch = batch_for(ctx.loop)
    up = micro.upstream_connection(ctx, SERVICE_CLUSTER if redirect else "upstream")
    down_t = micro.FakeTransport(("127.0.0.1", 50000), ("127.0.0.1", 10000))
    conn = DownstreamConnection(listener)
    if not redirect:
        conn.connection_made(down_t)

    def transport(i):
        peer = ("127.0.0.1", 20000 + i % 40000)
        if redirect:
            # Accepted on 15001 (virtualOutbound), handed to 0.0.0.0_80 by original_dst.
            return micro.intercepted_transport(peer, ("127.0.0.1", 15001), SERVICE)
        return micro.FakeTransport(peer, ("127.0.0.1", 10000))

    def new_connections(count):
        # Each request on a new downstream connection that the proxy closes after the
        # response; the upstream connection stays pooled.
        for i in range(count):
            t = transport(i)
            c = DownstreamConnection(listener)
            c.connection_made(t)
            c.data_received(CLOSE_REQUEST)
            batch.flush_all()
            up.transport.written.clear()
            up.data_received(micro.RESPONSE)
            batch.flush_all()
            assert t.closing, "the proxy did not close a Connection: close connection"
            c.connection_lost(None)

    def keep_alive(count):
        for _ in range(count):
            conn.data_received(micro.REQUEST)
            batch.flush_all()
            up.transport.written.clear()
            up.data_received(micro.RESPONSE)
            batch.flush_all()
            down_t.written.clear()

    requests = keep_alive if scenario == "route" else new_connections
    requests(100)
    ctx.loop.run_until_complete(asyncio.sleep(0))   # callbacks the closes scheduled
    gc.collect()
    gc.freeze()
    exec("requests(n)", {"requests": requests, "n": n})   # the only part callgrind counts
    assert up.requests == 100 + n, "the upstream did not see every request"


def _count(python: str, src: str, n: int, scenario: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = dict(os.environ, PYTHONPATH=src, PYTHONHASHSEED="0")
        r = subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no",
                            "--toggle-collect=builtin_exec", f"--callgrind-out-file={out}",
                            python, "-m", "benchmarks.instructions", "--run", str(n),
                            "--scenario", scenario],
                           cwd=src, env=env, capture_output=True, text=True, check=False)
        m = re.search(r"Collected : (\d+)", r.stderr)
        if r.returncode != 0 or m is None:
            raise SystemExit(f"callgrind run failed:\n{r.stderr[-2000:]}")
        return int(m.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="checkout whose meshproxy (and benchmarks) to measure")
    ap.add_argument("--small", type=int, default=300)
    ap.add_argument("--large", type=int, default=3300)
    ap.add_argument("--scenario", default="route",
                    choices=("route", "route-close", "redirect-close"),
                    help="keep-alive requests, or a new (intercepted) connection per request")
    ap.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run is not None:
        _loop(args.run, args.scenario)
        return 0
    python = os.path.realpath(sys.executable)
    subprocess.run([python, "-m", "compileall", "-q", os.path.join(args.src, "meshproxy")],
                   capture_output=True, check=False)
    a = _count(python, args.src, args.small, args.scenario)
    b = _count(python, args.src, args.large, args.scenario)
    print(f"{(b - a) / (args.large - args.small):,.0f} instructions/request "
          f"({args.scenario}, Python hot path; {args.src})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
