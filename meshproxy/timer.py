"""Lazily re-armed timers for deadlines that move on every request, on one loop timer.

Timeouts such as the route timeout (15 s), the stream idle timeout (5 min) and the connection
idle timeout are set or pushed back on nearly every request. Cancelling and re-creating a timer
each time costs more than the rest of the per-request bookkeeping, so owners keep plain deadline
numbers and one ``LazyTimer``: it is re-armed only when a deadline moves *earlier* than the armed
time; when it fires, the owner checks its deadlines and asks for the next one. The loop (or any
object with ``time()`` and ``call_at()``, such as a test clock) is injected.

All the LazyTimers of a loop share one :class:`TimerQueue`: a heap of ``[when, seq, timer]``
entries behind a single loop timer armed for the earliest. A new connection arms two or three
deadlines and, when it is short-lived, cancels them all microseconds later; on uvloop a
``call_at`` costs ~2.3 µs and its cancel ~0.5 µs, a heap push ~0.3 µs and a cancel here (the
entry's timer set to None) almost nothing. Cancelled entries are dropped when they reach the
top, and the heap is rebuilt when they outnumber the live ones (asyncio's ``BaseEventLoop``
does the same for its cancelled ``TimerHandle``s), so a closed connection is never kept alive by
its deadlines.
"""

from __future__ import annotations

import heapq
import logging
import weakref

log = logging.getLogger("meshproxy.timer")

_queues: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_last: list = [None, None]      # the last (loop, queue) looked up: nearly always the one loop


def queue_for(loop) -> TimerQueue:
    if _last[0] is loop:
        return _last[1]
    q = _queues.get(loop)
    if q is None:
        q = _queues[loop] = TimerQueue(loop)
    _last[0] = loop
    _last[1] = q
    return q


class TimerQueue:
    __slots__ = ("__weakref__", "armed_at", "handle", "heap", "live", "loop", "running", "seq",
                 "stale")

    def __init__(self, loop):
        self.loop = loop
        self.heap: list = []
        self.seq = 0
        self.live = 0          # entries whose timer is set
        self.stale = 0         # cancelled entries still in the heap
        self.handle = None     # the loop timer, armed for ``armed_at``
        self.armed_at = None
        self.running = False

    def push(self, when: float, timer) -> list:
        self.seq += 1
        entry = [when, self.seq, timer]
        heapq.heappush(self.heap, entry)
        self.live += 1
        if not self.running and (self.armed_at is None or when < self.armed_at):
            self._arm(when)
        return entry

    def cancel(self, entry: list) -> None:
        entry[2] = None
        self.live -= 1
        if self.live == 0:
            # Nothing left to wait for. The loop timer stays armed: when connections come and
            # go one at a time, the next one's deadlines are later than it, so they need no
            # call_at; it fires once with nothing due, at worst.
            self.heap.clear()
            self.stale = 0
            return
        self.stale += 1
        if self.stale > 64 and self.stale > self.live and not self.running:
            self.heap = [e for e in self.heap if e[2] is not None]
            heapq.heapify(self.heap)
            self.stale = 0

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed_at = when
        self.handle = self.loop.call_at(when, self._run)

    def _run(self) -> None:
        # Everything due by the time the loop timer was armed for is due now, whatever the
        # clock's rounding says (the loop decided this timer's time had come).
        due = max(self.armed_at, self.loop.time())
        self.handle = None
        self.armed_at = None
        heap = self.heap
        self.running = True
        try:
            while heap and heap[0][0] <= due:
                entry = heapq.heappop(heap)
                timer = entry[2]
                if timer is None:
                    self.stale -= 1
                    continue
                entry[2] = None
                self.live -= 1
                timer.entry = None
                timer.when = None
                try:
                    timer.callback(self.loop.time())
                except Exception:
                    log.exception("timer callback %r failed", timer.callback)
        finally:
            self.running = False
        heap = self.heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self.stale -= 1
        if heap and self.handle is None:
            self._arm(heap[0][0])


class LazyTimer:
    __slots__ = ("callback", "entry", "queue", "when")

    def __init__(self, loop, callback):
        self.queue = queue_for(loop)
        self.callback = callback  # callback(now) -> None; it calls schedule() again if needed
        self.entry = None         # this timer's entry in the queue while armed
        self.when = None

    @property
    def handle(self):
        return self.entry

    def schedule(self, when: float | None) -> None:
        """Make sure the callback runs no later than ``when`` (None: nothing to wait for)."""
        if when is None:
            return
        if self.when is not None and self.when <= when:
            return
        if self.entry is not None:
            self.queue.cancel(self.entry)
        self.when = when
        self.entry = self.queue.push(when, self)

    def cancel(self) -> None:
        if self.entry is not None:
            self.queue.cancel(self.entry)
            self.entry = None
            self.when = None
