"""Resource TTLs on an injected clock (Envoy's ``Config::TtlManager``, ``source/common/config/
ttl.cc``): one timer armed at the earliest deadline; when it fires, every resource whose TTL has
passed is reported at once."""

from __future__ import annotations


class TtlTimers:
    """``clock`` has ``time()`` and ``call_later(delay, fn)`` (an event loop or a fake clock);
    ``on_expired(names)`` is called with the expired names, in deadline order."""

    def __init__(self, clock, on_expired):
        self._clock = clock
        self._on_expired = on_expired
        self._deadlines: dict[str, float] = {}
        self._handle = None
        self._armed_at: float | None = None

    def set(self, name: str, ttl: float | None) -> None:
        """Start or refresh ``name``'s TTL; ``None`` clears it (a resource sent without TTL)."""
        if ttl is None:
            self._deadlines.pop(name, None)
        else:
            self._deadlines[name] = self._clock.time() + ttl
        self._rearm()

    def clear(self, name: str) -> None:
        if self._deadlines.pop(name, None) is not None:
            self._rearm()

    def clear_all(self) -> None:
        self._deadlines.clear()
        self._rearm()

    def __len__(self) -> int:
        return len(self._deadlines)

    def _rearm(self) -> None:
        due = min(self._deadlines.values(), default=None)
        if due == self._armed_at:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._armed_at = due
        if due is not None:
            self._handle = self._clock.call_later(max(0.0, due - self._clock.time()), self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = None
        now = self._clock.time()
        expired = sorted((d, n) for n, d in self._deadlines.items() if d <= now)
        for _, n in expired:
            del self._deadlines[n]
        self._rearm()
        if expired:
            self._on_expired([n for _, n in expired])

    def __repr__(self) -> str:
        return f"<TtlTimers {len(self._deadlines)} resources>"
