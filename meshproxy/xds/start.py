"""Wiring the xDS client into a running server: the ADS client, the catalog that orders and
warms what it delivers, the applier that puts it into the managers, and around each type's
handler the stats and version records Envoy keeps (``xds/stats.py``)."""

from __future__ import annotations

from meshproxy.xds import stats as xs
from meshproxy.xds import types as T


def start_ads(ctx, dyn, node):
    """Start ADS for ``dyn`` (``config.dynamic.DynamicConfig``); sets ``ctx.rds``,
    ``ctx.xds`` and ``ctx.xds_record``. Returns a future done when initialisation completes
    (the first CDS/EDS/LDS/RDS round is in, or its initial fetch timed out)."""
    from meshproxy.router.rds import RdsRegistry
    from meshproxy.xds.ads_client import AdsClient
    from meshproxy.xds.apply import ServerApplier
    from meshproxy.xds import validate as V
    from meshproxy.xds.catalog import Catalog

    loop = ctx.loop
    ready = loop.create_future()
    ctx.rds = RdsRegistry()

    def on_listener(cfg):
        if ready.done():   # after start-up: bind and serve it now
            loop.create_task(ctx.listener_manager.start_one(cfg))
        else:              # during start-up: bound with the others
            ctx.listener_manager.add(cfg)

    def on_ready():
        if not ready.done():
            ready.set_result(None)

    client = AdsClient.from_dynamic_config(dyn, node, {})
    applier = ServerApplier(ctx, ctx.rds, on_listener=on_listener, started=ready.done,
                            on_drained=lambda name: catalog.drained(name),
                            set_fetch_timeout=client.mux.set_fetch_timeout)
    def validator(type_url, msg):
        try:
            V.validate(type_url, msg)
        except V.BindFailure:
            ctx.listener_manager.stats.listener_create_failure += 1
            raise

    catalog = Catalog(client, validator=validator, on_update=applier.on_update,
                      on_ready=on_ready, cluster_names=lambda: ctx.cluster_manager.clusters.keys())
    client.mux.handlers.update(_counted(ctx, catalog, client, applier,
                                        dyn.ads.api_type == "DELTA_GRPC"))
    ctx.xds = (client, catalog, applier)
    client.start()
    catalog.start(cds=dyn.cds is not None and dyn.cds.server is not None,
                  lds=dyn.lds is not None and dyn.lds.server is not None)
    return ready


def _counted(ctx, catalog, client, applier, delta: bool) -> dict:
    """The catalog's handlers wrapped with Envoy's subscription stats and the version record
    ``/config_dump`` reads."""
    handlers = catalog.handlers()
    for type_url, prefix, cls in ((T.CLUSTER, "cluster_manager.cds.", xs.CdsStats),
                                  (T.LISTENER, "listener_manager.lds.", xs.SubscriptionStats)):
        st = xs.new_stats(cls)
        ctx.store.register(prefix, st)
        handlers[type_url] = xs.CountingHandler(handlers[type_url], st, delta,
                                                unchanged=lambda: catalog.unchanged)
    for type_url, stats_for in ((T.ENDPOINT, applier.eds_stats_for),
                                (T.ROUTE, applier.rds_stats_for)):
        handlers[type_url] = xs.PerNameCounting(handlers[type_url], stats_for, delta,
                                                unchanged=lambda: catalog.unchanged)
    cps = xs.ControlPlaneStats()
    ctx.store.register("control_plane.", cps)
    client.connected_changed = lambda up: setattr(cps, "connected_state", int(up))
    ctx.xds_record = {}
    for type_url in (T.CLUSTER, T.ENDPOINT, T.LISTENER, T.ROUTE):
        handlers[type_url] = xs.VersionRecorder(
            handlers[type_url], ctx.xds_record,
            on_timeout=applier.routes_timed_out if type_url == T.ROUTE else None,
            unchanged=lambda: catalog.unchanged,
            in_place=(lambda: catalog.in_place) if type_url == T.LISTENER else (lambda: ()))
    return handlers
