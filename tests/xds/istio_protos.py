"""Descriptors for the Istio extension configs that real sidecar dumps carry as typed Anys, so a
dump's JSON encodes back to the same protobuf bytes istiod sent (xds-protos has Envoy's and
udpa's messages, not Istio's).

Only the messages the dumps in ../shared/real-configs use, with the field numbers of their
sources in istio/proxy:
- ``stats.PluginConfig``: extensions/filters/http/istio_stats/config.proto
- ``envoy.tcp.metadataexchange.config.MetadataExchange``:
  extensions/filters/network/metadata_exchange/config/metadata_exchange.proto
- ``istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig``:
  source/extensions/filters/http/alpn/config.proto
- ``istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig`` (Istio <= 1.9) and the parts
  of ``istio.authentication.v1alpha1.Policy`` it uses: istio/api authentication/v1alpha1/policy.proto

They live in the test process only (the control plane's side); meshproxy and Envoy see bytes.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf import duration_pb2  # noqa: F401  (google/protobuf/duration.proto)

F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED


def _field(msg, name, number, ftype, label=_OPT, type_name=None, oneof=None):
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name
    if oneof is not None:
        f.oneof_index = oneof


def _file(name, package, deps=()):
    return descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3",
                                              dependency=list(deps))


def _stats():
    fd = _file("meshproxy_tests/istio/stats.proto", "stats", ["google/protobuf/duration.proto"])
    mc = fd.message_type.add(name="MetricConfig")
    entry = mc.nested_type.add(name="DimensionsEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_STRING)
    _field(mc, "dimensions", 1, F.TYPE_MESSAGE, _REP, ".stats.MetricConfig.DimensionsEntry")
    _field(mc, "name", 2, F.TYPE_STRING)
    _field(mc, "tags_to_remove", 3, F.TYPE_STRING, _REP)
    _field(mc, "match", 4, F.TYPE_STRING)
    _field(mc, "drop", 5, F.TYPE_BOOL)
    mt = fd.enum_type.add(name="MetricType")
    for i, n in enumerate(("COUNTER", "GAUGE", "HISTOGRAM")):
        mt.value.add(name=n, number=i)
    rep = fd.enum_type.add(name="Reporter")
    rep.value.add(name="UNSPECIFIED", number=0)
    rep.value.add(name="SERVER_GATEWAY", number=1)
    md = fd.message_type.add(name="MetricDefinition")
    _field(md, "name", 1, F.TYPE_STRING)
    _field(md, "value", 2, F.TYPE_STRING)
    _field(md, "type", 3, F.TYPE_ENUM, type_name=".stats.MetricType")
    pc = fd.message_type.add(name="PluginConfig")
    _field(pc, "disable_host_header_fallback", 6, F.TYPE_BOOL)
    _field(pc, "tcp_reporting_duration", 7, F.TYPE_MESSAGE, type_name=".google.protobuf.Duration")
    _field(pc, "metrics", 8, F.TYPE_MESSAGE, _REP, ".stats.MetricConfig")
    _field(pc, "definitions", 9, F.TYPE_MESSAGE, _REP, ".stats.MetricDefinition")
    _field(pc, "reporter", 10, F.TYPE_ENUM, type_name=".stats.Reporter")
    _field(pc, "rotation_interval", 11, F.TYPE_MESSAGE, type_name=".google.protobuf.Duration")
    _field(pc, "graceful_deletion_interval", 12, F.TYPE_MESSAGE,
           type_name=".google.protobuf.Duration")
    return fd


def _metadata_exchange():
    fd = _file("meshproxy_tests/istio/metadata_exchange.proto",
               "envoy.tcp.metadataexchange.config")
    m = fd.message_type.add(name="MetadataExchange")
    _field(m, "protocol", 1, F.TYPE_STRING)
    _field(m, "enable_discovery", 2, F.TYPE_BOOL)
    _field(m, "additional_labels", 3, F.TYPE_STRING, _REP)
    return fd


def _alpn():
    pkg = "istio.envoy.config.filter.http.alpn.v2alpha1"
    fd = _file("meshproxy_tests/istio/alpn.proto", pkg)
    fc = fd.message_type.add(name="FilterConfig")
    proto = fc.enum_type.add(name="Protocol")
    for i, n in enumerate(("HTTP10", "HTTP11", "HTTP2")):
        proto.value.add(name=n, number=i)
    ao = fc.nested_type.add(name="AlpnOverride")
    _field(ao, "upstream_protocol", 1, F.TYPE_ENUM, type_name=f".{pkg}.FilterConfig.Protocol")
    _field(ao, "alpn_override", 2, F.TYPE_STRING, _REP)
    _field(fc, "alpn_override", 1, F.TYPE_MESSAGE, _REP, f".{pkg}.FilterConfig.AlpnOverride")
    return fd


def _authn():
    apkg, fpkg = "istio.authentication.v1alpha1", "istio.envoy.config.filter.http.authn.v2alpha1"
    pol = _file("meshproxy_tests/istio/authn_policy.proto", apkg)
    mode = pol.message_type.add(name="MutualTls")
    e = mode.enum_type.add(name="Mode")
    e.value.add(name="STRICT", number=0)
    e.value.add(name="PERMISSIVE", number=1)
    _field(mode, "allow_tls", 1, F.TYPE_BOOL)
    _field(mode, "mode", 2, F.TYPE_ENUM, type_name=f".{apkg}.MutualTls.Mode")
    peer = pol.message_type.add(name="PeerAuthenticationMethod")
    peer.oneof_decl.add(name="params")
    _field(peer, "mtls", 1, F.TYPE_MESSAGE, type_name=f".{apkg}.MutualTls", oneof=0)
    policy = pol.message_type.add(name="Policy")
    _field(policy, "peers", 2, F.TYPE_MESSAGE, _REP, f".{apkg}.PeerAuthenticationMethod")
    _field(policy, "peer_is_optional", 3, F.TYPE_BOOL)
    _field(policy, "origin_is_optional", 5, F.TYPE_BOOL)
    fd = _file("meshproxy_tests/istio/authn.proto", fpkg, [pol.name])
    fc = fd.message_type.add(name="FilterConfig")
    _field(fc, "policy", 1, F.TYPE_MESSAGE, type_name=f".{apkg}.Policy")
    _field(fc, "skip_validate_trust_domain", 3, F.TYPE_BOOL)
    return [pol, fd]


def register() -> None:
    """Add the descriptors to the default pool (once per process)."""
    pool = descriptor_pool.Default()
    try:
        pool.FindMessageTypeByName("stats.PluginConfig")
        return
    except KeyError:
        pass
    for fd in [_stats(), _metadata_exchange(), _alpn(), *_authn()]:
        pool.Add(fd)
