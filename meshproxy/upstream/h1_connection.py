"""One upstream HTTP/1.1 connection: serialises requests and parses responses with httptools.

The connection serves one request at a time for the router's ``UpstreamRequest`` (``stream``)
and calls it back with ``on_upstream_headers`` / ``on_upstream_data`` / ``on_upstream_trailers``
/ ``on_upstream_reset``. Hop-by-hop response headers are consumed here (RFC 9110 §7.6.1).
A response to HEAD has no body whatever its Content-Length says (RFC 9110 §9.3.2); httptools
cannot be told so, so the parser is replaced after such a response.
"""

from __future__ import annotations

import asyncio

import httptools

from meshproxy.http.h1_common import (CHUNK_END, ConnectionHeaderState, chunk,
                                      encode_request_head)
from meshproxy.http.headers import ResponseHeaders

_SPECIAL = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                      b"upgrade", b"content-length"))

# reset reasons, as Envoy names them in local reply bodies and %UPSTREAM_TRANSPORT_FAILURE_REASON%
CONNECTION_FAILURE = "remote connection failure"
CONNECTION_TERMINATION = "connection termination"
PROTOCOL_ERROR = "protocol error"
LOCAL_RESET = "local reset"
OVERFLOW = "overflow"
CONNECT_TIMEOUT = "connection timeout"


class UpstreamH1Connection(asyncio.Protocol):
    __slots__ = ("pool", "stats", "transport", "stream", "parser", "requests", "closed",
                 "resp", "hdrs", "cstate", "eof_body", "head", "skip_1xx", "request_done",
                 "rx_started", "idle_since", "local_close", "keep_alive", "chunked_request")

    def __init__(self, pool):
        self.pool = pool
        self.stats = pool.cluster.stats
        self.transport = None
        self.stream = None
        self.parser = httptools.HttpResponseParser(self)
        self.requests = 0
        self.closed = False
        self.resp = None
        self.hdrs = None
        self.cstate = None
        self.eof_body = False
        self.head = False
        self.skip_1xx = False
        self.request_done = False
        self.rx_started = False
        self.idle_since = 0.0
        self.local_close = False
        self.keep_alive = True
        self.chunked_request = False

    # ---------------------------------------------------------------- transport events

    def connection_made(self, transport):
        self.transport = transport
        limit = self.pool.cluster.config.buffer_limit
        transport.set_write_buffer_limits(high=limit, low=limit // 2)

    def data_received(self, data):
        self.stats.upstream_cx_rx_bytes_total += len(data)
        if self.stream is None:
            # Bytes on an idle connection are a protocol violation (RFC 9112 §9.3.1 pairs each
            # response with a request); the connection cannot be trusted any more.
            self.stats.upstream_cx_protocol_error += 1
            self.close()
            return
        self.rx_started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.stats.upstream_cx_protocol_error += 1
            s = self.stream
            self.stream = None
            self.close()
            if s is not None:
                s.on_upstream_reset(PROTOCOL_ERROR, self)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.closed = True
        self.pool.on_connection_closed(self)
        s = self.stream
        if s is None:
            return
        self.stream = None
        if self.resp is not None and self.eof_body:
            # Body delimited by close (RFC 9112 §6.3 rule 8): the close ends it.
            self.resp = None
            s.on_upstream_data(b"", True)
            return
        s.on_upstream_reset(LOCAL_RESET if self.local_close else CONNECTION_TERMINATION, self)

    def pause_writing(self):
        s = self.stream
        if s is not None:
            s.on_upstream_write_paused(True)

    def resume_writing(self):
        s = self.stream
        if s is not None:
            s.on_upstream_write_paused(False)

    # ---------------------------------------------------------------- requests

    def send_headers(self, req, end_stream: bool) -> None:
        self.requests += 1
        self.request_done = end_stream
        self.rx_started = False
        self.head = req.method == b"HEAD"
        chunked = not end_stream and req.content_length < 0
        self.chunked_request = chunked
        data = encode_request_head(req, chunked, end_stream)
        self.stats.upstream_cx_tx_bytes_total += len(data)
        self.transport.write(data)

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if self.chunked_request:
            if data:
                out = chunk(data) + CHUNK_END if end_stream else chunk(data)
            else:
                out = CHUNK_END if end_stream else b""
        else:
            out = data
        if out:
            self.stats.upstream_cx_tx_bytes_total += len(out)
            self.transport.write(out)
        if end_stream:
            self.request_done = True

    def send_trailers(self, trailers) -> None:
        # Trailers go upstream only in chunked encoding; Envoy drops them unless enabled.
        self.send_data(b"", True)

    def reset(self) -> None:
        """The stream gives up on this connection (timeout, downstream reset): close it."""
        self.stream = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.local_close = True
            if self.transport is not None:
                self.transport.close()

    # ---------------------------------------------------------------- llhttp callbacks

    def on_message_begin(self):
        self.hdrs = []
        self.cstate = ConnectionHeaderState()

    def on_header(self, name: bytes, value: bytes):
        name = name.lower()
        if name in _SPECIAL:
            keep = self.cstate.take(name, value)
            if keep is False:
                return
        self.hdrs.append((name, value))

    def on_headers_complete(self):
        p = self.parser
        status = p.get_status_code()
        if 100 <= status < 200 and status != 101:
            # 1xx: Envoy answers Expect: 100-continue itself and drops upstream 1xx heads.
            self.skip_1xx = True
            return
        resp = ResponseHeaders(status, self.hdrs)
        self.cstate.apply(resp, p.should_keep_alive())
        self.keep_alive = resp.keep_alive
        no_body = self.head or status == 204 or status == 304
        end_stream = no_body or (not resp.chunked and resp.content_length == 0)
        self.eof_body = not no_body and not resp.chunked and resp.content_length < 0
        if self.eof_body:
            self.keep_alive = False
        self.resp = resp
        s = self.stream
        if end_stream:
            self.resp = None
            if self.head and not (not resp.chunked and resp.content_length <= 0):
                # httptools would wait for a HEAD response's body: start a fresh parser.
                self.parser = httptools.HttpResponseParser(self)
            self._response_complete()
        if s is not None:
            s.on_upstream_headers(resp, end_stream)

    def on_body(self, body: bytes):
        if self.resp is None:
            return
        s = self.stream
        if s is not None:
            s.on_upstream_data(body, False)

    def on_message_complete(self):
        if self.skip_1xx:
            self.skip_1xx = False
            return
        if self.resp is None:
            return
        self.resp = None
        s = self.stream
        self._response_complete()
        if s is not None:
            s.on_upstream_data(b"", True)

    def _response_complete(self):
        self.stream = None
        if self.keep_alive and self.request_done and not self.closed:
            self.pool.release(self)
        else:
            self.close()

    def __repr__(self):
        return (f"<UpstreamH1Connection {self.pool.host.address_str} requests={self.requests} "
                f"{'busy' if self.stream else 'idle'}{' closed' if self.closed else ''}>")
