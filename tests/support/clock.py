"""A fake clock with the event loop's timer interface, for tests without sleeping."""

from __future__ import annotations


class FakeClock:
    """``time()``, ``call_at()``, ``call_later()``; ``advance(dt)`` runs the callbacks due."""

    def __init__(self, now: float = 1000.0):
        self.now = now
        self._timers: list = []

    def time(self) -> float:
        return self.now

    def call_at(self, when, fn, *args):
        h = _Handle(when, fn, args)
        self._timers.append(h)
        return h

    def call_later(self, delay, fn, *args):
        return self.call_at(self.now + delay, fn, *args)

    def pending(self) -> int:
        return sum(1 for t in self._timers if not t.cancelled)

    def advance(self, dt: float) -> None:
        target = self.now + dt
        while True:
            due = [t for t in self._timers if not t.cancelled and t.when <= target]
            if not due:
                break
            t = min(due, key=lambda x: x.when)
            self._timers.remove(t)
            self.now = max(self.now, t.when)
            t.fn(*t.args)
        self.now = target
        self._timers = [t for t in self._timers if not t.cancelled]


class _Handle:
    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when, fn, args):
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self):
        self.cancelled = True
