"""A lazily re-armed timer for deadlines that move on every request.

Timeouts such as the route timeout (15 s), the stream idle timeout (5 min) and the connection
idle timeout are set or pushed back on nearly every request. Cancelling and re-creating a timer
each time costs more than the rest of the per-request bookkeeping, so owners keep plain deadline
numbers and one ``LazyTimer``: it is re-armed only when a deadline moves *earlier* than the armed
time; when it fires, the owner checks its deadlines and asks for the next one. The loop (or any
object with ``time()`` and ``call_at()``, such as a test clock) is injected.
"""

from __future__ import annotations


class LazyTimer:
    __slots__ = ("loop", "callback", "handle", "when")

    def __init__(self, loop, callback):
        self.loop = loop
        self.callback = callback  # callback(now) -> None; it calls schedule() again if needed
        self.handle = None
        self.when = None

    def schedule(self, when: float | None) -> None:
        """Make sure the callback runs no later than ``when`` (None: nothing to wait for)."""
        if when is None:
            return
        if self.when is not None and self.when <= when:
            return
        if self.handle is not None:
            self.handle.cancel()
        self.when = when
        self.handle = self.loop.call_at(when, self._fire)

    def _fire(self):
        self.handle = None
        self.when = None
        self.callback(self.loop.time())

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
            self.when = None


class FakeClock:
    """A test clock with the loop's timer interface: ``advance(dt)`` runs due callbacks."""

    def __init__(self, now: float = 1000.0):
        self.now = now
        self._timers: list = []

    def time(self) -> float:
        return self.now

    def call_at(self, when, fn, *args):
        h = _FakeHandle(when, fn, args)
        self._timers.append(h)
        return h

    def call_later(self, delay, fn, *args):
        return self.call_at(self.now + delay, fn, *args)

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


class _FakeHandle:
    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when, fn, args):
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self):
        self.cancelled = True
