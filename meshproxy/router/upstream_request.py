"""One attempt of a routed request on one upstream host (Envoy's ``UpstreamRequest``).

The router asks the host's pool for a connection for it (``Router._start_attempt``); it sends
the request head and any body that arrived meanwhile (holding the client once that passes the
buffer limit), and relays the response and resets to the router. Request accounting
(``upstream_rq_total``/``active``) belongs to the pool, which counts a request once it is
attached to a connection, as Envoy does.
"""

from __future__ import annotations

from meshproxy.upstream.outlier import LOCAL_ORIGIN_CONNECT_SUCCESS


class UpstreamRequest:
    __slots__ = ("router", "cluster", "host", "pool", "conn", "finished", "pending",
                 "pending_bytes", "end_pending", "paused", "read_paused", "awaiting_headers")

    def __init__(self, router, cluster, host):
        self.router = router
        self.cluster = cluster
        self.host = host
        self.pool = None
        self.conn = None
        self.finished = False
        self.pending = None
        self.pending_bytes = 0
        self.end_pending = False
        self.paused = False
        self.read_paused = False
        self.awaiting_headers = True

    # ------------------------------------------------------------------ pool callbacks

    def on_pool_ready(self, conn, reused: bool) -> None:
        if self.finished:       # gave up while the pool was deciding
            conn.reset()
            return
        self.conn = conn
        if self.host.outlier is not None:
            self.host.outlier.put_result(LOCAL_ORIGIN_CONNECT_SUCCESS)
        pending = self.pending
        end_stream = self.end_pending and not pending
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
        if self.finished:
            return
        self._finish()
        self.router.on_upstream_reset(self, reason, detail)

    # ------------------------------------------------------------------ request body

    def send_data(self, data: bytes, end_stream: bool) -> None:
        conn = self.conn
        if conn is not None:
            if conn.stream is self:
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

    def on_upstream_1xx(self, status: int) -> None:
        self.router.on_upstream_1xx(self, status)

    def on_upstream_headers(self, resp, end_stream: bool) -> None:
        self.awaiting_headers = False
        if end_stream:
            self._finish()
        self.router.on_upstream_headers(self, resp, end_stream)

    def on_upstream_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self._finish()
        self.router.on_upstream_data(self, data, end_stream)

    def on_upstream_reset(self, reason: str, conn) -> None:
        self._finish()
        self.router.on_upstream_reset(self, reason)

    def on_upstream_write_paused(self, paused: bool) -> None:
        stats = self.cluster.stats
        if paused:
            stats.upstream_flow_control_backed_up_total += 1
        else:
            stats.upstream_flow_control_drained_total += 1
        self.router.on_upstream_write_paused(paused)

    def read_disable(self, paused: bool) -> None:
        """Downstream can't take more response: stop reading the upstream."""
        if paused == self.read_paused:
            return
        self.read_paused = paused
        stats = self.cluster.stats
        if paused:
            stats.upstream_flow_control_paused_reading_total += 1
        else:
            stats.upstream_flow_control_resumed_reading_total += 1
        conn = self.conn
        if conn is not None and conn.stream is self and conn.transport is not None \
                and not conn.closed:
            if paused:
                conn.transport.pause_reading()
            else:
                conn.transport.resume_reading()

    # ------------------------------------------------------------------ ending

    def abort(self) -> None:
        """Give up on this attempt (timeout, downstream reset)."""
        if self.finished:
            return
        conn = self.conn
        self._finish()
        if conn is None:
            if self.pool is not None:
                self.pool.cancel(self)
        elif conn.stream is self:
            conn.reset()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.paused:
            self.paused = False
            self.router.on_upstream_write_paused(False)
        conn = self.conn
        if self.read_paused and conn is not None and not conn.closed:
            self.read_paused = False
            conn.transport.resume_reading()

    def __repr__(self):
        return (f"<UpstreamRequest {self.cluster.name} -> {self.host.address_str} "
                f"{'connected' if self.conn else 'waiting'}{' done' if self.finished else ''}>")
