"""Reconnect backoff (Envoy's JitteredExponentialBackOffStrategy, 500 ms -> 30 s) and TTL timers,
with injected randomness and a fake clock."""

from __future__ import annotations

import pytest

from meshproxy.xds.backoff import JitteredBackoff
from meshproxy.xds.ttl import TtlTimers
from tests.support.clock import FakeClock

ALMOST_ONE = 0.999999


def test_schedule_doubles_from_500ms_to_30s():
    b = JitteredBackoff(random=lambda: ALMOST_ONE)
    delays = [round(b.next_delay(), 3) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_delay_is_full_jitter_in_zero_to_interval():
    draws = iter([0.0, 0.5, 0.25])
    b = JitteredBackoff(random=lambda: next(draws))
    assert [b.next_delay() for _ in range(3)] == [0.0, 0.5, 0.5]


def test_reset_starts_again_from_the_base():
    b = JitteredBackoff(random=lambda: ALMOST_ONE)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert round(b.next_delay(), 3) == 0.5


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        JitteredBackoff(base=2, maximum=1)


def test_ttl_timers_fire_once_at_the_earliest_deadline_and_batch():
    clock = FakeClock()
    fired = []
    t = TtlTimers(clock, fired.append)
    t.set("a", 5)
    t.set("b", 5)
    t.set("c", 9)
    assert clock.pending() == 1
    clock.advance(5)
    assert fired == [["a", "b"]]
    t.set("c", None)                        # a resource sent again without TTL
    clock.advance(10)
    assert fired == [["a", "b"]] and len(t) == 0


def test_ttl_refresh_moves_the_deadline():
    clock = FakeClock()
    fired = []
    t = TtlTimers(clock, fired.append)
    t.set("a", 2)
    clock.advance(1.5)
    t.set("a", 2)
    clock.advance(1.5)
    assert fired == []
    clock.advance(1)
    assert fired == [["a"]]
