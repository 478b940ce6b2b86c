"""The HTTP connection manager network filter: one per downstream connection.

It owns the codec and the active stream, counts the ``http.<stat_prefix>.`` connection stats,
turns codec errors into Envoy's local replies (then closes, as Envoy does for HTTP/1 protocol
errors), and runs the connection's timeouts (idle, stream idle, request, route) on one lazily
re-armed timer (``meshproxy.timer``).
"""

from __future__ import annotations

from meshproxy.http import local_reply
from meshproxy.http.codec import CodecError
from meshproxy.http.stream import ActiveStream
from meshproxy.timer import LazyTimer


def _codec_class(backend: str):
    if backend == "h11":
        from meshproxy.http.h1_server_h11 import H11ServerCodec
        return H11ServerCodec
    from meshproxy.http.h1_server import H1ServerCodec
    return H1ServerCodec


class HttpConnectionManager:
    __slots__ = ("config", "conn", "stats", "loop", "codec", "stream", "timer", "idle_deadline",
                 "draining", "closed", "cluster_manager", "listener_buffer_limit",
                 "requests_served", "ctx")

    def __init__(self, config, conn, ctx):
        self.config = config
        self.conn = conn
        self.ctx = ctx
        self.loop = ctx.loop
        self.cluster_manager = ctx.cluster_manager
        self.listener_buffer_limit = conn.listener.config.buffer_limit
        stats = self.stats = config.stats
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        stats.downstream_cx_http1_total += 1
        stats.downstream_cx_http1_active += 1
        self.codec = _codec_class(config.codec_backend)(self, self._write, config.limits)
        self.stream = None
        self.draining = ctx.draining
        self.closed = False
        self.requests_served = 0
        self.timer = LazyTimer(self.loop, self._on_timer)
        self.idle_deadline = None
        if config.idle_timeout:
            self.idle_deadline = self.loop.time() + config.idle_timeout
            self.timer.schedule(self.idle_deadline)

    # ---------------------------------------------------------------- network filter

    def on_data(self, data: bytes, end_stream: bool):
        if end_stream:
            # HTTP/1 has no half-close in Envoy's HCM: the peer's FIN ends the connection.
            return False
        self.stats.downstream_cx_rx_bytes_total += len(data)
        try:
            self.codec.dispatch(data)
        except CodecError as exc:
            self._codec_error(exc)
        return None

    def on_close(self, reason: str) -> None:
        self.closed = True
        self.timer.cancel()
        stats = self.stats
        stats.downstream_cx_active -= 1
        stats.downstream_cx_http1_active -= 1
        stats.downstream_cx_destroy += 1
        remote = reason == "remote"
        if remote:
            stats.downstream_cx_destroy_remote += 1
        else:
            stats.downstream_cx_destroy_local += 1
        s = self.stream
        if s is not None and not s.done:
            stats.downstream_cx_destroy_active_rq += 1
            if remote:
                stats.downstream_cx_destroy_remote_active_rq += 1
            else:
                stats.downstream_cx_destroy_local_active_rq += 1
            s.on_connection_closed()
        self.stream = None

    def on_write_paused(self, paused: bool) -> None:
        s = self.stream
        if s is not None and s.router is not None:
            s.router.on_downstream_write_paused(paused)

    # ---------------------------------------------------------------- codec callbacks

    def new_stream(self) -> ActiveStream:
        s = ActiveStream(self)
        self.stream = s
        self.idle_deadline = None
        return s

    def read_disable(self, disable: bool) -> None:
        self.conn.read_disable(disable)

    def _write(self, data: bytes) -> None:
        self.stats.downstream_cx_tx_bytes_total += len(data)
        self.conn.transport.write(data)

    # ---------------------------------------------------------------- stream lifecycle

    def stream_done(self, stream: ActiveStream) -> None:
        self.requests_served += 1
        close = stream.close_connection
        mrpc = self.config.max_requests_per_connection
        if mrpc and self.requests_served >= mrpc:
            self.stats.downstream_cx_max_requests_reached += 1
            close = True
        if stream.router is not None:
            stream.router.release_flow_control()
        if close:
            self.close()
            return
        if self.stream is stream:
            self.stream = None
        if self.config.idle_timeout:
            self.idle_deadline = self.loop.time() + self.config.idle_timeout
            self.timer.schedule(self.idle_deadline)
        self.codec.stream_complete(stream)

    def _codec_error(self, exc: CodecError) -> None:
        self.stats.downstream_cx_protocol_error += 1
        s = self.stream
        if s is None or s.done:
            s = self.new_stream()
            self.stats.downstream_rq_total += 1
            self.stats.downstream_rq_active += 1
        if s.response_started:
            self.close(abort=True)
            return
        if s.router is not None:
            s.router.abort_upstream()
        s.close_connection = True
        s.request_complete = True  # nothing more will be read
        s.send_local_reply(local_reply.codec_error(exc.status, exc.details))
        if not self.closed:
            self.close()

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.conn.close(flush=not abort)

    def start_drain(self) -> None:
        """Listener drain: the next response carries ``Connection: close``; an idle connection
        closes now."""
        self.draining = True
        if self.stream is None:
            self.stats.downstream_cx_drain_close += 1
            self.close()

    # ---------------------------------------------------------------- timeouts

    def _on_timer(self, now: float) -> None:
        if self.closed:
            return
        nxt = None
        s = self.stream
        if s is not None:
            nxt = s.check_timeouts(now)
        elif self.idle_deadline is not None:
            if now >= self.idle_deadline:
                self.stats.downstream_cx_idle_timeout += 1
                self.close()
                return
            nxt = self.idle_deadline
        if self.closed:
            return
        if self.stream is None and self.idle_deadline is not None:
            nxt = self.idle_deadline if nxt is None else min(nxt, self.idle_deadline)
        self.timer.schedule(nxt)

    def __repr__(self):
        return f"<HttpConnectionManager {self.config.stat_prefix} stream={self.stream!r}>"
