"""One attempt of a routed request on one upstream host (Envoy's ``UpstreamRequest``).

It waits for a pooled connection, sends the request head and any body that arrived meanwhile,
relays the response to the router, and keeps the cluster's and host's request accounting.
"""

from __future__ import annotations

from meshproxy.upstream.h1_connection import OVERFLOW


class UpstreamRequest:
    __slots__ = ("router", "cluster", "host", "pool", "conn", "reused", "rx_started", "wrote",
                 "finished", "pending", "pending_bytes", "end_pending", "paused", "read_paused")

    def __init__(self, router, cluster, host):
        self.router = router
        self.cluster = cluster
        self.host = host
        self.pool = None
        self.conn = None
        self.reused = False
        self.rx_started = False
        self.wrote = False
        self.finished = False
        self.pending = None
        self.pending_bytes = 0
        self.end_pending = False
        self.paused = False
        self.read_paused = False

    def start(self, fresh: bool) -> None:
        cluster = self.cluster
        stats = cluster.stats
        cluster.rq_active += 1
        stats.upstream_rq_total += 1
        stats.upstream_rq_active += 1
        hs = self.host.stats
        hs.rq_total += 1
        hs.rq_active += 1
        router = self.router
        if fresh:
            router.replay_body(self)
        elif router.request_done:
            self.end_pending = True
        self.pool = pool = cluster.pool_for(self.host)
        conn = pool.new_stream(self, fresh)
        if conn is not None:
            self.on_pool_ready(conn, True)

    # ------------------------------------------------------------------ pool callbacks

    def on_pool_ready(self, conn, reused: bool) -> None:
        self.conn = conn
        self.reused = reused
        pending = self.pending
        end_stream = self.end_pending and not pending
        self.wrote = True
        conn.send_headers(self.router.stream.request, end_stream)
        if pending:
            self.pending = None
            last = len(pending) - 1
            for i, chunk in enumerate(pending):
                conn.send_data(chunk, self.end_pending and i == last)
            if self.paused:
                self.paused = False
                self.router.on_upstream_write_paused(False)
        if self.read_paused and conn.transport is not None:
            conn.transport.pause_reading()

    def on_pool_failure(self, reason: str, detail: str) -> None:
        self._finish(False)
        if reason == OVERFLOW:
            self.router.on_pool_overflow(self)
        else:
            self.router.on_upstream_reset(self, reason, detail)

    # ------------------------------------------------------------------ request body

    def send_data(self, data: bytes, end_stream: bool) -> None:
        conn = self.conn
        if conn is not None:
            conn.send_data(data, end_stream)
            return
        if end_stream:
            self.end_pending = True
        if data:
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            self.pending_bytes += len(data)
            if not self.paused and \
                    self.pending_bytes > self.router.stream.hcm.listener_buffer_limit:
                # Connecting still: hold the client until there is somewhere to write.
                self.paused = True
                self.router.on_upstream_write_paused(True)

    # ------------------------------------------------------------------ connection callbacks

    def on_upstream_headers(self, resp, end_stream: bool) -> None:
        if end_stream:
            self._finish(True)
        self.router.on_upstream_headers(self, resp, end_stream)

    def on_upstream_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self._finish(True)
        self.router.on_upstream_data(self, data, end_stream)

    def on_upstream_reset(self, reason: str, conn) -> None:
        self.rx_started = conn.rx_started
        self.cluster.stats.upstream_rq_rx_reset += 1
        self._finish(False)
        self.router.on_upstream_reset(self, reason)

    def on_upstream_write_paused(self, paused: bool) -> None:
        self.router.on_upstream_write_paused(paused)

    def read_disable(self, paused: bool) -> None:
        """Downstream can't take more response: stop reading the upstream."""
        self.read_paused = paused
        conn = self.conn
        if conn is not None and conn.transport is not None and not conn.closed:
            if paused:
                conn.transport.pause_reading()
            else:
                conn.transport.resume_reading()

    # ------------------------------------------------------------------ ending

    def abort(self) -> None:
        """Give up on this attempt (timeout, downstream reset)."""
        if self.conn is None:
            if self.pool is not None:
                self.pool.cancel(self)
        else:
            self.conn.reset()
        self._finish(False)

    def _finish(self, success: bool) -> None:
        if self.finished:
            return
        self.finished = True
        cluster = self.cluster
        cluster.rq_active -= 1
        stats = cluster.stats
        stats.upstream_rq_active -= 1
        stats.upstream_rq_completed += 1
        hs = self.host.stats
        hs.rq_active -= 1
        if success:
            hs.rq_success += 1
        else:
            hs.rq_error += 1
        if self.paused:
            self.paused = False
            self.router.on_upstream_write_paused(False)
        if self.read_paused and self.conn is not None and not self.conn.closed:
            self.read_paused = False
            self.conn.transport.resume_reading()

    def __repr__(self):
        return (f"<UpstreamRequest {self.cluster.name} -> {self.host.address_str} "
                f"{'connected' if self.conn else 'waiting'}{' done' if self.finished else ''}>")
