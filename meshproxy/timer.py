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
