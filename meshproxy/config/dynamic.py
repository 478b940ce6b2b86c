"""The bootstrap's ``dynamic_resources``: where listeners and clusters come from over xDS.

Translated and checked at start-up like everything else in the bootstrap (a bad one exits 1 with
Envoy's message before any port is bound). What Envoy checks (``Config::Utility``,
``source/common/config/utility.cc``, and ``MainImpl::initialize``):

* an xDS server is named by a static, non-EDS cluster: ``ads_config`` / ``api_config_source``
  with ``grpc_services[].envoy_grpc.cluster_name`` (exactly one gRPC service);
* ``ads_config`` must be ``GRPC`` or ``DELTA_GRPC`` (REST is not aggregated);
* with ``ads_config`` the node needs an id and a cluster;
* ``path_config_source`` paths must exist.

Istio's sidecar bootstrap uses ``ads_config`` (DELTA_GRPC since 1.22, over the Unix socket
``./etc/istio/proxy/XDS`` of the static cluster ``xds-grpc``) with ``cds_config`` and
``lds_config`` set to ``ads: {}`` and ``initial_fetch_timeout: 0s``.
"""

from __future__ import annotations

import dataclasses
import os

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import duration

_API_TYPES = {0: "DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE", 1: "REST", 2: "GRPC",
              3: "DELTA_GRPC", 5: "AGGREGATED_GRPC", 6: "AGGREGATED_DELTA_GRPC"}
DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0   # ConfigSource.initial_fetch_timeout default


@dataclasses.dataclass(frozen=True)
class GrpcServer:
    """An xDS server reached through a static cluster."""
    api_type: str                 # "GRPC" (state of the world) or "DELTA_GRPC"
    cluster_name: str
    target: str                   # grpc target: "unix:/path", "ipv4:a.b.c.d:p", "ipv6:[::1]:p"
    set_node_on_first_message_only: bool
    keepalive_interval: float | None    # HTTP/2 PINGs (cluster http2 connection_keepalive)
    keepalive_timeout: float | None


@dataclasses.dataclass(frozen=True)
class Source:
    """One ConfigSource: ``ads`` (the ADS stream), ``grpc`` (its own stream) or ``path``."""
    kind: str
    initial_fetch_timeout: float  # 0: wait for ever (Istio's choice for CDS/LDS)
    server: GrpcServer | None = None
    path: str | None = None


@dataclasses.dataclass(frozen=True)
class DynamicConfig:
    ads: GrpcServer | None
    cds: Source | None
    lds: Source | None
    warnings: tuple = ()


def _target(cluster, path: str) -> str:
    eps = cluster.endpoints
    if not eps:
        raise ConfigError(path, f"xDS cluster '{cluster.name}' has no endpoint")
    ep = eps[0]
    if ep.unix:
        return f"unix:{ep.address}"
    ip, port = ep.address
    return f"ipv6:[{ip}]:{port}" if ":" in ip else f"ipv4:{ip}:{port}"


def _keepalive(cluster) -> tuple[float | None, float | None]:
    from meshproxy.config.protos import unpack_any
    proto = cluster.proto
    h2 = None
    opts = proto.typed_extension_protocol_options.get(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    if opts is not None:
        hpo = unpack_any(opts, "typed_extension_protocol_options")
        if hpo.HasField("explicit_http_config") and \
                hpo.explicit_http_config.HasField("http2_protocol_options"):
            h2 = hpo.explicit_http_config.http2_protocol_options
    elif proto.HasField("http2_protocol_options"):
        h2 = proto.http2_protocol_options
    if h2 is None or not h2.HasField("connection_keepalive"):
        return None, None
    ka = h2.connection_keepalive
    return duration(ka, "interval", 0.0) or None, duration(ka, "timeout", 0.0) or None


def _grpc_server(api, path: str, clusters: dict, *, aggregated: bool) -> GrpcServer:
    api_type = _API_TYPES.get(api.api_type, str(api.api_type))
    if aggregated and api_type not in ("GRPC", "DELTA_GRPC"):
        raise ConfigError(join(path, "api_type"),
                          "envoy.config.core.v3.ApiConfigSource type must be of "
                          "non-aggregated gRPC")
    if api_type not in ("GRPC", "DELTA_GRPC"):
        raise ConfigError(join(path, "api_type"), f"api_type {api_type} is not supported "
                                                  f"by meshproxy (use GRPC or DELTA_GRPC)")
    if not api.grpc_services:
        raise ConfigError(path, "API configs must have either a gRPC service or a cluster "
                                "name defined")
    if len(api.grpc_services) > 1:
        raise ConfigError(join(path, "grpc_services"),
                          "envoy.config.core.v3.ApiConfigSource::(AGGREGATED_)(DELTA_)GRPC "
                          "must have no more than 1 gRPC services specified")
    gs = api.grpc_services[0]
    gpath = f"{join(path, 'grpc_services')}[0]"
    if gs.WhichOneof("target_specifier") != "envoy_grpc":
        raise ConfigError(join(gpath, "google_grpc"), "google_grpc is not supported by "
                                                      "meshproxy; use envoy_grpc")
    name = gs.envoy_grpc.cluster_name
    cluster = clusters.get(name)
    if cluster is None or cluster.type == "EDS":
        if aggregated:
            raise ConfigError(join(gpath, "envoy_grpc.cluster_name"),
                              f"Unknown gRPC client cluster '{name}'")
        raise ConfigError(join(gpath, "envoy_grpc.cluster_name"),
                          f"envoy.config.core.v3.ApiConfigSource must have a statically "
                          f"defined non-EDS cluster: '{name}' does not exist, was added via "
                          f"api, or is an EDS cluster")
    interval, timeout = _keepalive(cluster)
    return GrpcServer(api_type=api_type, cluster_name=name, target=_target(cluster, gpath),
                      set_node_on_first_message_only=api.set_node_on_first_message_only,
                      keepalive_interval=interval, keepalive_timeout=timeout)


def _source(cs, path: str, clusters: dict, ads: GrpcServer | None) -> Source:
    timeout = duration(cs, "initial_fetch_timeout", DEFAULT_INITIAL_FETCH_TIMEOUT)
    which = cs.WhichOneof("config_source_specifier")
    if which == "ads":
        # Without ads_config Envoy starts anyway and skips this source with a warning
        # ("ADS must be configured to support an ADS config source"); server stays None.
        return Source("ads", timeout, server=ads)
    if which == "api_config_source":
        server = _grpc_server(cs.api_config_source, join(path, "api_config_source"), clusters,
                              aggregated=False)
        return Source("grpc", timeout, server=server)
    if which == "path_config_source":
        p = cs.path_config_source.path
        if not os.path.exists(p):
            raise ConfigError(join(path, "path_config_source.path"),
                              f"paths must refer to an existing path in the system: '{p}' "
                              f"does not exist")
        return Source("path", timeout, path=p)
    if which == "path":   # deprecated spelling of path_config_source
        if not os.path.exists(cs.path):
            raise ConfigError(join(path, "path"), f"paths must refer to an existing path in the "
                                                  f"system: '{cs.path}' does not exist")
        return Source("path", timeout, path=cs.path)
    raise ConfigError(path, f"config source {which or '(none)'} is not supported by meshproxy")


def build_dynamic_config(bootstrap, clusters) -> DynamicConfig | None:
    """``clusters``: the translated static clusters (ClusterConfig), which xDS servers must be
    among. None when the bootstrap has no dynamic_resources."""
    if not bootstrap.HasField("dynamic_resources"):
        return None
    dr = bootstrap.dynamic_resources
    path = "dynamic_resources"
    by_name = {c.name: c for c in clusters}
    ads = None
    if dr.HasField("ads_config"):
        ads = _grpc_server(dr.ads_config, join(path, "ads_config"), by_name, aggregated=True)
        node = bootstrap.node
        if not node.id or not node.cluster:
            # The state-of-the-world mux checks the node when it is made; the delta mux does
            # not, and the CDS subscription made through it at start-up does (Envoy 1.40
            # accepts a delta bootstrap without a node when only LDS uses ADS).
            who = "ads"
            if ads.api_type == "DELTA_GRPC":
                cds_ads = dr.HasField("cds_config") and dr.cds_config.HasField("ads")
                who = "type.googleapis.com/envoy.config.cluster.v3.Cluster" if cds_ads else None
            if who:
                raise ConfigError("node", f"{who}: node 'id' and 'cluster' are required. Set "
                                          f"it either in 'node' config or via --service-node "
                                          f"and --service-cluster options.")
    cds = _source(dr.cds_config, join(path, "cds_config"), by_name, ads) \
        if dr.HasField("cds_config") else None
    lds = _source(dr.lds_config, join(path, "lds_config"), by_name, ads) \
        if dr.HasField("lds_config") else None
    warnings = tuple(f"{join(path, name)}: skipped: ADS must be configured to support an ADS "
                     f"config source" for name, src in (("cds_config", cds), ("lds_config", lds))
                     if src is not None and src.kind == "ads" and src.server is None)
    return DynamicConfig(ads=ads, cds=cds, lds=lds, warnings=warnings)
