"""Open-loop HTTP/1.1 load generator: requests fall due at a fixed rate, whatever the answers do.

wrk and h2load are closed-loop: a slow response delays the next request, so the latency of a
stall is measured once instead of for every request that should have been sent during it
(coordinated omission). Here request *i* falls due at ``t0 + i/rate``; it goes out on a free
keep-alive connection at once, or waits in a queue until one frees, and its latency runs from
the moment it fell due (as seen by the generator) to the last byte of its response. Queueing
caused by the proxy is therefore counted; the generator's own timer lateness is not (it is
reported separately as ``lateness``).

Limits (``python -m benchmarks.calibrate`` measures them; see README): uvloop timers tick in
whole milliseconds, so requests leave in 1 ms bursts (2 per burst at 2000 req/s); timestamps
are ``perf_counter_ns`` taken in the read callback, so a latency includes this process's own
parse time (~10 µs). Run it on a core the proxy does not use.

    python -m benchmarks.openloop --port 8080 --path /small --rate 2000 --requests 10000
prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import sys
import time

import httptools

NS = 1_000_000_000
TICK = 0.001


class _Conn(asyncio.Protocol):
    __slots__ = ("gen", "transport", "parser", "started", "status")

    def __init__(self, gen):
        self.gen = gen
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.started = 0
        self.status = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.gen.fail(self, "parse error")

    def connection_lost(self, exc):
        self.gen.fail(self, "connection lost")

    def on_headers_complete(self):
        self.status = self.parser.get_status_code()

    def on_message_complete(self):
        self.gen.complete(self, time.perf_counter_ns())


class OpenLoop:
    def __init__(self, loop, host, port, path, rate, total, connections, spin=False):
        self.loop = loop
        self.addr = (host, port)
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"User-Agent: meshproxy-openloop\r\n\r\n").encode()
        self.rate = rate
        self.total = total
        self.nconn = connections
        self.spin = spin
        self.free: list[_Conn] = []
        self.queue: collections.deque = collections.deque()   # due times (ns) not yet sent
        self.scheduled = 0
        self.completed = 0
        self.errors = 0
        self.non2xx = 0
        self.latencies: list[int] = []
        self.lateness: list[int] = []
        self.max_queue = 0
        self.t0 = 0
        self.done = loop.create_future()

    async def run(self, timeout: float) -> dict:
        cpu0 = time.process_time()
        for _ in range(self.nconn):
            _, c = await self.loop.create_connection(lambda: _Conn(self), *self.addr)
            self.free.append(c)
        self.t0 = time.perf_counter_ns() + NS // 100
        self.loop.call_later(0.01, self._tick)
        try:
            await asyncio.wait_for(self.done, timeout)
        except asyncio.TimeoutError:
            self.errors += self.total - self.completed
        elapsed = (time.perf_counter_ns() - self.t0) / NS
        for c in self.free:
            c.transport.close()
        out = self._summary(elapsed)
        out["own_cpu_us_per_req"] = (time.process_time() - cpu0) * 1e6 / max(1, len(self.latencies))
        return out

    def _tick(self):
        now = time.perf_counter_ns()
        due = min(self.total, (now - self.t0) * self.rate // NS + 1)
        q = self.queue
        while self.scheduled < due:
            self.lateness.append(now - (self.t0 + self.scheduled * NS // self.rate))
            # Latency counts from when the generator saw the request fall due: timer
            # lateness is ours, waiting for a connection is the proxy's.
            q.append(now)
            self.scheduled += 1
        if len(q) > self.max_queue:
            self.max_queue = len(q)
        while q and self.free:
            self._send(self.free.pop(), q.popleft())
        if self.scheduled >= self.total:
            return
        if self.spin:
            # Poll: the loop never sleeps, so this core never halts and neither sending nor
            # reading waits for a virtual CPU to wake up (~100 µs under Firecracker).
            self.loop.call_soon(self._tick)
            return
        nxt = self.t0 + self.scheduled * NS // self.rate
        # Never less than the loop's 1 ms timer resolution: a shorter delay rounds to 0 and
        # the loop would spin until the due time anyway.
        self.loop.call_later(max(TICK, (nxt - time.perf_counter_ns()) / NS), self._tick)

    def _send(self, c: _Conn, started: int):
        c.started = started
        c.transport.write(self.request)

    def complete(self, c: _Conn, now: int):
        self.latencies.append(now - c.started)
        if not 200 <= c.status < 300:
            self.non2xx += 1
        self._next(c)

    def fail(self, c: _Conn, why: str):
        if c.started:
            self.errors += 1
            c.started = 0
            self._finish_one()

    def _next(self, c: _Conn):
        self._finish_one()
        if self.queue:
            self._send(c, self.queue.popleft())
        else:
            c.started = 0
            self.free.append(c)

    def _finish_one(self):
        self.completed += 1
        if self.completed >= self.total and not self.done.done():
            self.done.set_result(None)

    def _summary(self, elapsed: float) -> dict:
        lat = sorted(self.latencies)
        late = sorted(self.lateness)
        return {"rate": self.rate, "requests": self.total, "completed": len(lat),
                "errors": self.errors, "non2xx": self.non2xx, "elapsed_s": elapsed,
                "achieved_rps": len(lat) / elapsed if elapsed > 0 else 0.0,
                "max_queue": self.max_queue,
                "latency_us": percentiles(lat), "lateness_us": percentiles(late)}


def percentiles(sorted_ns: list[int]) -> dict:
    if not sorted_ns:
        return {}
    n = len(sorted_ns)

    def at(q):
        return sorted_ns[min(n - 1, int(q * n))] / 1000.0
    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999),
            "max": sorted_ns[-1] / 1000.0, "mean": sum(sorted_ns) / n / 1000.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--rate", type=int, default=2000, help="requests per second")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--spin", action="store_true",
                    help="busy-poll instead of sleeping between sends (keeps this core awake; "
                         "uses all of it)")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="give up after this many seconds (default: 3x the schedule + 10)")
    a = ap.parse_args(argv)
    if a.rate <= 0 or a.requests <= 0 or a.connections <= 0:
        ap.error("rate, requests and connections must be positive")
    timeout = a.timeout or a.requests / a.rate * 3 + 10
    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    gen = OpenLoop(loop, a.host, a.port, a.path, a.rate, a.requests, a.connections, a.spin)
    # A collector pause would show up as proxy latency; the run allocates little enough.
    gc.disable()
    try:
        out = loop.run_until_complete(gen.run(timeout))
    finally:
        loop.close()
    json.dump(out, sys.stdout)
    print()
    return 0 if out["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
