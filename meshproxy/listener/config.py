"""Translate ``envoy.config.listener.v3.Listener`` into ``ListenerConfig`` and its filter chains.

Filter chains are selected by ``listener.chain_match`` (Envoy's precedence) after the listener
filters (``listener.listener_filters``) have looked at the connection; a listener with
``use_original_dst`` hands connections to the listener of their original destination.
Network filters: ``http_connection_manager`` and ``tcp_proxy`` are terminal; telemetry filters
Istio adds in front of them are skipped (``config.extensions``).
"""

from __future__ import annotations

import logging

from meshproxy.config import extensions
from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import UnknownExtension, duration, unpack_any, wrapped
from meshproxy.listener.addresses import ListenAddress, address_text, build_listen_addresses
from meshproxy.listener.chain_match import FilterChainMatcher
from meshproxy.listener.listener_filters import build_listener_filters
from meshproxy.stats import stat_block
from meshproxy.upstream.transport_socket import check_typed

log = logging.getLogger("meshproxy.listener")

HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY_TYPE = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
RAW_BUFFER = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"

ListenerStats = stat_block(
    "ListenerStats",
    counters=("downstream_cx_total", "downstream_cx_destroy", "downstream_cx_overflow",
              "downstream_cx_overload_reject", "downstream_global_cx_overflow",
              "downstream_pre_cx_timeout", "downstream_listener_filter_remote_close",
              "downstream_listener_filter_error", "no_filter_chain_match",
              "downstream_cx_transport_socket_connect_timeout",
              "extension_config_missing", "network_extension_config_missing",
              # per-thread copies: data-plane listeners run on worker_0, admin on main_thread
              "worker_0.downstream_cx_total", "main_thread.downstream_cx_total"),
    gauges=("downstream_cx_active", "downstream_pre_cx_active",
            "worker_0.downstream_cx_active", "main_thread.downstream_cx_active"),
)
WORKER_ONLY = ("main_thread.downstream_cx_total", "main_thread.downstream_cx_active")
MAIN_THREAD_ONLY = ("worker_0.downstream_cx_total", "worker_0.downstream_cx_active")


# Envoy keeps a per-listener copy of a few HCM stats: listener.<addr>.http.<prefix>.*
ListenerHttpStats = stat_block(
    "ListenerHttpStats",
    counters=("downstream_rq_1xx", "downstream_rq_2xx", "downstream_rq_3xx",
              "downstream_rq_4xx", "downstream_rq_5xx", "downstream_rq_completed"),
)


class FilterChain:
    __slots__ = ("name", "kind", "config", "ctx", "listener_http_stats", "tls_unsupported")

    def __init__(self, name, kind, config, tls_unsupported: str = ""):
        self.name = name
        self.kind = kind      # "http" or "tcp"
        self.config = config  # HcmConfig or TcpProxyConfig
        self.ctx = None       # server context, set when the listener is started
        self.listener_http_stats = None  # set by the listener manager for HTTP chains
        # the chain's TLS transport socket type: meshproxy has no TLS yet, so a connection
        # this chain is selected for is closed (fail closed, never served in plain text)
        self.tls_unsupported = tls_unsupported

    def create_filter(self, conn):
        f = _FILTERS.get(self.kind)
        if f is None:
            f = _filter_class(self.kind)
        return f(self.config, conn, self.ctx)


_FILTERS: dict = {}


def _filter_class(kind: str):
    """The network filter class for a chain kind, imported on first use (the HTTP stack is
    not loaded for a TCP-only config) and then kept: an import statement per accepted
    connection costs about a microsecond."""
    if kind == "http":
        from meshproxy.http.conn_manager import HttpConnectionManager as cls
    else:
        from meshproxy.network.tcp_proxy import TcpProxy as cls
    _FILTERS[kind] = cls
    return cls


class ListenerConfig:
    """``address``/``unix``/``ipv4_compat`` describe the main address; ``addresses`` holds it
    first and then the ``additional_addresses`` (``listener.addresses.ListenAddress``)."""

    __slots__ = ("name", "address", "unix", "addresses", "stat_name", "chains", "default_chain",
                 "buffer_limit", "bind_to_port", "reuse_port", "backlog", "traffic_direction",
                 "transparent", "freebind", "ipv4_compat", "matcher", "listener_filters",
                 "use_original_dst", "filters_timeout", "continue_on_timeout", "proto")

    def __init__(self, **kw):
        for n in self.__slots__:
            setattr(self, n, kw.get(n))
        if self.listener_filters is None:
            self.listener_filters = ()
        if self.addresses is None:
            self.addresses = (ListenAddress(self.address, bool(self.unix),
                                            bool(self.ipv4_compat)),)

    def select_filter_chain(self, info):
        """The filter chain for a connection (``info``: chain_match.ConnInfo, or None when the
        listener has no match criteria), else the default chain, else None."""
        m = self.matcher
        if m is None:
            return self.chains[0] if self.chains else self.default_chain
        chain = m.select(info)
        return chain if chain is not None else self.default_chain

    def all_chains(self):
        out = list(self.chains)
        if self.default_chain is not None:
            out.append(self.default_chain)
        return out


def listener_stat_name(address, unix: bool, stat_prefix: str) -> str:
    """Envoy names listener stats by ``stat_prefix`` or by address with ':' -> '_'
    (``listener.0.0.0.0_15001.``, ``listener.[__1]_80.``)."""
    if stat_prefix:
        return stat_prefix
    return address_text(address, unix).replace(":", "_")


def _empty_match(fcm) -> bool:
    return fcm.ByteSize() == 0


def build_filter_chain(fc, path: str, cluster_names, rds=None) -> FilterChain:
    """``rds``: the server's RDS registry when xDS serves route configurations."""
    tls = ""
    if fc.HasField("transport_socket"):
        ts = fc.transport_socket
        check_typed(ts, join(path, "transport_socket"))
        url = ts.typed_config.type_url.rsplit("/", 1)[-1] if ts.HasField("typed_config") else ""
        if url and url != RAW_BUFFER:
            # Accepted as Envoy accepts it (Istio's mTLS chains sit beside plain-text ones in
            # every inbound listener; a NACK would drop the whole listener), and fails closed.
            log.warning("%s: transport socket %s is not supported by meshproxy yet; "
                        "connections selecting this filter chain are closed",
                        join(path, "transport_socket"), url)
            tls = url
    if not fc.filters:
        raise ConfigError(join(path, "filters"), "a filter chain needs at least one network "
                                                 "filter")
    terminal = None
    n = len(fc.filters)
    for i, f in enumerate(fc.filters):
        fpath = f"{join(path, 'filters')}[{i}]"
        typed = unpack_any(f.typed_config, join(fpath, "typed_config")) \
            if f.HasField("typed_config") else None
        tname = typed.DESCRIPTOR.full_name if typed is not None and \
            not isinstance(typed, UnknownExtension) else None
        if tname == HCM_TYPE:
            if i != n - 1:
                raise ConfigError(fpath, "http_connection_manager must be the last network filter")
            from meshproxy.http.hcm_config import build_hcm_config
            terminal = ("http", build_hcm_config(typed, join(fpath, "typed_config"),
                                                 cluster_names=cluster_names, rds=rds))
        elif tname == TCP_PROXY_TYPE:
            if i != n - 1:
                raise ConfigError(fpath, "tcp_proxy must be the last network filter")
            from meshproxy.network.tcp_proxy import build_tcp_proxy_config
            terminal = ("tcp", build_tcp_proxy_config(typed, join(fpath, "typed_config"),
                                                      cluster_names))
        else:
            extensions.unimplemented("network filter", f.name, typed, False, fpath)
    if terminal is None:
        raise ConfigError(join(path, "filters"), "no terminal network filter "
                                                 "(http_connection_manager or tcp_proxy) "
                                                 "that meshproxy implements")
    return FilterChain(fc.name, terminal[0], terminal[1], tls)


def build_listener_config(lst, path: str, cluster_names=None, rds=None) -> ListenerConfig:
    if not lst.HasField("address"):
        if lst.HasField("internal_listener") or lst.HasField("api_listener"):
            raise ConfigError(path, "internal and API listeners are not supported by meshproxy")
        raise ConfigError(join(path, "address"), "value is required")
    addresses = build_listen_addresses(lst, path)
    address, unix = addresses[0].address, addresses[0].unix
    listener_filters = build_listener_filters(lst.listener_filters, path)
    if lst.HasField("filter_chain_matcher"):
        raise ConfigError(join(path, "filter_chain_matcher"),
                          "the matcher-based filter chain selection is not supported yet")
    chains = []
    entries = []
    for i, fc in enumerate(lst.filter_chains):
        cpath = f"{join(path, 'filter_chains')}[{i}]"
        chain = build_filter_chain(fc, cpath, cluster_names, rds)
        chains.append(chain)
        entries.append((fc.filter_chain_match, chain))
    matcher = None
    if len(chains) > 1 or any(not _empty_match(fc.filter_chain_match)
                              for fc in lst.filter_chains):
        matcher = FilterChainMatcher(entries, path)
    default = None
    if lst.HasField("default_filter_chain"):
        default = build_filter_chain(lst.default_filter_chain,
                                     join(path, "default_filter_chain"), cluster_names, rds)
    if not chains and default is None:
        raise ConfigError(join(path, "filter_chains"), "no filter chains specified")
    return ListenerConfig(
        name=lst.name or listener_stat_name(address, unix, ""),
        address=address,
        unix=unix,
        addresses=addresses,
        stat_name=listener_stat_name(address, unix, lst.stat_prefix),
        chains=tuple(chains),
        default_chain=default,
        matcher=matcher,
        listener_filters=listener_filters,
        use_original_dst=wrapped(lst, "use_original_dst", False),
        filters_timeout=duration(lst, "listener_filters_timeout", 15.0),
        continue_on_timeout=lst.continue_on_listener_filters_timeout,
        buffer_limit=wrapped(lst, "per_connection_buffer_limit_bytes", 1024 * 1024),
        # listener_impl.cc shouldBindToPort: bind_to_port and the deprecated
        # deprecated_v1.bind_to_port (Istio <= 1.9 sends that one) must both allow it.
        bind_to_port=wrapped(lst, "bind_to_port", True) and
        wrapped(lst.deprecated_v1, "bind_to_port", True),
        reuse_port=wrapped(lst, "enable_reuse_port", True),
        backlog=wrapped(lst, "tcp_backlog_size", 1024),
        traffic_direction=lst.traffic_direction,
        transparent=wrapped(lst, "transparent", False),
        freebind=wrapped(lst, "freebind", False),
        ipv4_compat=addresses[0].ipv4_compat,
        proto=lst,
    )


def filter_chain_only_change(old, new) -> bool:
    """Envoy updates such a listener in place (listener_impl.cc supportUpdateFilterChain,
    ListenerMessageUtil::filterChainOnlyChange): connections on chains that are still there
    unchanged go on undrained, and the new version keeps the old one's ``version_info``
    (newListenerWithFilterChain passes ``version_info_``). Checked against Envoy 1.40:
    tests/xds/test_listener_in_place.py, tests/xds/test_config_dump_versions.py."""
    if not new.filter_chains:
        return False
    a, b = type(old)(), type(new)()
    a.CopyFrom(old)
    b.CopyFrom(new)
    for m in (a, b):
        for f in ("filter_chains", "default_filter_chain", "filter_chain_matcher"):
            m.ClearField(f)
    return a == b


def unchanged_chain_connections(old, new) -> list | None:
    """The connections of listener ``old`` (an ActiveListener) whose filter chain is in the
    in-place update ``new`` unchanged: they move to the new version instead of draining.
    None when ``new`` is not an in-place update."""
    po, pn = old.config.proto, new.config.proto
    if po is None or pn is None or not filter_chain_only_change(po, pn):
        return None
    protos = {id(ch): fc for ch, fc in zip(old.config.chains, po.filter_chains)}
    if old.config.default_chain is not None:
        protos[id(old.config.default_chain)] = po.default_filter_chain
    still = list(pn.filter_chains)
    if pn.HasField("default_filter_chain"):
        still.append(pn.default_filter_chain)
    out = []
    for conn in old.connections:
        fc = protos.get(id(getattr(conn, "filter_chain", None)))
        if fc is not None and any(fc == other for other in still):
            out.append(conn)
    return out
