"""The ``envoy.filters.network.tcp_proxy`` network filter: bytes both ways to a cluster host.

Data that arrives before the upstream connects is held (reading pauses once it passes the
buffer limit). Each direction has backpressure: when one side's write buffer passes its high
watermark, reading from the other side pauses until it drains. Half-close is preserved: a FIN
from one side is passed on as a FIN to the other (``write_eof``), and the connections close
when both directions have ended (Envoy's tcp_proxy with half-close enabled). An upstream reset
(RST) resets the downstream too; a connect failure closes the downstream after
``max_connect_attempts``; ``idle_timeout`` (1 h by default) and
``max_downstream_connection_duration`` close both sides.

Stats are Envoy's (``tcp.<stat_prefix>.*``), and the cluster sees what Envoy's TCP connection
pool reports: each proxied connection is one pending request while connecting
(``upstream_rq_pending_total``) and one active request while connected (``upstream_rq_total``,
``upstream_rq_active``), so its close counts ``upstream_cx_destroy_*_with_active_rq``.
"""

from __future__ import annotations

import asyncio
import logging
import random

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import duration, wrapped
from meshproxy.network.connection import reset_transport
from meshproxy.stats import stat_block
from meshproxy.upstream.cluster_config import source_ip_for
from meshproxy.upstream.transport_socket import check_host

log = logging.getLogger("meshproxy.filter")

# Envoy 1.40's tcp_proxy stats (docs: configuration/listeners/network_filters/tcp_proxy_filter).
TcpStats = stat_block(
    "TcpStats",
    counters=("downstream_cx_drain_close", "downstream_cx_no_route",
              "downstream_cx_overload_close", "downstream_cx_rx_bytes_total",
              "downstream_cx_total", "downstream_cx_tx_bytes_total",
              "downstream_flow_control_paused_reading_total",
              "downstream_flow_control_resumed_reading_total", "early_data_received_count_total",
              "idle_timeout", "max_downstream_connection_duration", "route_delayed_total",
              "upstream_flush_total"),
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
        self.proxy.on_upstream_closed(exc)

    def pause_writing(self):
        p = self.proxy
        p.downstream.read_disable(True)
        p.stats.downstream_flow_control_paused_reading_total += 1
        p.cluster.stats.upstream_flow_control_backed_up_total += 1

    def resume_writing(self):
        p = self.proxy
        p.downstream.read_disable(False)
        p.stats.downstream_flow_control_resumed_reading_total += 1
        p.cluster.stats.upstream_flow_control_drained_total += 1


class TcpProxy:
    """Network filter instance for one downstream connection."""

    def __init__(self, config: TcpProxyConfig, conn, ctx):
        self.config = config
        self.downstream = conn
        self.ctx = ctx
        self.loop = ctx.loop
        self.stats = config.stats
        self.stats.downstream_cx_total += 1
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.pending_paused = False
        self.down_eof = False
        self.up_eof = False
        self.closing = False
        self.remote_close = False   # the upstream ended the connection (its FIN came last)
        self.flushing = False       # the downstream closed; queued upstream bytes still flush
        self.cluster = None
        self.host = None
        self.attempts = 0
        self.last_activity = self.loop.time()
        self.idle_handle = None
        self.duration_handle = None
        name = config.pick_cluster()
        cluster = ctx.cluster_manager.get(name)
        if cluster is None:
            self.stats.downstream_cx_no_route += 1
            log.debug("tcp_proxy: no cluster %s", name)
            conn.close(flush=False)
            self.closing = True
            return
        self.cluster = cluster
        self.loop.create_task(self._connect())
        if config.idle_timeout:
            self.idle_handle = self.loop.call_later(config.idle_timeout, self._idle_check)
        if config.max_duration:
            self.duration_handle = self.loop.call_later(config.max_duration,
                                                        self._duration_reached)

    async def _connect(self):
        cluster = self.cluster
        cfg = cluster.config
        stats = cluster.stats
        while not self.closing:
            self.attempts += 1
            host = cluster.choose_host(self)
            if host is None:
                stats.upstream_cx_none_healthy += 1
                break
            if cluster.cx_active >= cluster.thresholds.max_connections:
                stats.upstream_cx_overflow += 1
                break
            self.host = host
            cluster.cb_used = True
            up = _Upstream(self)
            hs = host.stats
            # One pending "request" while connecting (Envoy's TCP pool), one connection.
            cluster.pending_active += 1
            stats.upstream_rq_pending_total += 1
            stats.upstream_rq_pending_active += 1
            hs.rq_pending_active += 1
            cluster.cx_active += 1
            stats.upstream_cx_total += 1
            stats.upstream_cx_active += 1
            hs.cx_total += 1
            hs.cx_active += 1
            try:
                check_host(cfg, host)   # TLS-only hosts fail closed (upstream/transport_socket.py)
                if host.unix:
                    coro = self.loop.create_unix_connection(lambda: up, host.address)
                else:
                    src = source_ip_for(cfg, host.address[0])
                    coro = self.loop.create_connection(
                        lambda: up, host.address[0], host.address[1],
                        local_addr=(src, 0) if src else None)
                await asyncio.wait_for(coro, cfg.connect_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                self._pending_done(host)
                stats.upstream_rq_pending_failure_eject += 1
                cluster.cx_active -= 1
                stats.upstream_cx_active -= 1
                stats.upstream_cx_connect_fail += 1
                stats.upstream_cx_destroy += 1
                hs.cx_active -= 1
                hs.cx_connect_fail += 1
                if isinstance(exc, asyncio.TimeoutError):
                    stats.upstream_cx_connect_timeout += 1
                    stats.upstream_cx_destroy_local += 1
                else:
                    stats.upstream_cx_destroy_remote += 1
                if self.attempts >= self.config.max_connect_attempts:
                    stats.upstream_cx_connect_attempts_exceeded += 1
                    break
                continue
            self._pending_done(host)
            cluster.rq_active += 1
            stats.upstream_rq_total += 1
            stats.upstream_rq_active += 1
            hs.rq_total += 1
            hs.rq_active += 1
            self.upstream = up
            if self.closing:
                up.transport.close()
                return
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

    def _pending_done(self, host):
        cluster = self.cluster
        cluster.pending_active -= 1
        cluster.stats.upstream_rq_pending_active -= 1
        host.stats.rq_pending_active -= 1

    # ---------------------------------------------------------------- network filter API

    def on_data(self, data: bytes, end_stream: bool):
        self.last_activity = self.loop.time()
        if end_stream:
            self.down_eof = True
            up = self.upstream
            if up is not None and up.transport is not None and not up.closed:
                up.transport.write_eof()
            self._maybe_done()
            return True  # keep our write side open (half-close)
        stats = self.stats
        stats.downstream_cx_rx_bytes_total += len(data)
        if self.upstream is None:
            stats.mark_used("downstream_cx_rx_bytes_buffered")
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
        self.last_activity = self.loop.time()
        self.cluster.stats.upstream_cx_rx_bytes_total += len(data)
        self.stats.downstream_cx_tx_bytes_total += len(data)
        self.downstream.write(data)

    def on_upstream_eof(self):
        self.up_eof = True
        self.downstream.half_close()
        if self.down_eof:
            # Both directions are shut and the upstream's FIN came last: its close.
            self.remote_close = True
        self._maybe_done()

    def on_upstream_closed(self, exc):
        cluster = self.cluster
        stats = cluster.stats
        cluster.cx_active -= 1
        cluster.rq_active -= 1
        stats.upstream_cx_active -= 1
        stats.upstream_rq_active -= 1
        stats.upstream_cx_destroy += 1
        stats.upstream_cx_destroy_with_active_rq += 1
        hs = self.host.stats
        hs.cx_active -= 1
        hs.rq_active -= 1
        if self.flushing:
            self.flushing = False
            self.stats.upstream_flush_active -= 1
            self._cancel_timers()
        local = self.closing and not self.remote_close
        if local:
            stats.upstream_cx_destroy_local += 1
            stats.upstream_cx_destroy_local_with_active_rq += 1
        else:
            stats.upstream_cx_destroy_remote += 1
            stats.upstream_cx_destroy_remote_with_active_rq += 1
        if not self.closing:
            self.closing = True
            self._cancel_timers()
            if exc is not None:
                # Reset by the upstream: reset the downstream as well.
                self.downstream.reset()
            else:
                self.downstream.close(flush=True)

    def on_close(self, reason: str) -> None:
        self.closing = True
        self._cancel_timers()
        up = self.upstream
        if up is not None and up.transport is not None and not up.closed:
            if reason == "reset":
                # Envoy passes a downstream RST on to the upstream.
                reset_transport(up.transport)
                return
            if up.transport.get_write_buffer_size() and self.config.idle_timeout:
                # The downstream is gone but bytes for the upstream are still queued: keep
                # flushing them, for at most the idle timeout (Envoy's upstream drainer).
                self.flushing = True
                self.stats.upstream_flush_total += 1
                self.stats.upstream_flush_active += 1
                self.idle_handle = self.loop.call_later(self.config.idle_timeout,
                                                        up.transport.abort)
            up.transport.close()

    def on_write_paused(self, paused: bool) -> None:
        # Downstream can't take more: stop reading the upstream.
        up = self.upstream
        if up is not None and up.transport is not None and not up.closed:
            stats = self.cluster.stats
            if paused:
                up.transport.pause_reading()
                stats.upstream_flow_control_paused_reading_total += 1
            else:
                up.transport.resume_reading()
                stats.upstream_flow_control_resumed_reading_total += 1

    def _maybe_done(self):
        if self.down_eof and self.up_eof:
            self._close_all()

    def _close_all(self):
        self.closing = True
        self._cancel_timers()
        up = self.upstream
        if up is not None and up.transport is not None and not up.closed:
            up.transport.close()
        self.downstream.close(flush=True)

    def _cancel_timers(self):
        for h in (self.idle_handle, self.duration_handle):
            if h is not None:
                h.cancel()
        self.idle_handle = self.duration_handle = None

    def _idle_check(self):
        self.idle_handle = None
        if self.closing:
            return
        due = self.last_activity + self.config.idle_timeout
        if self.loop.time() >= due:
            self.stats.idle_timeout += 1
            self._close_all()
        else:
            self.idle_handle = self.loop.call_at(due, self._idle_check)

    def _duration_reached(self):
        self.duration_handle = None
        if not self.closing:
            self.stats.max_downstream_connection_duration += 1
            self._close_all()

    def __repr__(self):
        return (f"<TcpProxy {self.config.stat_prefix} -> "
                f"{self.host.address_str if self.host else '-'}"
                f"{' closing' if self.closing else ''}>")
