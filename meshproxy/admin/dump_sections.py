"""The sections of ``/config_dump`` that list resources one by one: the route configurations
inline in listeners (static ones from the bootstrap, and those of listeners that came over LDS,
which Envoy also lists as static route configs), and the dynamic clusters, listeners and route
configurations with the version and time each came with (``xds/stats.py`` VersionRecorder)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from meshproxy.config.protos import unpack_any

_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def timestamp(t: float):
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9) // 1_000_000 * 1_000_000)
    return ts


def inline_route_configs(listeners):
    out = []
    for lst in listeners:
        chains = list(lst.filter_chains)
        if lst.HasField("default_filter_chain"):
            chains.append(lst.default_filter_chain)
        for fc in chains:
            for f in fc.filters:
                if f.typed_config.type_url.endswith("/" + _HCM):
                    h = unpack_any(f.typed_config, "")
                    if h.HasField("route_config"):
                        out.append(h.route_config)
    return out


def _recorded(ctx, type_url: str, name: str):
    version, when = ctx.xds_record.get(type_url, {}).get(name, ("", None))
    return version, (timestamp(when) if when is not None else None)


def _system_version(ctx, type_url: str) -> str:
    from meshproxy.xds.stats import SYSTEM_VERSIONS
    return ctx.xds_record.get(SYSTEM_VERSIONS, {}).get(type_url, "")


def dynamic_clusters(ctx, ccd, match) -> None:
    from meshproxy.xds import types as T
    catalog = ctx.xds[1]
    ccd.version_info = _system_version(ctx, T.CLUSTER)
    cm = ctx.cluster_manager
    for name in sorted(n for n, c in cm.clusters.items() if c.added_via_api):
        if not match(name):
            continue
        proto = cm.clusters[name].config.proto
        version, when = _recorded(ctx, T.CLUSTER, name)
        warming = name in catalog.warming_clusters
        dc = ccd.dynamic_warming_clusters.add() if warming else ccd.dynamic_active_clusters.add()
        dc.version_info = version
        dc.cluster.Pack(proto)
        if when is not None:
            dc.last_updated.CopyFrom(when)


def dynamic_listeners(ctx, lcd, match) -> None:
    from meshproxy.xds import types as T
    applier = ctx.xds[2]
    lcd.version_info = _system_version(ctx, T.LISTENER)
    lm = ctx.listener_manager
    dynamic = set(ctx.xds_record.get(T.LISTENER, {})) | set(applier.pending)
    for name in sorted(dynamic):
        if not match(name):
            continue
        dl = lcd.dynamic_listeners.add()
        dl.name = name
        version, when = _recorded(ctx, T.LISTENER, name)
        al = lm.listeners.get(name)
        pending = applier.pending.get(name)
        if al is not None:
            # the active version's own record is gone once a newer one warms: show the newest
            dl.active_state.listener.Pack(al.config.proto)
            dl.active_state.version_info = version
            if when is not None:
                dl.active_state.last_updated.CopyFrom(when)
        if pending is not None:
            dl.warming_state.listener.Pack(pending.proto)
            dl.warming_state.version_info = version
            if when is not None:
                dl.warming_state.last_updated.CopyFrom(when)


def dynamic_inline_routes(ctx, rcd, match) -> None:
    """Route configurations inline in listeners that came over LDS are static route configs to
    Envoy (one StaticRouteConfigProviderImpl per HCM, active or warming), stamped with the
    listener's update time (checked against Envoy 1.40 with hello-openshift's listeners)."""
    from meshproxy.xds import types as T
    lm, applier = ctx.listener_manager, ctx.xds[2]
    for name in sorted(set(ctx.xds_record.get(T.LISTENER, {})) | set(applier.pending)):
        _, when = _recorded(ctx, T.LISTENER, name)
        versions = [v.config.proto for v in (lm.listeners.get(name),) if v is not None]
        if name in applier.pending:
            versions.append(applier.pending[name].proto)
        for rc in inline_route_configs(versions):
            if match(rc.name):
                sr = rcd.static_route_configs.add()
                sr.route_config.Pack(rc)
                if when is not None:
                    sr.last_updated.CopyFrom(when)


def dynamic_routes(ctx, rcd, match) -> None:
    from meshproxy.xds import types as T
    if ctx.rds is None:
        return
    for name in sorted(ctx.rds.providers):
        p = ctx.rds.providers[name]
        if p.proto is None or not match(name):
            continue
        dr = rcd.dynamic_route_configs.add()
        version, when = _recorded(ctx, T.ROUTE, name)
        dr.version_info = version
        dr.route_config.Pack(p.proto)
        if when is not None:
            dr.last_updated.CopyFrom(when)
