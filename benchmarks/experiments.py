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


PATCHES = {"coalesce": _coalesce, "gcfreeze": _gcfreeze, "nogc": _nogc, "gcstats": _gcstats,
           "gccycles": _gccycles}


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
