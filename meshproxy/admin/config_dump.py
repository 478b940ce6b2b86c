"""``/config_dump`` in Envoy's format: an ``envoy.admin.v3.ConfigDump`` with the bootstrap,
clusters, (endpoints with ``include_eds``), listeners, scoped routes, routes and secrets dumps,
rendered as proto-named JSON (snake_case, as Envoy prints it).

Parameters as Envoy 1.40 handles them (``source/server/admin/config_dump_handler.cc``):
``resource`` picks one repeated field and lists its elements; ``mask`` is a FieldMask applied
to each dump, or with ``resource`` to each element (unpacking the one ``Any`` it names, as
``trimResourceMessage`` does); ``name_regex`` keeps resources whose name *fully* matches (RE2);
``include_eds`` is true when present (whatever its value).

An extension config meshproxy has no schema for (``UnknownExtension``; the bootstrap parser
carries it as a marked ``Struct``) is dumped as a ``xds.type.v3.TypedStruct`` with the original
type URL and fields: Envoy would print the message itself, which needs its schema; the
TypedStruct keeps every field and stays parseable as a ``ConfigDump`` (and loadable by Envoy).
"""

from __future__ import annotations

from google.protobuf import field_mask_pb2, json_format

from meshproxy.admin.dump_sections import (dynamic_clusters, dynamic_inline_routes,
                                           dynamic_listeners, dynamic_routes,
                                           inline_route_configs, timestamp)
from meshproxy.config.protos import _STRUCT_URL, _UNKNOWN_MARK, message_class
from meshproxy.stats.re2 import Re2Error, compile_re2

_TYPED_STRUCT_URL = "type.googleapis.com/xds.type.v3.TypedStruct"
_ANY = "google.protobuf.Any"
_HEALTH = {0: "HEALTHY", 1: "HEALTHY", 2: "UNHEALTHY", 3: "DRAINING", 4: "TIMEOUT",
           5: "DEGRADED"}


class DumpError(Exception):
    """An answer other than 200: ``status`` and ``text`` (Envoy sends ``text/plain``)."""

    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status
        self.text = text


def _bootstrap_dump(ctx, t):
    from meshproxy.admin.status import set_user_agent
    A = message_class
    bcd = A("envoy.admin.v3.BootstrapConfigDump")()
    bcd.bootstrap.CopyFrom(ctx.config.bootstrap)
    set_user_agent(bcd.bootstrap.node)
    bcd.last_updated.CopyFrom(t)
    return bcd


def _endpoint_dump(ctx, t, match):
    """Envoy dumps the endpoints it holds (after DNS, with health and weights filled in), not
    the configured ``load_assignment``."""
    A = message_class
    ecd = A("envoy.admin.v3.EndpointsConfigDump")()
    cm = ctx.cluster_manager
    for name in sorted(cm.clusters):
        if not match(name):
            continue
        cluster = cm.clusters[name]
        cla = A("envoy.config.endpoint.v3.ClusterLoadAssignment")(cluster_name=name)
        groups: dict = {}
        # Locality weights are kept (and dumped) only for locality-weighted load balancing
        # (upstream_impl.cc PriorityStateManager::updateClusterPrioritySet).
        proto = getattr(cluster.config, "proto", None)
        lw = proto is not None and proto.common_lb_config.HasField("locality_weighted_lb_config")
        for h in cluster.hosts:
            key = (h.priority, tuple(h.locality or ("", "", "")))
            le = groups.get(key)
            if le is None:
                le = groups[key] = cla.endpoints.add()
                region, zone, sub_zone = key[1]
                le.locality.SetInParent()
                le.locality.region, le.locality.zone, le.locality.sub_zone = region, zone, sub_zone
                le.load_balancing_weight.value = h.locality_weight if lw else 0
                le.priority = h.priority
            lb = le.lb_endpoints.add()
            if h.unix:
                lb.endpoint.address.pipe.path = str(h.address)
            else:
                lb.endpoint.address.socket_address.address = h.address[0]
                lb.endpoint.address.socket_address.port_value = h.address[1]
            lb.endpoint.health_check_config.SetInParent()
            if h.hostname:
                lb.endpoint.hostname = h.hostname
            lb.health_status = 1 if h.healthy else (5 if h.degraded else 2)
            lb.load_balancing_weight.value = h.weight
            if h.metadata is not None:
                lb.metadata.CopyFrom(h.metadata)
        cla.policy.overprovisioning_factor.value = 140
        if getattr(cluster, "added_via_api", False):
            # clusters from CDS: their endpoints are dynamic, without version or time
            ecd.dynamic_endpoint_configs.add().endpoint_config.Pack(cla)
            continue
        se = ecd.static_endpoint_configs.add()
        se.endpoint_config.Pack(cla)
        se.last_updated.CopyFrom(t)
    return ecd


def _dumps(ctx, match, include_eds: bool) -> list:
    boot = ctx.config.bootstrap
    t = timestamp(ctx.start_time)
    A = message_class
    dumps = [_bootstrap_dump(ctx, t)]

    ccd = A("envoy.admin.v3.ClustersConfigDump")()
    # Envoy lists clusters by name, whatever their order in the bootstrap.
    for c in sorted(boot.static_resources.clusters, key=lambda c: c.name):
        if match(c.name):
            sc = ccd.static_clusters.add()
            sc.cluster.Pack(c)
            sc.last_updated.CopyFrom(t)
    xds = getattr(ctx, "xds", None)
    if xds is not None:
        dynamic_clusters(ctx, ccd, match)
    dumps.append(ccd)
    if include_eds:
        dumps.append(_endpoint_dump(ctx, t, match))

    lcd = A("envoy.admin.v3.ListenersConfigDump")()
    for lst in boot.static_resources.listeners:
        if match(lst.name):
            sl = lcd.static_listeners.add()
            sl.listener.Pack(lst)
            sl.last_updated.CopyFrom(t)
    if xds is not None:
        dynamic_listeners(ctx, lcd, match)
    dumps.append(lcd)

    dumps.append(A("envoy.admin.v3.ScopedRoutesConfigDump")())

    rcd = A("envoy.admin.v3.RoutesConfigDump")()
    for rc in inline_route_configs(boot.static_resources.listeners):
        if match(rc.name):
            sr = rcd.static_route_configs.add()
            sr.route_config.Pack(rc)
            sr.last_updated.CopyFrom(t)
    if xds is not None:
        dynamic_inline_routes(ctx, rcd, match)
        dynamic_routes(ctx, rcd, match)
    dumps.append(rcd)

    dumps.append(A("envoy.admin.v3.SecretsConfigDump")())
    return dumps


def build(ctx, resource: str | None = None, name_regex: str | None = None,
          include_eds: bool = False, mask: str | None = None) -> dict:
    """The ConfigDump as a JSON-ready dict; DumpError for Envoy's 400/404 answers."""
    match = _name_matcher(name_regex)
    dumps = _dumps(ctx, match, include_eds)
    paths = [p for p in mask.split(",")] if mask is not None else None
    if resource:
        return _resource_dump(dumps, resource, paths)
    out = []
    for d in dumps:
        if paths is not None and not _trim(d, paths):
            continue
        out.append(d)
    if paths is not None and not out:
        raise DumpError(400, f"FieldMask {mask} could not be successfully applied to any "
                             f"configs.")
    cd = message_class("envoy.admin.v3.ConfigDump")()
    for d in out:
        cd.configs.add().Pack(d)
    return to_dict(cd)


def _name_matcher(name_regex: str | None):
    if not name_regex:
        return lambda name: True
    try:
        rx = compile_re2(name_regex)
    except Re2Error as exc:
        raise DumpError(400, f"INVALID_ARGUMENT: Error while parsing name_regex from "
                             f"{name_regex}: {exc}") from None
    return lambda name: rx.fullmatch(name) is not None


def _resource_dump(dumps, resource: str, paths) -> dict:
    """``?resource=static_clusters``: the elements of the first dump with that field."""
    for d in dumps:
        field = d.DESCRIPTOR.fields_by_name.get(resource)
        if field is None:
            continue
        if not _repeated(field):
            raise DumpError(400, f"{resource} is not a repeated field. Use ?mask={resource} "
                                 f"to get only this field")
        cd = message_class("envoy.admin.v3.ConfigDump")()
        for item in getattr(d, resource):
            if paths is not None and not _trim_resource(item, paths):
                listed = "".join(f'paths: "{p}"\n' for p in paths)
                raise DumpError(400, f"FieldMask goo.gle/debugproto    \n{listed} could not be "
                                     f"successfully used.")
            cd.configs.add().Pack(item)
        return to_dict(cd)
    raise DumpError(404, f"{resource} not found in config dump")


def _repeated(field) -> bool:
    rep = getattr(field, "is_repeated", None)
    return rep if rep is not None else field.label == field.LABEL_REPEATED


def _trim(msg, paths) -> bool:
    """``checkFieldMaskAndTrimMessage``: False (untouched) if the mask does not fit ``msg``."""
    fm = field_mask_pb2.FieldMask(paths=paths)
    if not fm.IsValidForDescriptor(msg.DESCRIPTOR):
        return False
    trimmed = type(msg)()
    fm.MergeMessage(msg, trimmed)
    msg.CopyFrom(trimmed)
    return True


def _trim_resource(msg, paths) -> bool:
    """``trimResourceMessage``: paths through one singular ``Any`` field apply to the message
    packed in it."""
    outer, inner, any_name = [], [], None
    for path in paths:
        head, _, rest = path.partition(".")
        field = msg.DESCRIPTOR.fields_by_name.get(head)
        if field is not None and field.message_type is not None and \
                not _repeated(field) and field.message_type.full_name == _ANY:
            any_name = head
            inner.append(rest)
            outer.append(head)
        else:
            outer.append(path)
    if any_name is not None and msg.HasField(any_name):
        packed = getattr(msg, any_name)
        cls = message_class(packed.type_url.rsplit("/", 1)[-1])
        if cls is None:
            return False
        unpacked = cls()
        packed.Unpack(unpacked)
        if not _trim(unpacked, inner):
            return False
        packed.Pack(unpacked)
    return _trim(msg, outer)


def to_dict(msg) -> dict:
    """Proto-named JSON of ``msg``, with placeholders of unknown extensions as TypedStruct."""
    try:
        return _typed_structs(json_format.MessageToDict(msg, preserving_proto_field_name=True))
    except TypeError:
        # An Any of a type with no schema here, as received over xDS (Istio's stats.PluginConfig,
        # metadata exchange, ...): Envoy without the type fails the whole dump ("could not find
        # @type"); meshproxy, which accepted the resource, dumps that Any as a TypedStruct with
        # the type URL and no fields (the bytes cannot be printed without the schema).
        copy = type(msg)()
        copy.CopyFrom(msg)
        _scrub_unknown_anys(copy)
        return _typed_structs(json_format.MessageToDict(copy, preserving_proto_field_name=True))


def _scrub_unknown_anys(msg) -> None:
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values()) if field.message_type.fields_by_name["value"] \
                .message_type is not None else []
        else:
            items = list(value) if _repeated(field) else [value]
        for item in items:
            if item.DESCRIPTOR.full_name == _ANY:
                _scrub_any(item)
            else:
                _scrub_unknown_anys(item)


def _scrub_any(a) -> None:
    cls = message_class(a.type_url.rsplit("/", 1)[-1])
    if cls is None:
        ts = message_class("xds.type.v3.TypedStruct")(type_url=a.type_url)
        a.Pack(ts)
        return
    inner = cls()
    a.Unpack(inner)
    _scrub_unknown_anys(inner)
    a.Pack(inner)


def _typed_structs(value):
    if isinstance(value, dict):
        if value.get("@type") == _STRUCT_URL and isinstance(value.get("value"), dict) \
                and _UNKNOWN_MARK in value["value"]:
            inner = dict(value["value"])
            url = inner.pop(_UNKNOWN_MARK)
            return {"@type": _TYPED_STRUCT_URL, "type_url": url, "value": inner}
        return {k: _typed_structs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed_structs(v) for v in value]
    return value

