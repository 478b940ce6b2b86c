"""One request/response exchange inside the connection manager (Envoy's ``ActiveStream``).

The stream exists from the request's first byte (so the request, header and stream-idle
timeouts run while the head is still arriving), as in Envoy. Request path: the codec calls
``decode_headers`` / ``decode_data``; the stream applies the connection manager's header rules
(``ConnectionManagerUtility::mutateRequestHeaders``), picks the route, answers direct responses
and redirects itself, and hands routed requests to the router. Response path: the router (or a
local reply) calls ``encode_headers`` / ``encode_data``; the stream adds ``date``, ``server``,
``connection`` as Envoy decides it, and passes the result to the codec.
"""

from __future__ import annotations

import time

from meshproxy.http import local_reply
from meshproxy.http.date_server import set_date_server
from meshproxy.http.sanitize import mutate_request_headers
from meshproxy.router.route_table import ADMIN, DIRECT_RESPONSE, REDIRECT, ROUTE
from meshproxy.router.router import Router

_XRID = b"x-request-id"

class ActiveStream:
    __slots__ = ("hcm", "codec", "config", "conn", "request", "route", "router",
                 "start_mono", "request_complete", "request_complete_time", "response_started",
                 "response_complete", "response_status", "response_flags", "details",
                 "upstream_host", "upstream_cluster_name", "idle_deadline", "request_deadline",
                 "route_deadline", "headers_deadline", "done", "request_headers_end_stream",
                 "close_connection", "bytes_received", "bytes_sent", "request_id",
                 "max_deadline", "filters")

    def __init__(self, hcm):
        self.hcm = hcm
        self.codec = hcm.codec
        cfg = self.config = hcm.config
        self.conn = hcm.conn
        self.request = None
        self.route = None
        self.router = None
        now = self.start_mono = hcm.loop.time()
        self.request_complete = False
        self.request_complete_time = 0.0
        self.response_started = False
        self.response_complete = False
        self.response_status = 0
        self.response_flags = ""
        self.details = ""
        self.upstream_host = None
        self.upstream_cluster_name = None
        self.idle_deadline = None
        self.request_deadline = None
        self.route_deadline = None
        self.headers_deadline = None
        self.done = False
        self.request_headers_end_stream = False
        self.close_connection = False
        self.bytes_received = 0
        self.bytes_sent = 0
        self.request_id = None
        self.filters = None       # _Filters: the HCM's HTTP filters, when it has any
        stats = cfg.stats
        stats.downstream_rq_total += 1
        stats.downstream_rq_active += 1
        timer = hcm.timer
        if cfg.stream_idle_timeout:
            self.idle_deadline = now + cfg.stream_idle_timeout
            timer.schedule(self.idle_deadline)
        if cfg.request_timeout:
            self.request_deadline = now + cfg.request_timeout
            timer.schedule(self.request_deadline)
        if cfg.request_headers_timeout:
            self.headers_deadline = now + cfg.request_headers_timeout
            timer.schedule(self.headers_deadline)
        self.max_deadline = None
        if cfg.max_stream_duration:
            self.max_deadline = now + cfg.max_stream_duration
            timer.schedule(self.max_deadline)

    @property
    def start_time(self) -> float:
        """Wall-clock start (%START_TIME%), derived from the loop clock only when asked."""
        return time.time() - (self.hcm.loop.time() - self.start_mono)

    # ------------------------------------------------------------------ request path

    def decode_headers(self, req, end_stream: bool) -> None:
        cfg = self.config
        stats = cfg.stats
        self.request = req
        self.headers_deadline = None
        now = self.hcm.loop.time()    # uvloop's clock moves once per loop iteration
        if self.idle_deadline is not None:
            self.idle_deadline = now + cfg.stream_idle_timeout
        if not req.keep_alive:
            self.close_connection = True
        mrpc = cfg.max_requests_per_connection
        if mrpc:
            hcm = self.hcm
            hcm.requests_started += 1
            if hcm.requests_started >= mrpc:
                stats.downstream_cx_max_requests_reached += 1
                hcm.max_requests_reached(self)
        if end_stream:
            self.request_complete = True      # _on_request_complete, inline
            self.request_complete_time = now
            self.request_deadline = None
        # Envoy's HCM checks (ConnectionManagerImpl::ActiveStream::decodeHeaders)
        if req.upgrade is not None and not self._upgrade_allowed(req):
            stats.downstream_rq_ws_on_non_ws_route += 1
            return self.send_local_reply(local_reply.UPGRADE_FAILED)
        if req.authority is None:
            return self.send_local_reply(local_reply.MISSING_HOST)
        if req.method == b"QUERY":
            # Envoy 1.40's codec takes QUERY but its connection manager refuses it.
            return self.send_local_reply(local_reply.INVALID_METHOD)
        path = req.path
        if path[:1] != b"/" and req.method != b"CONNECT" and path != b"*":
            stats.downstream_rq_non_relative_path += 1
            return self.send_local_reply(local_reply.ABSOLUTE_PATH)
        if cfg.reject_fragment and b"#" in path:
            return self.send_local_reply(local_reply.INVALID_PATH)
        if req.expect_continue and not cfg.proxy_100_continue:
            # Envoy answers "Expect: 100-continue" itself and strips it (RFC 9110 §10.1.1);
            # the 100 counts as a completed 1xx response in the stats, as in Envoy.
            self.codec.encode_100_continue()
            stats.downstream_rq_1xx += 1
            stats.downstream_rq_completed += 1
            ls = self.hcm.lstats
            ls.downstream_rq_1xx += 1
            ls.downstream_rq_completed += 1
        self.request_id = mutate_request_headers(req, self.conn, cfg)
        # Envoy resolves the route once and caches it for every filter (cached_route_).
        route = self.route = cfg.route_table.route(req)
        if cfg.filters:
            self.filters = _Filters(self, cfg.filters)
            if self.filters.run(req, end_stream):
                return
        elif route is not None and route.kind == ROUTE:
            # The common case, without the call (_terminal_headers does the same).
            stats.rq_total += 1
            r = self.router = Router(self, route)
            r.decode_headers(req, end_stream)
            return
        self._terminal_headers(req, end_stream)

    def continue_decoding(self) -> None:
        """A filter that stopped the request lets it go on (Envoy's ``continueDecoding``):
        the remaining filters, then the router with the body that arrived meanwhile."""
        if self.done or self.response_started:
            return
        req = self.request
        headers_end = self.request_headers_end_stream
        fs = self.filters
        held = self.router
        self.router = None
        if fs.run(req, headers_end):
            self.router = held
            return
        self._terminal_headers(req, headers_end)
        for data, end_stream in held.body:
            r = self.router
            if r is None or self.done:
                break
            r.decode_data(data, end_stream)

    def _terminal_headers(self, req, end_stream: bool) -> None:
        """The router filter's decodeHeaders: route, redirect or answer directly."""
        stats = self.config.stats
        stats.rq_total += 1  # the router filter sees the request from here on
        route = self.route
        if route is None:
            stats.no_route += 1
            return self.send_local_reply(local_reply.NO_ROUTE)
        kind = route.kind
        if kind == ROUTE:
            self.router = Router(self, route)
            self.router.decode_headers(req, end_stream)
        elif kind == DIRECT_RESPONSE:
            stats.rq_direct_response += 1
            self._direct_response(route)
        elif kind == REDIRECT:
            stats.rq_redirect += 1
            self._redirect(route)
        elif kind == ADMIN:
            self.router = route.action.filter_for(self)
            self.router.decode_headers(req, end_stream)
        else:
            self.send_local_reply(local_reply.NO_ROUTE)

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.bytes_received += len(data)
        if self.idle_deadline is not None:
            self.idle_deadline = self.hcm.loop.time() + self.config.stream_idle_timeout
        if end_stream:
            self._on_request_complete()
        r = self.router
        if r is not None:
            r.decode_data(data, end_stream)
        if end_stream and self.response_complete:
            self._finish()

    def decode_trailers(self, trailers: list) -> None:
        """Request trailers end the request (HTTP/2 HEADERS with END_STREAM, RFC 9113 §8.1);
        the router passes them upstream."""
        if self.idle_deadline is not None:
            self.idle_deadline = self.hcm.loop.time() + self.config.stream_idle_timeout
        self._on_request_complete()
        r = self.router
        if r is not None:
            dt = getattr(r, "decode_trailers", None)
            if dt is not None:
                dt(trailers)
            else:
                r.decode_data(b"", True)
        if self.response_complete:
            self._finish()

    def _on_request_complete(self):
        self.request_complete = True
        self.request_complete_time = self.hcm.loop.time()
        self.request_deadline = None

    def _upgrade_allowed(self, req) -> bool:
        up = req.upgrade.lower()
        return bool(self.config.upgrade_types.get(up)) and False  # upgrades land with issue 7

    # ------------------------------------------------------------------ local answers

    def _direct_response(self, route) -> None:
        from meshproxy.router.redirect import direct_response_location
        dr = route.action
        body = dr.body or b""
        reply = local_reply.Reply(dr.status, body, "", "direct_response")
        self.details = reply.details
        # Envoy: a 201/3xx direct response carries the request's URI as location; the route's
        # response headers come before the body's content-length/content-type.
        location = direct_response_location(self.request, dr.status)
        resp = local_reply.ResponseHeaders(dr.status, [] if location is None
                                           else [(b"location", location)])
        self.apply_route_response_mutations(resp, None)
        if body:
            resp.headers.append((b"content-length", b"%d" % len(body)))
            resp.headers.append((b"content-type", b"text/plain"))
            resp.content_length = len(body)
        self._local(reply, resp, body)

    def _redirect(self, route) -> None:
        from meshproxy.router.redirect import redirect_location
        rd = route.action
        location = redirect_location(self.request, rd, route)
        resp = local_reply.ResponseHeaders(rd.status, [(b"location", location)])
        self.apply_route_response_mutations(resp, None)
        self._send(resp, b"")

    def send_local_reply(self, reply, body: bytes | None = None, route_mutations: bool = False,
                         grpc_status: int | None = None):
        """Answer from the proxy itself (see ``http.local_reply``); a gRPC request gets the
        answer as a gRPC status (``grpc_status``, else the one Envoy maps the HTTP status to)."""
        if self.response_started:
            # Too late for a reply: Envoy resets the stream, which for HTTP/1 closes.
            self.reset_stream()
            return
        if reply.flag:
            self.response_flags = reply.flag
        self.details = reply.details
        req = self.request
        if req is not None and local_reply.is_grpc(req):
            resp, b = local_reply.grpc_response_for(reply, body, grpc_status)
        else:
            resp, b = local_reply.response_for(reply, body)
        if route_mutations and self.route is not None:
            self.apply_route_response_mutations(resp, None)
        self._local(reply, resp, b)

    def _local(self, reply, resp, body: bytes) -> None:
        if reply.status == 400:
            # A 400 means a malformed message: HTTP/1 cannot trust the connection any more
            # (ActiveStream::sendLocalReply, stream_error_on_invalid_http_message false).
            self.close_connection = True
        self._send(resp, body)

    def _send(self, resp, body: bytes) -> None:
        if body:
            self.encode_headers(resp, False)
            self.encode_data(body, True)
        else:
            self.encode_headers(resp, True)

    def apply_route_response_mutations(self, resp, weighted) -> None:
        route = self.route
        chain = route.resp_chain
        if weighted is not None and weighted.response_mutation is not None:
            # the weighted cluster's own level is the most specific
            if route.vhost.table.most_specific_header_mutations_wins:
                chain = chain + (weighted.response_mutation,)
            else:
                chain = (weighted.response_mutation,) + chain
        for m in chain:
            m.apply(resp, self)

    # ------------------------------------------------------------------ response path

    def encode_headers(self, resp, end_stream: bool) -> None:
        cfg = self.config
        hcm = self.hcm
        self.response_started = True
        self.response_status = resp.status
        if self.idle_deadline is not None and not end_stream:   # (_finish clears it)
            self.idle_deadline = hcm.loop.time() + cfg.stream_idle_timeout
        # date and server (ConnectionManagerUtility::mutateResponseHeaders), in one pass
        set_date_server(resp, cfg.server_transform, cfg.server_name)
        h = resp.headers
        if cfg.always_set_request_id_in_response and self.request_id is not None:
            resp.set(_XRID, self.request_id)
        if cfg.via is not None:
            old = resp.get(b"via")
            resp.set(b"via", old + b", " + cfg.via if old else cfg.via)
        req = self.request
        http10 = req is not None and req.version == b"1.0"
        if hcm.draining and not hcm.drain_state:
            # The listener drains: like Envoy's drainClose() decision, this starts the
            # connection's drain sequence (Connection: close from now on).
            hcm.start_drain_sequence()
            cfg.stats.downstream_cx_drain_close += 1
        if http10 and not end_stream and resp.content_length < 0:
            # An HTTP/1.0 body of unknown length is delimited by the close (RFC 9112 §6.3).
            self.close_connection = True
        if not self.request_complete:
            # The response ends before the request: HTTP/1 cannot continue on this
            # connection (Envoy: downstream_rq_response_before_rq_complete).
            self.close_connection = True
        if self.close_connection or hcm.drain_state:
            # While draining Envoy only announces the close; the connection itself closes
            # at the end of drain_timeout (or when the client does).
            h.append((b"connection", b"close"))
        elif http10:
            h.append((b"connection", b"keep-alive"))
        self.codec.encode_headers(self, resp, end_stream)
        s = resp.status // 100
        stats = cfg.stats
        ls = hcm.lstats   # Envoy's per-listener copy (listener.<addr>.http.<prefix>.*)
        if s == 2:
            stats.downstream_rq_2xx += 1
            ls.downstream_rq_2xx += 1
        elif s == 5:
            stats.downstream_rq_5xx += 1
            ls.downstream_rq_5xx += 1
        elif s == 4:
            stats.downstream_rq_4xx += 1
            ls.downstream_rq_4xx += 1
        elif s == 3:
            stats.downstream_rq_3xx += 1
            ls.downstream_rq_3xx += 1
        else:
            stats.downstream_rq_1xx += 1
            ls.downstream_rq_1xx += 1
        if end_stream:
            self._on_response_complete()

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.bytes_sent += len(data)
        if self.idle_deadline is not None and not end_stream:   # (_finish clears it)
            self.idle_deadline = self.hcm.loop.time() + self.config.stream_idle_timeout
        self.codec.encode_data(self, data, end_stream)
        if end_stream:
            self._on_response_complete()

    def encode_trailers(self, trailers) -> None:
        self.codec.encode_trailers(self, trailers)
        self._on_response_complete()

    def _on_response_complete(self) -> None:
        self.response_complete = True
        if not self.request_complete:
            # Envoy resets a stream whose response ended first, which counts as a reset.
            stats = self.config.stats
            stats.downstream_rq_response_before_rq_complete += 1
            stats.downstream_rq_rx_reset += 1
        self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.idle_deadline = self.request_deadline = self.route_deadline = None
        self.headers_deadline = self.max_deadline = None
        stats = self.config.stats
        stats.downstream_rq_active -= 1
        stats.downstream_rq_completed += 1
        self.hcm.lstats.downstream_rq_completed += 1
        self.hcm.stream_done(self)
        # The stream and its terminal filter point at each other; cutting the link here lets
        # reference counting free both (and the request they hold) without the cycle
        # collector, which otherwise ran every ~100 requests.
        self.router = None
        if self.filters is not None:
            self._destroy_filters()

    def _destroy_filters(self) -> None:
        fs = self.filters
        self.filters = None
        for f in fs.filters:
            f.on_destroy()

    # ------------------------------------------------------------------ resets and timeouts

    def reset_stream(self) -> None:
        """Abort the exchange (HTTP/1: close the connection; HTTP/2: RST_STREAM)."""
        self.config.stats.downstream_rq_tx_reset += 1
        self.hcm.reset_stream(self)

    def on_connection_closed(self) -> None:
        """The downstream connection went away mid-stream."""
        if self.done:
            return
        self.done = True
        stats = self.config.stats
        stats.downstream_rq_active -= 1
        if not self.response_complete:
            stats.downstream_rq_rx_reset += 1
            if not self.response_flags:
                self.response_flags = "DC"
        r = self.router
        if r is not None:
            self.router = None          # (a cycle: the router points back here)
            r.on_downstream_reset()
        if self.filters is not None:
            self._destroy_filters()

    def check_timeouts(self, now: float):
        """Called by the connection's timer; returns the next deadline or None."""
        if self.done:
            return None
        d = self.route_deadline
        if d is not None and now >= d:
            self.route_deadline = None
            if self.router is not None:
                self.router.on_timeout()
            if self.done:
                return None
        stats = self.config.stats
        d = self.max_deadline
        if d is not None and now >= d:
            self.max_deadline = None
            stats.downstream_rq_max_duration_reached += 1
            self._timeout_reply(local_reply.MAX_DURATION_408 if not self.request_complete
                                else local_reply.MAX_DURATION_504)
            return None
        d = self.headers_deadline
        if d is not None and now >= d:
            self.headers_deadline = None
            stats.downstream_rq_header_timeout += 1
            self._timeout_reply(local_reply.REQUEST_HEADER_TIMEOUT)
            return None
        d = self.request_deadline
        if d is not None and now >= d:
            self.request_deadline = None
            if not self.request_complete:
                stats.downstream_rq_timeout += 1
                self._timeout_reply(local_reply.REQUEST_TIMEOUT)
                return None
        d = self.idle_deadline
        if d is not None and now >= d:
            self.idle_deadline = None
            stats.downstream_rq_idle_timeout += 1
            # 408 while the request is still arriving, else 504 (onStreamIdleTimeout).
            self._timeout_reply(local_reply.STREAM_IDLE_TIMEOUT if not self.request_complete
                                else local_reply.STREAM_IDLE_TIMEOUT_504)
            return None
        ds = [x for x in (self.route_deadline, self.request_deadline, self.idle_deadline,
                          self.headers_deadline, self.max_deadline) if x is not None]
        return min(ds) if ds else None

    def _timeout_reply(self, reply):
        r = self.router
        if r is not None:
            r.abort_upstream()
        self.send_local_reply(reply)

    def __repr__(self):
        req = self.request
        return (f"<ActiveStream {req.method.decode() if req else '-'} "
                f"{req.path.decode('latin-1') if req else '-'} status={self.response_status} "
                f"flags={self.response_flags or '-'}>")


class _Filters:
    """The HCM's HTTP filters for one request, run in order before the router (Envoy's
    ``ActiveStream`` decoder filter iteration). A filter's ``decode_headers`` returns True to
    stop iteration; it answers (a local reply) or later calls ``stream.continue_decoding``."""

    __slots__ = ("filters", "index", "stream")

    def __init__(self, stream, factories):
        self.stream = stream
        self.filters = [f.create(stream) for f in factories]
        self.index = 0

    def run(self, req, end_stream: bool) -> bool:
        fs = self.filters
        stream = self.stream
        while self.index < len(fs):
            f = fs[self.index]
            self.index += 1
            if f.decode_headers(req, end_stream):
                if not stream.response_started and stream.router is None:
                    stream.router = _HeldBody()
                return True
        return False


class _HeldBody:
    """Stands in for the router while a filter stops the request: the body that arrives
    meanwhile waits here (Envoy buffers it under the stream's buffer limit)."""

    __slots__ = ("body",)
    paused_downstream = False

    def __init__(self):
        self.body = []

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        self.body.append((data, end_stream))

    def on_downstream_reset(self) -> None:
        self.body = []

    def on_downstream_write_paused(self, paused: bool) -> None:
        pass

    def abort_upstream(self) -> None:
        pass

