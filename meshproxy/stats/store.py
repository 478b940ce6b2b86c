"""Stat blocks and the store that names them.

A *stat block* is a small object whose counters and gauges are plain ``int`` attributes
(``__slots__``), so the hot path pays one attribute increment per stat, as DESIGN.md demands.
The store maps a name prefix (``cluster.up.``, ``http.ingress.``) to each block and produces
Envoy's flat names (``cluster.up.upstream_rq_total``) only when the admin API asks.

``usedonly`` (admin docs: "Only include stats that have been written by system since
restart"): Envoy sets a stat's *used* flag on every write, even of 0 (``add(0)``, ``set(0)``),
and never clears it, not even on ``/reset_counters``. Here a stat is used when

- its value is non-zero when the admin API looks, or was at any earlier look (sticky), or
- its block marked it written (``mark_used``): what a producer does for a stat Envoy writes
  with a zero value, such as the gauge ``server.state`` (0 when LIVE) that pilot-agent's
  readiness query reads, or a counter Envoy initialises with ``add(0)``.

The bootstrap's ``stats_config`` (``meshproxy.stats.config``) decides which names exist at all
(``stats_matcher``) and how they become Prometheus tags; it is consulted at render time only.
"""

from __future__ import annotations

from meshproxy.stats.config import StatsConfig

COUNTER = "counter"
GAUGE = "gauge"
TEXT_READOUT = "text_readout"   # a string stat (``version_text``), printed quoted


def _slot(name: str) -> str:
    return name.replace(".", "__")


def stat_block(class_name: str, counters: tuple[str, ...] = (), gauges: tuple[str, ...] = (),
               extra: tuple[str, ...] = (), counter_maps: tuple[str, ...] = (),
               texts: tuple[str, ...] = ()):
    """Make a stat block class with the given counter and gauge names as int attributes.
    A dotted stat name (``main_thread.watchdog_miss``) is stored as ``main_thread__watchdog_miss``.
    ``extra`` adds non-stat slots; ``counter_maps`` adds dict slots of per-key counters (the
    producer reports them through a store source, ``/reset_counters`` zeroes them);
    ``texts`` adds text readouts (strings, "" until set; used once set to something)."""
    c_slots = tuple((_slot(n), n) for n in counters)
    g_slots = tuple((_slot(n), n) for n in gauges)
    t_slots = tuple((_slot(n), n) for n in texts)
    extra = tuple(extra) + tuple(counter_maps)
    slots = tuple(s for s, _ in c_slots + g_slots + t_slots) + ("_used",) + extra

    def __init__(self):
        for slot, _ in c_slots + g_slots:
            object.__setattr__(self, slot, 0)
        for slot, _ in t_slots:
            object.__setattr__(self, slot, "")
        self._used = set()
        for name in extra:
            object.__setattr__(self, name, None)
        for name in counter_maps:
            object.__setattr__(self, name, {})

    def mark_used(self, *names):
        """Record that Envoy would have written these stats (counters or gauges)."""
        self._used.update(names)

    def items(self):
        used = self._used
        for slot, name in c_slots:
            yield name, COUNTER, getattr(self, slot), (name in used) or None
        for slot, name in g_slots:
            yield name, GAUGE, getattr(self, slot), (name in used) or None
        for slot, name in t_slots:
            value = getattr(self, slot)
            yield name, TEXT_READOUT, value, bool(value) or (name in used) or None

    def __repr__(self):
        nz = ", ".join(f"{n}={getattr(self, s)}" for s, n in c_slots + g_slots
                       if getattr(self, s))
        return f"<{class_name} {nz}>"

    return type(class_name, (), {
        "__slots__": slots, "__init__": __init__, "items": items, "mark_used": mark_used,
        "__repr__": __repr__, "COUNTERS": tuple(s for s, _ in c_slots),
        "GAUGES": tuple(s for s, _ in g_slots), "EXTRA": extra,
        "COUNTER_MAPS": tuple(counter_maps),
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

    def __init__(self, config: StatsConfig | None = None):
        self._blocks: list[tuple[str, object, frozenset]] = []
        self._sources: list = []
        self._ever_used: set[str] = set()
        self._deferred: set[int] = set()   # ids of deferred blocks not written yet
        self.config = config or StatsConfig()

    def register(self, prefix: str, block, exclude=(), deferred: bool = False) -> None:
        """Name ``block``'s stats ``prefix + name``; names in ``exclude`` are not shown (a block
        type shared by scopes where Envoy does not create some of its stats). A ``deferred``
        block appears only once one of its stats is written, as Envoy creates stats such as a
        cluster's traffic stats under ``deferred_stat_options.enable_deferred_creation_stats``
        on first use."""
        self._blocks.append((prefix, block, frozenset(exclude)))
        if deferred:
            self._deferred.add(id(block))

    def unregister(self, block) -> None:
        self._blocks = [e for e in self._blocks if e[1] is not block]
        self._deferred.discard(id(block))

    def add_source(self, fn) -> None:
        self._sources.append(fn)

    def remove_source(self, fn) -> None:
        self._sources = [s for s in self._sources if s is not fn]

    def snapshot(self) -> list[Stat]:
        """Every stat the stats matcher accepts, merged by name (blocks sharing a prefix add
        up, as Envoy's scopes with the same name share one stat), sorted by name."""
        merged: dict[str, Stat] = {}
        # Sources first: some refresh computed gauges of blocks (server.state, uptime) that
        # must be current when the blocks are read.
        extra = [item for source in self._sources for item in source()]
        deferred = self._deferred
        for prefix, block, exclude in self._blocks:
            items = block.items()
            if deferred and id(block) in deferred:
                items = list(items)
                if not any(value or used for _, _, value, used in items):
                    continue
                deferred.discard(id(block))
            for name, kind, value, used in items:
                if name not in exclude:
                    self._merge(merged, prefix + name, kind, value, used)
        for name, kind, value, used in extra:
            self._merge(merged, name, kind, value, used)
        ever = self._ever_used
        rejects = self.config.rejects
        out = []
        for name in sorted(merged):
            if rejects(name):
                continue
            st = merged[name]
            if st.used:
                ever.add(name)
            elif name in ever:
                st.used = True
            out.append(st)
        if len(ever) > len(merged):
            ever.intersection_update(merged)  # forget stats of removed clusters/listeners
        return out

    @staticmethod
    def _merge(merged, full, kind, value, used):
        st = merged.get(full)
        if kind == TEXT_READOUT:
            if st is None or not st.value:
                merged[full] = Stat(full, kind, value, bool(used))
            return
        if st is None:
            merged[full] = Stat(full, kind, value, bool(used) or value != 0)
        else:
            st.value += value
            st.used = st.used or bool(used) or value != 0

    def reset_counters(self) -> None:
        """``/reset_counters``: counters to zero; what was used stays used, as in Envoy."""
        self.snapshot()
        for _, block, _ in self._blocks:
            for slot in block.COUNTERS:
                setattr(block, slot, 0)
            for name in getattr(block, "COUNTER_MAPS", ()):
                _zero(getattr(block, name))
            for name in getattr(block, "EXTRA", ()):
                v = getattr(block, name)
                if isinstance(v, dict) and all(type(x) is int for x in v.values()):
                    _zero(v)

    def __repr__(self):
        return f"<Store {len(self._blocks)} blocks, {len(self._sources)} sources>"


def _zero(d: dict) -> None:
    for k in d:
        d[k] = 0
