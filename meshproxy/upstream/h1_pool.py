"""HTTP/1.1 connection pool for one host (Envoy's ``http1/conn_pool.cc`` in outline).

``new_stream(waiter)`` returns an idle connection at once (most recently used first, so idle
ones age out), or queues the waiter and opens a connection if the cluster's circuit breakers
allow; ``waiter.on_pool_ready(conn)`` / ``waiter.on_pool_failure(reason, detail)`` follow.
Circuit breakers are per cluster: ``max_connections`` (beyond it requests wait),
``max_pending_requests`` (beyond it they fail: 503 with ``x-envoy-overloaded``), as Envoy does.
Idle connections close after the cluster's ``idle_timeout``; a connection whose peer closes it
while idle is dropped when the close is read.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging

from meshproxy.upstream.h1_connection import (CONNECT_TIMEOUT, CONNECTION_FAILURE, OVERFLOW,
                                              UpstreamH1Connection)

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

    def new_stream(self, waiter, fresh: bool = False):
        """An idle connection for ``waiter``, or None when the waiter was queued (or failed)."""
        idle = self.idle
        if not fresh:
            while idle:
                conn = idle.pop()
                if conn.closed or conn.transport.is_closing():
                    continue
                self.busy.add(conn)
                conn.stream = waiter
                return conn
        cluster = self.cluster
        stats = cluster.stats
        if cluster.pending_active >= cluster.thresholds.max_pending_requests:
            stats.upstream_rq_pending_overflow += 1
            waiter.on_pool_failure(OVERFLOW, "overflow")
            return None
        self.pending.append(waiter)
        cluster.pending_active += 1
        stats.upstream_rq_pending_total += 1
        stats.upstream_rq_pending_active += 1
        self.host.stats.rq_pending_active += 1
        if self.connecting < len(self.pending):
            if cluster.cx_active < cluster.thresholds.max_connections:
                self._connect()
            else:
                stats.upstream_cx_overflow += 1
        return None

    def cancel(self, waiter) -> None:
        try:
            self.pending.remove(waiter)
        except ValueError:
            return
        self._pending_done()

    def _pending_done(self):
        self.cluster.pending_active -= 1
        self.cluster.stats.upstream_rq_pending_active -= 1
        self.host.stats.rq_pending_active -= 1

    def release(self, conn: UpstreamH1Connection) -> None:
        """``conn`` finished a request and may serve another."""
        self.busy.discard(conn)
        mrpc = self.cluster.config.max_requests_per_connection
        if mrpc and conn.requests >= mrpc:
            self.cluster.stats.upstream_cx_max_requests += 1
            conn.close()
            if self.pending:
                self._maybe_connect()
            return
        if self.pending:
            waiter = self.pending.popleft()
            self._pending_done()
            self.busy.add(conn)
            conn.stream = waiter
            waiter.on_pool_ready(conn, True)
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self._idle_timer is None:
            self._arm_idle_timer()

    def on_connection_closed(self, conn: UpstreamH1Connection) -> None:
        if conn in self.busy:
            self.busy.discard(conn)
        else:
            try:
                self.idle.remove(conn)
            except ValueError:
                pass
        cluster = self.cluster
        cluster.cx_active -= 1
        cluster.stats.upstream_cx_active -= 1
        cluster.stats.upstream_cx_destroy += 1
        if conn.local_close:
            cluster.stats.upstream_cx_destroy_local += 1
        else:
            cluster.stats.upstream_cx_destroy_remote += 1
        if conn.stream is not None:
            cluster.stats.upstream_cx_destroy_with_active_rq += 1
            if conn.local_close:
                cluster.stats.upstream_cx_destroy_local_with_active_rq += 1
            else:
                cluster.stats.upstream_cx_destroy_remote_with_active_rq += 1
        self.host.stats.cx_active -= 1
        if self.pending:
            self._maybe_connect()

    def _maybe_connect(self):
        if self.connecting < len(self.pending) and \
                self.cluster.cx_active < self.cluster.thresholds.max_connections:
            self._connect()

    # ------------------------------------------------------------------ connecting

    def _connect(self) -> None:
        self.connecting += 1
        cluster = self.cluster
        cluster.cx_active += 1
        cluster.stats.upstream_cx_total += 1
        cluster.stats.upstream_cx_active += 1
        cluster.stats.upstream_cx_http1_total += 1
        self.host.stats.cx_total += 1
        self.host.stats.cx_active += 1
        self.loop.create_task(self._do_connect())

    async def _do_connect(self) -> None:
        host = self.host
        cfg = self.cluster.config
        conn = UpstreamH1Connection(self)
        try:
            if host.unix:
                coro = self.loop.create_unix_connection(lambda: conn, host.address)
            else:
                coro = self.loop.create_connection(
                    lambda: conn, host.address[0], host.address[1],
                    local_addr=cfg.source_address and (cfg.source_address[0], 0))
            await asyncio.wait_for(coro, cfg.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            self.connecting -= 1
            self._connect_failed(exc)
            return
        self.connecting -= 1
        self._connected(conn)

    def _connected(self, conn) -> None:
        if self.pending:
            waiter = self.pending.popleft()
            self._pending_done()
            self.busy.add(conn)
            conn.stream = waiter
            waiter.on_pool_ready(conn, False)
        else:
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
            stats.upstream_cx_connect_timeout += 1
            reason, detail = CONNECT_TIMEOUT, ""
        else:
            reason = CONNECTION_FAILURE
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.ECONNREFUSED
            detail = f"delayed connect error: {code}"
        log.debug("connect to %s failed: %s", self.host.address_str, exc)
        # As Envoy: when no other attempt is under way, every waiter fails with this reason.
        failed = []
        while self.pending and self.connecting < len(self.pending):
            failed.append(self.pending.popleft())
            self._pending_done()
        for waiter in failed:
            waiter.on_pool_failure(reason, detail)

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

