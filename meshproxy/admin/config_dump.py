"""``/config_dump`` in Envoy's format: an ``envoy.admin.v3.ConfigDump`` with the bootstrap,
clusters, listeners, scoped routes, routes and secrets dumps, rendered as proto-named JSON
(snake_case, as Envoy prints it)."""

from __future__ import annotations

import re
import time

from google.protobuf import json_format, timestamp_pb2

from meshproxy.config.protos import _restore, message_class

_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _ts(t: float):
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9) // 1_000_000 * 1_000_000)
    return ts


def _pack(msg):
    from google.protobuf import any_pb2
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _inline_route_configs(listeners):
    from meshproxy.config.protos import unpack_any
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


def build(ctx, resource: str | None = None, name_regex: str | None = None,
          include_eds: bool = False) -> dict:
    cfg = ctx.config
    boot = cfg.bootstrap
    t = _ts(ctx.start_time)
    A = message_class
    dumps = []

    bcd = A("envoy.admin.v3.BootstrapConfigDump")()
    bcd.bootstrap.CopyFrom(boot)
    bcd.last_updated.CopyFrom(t)
    dumps.append(bcd)

    ccd = A("envoy.admin.v3.ClustersConfigDump")()
    for c in boot.static_resources.clusters:
        sc = ccd.static_clusters.add()
        sc.cluster.Pack(c)
        sc.last_updated.CopyFrom(t)
    dumps.append(ccd)

    lcd = A("envoy.admin.v3.ListenersConfigDump")()
    for lst in boot.static_resources.listeners:
        sl = lcd.static_listeners.add()
        sl.listener.Pack(lst)
        sl.last_updated.CopyFrom(t)
    dumps.append(lcd)

    dumps.append(A("envoy.admin.v3.ScopedRoutesConfigDump")())

    rcd = A("envoy.admin.v3.RoutesConfigDump")()
    for rc in _inline_route_configs(boot.static_resources.listeners):
        sr = rcd.static_route_configs.add()
        sr.route_config.Pack(rc)
        sr.last_updated.CopyFrom(t)
    dumps.append(rcd)

    dumps.append(A("envoy.admin.v3.SecretsConfigDump")())

    if include_eds:
        ecd = A("envoy.admin.v3.EndpointsConfigDump")()
        for c in boot.static_resources.clusters:
            if c.HasField("load_assignment"):
                se = ecd.static_endpoint_configs.add()
                se.endpoint_config.Pack(c.load_assignment)
                se.last_updated.CopyFrom(t)
        dumps.append(ecd)

    if resource:
        return _resource_dump(dumps, resource, name_regex)
    cd = A("envoy.admin.v3.ConfigDump")()
    for d in dumps:
        cd.configs.append(_pack(d))
    return _restore(json_format.MessageToDict(cd, preserving_proto_field_name=True))


def _resource_dump(dumps, resource: str, name_regex: str | None) -> dict:
    """``?resource=static_clusters`` etc.: the named repeated field of whichever dump has it,
    each element packed, as Envoy returns it."""
    rx = re.compile(name_regex) if name_regex else None
    out = []
    for d in dumps:
        field = d.DESCRIPTOR.fields_by_name.get(resource)
        if field is None:
            continue
        for item in getattr(d, resource):
            if rx is not None and not rx.search(_item_name(item)):
                continue
            out.append(_restore(json_format.MessageToDict(item, preserving_proto_field_name=True)))
        if "@type" not in (out[0] if out else {}):
            out = [{"@type": "type.googleapis.com/" + field.message_type.full_name, **o}
                   for o in out]
        return {"configs": out}
    raise KeyError(resource)


def _item_name(item) -> str:
    from meshproxy.config.protos import unpack_any
    for f in ("cluster", "listener", "route_config", "endpoint_config"):
        if f in item.DESCRIPTOR.fields_by_name and item.HasField(f):
            inner = unpack_any(getattr(item, f), "")
            return getattr(inner, "name", "") or getattr(inner, "cluster_name", "")
    return ""


def now_ts():
    return _ts(time.time())
