"""Translate ``envoy.config.cluster.v3.Cluster`` into an immutable ``ClusterConfig``."""

from __future__ import annotations

import dataclasses
import ipaddress

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import duration, unpack_any, wrapped, UnknownExtension
from meshproxy.upstream.lb_config import HashLbConfig, build_lb_settings
from meshproxy.upstream.outlier_config import build_detector_config
from meshproxy.upstream.transport_socket import build_socket_select

CLUSTER_TYPES = {0: "STATIC", 1: "STRICT_DNS", 2: "LOGICAL_DNS", 3: "EDS", 4: "ORIGINAL_DST"}
DNS_FAMILIES = {0: "AUTO", 1: "V4_ONLY", 2: "V6_ONLY", 3: "V4_PREFERRED", 4: "ALL"}
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Circuit breaker thresholds for one priority (Envoy defaults: 1024/1024/1024/3)."""
    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    track_remaining: bool = False
    # retry_budget: (budget_percent, min_retry_concurrency); replaces max_retries when set
    retry_budget: tuple | None = None


@dataclasses.dataclass(frozen=True)
class EndpointConfig:
    address: object          # (ip, port) or pipe path
    unix: bool
    hostname: str
    weight: int
    health_status: int
    priority: int
    locality: tuple          # (region, zone, sub_zone)
    locality_weight: int
    metadata: object


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    name: str
    stat_name: str
    type: str
    connect_timeout: float
    lb_policy: str
    endpoints: tuple
    thresholds: Thresholds
    high_thresholds: Thresholds
    buffer_limit: int
    max_requests_per_connection: int
    idle_timeout: float | None
    max_connection_duration: float | None
    max_headers_count: int
    max_response_headers_bytes: int
    http2: bool
    use_downstream_protocol: bool
    dns_refresh_rate: float
    dns_failure_refresh_rate: float | None
    respect_dns_ttl: bool
    dns_family: str
    source_address: tuple | None
    panic_threshold: float
    lr_choice_count: int
    lr_active_request_bias: float
    proto: object = dataclasses.field(compare=False, repr=False)
    hash_lb: HashLbConfig | None = None      # RING_HASH / MAGLEV
    update_merge_window_ms: int = 1000       # common_lb_config.update_merge_window
    outlier: object = None                   # outlier_config.DetectorConfig
    # ORIGINAL_DST (original_dst_lb_config, cleanup_interval)
    odst_use_http_header: bool = False
    odst_http_header: bytes = b"x-envoy-original-dst-host"
    odst_port_override: int = 0
    cleanup_interval: float = 5.0
    # upstream_bind_config.extra_source_addresses: ((ip, port), ...) of the other IP family
    extra_source_addresses: tuple = ()
    # TLS transport sockets (not built yet): which hosts fail closed (transport_socket.py)
    socket_select: object = None


def _thresholds(cb, path) -> tuple[Thresholds, Thresholds]:
    default, high = Thresholds(), Thresholds()
    for i, t in enumerate(cb.thresholds):
        th = Thresholds(
            max_connections=wrapped(t, "max_connections", 1024),
            max_pending_requests=wrapped(t, "max_pending_requests", 1024),
            max_requests=wrapped(t, "max_requests", 1024),
            max_retries=wrapped(t, "max_retries", 3),
            track_remaining=t.track_remaining,
            retry_budget=(wrapped(t.retry_budget, "budget_percent", 20.0),
                          wrapped(t.retry_budget, "min_retry_concurrency", 3))
            if t.HasField("retry_budget") else None,
        )
        if t.priority == 1:
            high = th
        else:
            default = th
    return default, high


def socket_address(addr, path: str, *, allow_pipe: bool = True):
    """``envoy.config.core.v3.Address`` -> ((ip, port), is_unix)."""
    which = addr.WhichOneof("address")
    if which == "socket_address":
        sa = addr.socket_address
        if sa.protocol != 0:
            raise ConfigError(join(path, "socket_address.protocol"), "only TCP is supported")
        if sa.WhichOneof("port_specifier") == "named_port":
            raise ConfigError(join(path, "socket_address.named_port"), "named ports are not supported")
        return (sa.address, sa.port_value), False
    if which == "pipe" and allow_pipe:
        return addr.pipe.path, True
    if which is None:
        raise ConfigError(path, "address is required")
    raise ConfigError(join(path, which), f"{which} addresses are not supported")


def _is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


def _endpoints(cla, path, ctype) -> tuple:
    eps = []
    for i, lle in enumerate(cla.endpoints):
        lpath = f"{join(path, 'endpoints')}[{i}]"
        loc = (lle.locality.region, lle.locality.zone, lle.locality.sub_zone)
        lw = wrapped(lle, "load_balancing_weight", 0)   # unset: 0, as Envoy dumps it
        for j, lbe in enumerate(lle.lb_endpoints):
            epath = f"{join(lpath, 'lb_endpoints')}[{j}]"
            if lbe.WhichOneof("host_identifier") != "endpoint":
                raise ConfigError(epath, "endpoint is required")
            ep = lbe.endpoint
            address, unix = socket_address(ep.address, join(epath, "endpoint.address"))
            if ctype == "STATIC" and not unix and not _is_ip(address[0]):
                raise ConfigError(join(epath, "endpoint.address.socket_address.address"),
                                  f"malformed IP address: {address[0]}. Consider setting "
                                  f"resolver_name or setting cluster type to 'STRICT_DNS' or "
                                  f"'LOGICAL_DNS'")
            weight = wrapped(lbe, "load_balancing_weight", 1)
            if weight < 1:
                raise ConfigError(join(epath, "load_balancing_weight"), "value must be greater "
                                                                        "than or equal to 1")
            eps.append(EndpointConfig(address, unix, ep.hostname, weight, lbe.health_status,
                                      lle.priority, loc, lw,
                                      lbe.metadata if lbe.HasField("metadata") else None))
    return tuple(eps)


def _bind_config(bc, name: str, path: str):
    """(source, extra sources) of ``upstream_bind_config``, checked as Envoy 1.40 checks them
    (``parseBindConfig``): extra addresses need a source address, at most one, of the other IP
    family (current Istio's dual-stack InboundPassthroughCluster: 127.0.0.6 and ::6)."""
    source = None
    if bc.HasField("source_address"):
        source = (bc.source_address.address, bc.source_address.port_value)
    extra = tuple((e.address.address, e.address.port_value) for e in bc.extra_source_addresses)
    if extra:
        where = f"Cluster {name}'s upstream binding config"
        if source is None:
            raise ConfigError(join(path, "extra_source_addresses"),
                              f"{where} has extra/additional source addresses but no "
                              f"source_address. Extra/additional addresses cannot be specified "
                              f"if source_address is not set.")
        if len(extra) > 1:
            raise ConfigError(join(path, "extra_source_addresses"),
                              f"{where} has more than one extra/additional source addresses. "
                              f"Only one extra/additional source can be supported in "
                              f"BindConfig's extra_source_addresses/additional_source_addresses "
                              f"field")
        if (":" in extra[0][0]) == (":" in source[0]):
            raise ConfigError(join(path, "extra_source_addresses"),
                              f"{where} has two same IP version source addresses. Only two "
                              f"different IP version source addresses can be supported in "
                              f"BindConfig's source_address and extra_source_addresses/"
                              f"additional_source_addresses fields")
    return source, extra


def source_ip_for(cfg, upstream_ip: str) -> str | None:
    """The local IP to bind an upstream connection to: ``source_address``, or the extra source
    address of the upstream's family when they differ (Envoy's ``resolveSourceAddress``)."""
    src = cfg.source_address
    if src is None:
        return None
    v6 = ":" in upstream_ip
    if (":" in src[0]) != v6:
        for ip, _ in cfg.extra_source_addresses:
            if (":" in ip) == v6:
                return ip
    return src[0]


def build_cluster_config(c, path: str) -> ClusterConfig:
    if not c.name:
        raise ConfigError(join(path, "name"), "value length must be at least 1 characters")
    if c.WhichOneof("cluster_discovery_type") == "cluster_type":
        raise ConfigError(join(path, "cluster_type"),
                          f"custom cluster type '{c.cluster_type.name}' is not supported")
    ctype = CLUSTER_TYPES.get(c.type)
    if ctype is None:
        raise ConfigError(join(path, "type"), f"unknown cluster type {c.type}")
    lbs = build_lb_settings(c, ctype, path)
    endpoints = ()
    if c.HasField("load_assignment"):
        endpoints = _endpoints(c.load_assignment, join(path, "load_assignment"), ctype)
    if ctype == "LOGICAL_DNS" and len(endpoints) != 1:
        raise ConfigError(join(path, "load_assignment"),
                          "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a "
                          "single lb_endpoint")
    if ctype in ("STRICT_DNS", "LOGICAL_DNS"):
        for e in endpoints:
            if e.unix:
                raise ConfigError(join(path, "load_assignment"),
                                  "DNS clusters cannot have pipe endpoints")
    default_th, high_th = _thresholds(c.circuit_breakers, join(path, "circuit_breakers"))

    # HTTP protocol options: the typed extension (what Istio sends) or the deprecated fields.
    cho = c.common_http_protocol_options
    http2 = c.HasField("http2_protocol_options")
    use_downstream = False
    opts_any = c.typed_extension_protocol_options.get(HTTP_OPTIONS_KEY)
    if opts_any is not None:
        opts = unpack_any(opts_any, join(path, f"typed_extension_protocol_options[{HTTP_OPTIONS_KEY}]"))
        if not isinstance(opts, UnknownExtension):
            if opts.HasField("common_http_protocol_options"):
                cho = opts.common_http_protocol_options
            which = opts.WhichOneof("upstream_protocol_options")
            if which == "explicit_http_config":
                http2 = opts.explicit_http_config.HasField("http2_protocol_options")
            elif which == "use_downstream_protocol_config":
                use_downstream = True
            elif which == "auto_config":
                http2 = False
    max_rpc = wrapped(cho, "max_requests_per_connection", 0) or \
        wrapped(c, "max_requests_per_connection", 0)

    source = None
    extra_sources = ()
    if c.HasField("upstream_bind_config"):
        source, extra_sources = _bind_config(c.upstream_bind_config, c.name,
                                             join(path, "upstream_bind_config"))
    clb = c.common_lb_config
    panic = clb.healthy_panic_threshold.value if clb.HasField("healthy_panic_threshold") else 50.0
    if not 0.0 <= panic <= 100.0:
        raise ConfigError(join(path, "common_lb_config.healthy_panic_threshold.value"),
                          "value must be inside range [0, 100]")
    connect_timeout = duration(c, "connect_timeout", 5.0)
    if connect_timeout <= 0:
        raise ConfigError(join(path, "connect_timeout"), "value must be greater than 0s")
    return ClusterConfig(
        name=c.name,
        stat_name=c.alt_stat_name or c.name,
        type=ctype,
        connect_timeout=connect_timeout,
        lb_policy=lbs.policy,
        endpoints=endpoints,
        thresholds=default_th,
        high_thresholds=high_th,
        buffer_limit=wrapped(c, "per_connection_buffer_limit_bytes", 1024 * 1024),
        max_requests_per_connection=max_rpc,
        idle_timeout=duration(cho, "idle_timeout", 3600.0),
        max_connection_duration=duration(cho, "max_connection_duration", 0.0) or None,
        # Envoy 1.40 refuses a response with more than 100 headers or a head (status line,
        # headers, CRLFs) over 80 KiB: 502 "protocol error" (measured against the binary).
        max_headers_count=wrapped(cho, "max_headers_count", 100),
        max_response_headers_bytes=wrapped(cho, "max_response_headers_kb", 80) * 1024,
        http2=http2,
        use_downstream_protocol=use_downstream,
        dns_refresh_rate=duration(c, "dns_refresh_rate", 5.0),
        dns_failure_refresh_rate=duration(c.dns_failure_refresh_rate, "base_interval", None)
        if c.HasField("dns_failure_refresh_rate") else None,
        respect_dns_ttl=c.respect_dns_ttl,
        dns_family=DNS_FAMILIES.get(c.dns_lookup_family, "AUTO"),
        source_address=source,
        extra_source_addresses=extra_sources,
        panic_threshold=panic,
        lr_choice_count=lbs.lr_choice_count,
        lr_active_request_bias=lbs.lr_active_request_bias,
        proto=c,
        hash_lb=lbs.hash_lb,
        update_merge_window_ms=_merge_window(clb, join(path, "common_lb_config")),
        outlier=build_detector_config(c.outlier_detection, join(path, "outlier_detection"))
        if c.HasField("outlier_detection") else None,
        socket_select=build_socket_select(c, c.name, path),
        **_original_dst(c, ctype, path),
    )


def _merge_window(clb, path: str) -> int:
    if not clb.HasField("update_merge_window"):
        return 1000
    d = clb.update_merge_window
    if d.seconds < 0 or d.nanos < 0:
        raise ConfigError(join(path, "update_merge_window"),
                          "Invalid duration: Expected positive duration")
    return d.seconds * 1000 + d.nanos // 1000000


def _original_dst(c, ctype, path) -> dict:
    """ORIGINAL_DST settings (cluster.proto OriginalDstLbConfig; cleanup_interval 5 s)."""
    if ctype != "ORIGINAL_DST":
        if c.HasField("original_dst_lb_config"):
            raise ConfigError(join(path, "original_dst_lb_config"),
                              "original_dst_lb_config is only valid with type ORIGINAL_DST")
        return {}
    if c.HasField("load_assignment") and len(c.load_assignment.endpoints):
        raise ConfigError(join(path, "load_assignment"),
                          "ORIGINAL_DST clusters must have no load assignment configured")
    o = c.original_dst_lb_config
    port = wrapped(o, "upstream_port_override", 0)
    if port > 65535:
        raise ConfigError(join(path, "original_dst_lb_config.upstream_port_override"),
                          "value must be less than or equal to 65535")
    return dict(
        odst_use_http_header=o.use_http_header,
        odst_http_header=(o.http_header_name or "x-envoy-original-dst-host").lower().encode(),
        odst_port_override=port,
        cleanup_interval=duration(c, "cleanup_interval", 5.0) or 5.0,
    )
