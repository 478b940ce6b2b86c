"""Reconnect delays for the ADS stream: Envoy's ``JitteredExponentialBackOffStrategy``
(``source/common/common/backoff_strategy.cc``) with the xDS defaults of
``Config::Utility::prepareJitteredExponentialBackOffStrategy``: base 500 ms, max 30 s.

Full jitter: each delay is uniform in [0, interval); the interval doubles after each use until it
reaches the maximum. ``reset()`` (on every response received, ``GrpcStream::onReceiveMessage``)
starts again from the base.
"""

from __future__ import annotations

import random as _random

BASE_INTERVAL = 0.5
MAX_INTERVAL = 30.0


class JitteredBackoff:
    def __init__(self, base: float = BASE_INTERVAL, maximum: float = MAX_INTERVAL,
                 random=_random.random):
        if not 0 < base <= maximum:
            raise ValueError("backoff: need 0 < base <= maximum")
        self.base = base
        self.maximum = maximum
        self._random = random           # () -> float in [0, 1)
        self.interval = base

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt."""
        interval = self.interval
        # "Set next_interval_ to max_interval_ if doubling the interval would exceed the max".
        self.interval = interval * 2 if interval < self.maximum / 2 else self.maximum
        return self._random() * interval

    def reset(self) -> None:
        self.interval = self.base

    def __repr__(self) -> str:
        return f"<JitteredBackoff interval={self.interval:g}s base={self.base:g}s max={self.maximum:g}s>"
