"""Prototypes of suggested meshproxy optimisations, applied by monkeypatching at start-up, so
their effect can be measured side by side before anyone changes meshproxy itself.

    python -m benchmarks.run --scenarios route --proxies meshproxy,envoy \\
        --variant "mp-coalesce=python -m benchmarks.experiments coalesce --" \\
        --variant "mp-gc=python -m benchmarks.experiments gcfreeze --" \\
        --variant "mp-both=python -m benchmarks.experiments coalesce,gcfreeze --"

Patches (comma-separated first argument; everything after ``--`` goes to meshproxy):

- ``coalesce``: hold an HTTP/1 response head until the first body bytes (or end of stream) and
  send both with one ``transport.write``. Today head and body are two writes, i.e. two
  ``write(2)`` calls, each paying the loopback TCP path (strace: 3 writes per proxied request
  against Envoy's 2). Prototype only: a real fix must also flush a held head at the end of the
  upstream read that produced it (Envoy flushes its write buffer once per dispatch), or a
  slow body would delay the head.
- ``deferflush``: downstream writes buffered per connection and flushed once per loop
  iteration, as Envoy flushes its write buffers (see the function).
- ``gcfreeze``: ``gc.freeze()`` once listeners are up, so collections stop rescanning the
  start-up heap (protobuf descriptors, config), and a higher generation-0 threshold.
- ``nogc``: ``gc.disable()`` after start-up: the upper bound of what collector tuning can save
  (unsafe in production while per-request objects form reference cycles).
- ``gcstats``: no change; times every collection and prints totals per generation at exit.
- ``gccycles``: collector off; at exit lists the types of objects that were in reference
  cycles, i.e. what per-request garbage only the collector can free.

Nothing here is imported by meshproxy or the test suite.
"""

from __future__ import annotations

import gc
import sys


def _coalesce() -> None:
    from meshproxy.http import h1_server

    base = h1_server.H1ServerBase
    orig_headers, orig_data, orig_trailers = (base.encode_headers, base.encode_data,
                                              base.encode_trailers)

    def _captured(self, fn, *args):
        write = self.write
        buf = []
        self.write = buf.append
        try:
            fn(self, *args)
        finally:
            self.write = write
        return b"".join(buf)

    def encode_headers(self, stream, resp, end_stream):
        if end_stream:
            return orig_headers(self, stream, resp, end_stream)
        self._held_head = _captured(self, orig_headers, stream, resp, end_stream)

    def _release(self, fn, *args):
        held = getattr(self, "_held_head", None)
        if held is None:
            return fn(self, *args)
        self._held_head = None
        self.write(held + _captured(self, fn, *args))

    def encode_data(self, stream, data, end_stream):
        _release(self, orig_data, stream, data, end_stream)

    def encode_trailers(self, stream, trailers):
        _release(self, orig_trailers, stream, trailers)

    base.encode_headers, base.encode_data, base.encode_trailers = (encode_headers, encode_data,
                                                                   encode_trailers)


def _deferflush() -> None:
    """Envoy-style write batching: writes made while the loop dispatches I/O go to a
    per-transport buffer; one callback per loop iteration (``call_soon`` runs after the
    iteration's I/O callbacks) writes each buffer with one ``transport.write``. Saves the
    head/body split and, across cores, wakes the peer once per batch instead of once per
    message. Covers downstream responses and upstream requests. Prototype: flushes before a
    close; not for production as is."""
    from meshproxy.http import conn_manager
    from meshproxy.upstream import h1_connection

    pending: dict = {}
    scheduled = [False]
    loop = []

    def flush():
        scheduled[0] = False
        items = list(pending.items())
        pending.clear()
        for t, bufs in items:
            if not t.is_closing():
                t.write(bufs[0] if len(bufs) == 1 else b"".join(bufs))

    def queue(t, data):
        bufs = pending.get(t)
        if bufs is not None:
            bufs.append(data)
            return
        pending[t] = [data]
        if not scheduled[0]:
            scheduled[0] = True
            if not loop:
                import asyncio
                loop.append(asyncio.get_running_loop())
            loop[0].call_soon(flush)

    def flush_one(t):
        bufs = pending.pop(t, None)
        if bufs and not t.is_closing():
            t.write(b"".join(bufs))

    hcm_class = conn_manager.HttpConnectionManager

    def _write(self, data):
        self.stats.downstream_cx_tx_bytes_total += len(data)
        queue(self.conn.transport, data)

    orig_close = hcm_class.close

    def close(self, *args, **kw):
        if self.conn.transport is not None:
            flush_one(self.conn.transport)
        return orig_close(self, *args, **kw)

    hcm_class._write, hcm_class.close = _write, close

    class _Deferred:
        __slots__ = ("real",)

        def __init__(self, real):
            self.real = real

        def write(self, data):
            queue(self.real, data)

    up_class = h1_connection.UpstreamH1Connection

    def deferring(fn):
        def wrapper(self, *args):
            real = self.transport
            self.transport = _Deferred(real)
            try:
                return fn(self, *args)
            finally:
                self.transport = real
        return wrapper

    orig_up_close = up_class.close

    def up_close(self, *args, **kw):
        if self.transport is not None:
            flush_one(self.transport)
        return orig_up_close(self, *args, **kw)

    up_class.send_headers = deferring(up_class.send_headers)
    up_class.send_data = deferring(up_class.send_data)
    up_class.close = up_close


def _after_start(fn) -> None:
    from meshproxy.listener.manager import ListenerManager

    orig = ListenerManager.start_all

    async def start_all(self):
        await orig(self)
        fn()

    ListenerManager.start_all = start_all


def _gcfreeze() -> None:
    def go():
        gc.collect()
        gc.freeze()
        gc.set_threshold(7000, 20, 20)
    _after_start(go)


def _nogc() -> None:
    def go():
        gc.collect()
        gc.freeze()
        gc.disable()
    _after_start(go)


def _gcstats() -> None:
    """Not an optimisation: time every collection and print the totals at exit, to put a
    number on what the collector costs per request."""
    import atexit
    import time

    totals = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
    started = [0.0]

    def cb(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            t = totals[info["generation"]]
            t[0] += 1
            t[1] += time.perf_counter() - started[0]

    def report():
        for gen, (n, secs) in totals.items():
            print(f"gcstats: generation {gen}: {n} collections, {secs * 1e3:.1f} ms",
                  file=sys.stderr, flush=True)

    def reset():   # count the serving, not the start-up
        for t in totals.values():
            t[0], t[1] = 0, 0.0

    gc.callbacks.append(cb)
    _after_start(reset)
    atexit.register(report)


def _gccycles() -> None:
    """Not an optimisation: collector off after start-up; at exit, list the types of the
    objects that only the collector could have freed (members of reference cycles)."""
    import atexit
    import collections

    def report():
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        print(f"gccycles: {len(gc.garbage)} objects in cycles", file=sys.stderr)
        for name, n in kinds.most_common(15):
            print(f"gccycles: {n:8d} {name}", file=sys.stderr, flush=True)

    _nogc()
    atexit.register(report)


PATCHES = {"coalesce": _coalesce, "deferflush": _deferflush, "gcfreeze": _gcfreeze,
           "nogc": _nogc, "gcstats": _gcstats, "gccycles": _gccycles}


def main() -> int:
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        print(f"usage: python -m benchmarks.experiments PATCH[,PATCH] -- MESHPROXY-ARGS "
              f"(patches: {', '.join(PATCHES)})", file=sys.stderr)
        return 2
    names, rest = args[0].split(","), args[1:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    for n in names:
        if n not in PATCHES:
            print(f"unknown patch {n!r}", file=sys.stderr)
            return 2
        PATCHES[n]()
    from meshproxy.cli import main as meshproxy_main
    return meshproxy_main(rest)


if __name__ == "__main__":
    sys.exit(main())
