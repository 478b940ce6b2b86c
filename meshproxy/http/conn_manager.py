"""The HTTP connection manager network filter: one per downstream connection (Envoy's
``source/common/http/conn_manager_impl.cc``).

It owns the codec and the active stream, counts the ``http.<stat_prefix>.`` connection stats,
turns codec errors into Envoy's local replies, and runs the connection's timeouts (idle, drain,
max duration, delayed close, and the stream's) on one lazily re-armed timer (``meshproxy.timer``).

Closing follows Envoy's ``ConnectionImpl::close`` types: after a response that completed while
the request was being read (a local reply, a protocol error, a response before the request
ended) the connection waits ``delayed_close_timeout`` (1 s) for the client to close first, so
that its unread bytes do not turn the response into a reset; after a proxied response to a
complete request it closes as soon as the response is written.
"""

from __future__ import annotations

import socket
import struct

from meshproxy.http import local_reply
from meshproxy.http.codec import CodecError
from meshproxy.http.stream import ActiveStream
from meshproxy.listener.config import ListenerHttpStats
from meshproxy.timer import LazyTimer

_SERVER_DRAINING = 1
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"   # meshproxy.server.DRAINING: the process is shutting down


def _linger_zero(conn) -> None:
    t = conn.transport
    sock = t.get_extra_info("socket") if t is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass


def _codec_class(backend: str):
    if backend == "h11":
        from meshproxy.http.h1_server_h11 import H11ServerCodec
        return H11ServerCodec
    from meshproxy.http.h1_server import H1ServerCodec
    return H1ServerCodec


class HttpConnectionManager:
    __slots__ = ("config", "conn", "stats", "loop", "codec", "stream", "timer", "idle_deadline",
                 "draining", "closed", "cluster_manager", "listener_buffer_limit",
                 "requests_served", "ctx", "drain_state", "drain_deadline", "duration_deadline",
                 "delayed_close_deadline", "unread", "sync_depth", "queued_responses",
                 "saw_data", "requests_started", "lstats", "h2_stats", "h2_ended", "h2_premature")

    def __init__(self, config, conn, ctx):
        self.config = config
        self.conn = conn
        self.ctx = ctx
        self.loop = ctx.loop
        self.cluster_manager = ctx.cluster_manager
        self.listener_buffer_limit = conn.listener.config.buffer_limit
        stats = self.stats = config.stats
        chain = conn.filter_chain
        lstats = chain.listener_http_stats if chain is not None else None
        self.lstats = lstats if lstats is not None else ListenerHttpStats()
        stats.downstream_cx_total += 1
        stats.downstream_cx_active += 1
        conn.out.tx_stats = stats
        if config.codec_type == "HTTP2":
            from meshproxy.http.h2_conn_manager import become_h2
            become_h2(self)
        else:
            self.codec = _codec_class(config.codec_backend)(self, conn.out.write, config.limits)
        self.stream = None
        self.draining = ctx.draining        # listener drain: the next response closes
        self.drain_state = 0                # 1: drain sequence (idle / max duration) started
        self.drain_deadline = None
        self.closed = False
        self.requests_served = 0
        self.saw_data = False
        self.requests_started = 0
        self.sync_depth = 0                 # >0 while reading (dispatch or replay)
        self.queued_responses = 0           # responses completed in this read (flood check)
        self.delayed_close_deadline = None
        self.unread = False
        self.timer = LazyTimer(self.loop, self._on_timer)
        self.idle_deadline = None
        self.duration_deadline = None
        now = self.loop.time()
        if config.idle_timeout:
            self.idle_deadline = now + config.idle_timeout
            self.timer.schedule(self.idle_deadline)
        if config.max_connection_duration:
            self.duration_deadline = now + config.max_connection_duration
            self.timer.schedule(self.duration_deadline)

    # ---------------------------------------------------------------- network filter

    def on_data(self, data: bytes, end_stream: bool):
        if end_stream:
            # HTTP/1 has no half-close in Envoy's HCM: the peer's FIN ends the connection.
            return False
        self.stats.downstream_cx_rx_bytes_total += len(data)
        if self.delayed_close_deadline is not None or self.closed:
            # Closing: Envoy reads nothing more; what the client sends stays unread.
            self.unread = True
            return None
        if not self.saw_data and self.first_data(data):
            return self.on_data(data, end_stream)     # the connection became HTTP/2
        self.queued_responses = 0
        self.sync_depth += 1
        try:
            self.codec.dispatch(data)
        except CodecError as exc:
            self.codec_error(exc)
        finally:
            self.sync_depth -= 1
        return None

    def first_data(self, data: bytes) -> bool:
        """Envoy makes the codec, and counts the protocol, on the first bytes; with codec_type
        AUTO the HTTP/2 connection preface (RFC 9113 §3.4) picks HTTP/2
        (ConnectionManagerUtility::autoCreateCodec). True when the connection became HTTP/2."""
        if self.config.codec_type == "AUTO" and data[:3] == b"PRI" and \
                _H2_PREFACE.startswith(data[:len(_H2_PREFACE)]):
            from meshproxy.http.h2_conn_manager import become_h2
            become_h2(self)
            return True
        self.saw_data = True
        self.stats.downstream_cx_http1_total += 1
        self.stats.downstream_cx_http1_active += 1
        return False

    def on_close(self, reason: str) -> None:
        self.closed = True
        self.timer.cancel()
        stats = self.stats
        stats.downstream_cx_active -= 1
        if self.saw_data:
            self.protocol_closed()
        stats.downstream_cx_destroy += 1
        remote = reason == "remote"
        if remote:
            stats.downstream_cx_destroy_remote += 1
        else:
            stats.downstream_cx_destroy_local += 1
        for s in self.take_streams():
            if s.done:
                continue
            stats.downstream_cx_destroy_active_rq += 1
            if remote:
                stats.downstream_cx_destroy_remote_active_rq += 1
            else:
                stats.downstream_cx_destroy_local_active_rq += 1
            s.on_connection_closed()
        # Nothing runs on this connection any more: cut the reference cycles (the codec and
        # its parser's bound callbacks, the timer's callback, the codec and this manager) so
        # that reference counting frees the connection's objects now rather than the cycle
        # collector later (~28 objects per connection went through it; issue 3).
        self.timer.callback = None
        release = getattr(self.codec, "release", None)
        if release is not None:
            release()

    def protocol_closed(self) -> None:
        self.stats.downstream_cx_http1_active -= 1

    def take_streams(self) -> tuple:
        """The streams still on the connection, which it forgets (at close)."""
        s = self.stream
        self.stream = None
        return () if s is None else (s,)

    def on_write_paused(self, paused: bool) -> None:
        s = self.stream
        if s is not None and s.router is not None:
            s.router.on_downstream_write_paused(paused)

    # ---------------------------------------------------------------- codec callbacks

    def new_stream(self) -> ActiveStream:
        s = ActiveStream(self)
        self.stats.downstream_rq_http1_total += 1
        self.stream = s
        self.idle_deadline = None
        return s

    def max_requests_reached(self, stream) -> None:
        """``max_requests_per_connection``: for HTTP/1 this request's response is the
        connection's last (Connection: close)."""
        stream.close_connection = True

    def reset_stream(self, stream) -> None:
        """Abort ``stream``; for HTTP/1 that means closing the connection."""
        self.close(abort=True)

    def read_disable(self, disable: bool) -> None:
        self.conn.read_disable(disable)

    # ---------------------------------------------------------------- stream lifecycle

    def stream_done(self, stream: ActiveStream) -> None:
        self.requests_served += 1
        # Envoy's HTTP/1 flood protection counts responses not yet flushed to the socket;
        # those are the ones completed during the current read (and its replays).
        if self.sync_depth:
            self.queued_responses += 1
        else:
            self.queued_responses = 1
        close = stream.close_connection
        mrpc = self.config.max_requests_per_connection
        if mrpc and self.requests_served >= mrpc and not close:
            close = True
        r = stream.router
        if r is not None and r.paused_downstream:
            r.release_flow_control()
        if self.stream is stream:
            self.stream = None
        if close or self.drain_state == 2:
            # Envoy closes without the delay only when the request is complete and the
            # response finished outside the read path (checkForDeferredClose).
            self.close(delay=self.sync_depth > 0 or not stream.request_complete)
            return
        if self.config.idle_timeout:
            self.idle_deadline = self.loop.time() + self.config.idle_timeout
            self.timer.schedule(self.idle_deadline)
        self.sync_depth += 1
        try:
            self.codec.stream_complete(stream)
        finally:
            self.sync_depth -= 1

    def codec_error(self, exc: CodecError) -> None:
        """A protocol error (or a response flood): answer it if possible, then close."""
        if exc.status:
            self.stats.downstream_cx_protocol_error += 1
        g = self.ctx.global_stats
        if g is not None:
            # Envoy's codec-wide counters (http1.*)
            if exc.details == "http1.response_flood":
                g.http1__response_flood += 1
            elif exc.details == "http1.unexpected_underscore":
                g.http1__requests_rejected_with_underscores_in_headers += 1
        if not exc.status:
            # Flood: no reply; the responses already queued are flushed, then the
            # connection closes (the stream still open is reset at close).
            self.close(delay=True)
            return
        s = self.stream
        if s is None or s.done:
            s = self.new_stream()
        if s.response_started:
            s.reset_stream()
            return
        if s.router is not None:
            s.router.abort_upstream()
        s.close_connection = True
        s.send_local_reply(local_reply.codec_error(exc.status, exc.details))
        if not self.closed:
            self.close(delay=True)

    def close(self, abort: bool = False, delay: bool = False) -> None:
        if self.closed:
            return
        if abort:
            self.closed = True
            self.conn.close(flush=False)
            return
        timeout = self.config.delayed_close_timeout
        if delay and timeout:
            if self.delayed_close_deadline is None:
                self.delayed_close_deadline = self.loop.time() + timeout
                self.timer.schedule(self.delayed_close_deadline)
            return
        self.closed = True
        self.conn.close(flush=True)

    def start_drain(self) -> None:
        """Listener drain (``/drain_listeners``, Envoy's drain manager): the next response
        carries ``Connection: close``. Idle connections stay open, as in Envoy, unless the
        process itself is shutting down."""
        self.draining = True
        if getattr(self.ctx, "state", 0) == _SERVER_DRAINING:
            # Envoy exits on SIGTERM without draining; meshproxy lets the request in flight
            # finish (Connection: close, then close) and closes idle connections at once.
            self.stats.downstream_cx_drain_close += 1
            self.drain_state = 2
            if self.stream is None:
                self.close()

    def start_drain_sequence(self) -> None:
        self._start_drain_sequence(self.loop.time())

    def _start_drain_sequence(self, now: float) -> None:
        """ConnectionManagerImpl::startDrainSequence for HTTP/1: responses from now on close
        the connection; after ``drain_timeout`` it closes once no request is active."""
        if self.drain_state:
            return
        self.drain_state = 1
        self.drain_deadline = now + (self.config.drain_timeout or 0.0)
        self.timer.schedule(self.drain_deadline)

    # ---------------------------------------------------------------- timeouts

    def _on_timer(self, now: float) -> None:
        if self.closed:
            return
        d = self.delayed_close_deadline
        if d is not None:
            if now >= d:
                self.stats.downstream_cx_delayed_close_timeout += 1
                self.closed = True
                if self.unread:
                    # Envoy never read what the client sent meanwhile, so closing the socket
                    # resets the connection; reproduce the RST (SO_LINGER 0).
                    _linger_zero(self.conn)
                self.conn.close(flush=not self.unread)
                return
            self.timer.schedule(d)
            return
        nxt = []
        d = self.duration_deadline
        if d is not None and now >= d:
            self.duration_deadline = None
            self.stats.downstream_cx_max_duration_reached += 1
            if not self.saw_data:
                self.close()
                return
            self._start_drain_sequence(now)
        active = self.check_stream_timeouts(now, nxt)
        if self.closed:
            return
        if not active and self.idle_deadline is not None and now >= self.idle_deadline:
            self.idle_deadline = None
            self.stats.downstream_cx_idle_timeout += 1
            if not self.saw_data:
                # No codec yet: Envoy closes at once (FlushWrite).
                self.close()
                return
            self._start_drain_sequence(now)
        d = self.drain_deadline
        if d is not None and now >= d:
            self.drain_deadline = None
            self.drain_state = 2
            if not active:
                self.close(delay=True)
                return
        if not active:
            nxt.append(self.idle_deadline)
        nxt.append(self.duration_deadline)
        nxt.append(self.drain_deadline)
        nxt = [x for x in nxt if x is not None]
        if nxt:
            self.timer.schedule(min(nxt))

    def check_stream_timeouts(self, now: float, nxt: list) -> bool:
        """Run the active stream's timeouts (adding its next deadline to ``nxt``); False when
        no stream is active."""
        s = self.stream
        if s is None:
            return False
        nxt.append(s.check_timeouts(now))
        return True

    def __repr__(self):
        return f"<HttpConnectionManager {self.config.stat_prefix} stream={self.stream!r}>"
