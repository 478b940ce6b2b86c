"""The lazily re-armed deadline timer and the spdlog-style log formatter."""

from __future__ import annotations

import logging

from meshproxy import log
from meshproxy.timer import LazyTimer
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
