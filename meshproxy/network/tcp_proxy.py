"""The ``envoy.filters.network.tcp_proxy`` network filter: bytes both ways to a cluster host.

Data that arrives before the upstream connects is held (reading pauses once it passes the
buffer limit). Each direction has backpressure: when one side's write buffer passes its high
watermark, reading from the other side pauses until it drains. Half-close is preserved: a FIN
from one side is passed on as a FIN to the other (``write_eof``), and the connections close
when both directions have ended (Envoy's tcp_proxy with half-close enabled).
"""

from __future__ import annotations

import asyncio
import logging
import random

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import duration, wrapped
from meshproxy.stats import stat_block

log = logging.getLogger("meshproxy.filter")

TcpStats = stat_block(
    "TcpStats",
    counters=("downstream_cx_total", "downstream_cx_no_route", "downstream_cx_tx_bytes_total",
              "downstream_cx_rx_bytes_total", "downstream_flow_control_paused_reading_total",
              "downstream_flow_control_resumed_reading_total", "idle_timeout",
              "max_downstream_connection_duration", "upstream_flush_total",
              "on_demand_cluster_attempt", "on_demand_cluster_missing"),
    gauges=("downstream_cx_rx_bytes_buffered", "downstream_cx_tx_bytes_buffered",
            "upstream_flush_active"),
)


class TcpProxyConfig:
    __slots__ = ("stat_prefix", "cluster", "weighted", "total_weight", "idle_timeout",
                 "max_connect_attempts", "stats", "max_duration")

    def __init__(self, **kw):
        for n in self.__slots__:
            setattr(self, n, kw.get(n))

    def pick_cluster(self) -> str:
        if self.cluster is not None:
            return self.cluster
        r = random.randrange(self.total_weight)
        acc = 0
        for name, w in self.weighted:
            acc += w
            if r < acc:
                return name
        return self.weighted[-1][0]


def build_tcp_proxy_config(t, path: str, cluster_names=None) -> TcpProxyConfig:
    if not t.stat_prefix:
        raise ConfigError(join(path, "stat_prefix"), "value length must be at least 1 characters")
    which = t.WhichOneof("cluster_specifier")
    cluster = None
    weighted = None
    total = 0
    if which == "cluster":
        cluster = t.cluster
    elif which == "weighted_clusters":
        weighted = tuple((c.name, c.weight) for c in t.weighted_clusters.clusters if c.weight)
        total = sum(w for _, w in weighted)
        if not total:
            raise ConfigError(join(path, "weighted_clusters"), "weights must add up to more than 0")
    else:
        raise ConfigError(path, "one of cluster or weighted_clusters is required")
    return TcpProxyConfig(
        stat_prefix=t.stat_prefix, cluster=cluster, weighted=weighted, total_weight=total,
        idle_timeout=duration(t, "idle_timeout", 3600.0) or None,
        max_connect_attempts=wrapped(t, "max_connect_attempts", 1),
        max_duration=duration(t, "max_downstream_connection_duration", 0.0) or None,
        stats=None)


class _Upstream(asyncio.Protocol):
    """Upstream side of one proxied connection."""

    __slots__ = ("proxy", "transport", "closed")

    def __init__(self, proxy):
        self.proxy = proxy
        self.transport = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.proxy.on_upstream_data(data)

    def eof_received(self):
        self.proxy.on_upstream_eof()
        return True  # keep the transport open for the other direction (half-close)

    def connection_lost(self, exc):
        self.closed = True
        self.proxy.on_upstream_closed()

    def pause_writing(self):
        self.proxy.downstream.read_disable(True)
        self.proxy.stats.downstream_flow_control_paused_reading_total += 1

    def resume_writing(self):
        self.proxy.downstream.read_disable(False)
        self.proxy.stats.downstream_flow_control_resumed_reading_total += 1


class TcpProxy:
    """Network filter instance for one downstream connection."""

    def __init__(self, config: TcpProxyConfig, conn, ctx):
        self.config = config
        self.downstream = conn
        self.ctx = ctx
        self.stats = config.stats
        self.stats.downstream_cx_total += 1
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.pending_paused = False
        self.down_eof = False
        self.up_eof = False
        self.closing = False
        self.cluster = None
        self.host = None
        self.attempts = 0
        self.last_activity = ctx.loop.time()
        self.idle_handle = None
        name = config.pick_cluster()
        cluster = ctx.cluster_manager.get(name)
        if cluster is None:
            self.stats.downstream_cx_no_route += 1
            log.debug("tcp_proxy: no cluster %s", name)
            conn.close(flush=False)
            self.closing = True
            return
        self.cluster = cluster
        ctx.loop.create_task(self._connect())
        if config.idle_timeout:
            self.idle_handle = ctx.loop.call_later(config.idle_timeout, self._idle_check)

    async def _connect(self):
        cluster = self.cluster
        cfg = cluster.config
        stats = cluster.stats
        while not self.closing:
            self.attempts += 1
            host = cluster.choose_host()
            if host is None:
                stats.upstream_cx_none_healthy += 1
                break
            if cluster.cx_active >= cluster.thresholds.max_connections:
                stats.upstream_cx_overflow += 1
                break
            self.host = host
            up = _Upstream(self)
            cluster.cx_active += 1
            stats.upstream_cx_total += 1
            stats.upstream_cx_active += 1
            host.stats.cx_total += 1
            host.stats.cx_active += 1
            try:
                if host.unix:
                    coro = self.ctx.loop.create_unix_connection(lambda: up, host.address)
                else:
                    src = cfg.source_address
                    coro = self.ctx.loop.create_connection(
                        lambda: up, host.address[0], host.address[1],
                        local_addr=(src[0], 0) if src else None)
                await asyncio.wait_for(coro, cfg.connect_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                cluster.cx_active -= 1
                stats.upstream_cx_active -= 1
                stats.upstream_cx_connect_fail += 1
                stats.upstream_cx_destroy += 1
                host.stats.cx_active -= 1
                host.stats.cx_connect_fail += 1
                if isinstance(exc, asyncio.TimeoutError):
                    stats.upstream_cx_connect_timeout += 1
                if self.attempts >= self.config.max_connect_attempts:
                    stats.upstream_cx_connect_attempts_exceeded += 1
                    break
                continue
            if self.closing:
                up.transport.close()
                return
            self.upstream = up
            limit = cfg.buffer_limit
            up.transport.set_write_buffer_limits(high=limit, low=limit // 2)
            pending, self.pending = self.pending, []
            for chunk in pending:
                self._to_upstream(chunk)
            if self.pending_paused:
                self.pending_paused = False
                self.downstream.read_disable(False)
            if self.down_eof and up.transport.can_write_eof():
                up.transport.write_eof()
            return
        # No upstream: Envoy closes the downstream connection.
        self._close_all()

    # ---------------------------------------------------------------- network filter API

    def on_data(self, data: bytes, end_stream: bool):
        self.last_activity = self.ctx.loop.time()
        if end_stream:
            self.down_eof = True
            up = self.upstream
            if up is not None and up.transport is not None and not up.closed:
                up.transport.write_eof()
            self._maybe_done()
            return True  # keep our write side open (half-close)
        self.stats.downstream_cx_rx_bytes_total += len(data)
        if self.upstream is None:
            self.pending.append(data)
            self.pending_bytes += len(data)
            if not self.pending_paused and \
                    self.pending_bytes > self.downstream.listener.config.buffer_limit:
                self.pending_paused = True
                self.downstream.read_disable(True)
            return None
        self._to_upstream(data)
        return None

    def _to_upstream(self, data: bytes):
        self.cluster.stats.upstream_cx_tx_bytes_total += len(data)
        self.upstream.transport.write(data)

    def on_upstream_data(self, data: bytes):
        self.last_activity = self.ctx.loop.time()
        self.cluster.stats.upstream_cx_rx_bytes_total += len(data)
        self.stats.downstream_cx_tx_bytes_total += len(data)
        self.downstream.write(data)

    def on_upstream_eof(self):
        self.up_eof = True
        self.downstream.half_close()
        self._maybe_done()

    def on_upstream_closed(self):
        cluster = self.cluster
        cluster.cx_active -= 1
        cluster.stats.upstream_cx_active -= 1
        cluster.stats.upstream_cx_destroy += 1
        self.host.stats.cx_active -= 1
        if not self.up_eof:
            self.up_eof = True
            if self.closing:
                cluster.stats.upstream_cx_destroy_local += 1
            else:
                cluster.stats.upstream_cx_destroy_remote += 1
                # Upstream reset/closed without FIN: end the downstream too (flushing first).
                self.downstream.close(flush=True)
        self._maybe_done()

    def on_close(self, reason: str) -> None:
        self.closing = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
        up = self.upstream
        if up is not None and up.transport is not None and not up.closed:
            up.transport.close()

    def on_write_paused(self, paused: bool) -> None:
        # Downstream can't take more: stop reading the upstream.
        up = self.upstream
        if up is not None and up.transport is not None and not up.closed:
            if paused:
                up.transport.pause_reading()
            else:
                up.transport.resume_reading()

    def _maybe_done(self):
        if self.down_eof and self.up_eof:
            self._close_all()

    def _close_all(self):
        self.closing = True
        up = self.upstream
        if up is not None and up.transport is not None and not up.closed:
            up.transport.close()
        self.downstream.close(flush=True)

    def _idle_check(self):
        self.idle_handle = None
        if self.closing:
            return
        loop = self.ctx.loop
        due = self.last_activity + self.config.idle_timeout
        if loop.time() >= due:
            self.stats.idle_timeout += 1
            self._close_all()
        else:
            self.idle_handle = loop.call_at(due, self._idle_check)
