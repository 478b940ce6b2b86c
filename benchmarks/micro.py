"""The proxy's own Python cost per request, without sockets: one meshproxy process-worth of
objects (config translated from the benchmark scenario, cluster manager, listener) driven
through fake transports, so no syscall, no wake-up and no load generator is measured.

    python -m benchmarks.micro                 # scenario "route" (Istio retry policy)
    python -m benchmarks.micro --scenario direct --requests 50000
    python -m benchmarks.micro --profile       # cProfile of the same loop, top functions

It complements ``benchmarks.run`` (end to end, against Envoy): use it to see what a change to
the hot path does to the Python part, which is most of the gap to Envoy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import struct
import time

from benchmarks.scenarios import SCENARIOS

REQUEST = b"GET /small HTTP/1.1\r\nHost: bench\r\nUser-Agent: h2load\r\nAccept: */*\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 07:00:00 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 64\r\n"
            b"Connection: keep-alive\r\n\r\n" + b"x" * 64)


class FakeTransport:
    """What asyncio's transport offers the proxy; writes are kept (and counted)."""

    def __init__(self, peer, local):
        self.extra = {"peername": peer, "sockname": local, "socket": None}
        self.written = []
        self.closing = False

    def get_extra_info(self, name, default=None):
        return self.extra.get(name, default)

    def write(self, data):
        self.written.append(data)

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_write_buffer_size(self):
        return 0

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    abort = close

    def can_write_eof(self):
        return True

    def write_eof(self):
        pass


class FakeInterceptedSocket:
    """What the original_dst listener filter asks of an accepted socket that iptables
    REDIRECTed: its family and ``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` (a sockaddr_in)."""

    family = socket.AF_INET

    def __init__(self, original_dst):
        self.raw = struct.pack("!HH4s8x", socket.AF_INET, original_dst[1],
                               socket.inet_aton(original_dst[0]))

    def getsockopt(self, level, option, size=None):
        return self.raw

    def setsockopt(self, *args):
        pass


def intercepted_transport(peer, local, original_dst) -> FakeTransport:
    t = FakeTransport(peer, local)
    t.extra["socket"] = FakeInterceptedSocket(original_dst)
    return t


def build(scenario_name: str):
    from meshproxy.cli import Options
    from meshproxy.config.bootstrap import build_server_config
    from meshproxy.config.protos import message_class, parse_json_into
    from meshproxy.listener.manager import ListenerManager
    from meshproxy.server import ServerContext
    from meshproxy.upstream.manager import ClusterManager

    scenario = SCENARIOS[scenario_name]
    boot = parse_json_into(scenario.envoy_bootstrap(9), message_class(
        "envoy.config.bootstrap.v3.Bootstrap")())
    config = build_server_config(boot)
    loop = asyncio.get_event_loop()
    ctx = ServerContext(loop, Options(), config)
    ctx.cluster_manager = ClusterManager(loop, ctx.store)
    for c in config.clusters:
        ctx.cluster_manager.add(c)
    ctx.listener_manager = lm = ListenerManager(ctx, ctx.store)
    listeners = [lm.add(c) for c in config.listeners]
    lm._index_addresses()      # where use_original_dst hands connections (not bound here)
    return ctx, listeners[0]


def upstream_connection(ctx, cluster_name: str = "upstream"):
    """An idle kept-alive upstream connection in the cluster's pool, on a fake transport."""
    from meshproxy.upstream.h1_connection import UpstreamH1Connection
    cluster = ctx.cluster_manager.get(cluster_name)
    host = cluster.hosts[0]
    pool = cluster.pool_for(host)
    conn = UpstreamH1Connection(pool)
    conn.connection_made(FakeTransport(("127.0.0.1", 9), ("127.0.0.1", 40000)))
    conn.connected = True
    pool.idle.append(conn)
    return conn


def run(scenario_name: str, requests: int) -> float:
    from meshproxy.network.batch import batch_for
    from meshproxy.network.connection import DownstreamConnection

    ctx, listener = build(scenario_name)
    loop = ctx.loop
    batch = batch_for(loop)
    up = upstream_connection(ctx) if scenario_name != "direct" else None
    down_t = FakeTransport(("127.0.0.1", 50000), ("127.0.0.1", 10000))
    conn = DownstreamConnection(listener)
    conn.connection_made(down_t)
    gc.collect()
    gc.freeze()
    t0 = time.perf_counter()
    for _ in range(requests):
        conn.data_received(REQUEST)
        batch.flush_all()
        if up is not None:
            up.transport.written.clear()
            up.data_received(RESPONSE)
            batch.flush_all()
        down_t.written.clear()
    elapsed = time.perf_counter() - t0
    if up is not None:
        assert up.requests == requests, "the upstream did not see every request"
    return elapsed / requests * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="route", choices=["route", "direct"])
    ap.add_argument("--requests", type=int, default=30000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    import uvloop
    asyncio.set_event_loop(uvloop.new_event_loop())
    if args.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        run(args.scenario, args.requests)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0
    results = sorted(run(args.scenario, args.requests) for _ in range(args.repeat))
    print(f"{args.scenario}: {results[0]:.2f} µs/request (min of {args.repeat}; "
          f"median {results[len(results) // 2]:.2f}) — Python only, no syscalls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
