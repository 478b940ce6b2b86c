"""Stats with Envoy's names, kept as plain integer attributes so the hot path only increments."""

from meshproxy.stats.store import Store, stat_block

__all__ = ["Store", "stat_block"]
