"""Route configurations that arrive by name over RDS (Envoy's ``RdsRouteConfigProviderImpl``,
``source/common/router/rds_impl.cc``).

An HTTP connection manager configured with ``rds`` names a route configuration instead of
carrying one. Every HCM that names the same route configuration shares one provider (Envoy's
``RouteConfigProviderManager`` dedupes by name and config source), so one RDS update swaps the
table of all of them at once. Until the first update the table is empty: a request then gets
404 with flag NR, as Envoy's ``NullConfigImpl`` answers once the listener's initial fetch has
timed out. Requests in flight keep the route they matched; only new requests see a new table.

A bad update (``apply`` raises ConfigError naming the field) leaves the current table serving;
the xDS layer NACKs it.
"""

from __future__ import annotations

import time
import weakref

from meshproxy.router.route_table import RouteTable


class RouteConfigProvider:
    """One route configuration name and the HCM configs that use it."""

    __slots__ = ("name", "table", "version", "last_updated", "proto", "users", "waiters",
                 "__weakref__")

    def __init__(self, name: str):
        self.name = name
        self.table = RouteTable(name)   # empty until the first update: 404 NR
        self.version = ""
        self.last_updated = None        # wall-clock seconds of the last accepted update
        self.proto = None               # the accepted RouteConfiguration (config_dump)
        self.users: weakref.WeakSet = weakref.WeakSet()
        self.waiters: list = []         # callbacks for the first update (listener warming)

    @property
    def ready(self) -> bool:
        """Whether a route configuration has arrived (a listener using it may stop warming)."""
        return self.proto is not None

    def attach(self, hcm_config) -> None:
        hcm_config.route_table = self.table
        hcm_config.rds_provider = self
        self.users.add(hcm_config)

    def when_ready(self, callback) -> None:
        """Call ``callback()`` once the first route configuration has arrived (now if it has)."""
        if self.ready:
            callback()
        else:
            self.waiters.append(callback)

    def update(self, table: RouteTable, version: str, proto, now: float) -> None:
        table.version = version
        self.table = table
        self.version = version
        self.proto = proto
        self.last_updated = now
        for cfg in list(self.users):
            cfg.route_table = table
        waiters, self.waiters = self.waiters, []
        for cb in waiters:
            cb()


class RdsRegistry:
    """The providers of one server, by route configuration name. The xDS layer subscribes to
    ``names()`` and hands every RouteConfiguration it receives to ``apply``."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.providers: dict[str, RouteConfigProvider] = {}

    def provider(self, name: str) -> RouteConfigProvider:
        p = self.providers.get(name)
        if p is None:
            p = self.providers[name] = RouteConfigProvider(name)
        return p

    def names(self) -> set[str]:
        """Route configurations some live HCM config still uses (the RDS subscription)."""
        return {n for n, p in self.providers.items() if len(p.users)}

    def forget_unused(self) -> list[str]:
        """Drop providers no HCM uses any more (their listeners are gone); returns the names."""
        gone = [n for n, p in self.providers.items() if not len(p.users)]
        for n in gone:
            del self.providers[n]
        return gone

    def apply(self, route_config, version: str = "", path: str = "route_config",
              cluster_names=None) -> bool:
        """Validate and install one RouteConfiguration. Raises ConfigError (naming the field)
        for a bad one, which leaves the current table in place. Returns False when no HCM
        asked for this name (Envoy ignores such resources)."""
        from meshproxy.router.route_config import build_route_table
        p = self.providers.get(route_config.name)
        if p is None:
            return False
        # RDS tables are not checked against the cluster list unless they ask
        # (validate_clusters defaults to false for RDS, RouteConfiguration docs).
        table = build_route_table(route_config, path, cluster_names=cluster_names,
                                  validate_clusters=False)
        p.update(table, version, route_config, self.clock())
        return True
