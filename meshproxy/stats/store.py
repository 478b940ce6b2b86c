"""Stat blocks and the store that names them.

A *stat block* is a small object whose counters and gauges are plain ``int`` attributes
(``__slots__``), so the hot path pays one attribute increment per stat, as DESIGN.md demands.
The store maps a name prefix (``cluster.up.``, ``http.ingress.``) to each block and produces
Envoy's flat names (``cluster.up.upstream_rq_total``) only when the admin API asks.

Envoy's ``usedonly`` means "written at least once". Counters are used when non-zero; gauges are
used when non-zero or once a block marks them used (``mark_used``), which is how ``server.state``
(0 when LIVE) shows up in pilot-agent's readiness query.
"""

from __future__ import annotations

COUNTER = "counter"
GAUGE = "gauge"


def _slot(name: str) -> str:
    return name.replace(".", "__")


def stat_block(class_name: str, counters: tuple[str, ...] = (), gauges: tuple[str, ...] = (),
               extra: tuple[str, ...] = ()):
    """Make a stat block class with the given counter and gauge names as int attributes.
    A dotted stat name (``main_thread.watchdog_miss``) is stored as ``main_thread__watchdog_miss``.
    ``extra`` adds non-stat slots (e.g. a dict of per-response-code counters)."""
    c_slots = tuple((_slot(n), n) for n in counters)
    g_slots = tuple((_slot(n), n) for n in gauges)
    slots = tuple(s for s, _ in c_slots + g_slots) + ("_used",) + tuple(extra)

    def __init__(self):
        for slot, _ in c_slots + g_slots:
            object.__setattr__(self, slot, 0)
        self._used = set()
        for name in extra:
            object.__setattr__(self, name, None)

    def mark_used(self, *names):
        self._used.update(names)

    def items(self):
        for slot, name in c_slots:
            yield name, COUNTER, getattr(self, slot), None
        used = self._used
        for slot, name in g_slots:
            yield name, GAUGE, getattr(self, slot), (name in used) or None

    def __repr__(self):
        nz = ", ".join(f"{n}={getattr(self, s)}" for s, n in c_slots + g_slots
                       if getattr(self, s))
        return f"<{class_name} {nz}>"

    return type(class_name, (), {
        "__slots__": slots, "__init__": __init__, "items": items, "mark_used": mark_used,
        "__repr__": __repr__, "COUNTERS": tuple(s for s, _ in c_slots),
        "GAUGES": tuple(s for s, _ in g_slots),
    })


class Stat:
    """One rendered stat: ``name``, ``kind`` (counter/gauge), ``value``, ``used``."""

    __slots__ = ("name", "kind", "value", "used")

    def __init__(self, name: str, kind: str, value: int, used: bool):
        self.name = name
        self.kind = kind
        self.value = value
        self.used = used

    def __repr__(self):
        return f"<Stat {self.kind} {self.name}={self.value}>"


class Store:
    """All stats of the process, by prefix. ``sources`` are callables yielding extra
    ``(name, kind, value, used)`` tuples for stats that are not blocks (per-code counters)."""

    def __init__(self):
        self._blocks: list[tuple[str, object]] = []
        self._sources: list = []

    def register(self, prefix: str, block) -> None:
        self._blocks.append((prefix, block))

    def unregister(self, block) -> None:
        self._blocks = [(p, b) for p, b in self._blocks if b is not block]

    def add_source(self, fn) -> None:
        self._sources.append(fn)

    def remove_source(self, fn) -> None:
        self._sources = [s for s in self._sources if s is not fn]

    def snapshot(self) -> list[Stat]:
        """Every stat, merged by name (blocks sharing a prefix add up), sorted by name."""
        merged: dict[str, Stat] = {}
        for prefix, block in self._blocks:
            for name, kind, value, used in block.items():
                self._merge(merged, prefix + name, kind, value, used)
        for source in self._sources:
            for name, kind, value, used in source():
                self._merge(merged, name, kind, value, used)
        return [merged[k] for k in sorted(merged)]

    @staticmethod
    def _merge(merged, full, kind, value, used):
        st = merged.get(full)
        if st is None:
            merged[full] = Stat(full, kind, value, bool(used) or value != 0)
        else:
            st.value += value
            st.used = st.used or bool(used) or value != 0

    def reset_counters(self) -> None:
        for _, block in self._blocks:
            for name in block.COUNTERS:
                setattr(block, name, 0)

    def __repr__(self):
        return f"<Store {len(self._blocks)} blocks>"
