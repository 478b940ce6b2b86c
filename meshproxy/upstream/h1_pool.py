"""HTTP/1.1 connection pool for one host (Envoy's ``conn_pool_base.cc`` / ``http1/conn_pool.cc``).

``new_stream(waiter)`` attaches the waiter to the most recently used idle connection, or queues
it and opens connections; ``waiter.on_pool_ready(conn, reused)`` or
``waiter.on_pool_failure(reason, detail)`` follows (possibly before ``new_stream`` returns).
Circuit breakers are per cluster, checked where Envoy checks them:

* ``max_pending_requests`` when a request must queue: beyond it the request fails at once
  (``upstream_rq_pending_overflow``; the router answers 503 with ``x-envoy-overloaded``);
* ``max_connections`` when a connection is wanted (``upstream_cx_overflow``); the request waits,
  except that a pool with no connection at all still opens one, so it can never starve;
* ``max_requests`` when a request is attached to a connection (``upstream_rq_active_overflow``).

``upstream_rq_total`` / ``upstream_rq_active`` count attached requests. A failed connect fails
every queued request (``upstream_rq_pending_failure_eject``). ``max_requests_per_connection``
drains a connection once it has taken its last request, ``max_connection_duration`` once it is
that old. Each idle connection closes after the cluster's ``idle_timeout``
(``upstream_cx_idle_timeout``); one the peer closes while idle is dropped as soon as the close
is read, so no request is sent on it.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from meshproxy.upstream.cluster_config import source_ip_for
from meshproxy.upstream.h1_connection import (CONNECT_TIMEOUT, CONNECTION_FAILURE, OVERFLOW,
                                              UpstreamH1Connection)
from meshproxy.upstream.transport_socket import check_host

log = logging.getLogger("meshproxy.pool")


class H1Pool:
    def __init__(self, host, cluster, loop):
        self.host = host
        self.cluster = cluster
        self.loop = loop
        self.idle: list[UpstreamH1Connection] = []
        self.busy: set = set()
        self.connecting = 0
        self.pending: collections.deque = collections.deque()
        self._idle_timer = None

    # ------------------------------------------------------------------ streams

    def new_stream(self, waiter) -> None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport.is_closing():
                continue
            if not self._attach(conn, waiter, True):
                idle.append(conn)
            return
        cluster = self.cluster
        stats = cluster.stats
        if cluster.pending_active >= cluster.thresholds.max_pending_requests:
            stats.upstream_rq_pending_overflow += 1
            waiter.on_pool_failure(OVERFLOW, "")
            return
        self.pending.append(waiter)
        cluster.pending_active += 1
        stats.upstream_rq_pending_total += 1
        stats.upstream_rq_pending_active += 1
        self.host.stats.rq_pending_active += 1
        self._try_connect()

    def _attach(self, conn, waiter, reused: bool) -> bool:
        cluster = self.cluster
        stats = cluster.stats
        if cluster.rq_active >= cluster.thresholds.max_requests:
            stats.upstream_rq_active_overflow += 1
            waiter.on_pool_failure(OVERFLOW, "")
            return False
        mrpc = cluster.config.max_requests_per_connection
        if mrpc and conn.requests + 1 >= mrpc:
            # The connection's last request: it closes once this one is done.
            stats.upstream_cx_max_requests += 1
            conn.draining = True
        cluster.rq_active += 1
        stats.upstream_rq_total += 1
        stats.upstream_rq_active += 1
        hs = self.host.stats
        hs.rq_total += 1
        hs.rq_active += 1
        self.busy.add(conn)
        conn.stream = waiter
        waiter.on_pool_ready(conn, reused)
        return True

    def stream_done(self, conn) -> None:
        """The request on ``conn`` ended (completed or reset)."""
        cluster = self.cluster
        cluster.rq_active -= 1
        cluster.stats.upstream_rq_active -= 1
        self.host.stats.rq_active -= 1

    def cancel(self, waiter) -> None:
        """A queued request gave up (downstream reset, timeout)."""
        try:
            self.pending.remove(waiter)
        except ValueError:
            return
        self._pending_done()
        self.cluster.stats.upstream_rq_cancelled += 1

    def _pending_done(self):
        self.cluster.pending_active -= 1
        self.cluster.stats.upstream_rq_pending_active -= 1
        self.host.stats.rq_pending_active -= 1

    def release(self, conn: UpstreamH1Connection) -> None:
        """``conn`` finished its response and may serve another request."""
        self.busy.discard(conn)
        if conn.draining:
            conn.close()
            return
        pending = self.pending
        while pending:
            waiter = pending.popleft()
            self._pending_done()
            if self._attach(conn, waiter, True):
                if pending:
                    self._try_connect()
                return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self._idle_timer is None:
            self._arm_idle_timer()

    def on_connection_closed(self, conn: UpstreamH1Connection, with_active_rq: bool) -> None:
        if conn in self.busy:
            self.busy.discard(conn)
        else:
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
        cluster = self.cluster
        stats = cluster.stats
        cluster.cx_active -= 1
        stats.upstream_cx_active -= 1
        stats.upstream_cx_destroy += 1
        if conn.local_close:
            stats.upstream_cx_destroy_local += 1
        else:
            stats.upstream_cx_destroy_remote += 1
        if with_active_rq:
            stats.upstream_cx_destroy_with_active_rq += 1
            if conn.local_close:
                stats.upstream_cx_destroy_local_with_active_rq += 1
            else:
                stats.upstream_cx_destroy_remote_with_active_rq += 1
        self.host.stats.cx_active -= 1
        if conn.duration_handle is not None:
            conn.duration_handle.cancel()
            conn.duration_handle = None
        if self.pending:
            self._try_connect()

    # ------------------------------------------------------------------ connecting

    def _try_connect(self) -> None:
        """Envoy's ``tryCreateNewConnections``: up to three connections while queued requests
        outnumber connecting ones; over ``max_connections`` each wish counts an overflow."""
        cluster = self.cluster
        for _ in range(3):
            if len(self.pending) <= self.connecting:
                return
            allowed = cluster.cx_active < cluster.thresholds.max_connections
            if not allowed:
                cluster.stats.upstream_cx_overflow += 1
            if allowed or not (self.idle or self.busy or self.connecting):
                self._connect()
            if not allowed:
                return

    def _connect(self) -> None:
        self.connecting += 1
        cluster = self.cluster
        cluster.cx_active += 1
        stats = cluster.stats
        stats.upstream_cx_total += 1
        stats.upstream_cx_active += 1
        stats.upstream_cx_http1_total += 1
        self.host.stats.cx_total += 1
        self.host.stats.cx_active += 1
        self.loop.create_task(self._do_connect())

    async def _do_connect(self) -> None:
        host = self.host
        cfg = self.cluster.config
        conn = UpstreamH1Connection(self)
        try:
            check_host(cfg, host)   # TLS-only hosts fail closed (upstream/transport_socket.py)
            if host.unix:
                coro = self.loop.create_unix_connection(lambda: conn, host.address)
            else:
                src = source_ip_for(cfg, host.address[0])
                coro = self.loop.create_connection(
                    lambda: conn, host.address[0], host.address[1],
                    local_addr=(src, 0) if src else None)
            await asyncio.wait_for(coro, cfg.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            self.connecting -= 1
            self._connect_failed(exc)
            return
        self.connecting -= 1
        conn.connected = True
        if conn.closed:
            return
        if cfg.max_connection_duration:
            conn.duration_handle = self.loop.call_later(cfg.max_connection_duration,
                                                        self._duration_reached, conn)
        pending = self.pending
        while pending:
            waiter = pending.popleft()
            self._pending_done()
            if self._attach(conn, waiter, False):
                return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self._idle_timer is None:
            self._arm_idle_timer()

    def _connect_failed(self, exc) -> None:
        cluster = self.cluster
        stats = cluster.stats
        cluster.cx_active -= 1
        stats.upstream_cx_active -= 1
        stats.upstream_cx_destroy += 1
        stats.upstream_cx_connect_fail += 1
        self.host.stats.cx_active -= 1
        self.host.stats.cx_connect_fail += 1
        if isinstance(exc, asyncio.TimeoutError):
            # Envoy closes the socket itself on a connect timeout: a local close.
            stats.upstream_cx_connect_timeout += 1
            stats.upstream_cx_destroy_local += 1
            reason, detail = CONNECT_TIMEOUT, ""
        else:
            stats.upstream_cx_destroy_remote += 1
            # Envoy 1.40 gives no transport failure reason for a plaintext connect failure (its
            # reply says "retried and the latest reset reason: remote connection failure").
            reason, detail = CONNECTION_FAILURE, ""
        log.debug("connect to %s failed: %s", self.host.address_str, exc)
        # As Envoy (purgePendingStreams): a failed connect fails every queued request.
        failed = list(self.pending)
        self.pending.clear()
        for waiter in failed:
            self._pending_done()
            stats.upstream_rq_pending_failure_eject += 1
        for waiter in failed:
            waiter.on_pool_failure(reason, detail)

    def _duration_reached(self, conn) -> None:
        """``max_connection_duration``: an idle connection closes now, a busy one after its
        current response (Envoy drains it)."""
        conn.duration_handle = None
        if conn.closed:
            return
        self.cluster.stats.upstream_cx_max_duration_reached += 1
        if conn.stream is None:
            conn.close()
        else:
            conn.draining = True

    # ------------------------------------------------------------------ idle timeout

    def _arm_idle_timer(self):
        timeout = self.cluster.config.idle_timeout
        if not timeout or not self.idle:
            self._idle_timer = None
            return
        oldest = min(c.idle_since for c in self.idle)
        self._idle_timer = self.loop.call_at(oldest + timeout, self._idle_sweep)

    def _idle_sweep(self):
        self._idle_timer = None
        timeout = self.cluster.config.idle_timeout
        now = self.loop.time()
        for conn in [c for c in self.idle if now - c.idle_since >= timeout]:
            self.cluster.stats.upstream_cx_idle_timeout += 1
            conn.close()
        self._arm_idle_timer()

    def drain(self) -> None:
        """The host left the cluster: idle connections close, busy ones finish their
        request first (Envoy drains the pools of removed hosts)."""
        for conn in list(self.idle):
            conn.close()
        for conn in self.busy:
            conn.draining = True

    def close_all(self) -> None:
        for conn in list(self.idle) + list(self.busy):
            conn.close()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def __repr__(self):
        return (f"<H1Pool {self.host.address_str} [Requests: {len(self.busy)} active, "
                f"{len(self.pending)} queued | Connections: {len(self.busy)} active, "
                f"{len(self.idle)} idle, {self.connecting} connecting]>")
