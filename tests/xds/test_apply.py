"""ServerApplier's listener warming (xds/apply.py), without a server: a listener version waits
for its route configurations, serves once they are in or once RDS gave up on them (initial
fetch timeout: Envoy then serves 404 NR), and a newer version supersedes one still warming."""

from __future__ import annotations

from meshproxy.router.rds import RdsRegistry
from meshproxy.xds import types as T
from meshproxy.xds.apply import ServerApplier
from meshproxy.xds.resources import Resource
from tests.xds import builders as B


class Listeners:
    def __init__(self):
        self.listeners = {}
        self.added = []

    def add(self, cfg, previous=None):
        self.listeners[cfg.name] = cfg
        self.added.append(cfg)
        return cfg


class Ctx:
    def __init__(self):
        self.listener_manager = Listeners()
        self.cluster_manager = None
        self.options = None


def listener(name, route):
    return Resource(name, "", B.proto(T.LISTENER, B.listener(name, route)))


def make():
    ctx, rds = Ctx(), RdsRegistry()
    return ctx, rds, ServerApplier(ctx, rds, started=lambda: False)


def test_listener_waits_for_its_routes_then_is_added():
    ctx, rds, ap = make()
    ap.on_update(T.LISTENER, [listener("in", "r")], [])
    assert ctx.listener_manager.added == [] and "in" in ap.pending
    rds.apply(B.proto(T.ROUTE, B.route("r", "svc")), "v1")
    assert [c.name for c in ctx.listener_manager.added] == ["in"] and not ap.pending


def test_a_route_fetch_timeout_ends_warming_with_empty_routes():
    ctx, rds, ap = make()
    ap.on_update(T.LISTENER, [listener("in", "r9")], [])
    assert ctx.listener_manager.added == []
    ap.routes_timed_out(("r9",))
    (cfg,) = ctx.listener_manager.added
    hcm = cfg.chains[0].config
    assert hcm.route_table.route is not None and not hcm.rds_provider.ready   # 404 NR table


def test_a_newer_version_supersedes_one_still_warming():
    ctx, rds, ap = make()
    ap.on_update(T.LISTENER, [listener("in", "old")], [])
    ap.on_update(T.LISTENER, [listener("in", "new")], [])
    rds.apply(B.proto(T.ROUTE, B.route("old", "svc")), "v1")
    assert ctx.listener_manager.added == []          # the old version never serves
    rds.apply(B.proto(T.ROUTE, B.route("new", "svc")), "v1")
    (cfg,) = ctx.listener_manager.added
    assert cfg.chains[0].config.rds_provider.name == "new"
