"""The lazily re-armed deadline timer and the spdlog-style log formatter."""

from __future__ import annotations

import logging

from meshproxy import log
from meshproxy.timer import LazyTimer, queue_for
from tests.support.clock import FakeClock


def test_lazy_timer_rearms_only_when_earlier():
    clock = FakeClock()
    fired = []
    t = LazyTimer(clock, fired.append)
    t.schedule(clock.time() + 10)
    first = t.handle
    t.schedule(clock.time() + 20)          # later: keeps the armed timer
    assert t.handle is first and clock.pending() == 1
    t.schedule(clock.time() + 5)           # earlier: re-armed
    assert t.handle is not first and clock.pending() == 1
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [1005.0]
    t.schedule(None)                       # nothing to wait for: no timer
    assert clock.pending() == 0


def test_owner_reschedules_from_callback():
    clock = FakeClock()
    deadlines = [1003.0, 1007.0]
    seen = []

    def on_fire(now):
        seen.append(now)
        while deadlines and deadlines[0] <= now:
            deadlines.pop(0)
        t.schedule(deadlines[0] if deadlines else None)

    t = LazyTimer(clock, on_fire)
    t.schedule(deadlines[0])
    clock.advance(10)
    assert seen == [1003.0, 1007.0]
    t.cancel()
    assert clock.pending() == 0


def test_timers_of_a_loop_share_one_loop_timer():
    clock = FakeClock()
    fired = []
    timers = [LazyTimer(clock, lambda now, i=i: fired.append((i, now))) for i in range(5)]
    for i, t in enumerate(timers):
        t.schedule(clock.time() + 10 - i)   # each earlier than the last: re-armed each time
    assert clock.pending() == 1
    timers[2].cancel()
    clock.advance(7)
    assert fired == [(4, 1006.0), (3, 1007.0)]
    assert clock.pending() == 1             # armed for timer 1 (1009)
    clock.advance(10)
    assert fired[2:] == [(1, 1009.0), (0, 1010.0)]
    assert clock.pending() == 0


def test_same_deadline_fires_in_schedule_order_and_a_failing_callback_is_contained():
    clock = FakeClock()
    fired = []

    def boom(now):
        raise RuntimeError("owner bug")

    a = LazyTimer(clock, lambda now: fired.append("a"))
    b = LazyTimer(clock, boom)
    c = LazyTimer(clock, lambda now: fired.append("c"))
    for t in (a, b, c):
        t.schedule(1005.0)
    clock.advance(5)
    assert fired == ["a", "c"]


def test_cancelled_deadlines_do_not_pile_up():
    """Short-lived connections arm and cancel deadlines far in the future: the shared heap
    must not keep them (nor their owners) for the hour they would wait."""
    clock = FakeClock()
    keep = LazyTimer(clock, lambda now: None)
    keep.schedule(clock.time() + 1)
    q = queue_for(clock)
    for _ in range(1000):
        t = LazyTimer(clock, lambda now: None)
        t.schedule(clock.time() + 3600)
        t.schedule(clock.time() + 300)
        t.cancel()
    assert q.live == 1
    assert len(q.heap) <= 2 * 65 + 1
    assert all(e[2] is None for e in q.heap if e[2] is not keep)
    for _ in range(3):                       # everything cancelled: nothing is kept
        keep.cancel()
    assert q.heap == [] and q.live == 0
    nxt = LazyTimer(clock, lambda now: None)
    nxt.schedule(clock.time() + 300)         # later than the armed loop timer: no new one
    assert clock.pending() == 1
    clock.advance(1)                         # the old loop timer fires with nothing due
    assert clock.pending() == 1 and q.heap[0][0] == 1300.0


def test_owner_schedules_again_from_its_callback_at_the_same_time():
    clock = FakeClock()
    seen = []

    def on_fire(now):
        seen.append(now)
        if len(seen) < 3:
            t.schedule(now)               # due at once: runs on the next loop turn

    t = LazyTimer(clock, on_fire)
    t.schedule(1001.0)
    clock.advance(1)
    assert seen == [1001.0, 1001.0, 1001.0]


def _record(msg="hello", name="meshproxy.upstream", level=logging.WARNING):
    r = logging.LogRecord(name, level, "/src/file.py", 42, msg, None, None)
    r.created = 1_700_000_000.123456
    return r


def test_spdlog_pattern_envoy_default():
    out = log.SpdlogFormatter(log.DEFAULT_FORMAT).format(_record())
    assert out.endswith("[warning][upstream] [/src/file.py:42] hello")
    assert out.startswith("[20")


def test_spdlog_pattern_istio():
    fmt = "%Y-%m-%dT%T.%fZ\t%l\tenvoy %n %g:%#\t%v\tthread=%t"
    out = log.SpdlogFormatter(fmt).format(_record(level=logging.ERROR))
    assert out.startswith("2023-11-14T22:13:20.123456Z\terror\tenvoy upstream /src/file.py:42\thello\tthread=")


def test_component_levels():
    levels = log.parse_component_levels("upstream:debug,config:trace")
    assert levels == {"upstream": logging.DEBUG, "config": log.TRACE}
