"""Downstream HTTP/2 server codec (Envoy's ``source/common/http/http2/codec_impl.cc``
``ServerConnectionImpl``) on the sans-IO ``h2`` library, behind the same seam as the HTTP/1
codec (``codec.py``): ``dispatch(bytes)`` turns frames into ``new_stream()`` /
``decode_headers`` / ``decode_data`` / ``decode_trailers``; the connection manager answers with
``encode_headers`` / ``encode_data`` / ``encode_trailers``. Many streams share the connection.

Settings are Envoy's (``http2_protocol_options``, see ``h2_options``): they go out with the
server preface on the first read, as Envoy writes them. Inbound flow control: received DATA is
acknowledged once handed on (h2 sends WINDOW_UPDATE when half a window is used). The response
side (frames, outbound flow control, backpressure) is ``h2_output.H2Output``.
"""

from __future__ import annotations

import logging

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
from hyperframe.frame import GoAwayFrame, SettingsFrame, WindowUpdateFrame

import hpack.hpack

from meshproxy.http.codec import CodecError
from meshproxy.http.h2_hpack import CachingDecoder, StatelessEncoder, longest_string
from meshproxy.http.h2_output import H2Output
from meshproxy.http.h2_request import Malformed, TooLarge, UnderscoreRejected, \
    request_from_headers, trailers_from_headers

log = logging.getLogger("meshproxy.http2")
_S = h2.settings.SettingCodes
NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
INTERNAL_ERROR = h2.errors.ErrorCodes.INTERNAL_ERROR
REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
COMPRESSION_ERROR = h2.errors.ErrorCodes.COMPRESSION_ERROR


class _Quiet:
    """hpack logs every field at DEBUG through ``logging`` (two calls each, ~20 a request);
    DESIGN.md: no debug logging on the HTTP/2 path."""

    @staticmethod
    def debug(*args, **kwargs) -> None:
        pass


hpack.hpack.log = _Quiet()
_CONFIG = h2.config.H2Configuration(
    client_side=False, header_encoding=None, validate_inbound_headers=False,
    normalize_inbound_headers=False, validate_outbound_headers=False,
    normalize_outbound_headers=False)


class _Stream(h2.stream.H2Stream):
    """h2's stream without its content-length check, which fails the whole connection;
    nghttp2 resets just the stream (RST_STREAM PROTOCOL_ERROR, RFC 9113 §8.1.1), and so does
    ``H2ServerCodec._on_data``."""

    def _initialize_content_length(self, headers) -> None:
        pass


class FieldTooLong(Exception):
    """A header field over nghttp2's 64 KiB wire limit: a connection error
    (COMPRESSION_ERROR), unlike a header list over Envoy's own limits."""

    def __init__(self, stream_id: int):
        super().__init__(stream_id)
        self.stream_id = stream_id


MAX_FIELD = 65536       # NGHTTP2_HD_MAX_NV


class _Connection(h2.connection.H2Connection):
    def _receive_headers_frame(self, frame):
        if len(frame.data) > MAX_FIELD and longest_string(frame.data) > MAX_FIELD:
            raise FieldTooLong(frame.stream_id)
        return super()._receive_headers_frame(frame)

    def _begin_new_stream(self, stream_id, allowed_ids):
        s = super()._begin_new_stream(stream_id, allowed_ids)
        s.__class__ = _Stream
        return s


class H2ServerCodec(H2Output):
    protocol = "HTTP/2"

    def __init__(self, callbacks, write, limits, options, buffer_limit: int):
        self.callbacks = callbacks
        self.write = write
        self.limits = limits
        self.options = options
        self.buffer_limit = buffer_limit
        self.max_header_bytes = limits.max_request_headers_kb * 1024
        c = self.conn = _Connection(_CONFIG)
        c.local_settings = h2.settings.Settings(client=False, initial_values={
            _S.HEADER_TABLE_SIZE: options.hpack_table_size,
            _S.ENABLE_CONNECT_PROTOCOL: 0,
            # h2 would fail the connection past the limit; nghttp2 refuses just the stream,
            # which _on_request does (the advertised value is in _write_preface).
            _S.MAX_CONCURRENT_STREAMS: 2 ** 31 - 1,
            _S.INITIAL_WINDOW_SIZE: options.initial_stream_window_size,
        })
        # Envoy advertises no SETTINGS_MAX_HEADER_LIST_SIZE and enforces its own limit per
        # header (h2_request.TooLarge); h2's HPACK decoder keeps a hard cap far above it.
        c.decoder = CachingDecoder(max(self.max_header_bytes * 4, 1 << 20))
        c.decoder.max_allowed_table_size = options.hpack_table_size
        c.encoder = StatelessEncoder()
        c.initiate_connection()
        c.data_to_send()
        self.preface = True             # our SETTINGS go out with the first read's answer
        self.streams: dict = {}         # stream id -> ActiveStream (until both ends are done)
        self.blocked: dict = {}         # stream id -> stream whose body waits for window
        self.dispatching = False
        self.dead = False               # a connection error: nothing more is written
        self.goaway_sent = False
        self.last_stream_id = 0
        self.handlers = {
            h2.events.RequestReceived: self._on_request,
            h2.events.DataReceived: self._on_data,
            h2.events.TrailersReceived: self._on_trailers,
            h2.events.StreamReset: self._on_reset,
            h2.events.WindowUpdated: self._on_window,
            h2.events.RemoteSettingsChanged: self._on_window,
            h2.events.PriorityUpdated: self._on_priority,
        }
        self.opened = 0                 # streams the client opened (priority flood limit)
        self.priority_frames = 0
        self.empty_frames = 0           # consecutive DATA frames with nothing in them
        self.decoding = None            # the stream whose headers are being decoded

    # ------------------------------------------------------------------ input

    def dispatch(self, data: bytes) -> None:
        if self.dead:
            return
        self.dispatching = True
        try:
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                self._connection_error(exc)
            except FieldTooLong as exc:
                self._compression_error(exc.stream_id)
            if self.preface:
                self._write_preface()
            handlers = self.handlers
            cb = self.callbacks
            for ev in events:
                h = handlers.get(ev.__class__)
                if h is not None:
                    h(ev)
                if self.dead or cb.closed:
                    return
        finally:
            self.dispatching = False
        self.flush()

    def _write_preface(self) -> None:
        """The server preface as Envoy (nghttp2) writes it: SETTINGS in Envoy's order, the
        ACK of the client's, then the connection window (RFC 9113 §3.4, §6.9.2)."""
        self.preface = False
        o = self.options
        f = SettingsFrame(0)
        f.settings = {_S.HEADER_TABLE_SIZE: o.hpack_table_size, _S.ENABLE_CONNECT_PROTOCOL: 0,
                      _S.MAX_CONCURRENT_STREAMS: o.max_concurrent_streams,
                      _S.INITIAL_WINDOW_SIZE: o.initial_stream_window_size}
        ack = self.conn.data_to_send()
        self.conn.increment_flow_control_window(o.initial_connection_window_size - 65535)
        self.write(f.serialize() + ack + self.conn.data_to_send())

    def _connection_error(self, exc) -> None:
        """h2 found a framing error: it queued GOAWAY; write it and let the HCM close."""
        log.debug("http2 connection error: %s", exc)
        self.dispatching = False
        self.flush()
        self.dead = True
        raise CodecError(0, "http2.codec_error", body=False) from exc

    def _compression_error(self, stream_id: int) -> None:
        """GOAWAY COMPRESSION_ERROR naming the stream whose block failed, then close."""
        if self.preface:
            self._write_preface()
        self.last_stream_id = max(self.last_stream_id, stream_id)
        self.goaway(COMPRESSION_ERROR)
        self.dead = True
        raise CodecError(0, "http2.codec_error", body=False)

    def _messaging_error(self, stream) -> None:
        """A malformed request (Envoy's onInvalidFrame). With
        ``stream_error_on_invalid_http_messaging`` only the stream is reset (PROTOCOL_ERROR);
        otherwise the connection is closed and nghttp2 writes nothing more (not even the
        frames of this read)."""
        if self.options.stream_error_on_invalid_http_messaging:
            self.callbacks.h2_stats.rx_messaging_error += 1
            self.reset_stream(stream, PROTOCOL_ERROR)
            self.callbacks.stream_reset_by_codec(stream)
            return
        self.conn.data_to_send()
        self.dead = True
        raise CodecError(0, "http2.rx_messaging_error", body=False)

    def _on_request(self, ev) -> None:
        sid = ev.stream_id
        if self.goaway_sent:
            # After GOAWAY new streams are refused (RFC 9113 §6.8).
            self.conn.reset_stream(sid, REFUSED_STREAM)
            return
        cb = self.callbacks
        if len(self.streams) >= self.options.max_concurrent_streams:
            # RFC 9113 §5.1.2: a stream past SETTINGS_MAX_CONCURRENT_STREAMS is refused.
            self.conn.reset_stream(sid, REFUSED_STREAM)
            cb.h2_stats.stream_refused_errors += 1
            cb.h2_stats.tx_reset += 1
            return
        self.last_stream_id = sid
        self.opened += 1
        if ev.priority_updated is not None:
            self.priority_frames -= 1   # HEADERS' own priority is not a PRIORITY frame
        s = cb.new_stream()
        s.sid = sid
        self.streams[sid] = s
        try:
            req = request_from_headers(ev.headers, self.limits.max_headers_count,
                                       self.max_header_bytes,
                                       self.limits.headers_with_underscores, cb.h2_stats)
        except Malformed:
            return self._messaging_error(s)
        except (TooLarge, UnderscoreRejected) as exc:
            if isinstance(exc, TooLarge):
                cb.h2_stats.header_list_size_too_large += 1
            else:
                cb.h2_stats.requests_rejected_with_underscores_in_headers += 1
            self.reset_stream(s, INTERNAL_ERROR)
            cb.stream_reset_by_codec(s)
            return
        end = ev.stream_ended is not None
        s.request_headers_end_stream = end
        s.rx_left = req.content_length
        if end and req.content_length > 0:
            # HEADERS ending a stream that promised a body: nghttp2 checks this while the
            # header block is read, so it is a malformed message (a connection error).
            return self._messaging_error(s)
        self.decoding = s               # for encode_100_continue, during decode_headers
        s.decode_headers(req, end)
        self.decoding = None

    def _on_data(self, ev) -> None:
        sid = ev.stream_id
        n = ev.flow_controlled_length
        if not n and ev.stream_ended is None:
            # Envoy's empty-frame flood check (max_consecutive_inbound_frames_with_empty_payload)
            self.empty_frames += 1
            if self.empty_frames > self.options.max_consecutive_inbound_frames_with_empty_payload:
                self._flood("inbound_empty_frames_flood")
        else:
            self.empty_frames = 0
        s = self.streams.get(sid)
        if s is not None and not s.done:
            end = ev.stream_ended is not None
            left = s.rx_left
            if left >= 0:
                left = s.rx_left = left - len(ev.data)
                if left < 0 or (end and left):
                    self._bad_length(s)
                    end = None
            if end is not None:
                s.decode_data(ev.data, end)
        if n:
            self.conn.acknowledge_received_data(n, sid)

    def _bad_length(self, s) -> None:
        """DATA disagreeing with content-length (RFC 9113 §8.1.1): nghttp2 resets the
        stream with PROTOCOL_ERROR."""
        self.reset_stream(s, PROTOCOL_ERROR)
        self.callbacks.stream_reset_by_codec(s)

    def _on_trailers(self, ev) -> None:
        s = self.streams.get(ev.stream_id)
        if s is None or s.done:
            return
        try:
            trailers = trailers_from_headers(ev.headers)
        except Malformed:
            return self._messaging_error(s)
        s.decode_trailers(trailers)

    def _on_reset(self, ev) -> None:
        """RST_STREAM from the client: the exchange ends, its upstream request is reset."""
        s = self.streams.pop(ev.stream_id, None)
        self.blocked.pop(ev.stream_id, None)
        self.callbacks.h2_stats.rx_reset += 1
        if s is not None and not s.done:
            self.callbacks.stream_reset_by_peer(s)

    def _on_priority(self, ev) -> None:
        """Envoy's PRIORITY flood check (``ConnectionImpl::trackInboundFrames``): more than
        ``max_inbound_priority_frames_per_stream`` x (1 + streams opened) ends the connection,
        with nothing more written."""
        self.priority_frames += 1
        if self.priority_frames > \
                self.options.max_inbound_priority_frames_per_stream * (1 + self.opened):
            self._flood("inbound_priority_frames_flood")

    def _flood(self, stat: str) -> None:
        self.conn.data_to_send()
        self.dead = True
        raise CodecError(0, "http2." + stat, body=False)

    def _on_window(self, ev) -> None:
        if self.blocked:
            for sid, s in list(self.blocked.items()):
                self._drain(s)

    # ------------------------------------------------------------------ output

    def reset_stream(self, stream, code=NO_ERROR) -> None:
        self.blocked.pop(stream.sid, None)
        stream.out = None
        try:
            self.conn.reset_stream(stream.sid, code)
        except h2.exceptions.ProtocolError:    # already closed both ways
            return
        self.callbacks.h2_stats.tx_reset += 1
        self.flush()

    def stream_complete(self, stream) -> None:
        """The connection manager is done with ``stream``: a response that ended before the
        request did resets it (Envoy's doEndStream: RST_STREAM NO_ERROR, RFC 9113 §8.1)."""
        if not stream.request_complete:
            self.reset_stream(stream, NO_ERROR)
        self.streams.pop(stream.sid, None)

    def active_streams(self) -> int:
        return len(self.streams)

    def shutdown_notice(self) -> None:
        """The drain's first GOAWAY: last stream 2^31-1, so nothing in flight is refused
        (RFC 9113 §6.8 "graceful shutdown"; Envoy's ``shutdownNotice``)."""
        if not self.dead and not self.goaway_sent:
            self._write_goaway(0x7FFFFFFF, NO_ERROR)

    def goaway(self, code=NO_ERROR) -> None:
        """The final GOAWAY, naming the last stream taken; later streams are refused."""
        if self.dead or self.goaway_sent:
            return
        self.goaway_sent = True
        self._write_goaway(self.last_stream_id, code)
        self.callbacks.h2_stats.goaway_sent += 1

    def _write_goaway(self, last_stream_id: int, code) -> None:
        # Written beside h2 rather than through close_connection(), which would close h2's
        # state machine while the streams up to last_stream_id still finish.
        f = GoAwayFrame(0)
        f.last_stream_id = last_stream_id
        f.error_code = code
        self.flush()
        self.write(f.serialize())

    def __repr__(self):
        return f"<H2ServerCodec streams={len(self.streams)} blocked={len(self.blocked)}>"
