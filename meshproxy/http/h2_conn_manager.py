"""The connection manager's HTTP/2 half: many streams on one connection (Envoy's
``ConnectionManagerImpl`` with an HTTP/2 codec, ``source/common/http/conn_manager_impl.cc``).

An ``HttpConnectionManager`` becomes an ``H2ConnectionManager`` when its codec is HTTP/2
(``codec_type: HTTP2``, or ``AUTO`` and the connection preface): the class is swapped on the
instance, so the HTTP/1 path carries no HTTP/2 checks. What differs from HTTP/1: streams live in
the codec (``codec.streams``); a finished or reset stream leaves the connection open; a stream is
reset with RST_STREAM instead of closing; draining sends GOAWAY (RFC 9113 §6.8) and closes once
the streams finish; a protocol error closes the connection (Envoy: ``FlushWriteAndDelay``).

Rapid-reset protection (CVE-2023-44487) follows Envoy's premature-reset check
(``ConnectionManagerImpl::maybeDrainDueToPrematureResets``): streams reset by the client within
``premature_reset_min_stream_lifetime_seconds`` (1 s) of starting are premature; the connection
is closed once they are half of the streams ended on it, counting at least
``premature_reset_total_stream_count`` (500) streams, i.e. after 250 premature resets at the
earliest.
"""

from __future__ import annotations

from meshproxy.http.codec import CodecError
from meshproxy.http.conn_manager import _SERVER_DRAINING, HttpConnectionManager
from meshproxy.http.h2_options import H2Stats
from meshproxy.http.h2_server import H2ServerCodec
from meshproxy.http.stream import ActiveStream

PREMATURE_RESET_COUNT = 500
PREMATURE_RESET_LIFETIME = 1.0


class H2Stream(ActiveStream):
    """An ``ActiveStream`` with its HTTP/2 stream id and the response body waiting for the
    peer's flow-control window."""

    __slots__ = ("sid", "out", "out_bytes", "out_end", "out_trailers", "write_paused",
                 "rx_left")

    def __init__(self, hcm):
        super().__init__(hcm)
        self.sid = 0
        self.out = None
        self.out_bytes = 0
        self.out_end = False
        self.out_trailers = None
        self.write_paused = False
        self.rx_left = -1           # request body bytes still due by content-length


def _stats(ctx) -> H2Stats:
    """The process's ``http2.*`` stats, registered on first use (Envoy creates them with the
    first HTTP/2 codec)."""
    st = getattr(ctx, "h2_stats", None)
    if st is None:
        st = H2Stats()
        store = getattr(ctx, "store", None)
        if store is not None:
            store.register("http2.", st)
        try:
            ctx.h2_stats = st
        except AttributeError:
            pass
    return st


def become_h2(hcm: HttpConnectionManager) -> None:
    hcm.__class__ = H2ConnectionManager
    hcm.h2_stats = _stats(hcm.ctx)
    cfg = hcm.config
    hcm.codec = H2ServerCodec(hcm, hcm.conn.out.write, cfg.limits, cfg.http2,
                              hcm.listener_buffer_limit)
    hcm.h2_ended = 0                # streams ended (premature-reset check)
    hcm.h2_premature = 0            # of which reset by the client within a second


class H2ConnectionManager(HttpConnectionManager):
    __slots__ = ()

    # ------------------------------------------------------------ network filter

    def first_data(self, data: bytes) -> bool:
        self.saw_data = True
        self.stats.downstream_cx_http2_total += 1
        self.stats.downstream_cx_http2_active += 1
        return False

    def protocol_closed(self) -> None:
        self.stats.downstream_cx_http2_active -= 1

    def take_streams(self) -> list:
        streams = list(self.codec.streams.values())
        self.codec.streams.clear()
        self.codec.blocked.clear()
        return streams

    def on_write_paused(self, paused: bool) -> None:
        """The client is not reading: stop reading it too, as what it sends (PING, SETTINGS,
        requests) makes more output that would pile up in memory (Envoy bounds the same with
        its outbound frame flood limits); and stop reading the streams' upstreams."""
        self.conn.read_disable(paused)
        for s in list(self.codec.streams.values()):
            r = s.router
            # a stream still over its own watermark (no window) stays paused
            if r is not None and hasattr(r, "on_downstream_write_paused") and \
                    (paused or not s.write_paused):
                r.on_downstream_write_paused(paused)

    # ------------------------------------------------------------ codec callbacks

    def new_stream(self) -> H2Stream:
        s = H2Stream(self)
        self.stats.downstream_rq_http2_total += 1
        self.idle_deadline = None
        return s

    def max_requests_reached(self, stream) -> None:
        """``max_requests_per_connection`` reached as a request starts: the drain sequence
        begins (ConnectionManagerImpl::newStream does so for HTTP/2 and later)."""
        self.start_drain_sequence()

    def stream_reset_by_peer(self, stream) -> None:
        """RST_STREAM from the client: count it, reset the upstream request."""
        self.h2_ended += 1
        if self.loop.time() - stream.start_mono < PREMATURE_RESET_LIFETIME:
            self.h2_premature += 1
        stream.on_connection_closed()
        self._after_stream()

    def stream_reset_by_codec(self, stream) -> None:
        """The codec reset ``stream`` (too large a header list, a body longer or shorter than
        its content-length): to the stream that is a reset it received, as in Envoy."""
        self.codec.streams.pop(stream.sid, None)
        stream.on_connection_closed()
        self._after_stream()

    def reset_stream(self, stream) -> None:
        """Local reset (Envoy's LocalReset): RST_STREAM NO_ERROR; the upstream request ends."""
        self.codec.reset_stream(stream)
        self.codec.streams.pop(stream.sid, None)
        if not stream.done:
            stream.done = True
            self.stats.downstream_rq_active -= 1
            r = stream.router
            if r is not None:
                r.abort_upstream()
        self._after_stream()

    # ------------------------------------------------------------ stream lifecycle

    def stream_done(self, stream) -> None:
        self.requests_served += 1
        self.h2_ended += 1
        r = stream.router
        if r is not None and r.paused_downstream:
            r.release_flow_control()
        self.codec.stream_complete(stream)
        self._after_stream()

    def _after_stream(self) -> None:
        if self.closed:
            return
        ended, premature = self.h2_ended, self.h2_premature
        if premature and premature * 2 >= max(ended, PREMATURE_RESET_COUNT):
            # Closed without GOAWAY (Envoy: Abort, "too_many_premature_resets").
            self.stats.downstream_rq_too_many_premature_resets += 1
            self.close(abort=True)
            return
        if self.codec.streams:
            return
        if self.drain_state == 2:
            self.close(delay=self.sync_depth > 0)
            return
        if self.config.idle_timeout:
            self.idle_deadline = self.loop.time() + self.config.idle_timeout
            self.timer.schedule(self.idle_deadline)

    def codec_error(self, exc: CodecError) -> None:
        """A connection error: Envoy closes after flushing what was written, with the
        delayed-close wait; the streams are reset when the connection goes. A flood closes
        at once, unflushed (Envoy's ``isBufferFloodError`` path)."""
        if exc.details.endswith("_flood"):
            stat = exc.details[6:]          # http2.<stat>
            setattr(self.h2_stats, stat, getattr(self.h2_stats, stat) + 1)
            self.close(abort=True)
            return
        self.stats.downstream_cx_protocol_error += 1
        if exc.details == "http2.rx_messaging_error":
            self.h2_stats.rx_messaging_error += 1
        self.close(delay=True)

    # ------------------------------------------------------------ drain

    def start_drain(self) -> None:
        self.draining = True
        if getattr(self.ctx, "state", 0) == _SERVER_DRAINING:   # the process is shutting down
            self.stats.downstream_cx_drain_close += 1
            self.drain_state = 2
            self.codec.goaway()
            if not self.codec.streams:
                self.close()

    def _start_drain_sequence(self, now: float) -> None:
        """Drain for HTTP/2 (ConnectionManagerImpl::startDrainSequence): a shutdown-notice
        GOAWAY now; at ``drain_timeout`` the final GOAWAY, and the connection closes once the
        streams it lets finish are done."""
        if self.drain_state:
            return
        self.drain_state = 1
        self.codec.shutdown_notice()
        self.drain_deadline = now + (self.config.drain_timeout or 0.0)
        self.timer.schedule(self.drain_deadline)

    def close(self, abort: bool = False, delay: bool = False) -> None:
        if not abort and not self.closed and self.saw_data:
            # An HTTP/2 connection says goodbye before it closes (RFC 9113 §6.8).
            self.codec.goaway()
        super().close(abort, delay)

    def check_stream_timeouts(self, now: float, nxt: list) -> bool:
        streams = self.codec.streams
        if not streams:
            return False
        for s in list(streams.values()):
            nxt.append(s.check_timeouts(now))
            if self.closed:
                break
        return True

    def __repr__(self):
        return (f"<H2ConnectionManager {self.config.stat_prefix} "
                f"streams={len(self.codec.streams)}>")
