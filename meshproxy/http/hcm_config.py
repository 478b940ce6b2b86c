"""Translate ``envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager``
into an immutable ``HcmConfig`` and its stats."""

from __future__ import annotations

import logging
import os

from meshproxy.config import extensions
from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import UnknownExtension, duration, unpack_any, wrapped
from meshproxy.http.codec import CodecLimits
from meshproxy.http.h2_options import build_h2_options
from meshproxy.http.sanitize import build_internal_ranges
from meshproxy.stats import stat_block

log = logging.getLogger("meshproxy.config")
_WARNED: set = set()

ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"

# Envoy's HCM stats (docs: configuration/http/http_conn_man/stats).
HcmStats = stat_block(
    "HcmStats",
    counters=(
        "downstream_cx_total", "downstream_cx_ssl_total", "downstream_cx_http1_total",
        "downstream_cx_upgrades_total", "downstream_cx_http2_total", "downstream_cx_http3_total",
        "downstream_cx_destroy", "downstream_cx_destroy_remote", "downstream_cx_destroy_local",
        "downstream_cx_destroy_active_rq", "downstream_cx_destroy_local_active_rq",
        "downstream_cx_destroy_remote_active_rq", "downstream_cx_rx_bytes_total",
        "downstream_cx_tx_bytes_total", "downstream_cx_drain_close", "downstream_cx_idle_timeout",
        "downstream_cx_max_duration_reached", "downstream_cx_max_requests_reached",
        "downstream_cx_overload_disable_keepalive", "downstream_cx_protocol_error",
        "downstream_cx_delayed_close_timeout", "downstream_flow_control_paused_reading_total",
        "downstream_flow_control_resumed_reading_total", "downstream_rq_total",
        "downstream_rq_http1_total", "downstream_rq_http2_total", "downstream_rq_http3_total",
        "downstream_rq_response_before_rq_complete", "downstream_rq_rx_reset",
        "downstream_rq_too_many_premature_resets",
        "downstream_rq_tx_reset", "downstream_rq_non_relative_path", "downstream_rq_too_large",
        "downstream_rq_completed", "downstream_rq_1xx", "downstream_rq_2xx", "downstream_rq_3xx",
        "downstream_rq_4xx", "downstream_rq_5xx", "downstream_rq_timeout",
        "downstream_rq_header_timeout", "downstream_rq_idle_timeout",
        "downstream_rq_max_duration_reached", "downstream_rq_ws_on_non_ws_route",
        "downstream_rq_redirected_with_normalized_path", "downstream_rq_failed_path_normalization",
        "downstream_rq_overload_close", "rs_too_large",
        # router filter stats share the http.<prefix>. scope in Envoy
        "no_route", "no_cluster", "rq_direct_response", "rq_redirect", "rq_total",
        "rq_reset_after_downstream_response_started", "rq_retry_skipped_request_not_complete",
        "passthrough_internal_redirect_bad_location",
    ),
    gauges=("downstream_cx_active", "downstream_cx_ssl_active", "downstream_cx_http1_active",
            "downstream_cx_upgrades_active", "downstream_cx_http2_active",
            "downstream_cx_http3_active", "downstream_cx_rx_bytes_buffered",
            "downstream_cx_tx_bytes_buffered", "downstream_rq_active"),
)

_CODEC_TYPES = {0: "AUTO", 1: "HTTP1", 2: "HTTP2", 3: "HTTP3"}
_SERVER_TRANSFORM = {0: "OVERWRITE", 1: "APPEND_IF_ABSENT", 2: "PASS_THROUGH"}
_UNDERSCORES = {0: "ALLOW", 1: "REJECT_REQUEST", 2: "DROP_HEADER"}
_FCC = {0: "SANITIZE", 1: "FORWARD_ONLY", 2: "APPEND_FORWARD", 3: "SANITIZE_SET",
        4: "ALWAYS_FORWARD_ONLY"}


class HttpFilterFactory:
    """A configured HTTP filter; ``create(stream)`` makes its per-stream instance."""

    __slots__ = ("name", "config", "create")

    def __init__(self, name, config, create):
        self.name = name
        self.config = config
        self.create = create


class HcmConfig:
    __slots__ = ("stat_prefix", "codec_type", "codec_backend", "limits", "route_table",
                 "rds_name", "server_name", "server_transform", "generate_request_id",
                 "preserve_external_request_id", "always_set_request_id_in_response",
                 "use_remote_address", "skip_xff_append", "xff_num_trusted_hops", "via",
                 "idle_timeout", "stream_idle_timeout", "request_timeout",
                 "request_headers_timeout", "max_stream_duration", "drain_timeout",
                 "max_connection_duration", "max_requests_per_connection", "filters",
                 "suppress_envoy_headers", "proxy_100_continue", "upgrade_types",
                 "reject_fragment", "normalize_path", "merge_slashes", "stats", "terminal",
                 "internal_address_config", "delayed_close_timeout", "local_address",
                 "forward_client_cert", "proto", "rds_provider", "http2", "__weakref__")

    def __init__(self, **kw):
        for name in self.__slots__:
            if name != "__weakref__":
                setattr(self, name, kw.get(name))


def codec_backend() -> str:
    """HTTP/1 parser backend: ``httptools`` (default) or ``h11``
    (``MESHPROXY_HTTP1_CODEC=h11``)."""
    v = os.environ.get("MESHPROXY_HTTP1_CODEC", "httptools").lower()
    if v not in ("httptools", "h11"):
        raise ConfigError("MESHPROXY_HTTP1_CODEC", f"unknown HTTP/1 codec '{v}' "
                                                   f"(httptools or h11)")
    return v


def build_hcm_config(h, path: str, *, cluster_names=None, rds=None) -> HcmConfig:
    """``rds``: the server's ``router.rds.RdsRegistry`` when xDS serves route configurations;
    without it an HCM that names one (``rds``) is refused."""
    from meshproxy.router.route_config import build_route_table

    if not h.stat_prefix:
        raise ConfigError(join(path, "stat_prefix"), "value length must be at least 1 characters")
    which = h.WhichOneof("route_specifier")
    table = None
    rds_name = None
    if which == "route_config":
        table = build_route_table(h.route_config, join(path, "route_config"),
                                  cluster_names=cluster_names, validate_clusters=True)
    elif which == "rds":
        rds_name = h.rds.route_config_name
        if not h.rds.HasField("config_source"):
            raise ConfigError(join(join(path, "rds"), "config_source"), "value is required")
        if rds is None:
            raise ConfigError(join(path, "rds"), "RDS needs an xDS config source "
                                                 "(dynamic_resources); use an inline "
                                                 "route_config")
    elif which is None:
        raise ConfigError(path, "one of route_config, rds or scoped_routes is required")
    else:
        raise ConfigError(join(path, which), f"{which} is not supported by meshproxy")

    if h.HasField("tracing") and "tracing" not in _WARNED:
        # Tracing (spans, sampling) lands with issue 6; say so once rather than per listener
        # (Istio sets it on every HCM), and serve the traffic meanwhile.
        _WARNED.add("tracing")
        log.warning("%s: tracing is not implemented yet; requests are proxied without "
                    "spans (x-request-id and B3 headers still pass through)",
                    join(path, "tracing"))
    codec_type = _CODEC_TYPES.get(h.codec_type, "AUTO")
    if codec_type == "HTTP3":
        raise ConfigError(join(path, "codec_type"), f"{codec_type} is not supported by "
                                                    f"meshproxy yet")
    hpo = h.http_protocol_options
    cho = h.common_http_protocol_options
    max_kb = wrapped(h, "max_request_headers_kb", 60)
    if not 0 < max_kb <= 8192:
        raise ConfigError(join(path, "max_request_headers_kb"), "value must be inside range (0, 8192]")
    limits = CodecLimits(
        max_request_headers_kb=max_kb,
        max_headers_count=wrapped(cho, "max_headers_count", 100),
        accept_http_10=hpo.accept_http_10,
        default_host_for_http_10=hpo.default_host_for_http_10.encode(),
        allow_absolute_url=wrapped(hpo, "allow_absolute_url", True),
        headers_with_underscores=_UNDERSCORES.get(cho.headers_with_underscores_action, "ALLOW"),
        enable_trailers=hpo.enable_trailers,
    )
    filters, suppress, terminal = _http_filters(h, path)
    upgrade_types = {u.upgrade_type.lower(): wrapped(u, "enabled", True) for u in h.upgrade_configs}
    cfg = HcmConfig(
        stat_prefix=h.stat_prefix,
        codec_type=codec_type,
        codec_backend=codec_backend(),
        limits=limits,
        route_table=table,
        rds_name=rds_name,
        server_name=(h.server_name or "envoy").encode(),
        server_transform=_SERVER_TRANSFORM.get(h.server_header_transformation, "OVERWRITE"),
        generate_request_id=wrapped(h, "generate_request_id", True),
        preserve_external_request_id=h.preserve_external_request_id,
        always_set_request_id_in_response=h.always_set_request_id_in_response,
        use_remote_address=wrapped(h, "use_remote_address", False),
        skip_xff_append=h.skip_xff_append,
        xff_num_trusted_hops=h.xff_num_trusted_hops,
        via=h.via.encode() if h.via else None,
        idle_timeout=duration(cho, "idle_timeout", 3600.0) or None,
        stream_idle_timeout=duration(h, "stream_idle_timeout", 300.0) or None,
        request_timeout=duration(h, "request_timeout", 0.0) or None,
        request_headers_timeout=duration(h, "request_headers_timeout", 0.0) or None,
        delayed_close_timeout=duration(h, "delayed_close_timeout", 1.0),
        forward_client_cert=_FCC.get(h.forward_client_cert_details, "SANITIZE"),
        local_address=local_address(),
        max_stream_duration=duration(cho, "max_stream_duration", 0.0) or None,
        drain_timeout=duration(h, "drain_timeout", 5.0),
        max_connection_duration=duration(cho, "max_connection_duration", 0.0) or None,
        max_requests_per_connection=wrapped(cho, "max_requests_per_connection", 0),
        filters=filters,
        suppress_envoy_headers=suppress,
        proxy_100_continue=h.proxy_100_continue,
        upgrade_types=upgrade_types,
        reject_fragment=True,
        normalize_path=wrapped(h, "normalize_path", False),
        merge_slashes=h.merge_slashes,
        stats=None,
        http2=build_h2_options(h.http2_protocol_options, join(path, "http2_protocol_options")),
        terminal=terminal,
        internal_address_config=build_internal_ranges(h.internal_address_config)
        if h.HasField("internal_address_config") else (),
        proto=h,
    )
    if rds_name is not None:
        rds.provider(rds_name).attach(cfg)
    return cfg


def _http_filters(h, path):
    """Configured HTTP filters before the router, and the router's options."""
    filters = []
    suppress = False
    terminal = None
    n = len(h.http_filters)
    for i, f in enumerate(h.http_filters):
        fpath = f"{join(path, 'http_filters')}[{i}]"
        typed = None
        if f.HasField("typed_config"):
            typed = unpack_any(f.typed_config, join(fpath, "typed_config"))
        tname = typed.DESCRIPTOR.full_name if typed is not None and \
            not isinstance(typed, UnknownExtension) else None
        if tname == ROUTER_TYPE or (typed is None and f.name == "envoy.filters.http.router"):
            if i != n - 1:
                raise ConfigError(fpath, "The router filter must be the last filter in the "
                                         "http filter chain")
            terminal = "router"
            if typed is not None:
                suppress = typed.suppress_envoy_headers
            continue
        if f.disabled:
            continue
        factory = _known_http_filter(f.name, typed, fpath)
        if factory is not None:
            filters.append(factory)
            continue
        extensions.unimplemented("HTTP filter", f.name, typed, f.is_optional, fpath)
    if terminal is None:
        if n:
            raise ConfigError(join(path, "http_filters"), "the last HTTP filter must be "
                                                          "envoy.filters.http.router")
        terminal = "router"  # Envoy: an empty filter list means just the router
    return tuple(filters), suppress, terminal


def _known_http_filter(name, typed, path):
    """HTTP filters meshproxy implements (besides the router), found by their config's type as
    Envoy finds factories. None: not implemented."""
    if typed is not None and not isinstance(typed, UnknownExtension):
        from meshproxy.http.fault import FAULT_TYPE, build_fault_filter
        if typed.DESCRIPTOR.full_name == FAULT_TYPE:
            return build_fault_filter(name, typed, join(path, "typed_config"))
    return None


def default_hcm_config(stat_prefix: str, route_table) -> HcmConfig:
    """An HCM config built in code (the admin listener), with Envoy's defaults."""
    return HcmConfig(
        stat_prefix=stat_prefix, codec_type="HTTP1", codec_backend="httptools",
        limits=CodecLimits(), route_table=route_table, server_name=b"envoy",
        server_transform="OVERWRITE", generate_request_id=False, idle_timeout=3600.0,
        stream_idle_timeout=300.0, drain_timeout=5.0, filters=(), upgrade_types={},
        reject_fragment=True, terminal="admin", max_requests_per_connection=0,
        internal_address_config=(), delayed_close_timeout=1.0, local_address=None,
        forward_client_cert="SANITIZE")


_LOCAL_ADDRESS: list = []


def local_address() -> str | None:
    """The address Envoy's LocalInfo reports (``Network::Utility::getLocalAddress``): the
    first non-loopback IPv4 address of an interface. The HCM appends it to X-Forwarded-For
    in place of a loopback peer's address."""
    if not _LOCAL_ADDRESS:
        _LOCAL_ADDRESS.append(_first_interface_address())
    return _LOCAL_ADDRESS[0]


def _first_interface_address() -> str | None:
    import fcntl
    import socket
    import struct
    try:
        names = [n for _, n in socket.if_nameindex()]
    except OSError:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                res = fcntl.ioctl(s.fileno(), 0x8915,  # SIOCGIFADDR
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            ip = socket.inet_ntoa(res[20:24])
            if not ip.startswith("127."):
                return ip
    return None
