"""One request/response exchange inside the connection manager (Envoy's ``ActiveStream``).

Request path: the codec calls ``decode_headers`` / ``decode_data``; the stream applies the
connection manager's header rules (``ConnectionManagerUtility::mutateRequestHeaders``), picks the
route, answers direct responses and redirects itself, and hands routed requests to the router.
Response path: the router (or a local reply) calls ``encode_headers`` / ``encode_data``; the
stream adds ``date``, ``server``, ``connection: close`` when the connection will close, and
passes the result to the codec. Timeouts are deadlines checked by the connection's lazy timer.
"""

from __future__ import annotations

import time

from meshproxy.http import local_reply
from meshproxy.http.request_id import new_request_id
from meshproxy.http.sanitize import sanitize
from meshproxy.router.route_table import ADMIN, DIRECT_RESPONSE, REDIRECT, ROUTE

_XFP = b"x-forwarded-proto"
_XRID = b"x-request-id"
_DATE_CACHE = [0, b""]


def date_value() -> bytes:
    now = int(time.time())
    if _DATE_CACHE[0] != now:
        _DATE_CACHE[0] = now
        _DATE_CACHE[1] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode()
    return _DATE_CACHE[1]


class ActiveStream:
    __slots__ = ("hcm", "codec", "config", "conn", "request", "route", "router", "start_time",
                 "start_mono", "request_complete", "request_complete_time", "response_started",
                 "response_complete", "response_status", "response_flags", "details",
                 "upstream_host", "upstream_cluster_name", "idle_deadline", "request_deadline",
                 "route_deadline", "done", "request_headers_end_stream", "close_connection",
                 "bytes_received", "bytes_sent", "request_id")

    def __init__(self, hcm):
        self.hcm = hcm
        self.codec = hcm.codec
        self.config = hcm.config
        self.conn = hcm.conn
        self.request = None
        self.route = None
        self.router = None
        self.start_time = time.time()
        self.start_mono = hcm.loop.time()
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
        self.done = False
        self.request_headers_end_stream = False
        self.close_connection = False
        self.bytes_received = 0
        self.bytes_sent = 0
        self.request_id = None
        cfg = self.config
        now = self.start_mono
        if cfg.stream_idle_timeout:
            self.idle_deadline = now + cfg.stream_idle_timeout
            hcm.timer.schedule(self.idle_deadline)
        if cfg.request_timeout:
            self.request_deadline = now + cfg.request_timeout
            hcm.timer.schedule(self.request_deadline)

    # ------------------------------------------------------------------ request path

    def decode_headers(self, req, end_stream: bool) -> None:
        cfg = self.config
        stats = cfg.stats
        stats.downstream_rq_total += 1
        stats.downstream_rq_http1_total += 1
        stats.downstream_rq_active += 1
        self.request = req
        if not req.keep_alive:
            self.close_connection = True
        if end_stream:
            self._on_request_complete()
        # Envoy's HCM checks (ConnectionManagerImpl::ActiveStream::decodeHeaders)
        if req.authority is None:
            return self.send_local_reply(local_reply.MISSING_HOST)
        path = req.path
        if cfg.reject_fragment and b"#" in path:
            return self.send_local_reply(local_reply.INVALID_PATH)
        if req.upgrade is not None and not self._upgrade_allowed(req):
            stats.downstream_rq_ws_on_non_ws_route += 1
            self.close_connection = True
            return self.send_local_reply(local_reply.UPGRADE_FAILED)
        if req.expect_continue and not cfg.proxy_100_continue:
            # Envoy answers "Expect: 100-continue" itself and strips it (RFC 9110 §10.1.1).
            self.codec.encode_100_continue()
        # Request header mutation for a sidecar (use_remote_address false by default).
        h = req.headers
        xfp = None
        rid = None
        for n, v in h:
            if n[:2] == b"x-":
                if n == _XFP:
                    xfp = v
                elif n == _XRID:
                    rid = v
                elif n[:8] == b"x-envoy-":
                    req.envoy_headers = True
        if req.envoy_headers or cfg.internal_address_config:
            sanitize(req, self.conn, cfg)
            h = req.headers
        if cfg.use_remote_address:
            # Edge proxy: this hop's own scheme and client address are authoritative.
            self._append_xff(req)
            req.set(_XFP, req.scheme)
        elif xfp is None:
            h.append((_XFP, req.scheme))
        if rid is None and cfg.generate_request_id:
            rid = new_request_id()
            h.append((_XRID, rid))
        self.request_id = rid
        route = cfg.route_table.route(req)
        if route is None:
            stats.no_route += 1
            return self.send_local_reply(local_reply.NO_ROUTE)
        self.route = route
        kind = route.kind
        if kind == ROUTE:
            from meshproxy.router.router import Router
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

    def _on_request_complete(self):
        self.request_complete = True
        self.request_complete_time = self.hcm.loop.time()
        self.request_deadline = None

    def _upgrade_allowed(self, req) -> bool:
        up = req.upgrade.lower()
        return bool(self.config.upgrade_types.get(up)) and False  # upgrades land with issue 7

    def _append_xff(self, req):
        if self.config.skip_xff_append:
            return
        ra = self.conn.remote_address
        if not ra:
            return
        ip = ra[0].encode() if isinstance(ra, tuple) else b""
        old = req.get(b"x-forwarded-for")
        req.set(b"x-forwarded-for", old + b"," + ip if old else ip)

    # ------------------------------------------------------------------ local answers

    def _direct_response(self, route) -> None:
        dr = route.action
        body = dr.body or b""
        headers = []
        resp = local_reply.ResponseHeaders(dr.status, headers)
        if body:
            headers.append((b"content-length", b"%d" % len(body)))
            headers.append((b"content-type", b"text/plain"))
            resp.content_length = len(body)
        self.apply_route_response_mutations(resp, None)
        self._send(resp, body)

    def _redirect(self, route) -> None:
        from meshproxy.router.redirect import redirect_location
        rd = route.action
        location = redirect_location(self.request, rd, route)
        resp = local_reply.ResponseHeaders(rd.status, [(b"location", location)])
        self.apply_route_response_mutations(resp, None)
        self._send(resp, b"")

    def send_local_reply(self, reply, body: bytes | None = None, route_mutations: bool = False):
        """Answer from the proxy itself (see ``http.local_reply``)."""
        if self.response_started:
            # Too late for a reply: Envoy resets the stream, which for HTTP/1 closes.
            self.reset_stream()
            return
        if reply.flag:
            self.response_flags = reply.flag
        self.details = reply.details
        resp, b = local_reply.response_for(reply, body)
        if route_mutations and self.route is not None:
            self.apply_route_response_mutations(resp, None)
        self._send(resp, b)

    def _send(self, resp, body: bytes) -> None:
        if body:
            self.encode_headers(resp, False)
            self.encode_data(body, True)
        else:
            self.encode_headers(resp, True)

    def apply_route_response_mutations(self, resp, weighted) -> None:
        route = self.route
        table = route.vhost.table
        muts = (weighted.response_mutation if weighted is not None else None,
                route.response_mutation, route.vhost.response_mutation, table.response_mutation)
        if table.most_specific_header_mutations_wins:
            muts = muts[::-1]
        for m in muts:
            if m is not None:
                m.apply(resp, self)

    # ------------------------------------------------------------------ response path

    def encode_headers(self, resp, end_stream: bool) -> None:
        cfg = self.config
        self.response_started = True
        self.response_status = resp.status
        h = resp.headers
        # date and server (ConnectionManagerUtility::mutateResponseHeaders)
        resp.set(b"date", date_value())
        st = cfg.server_transform
        if st == "OVERWRITE":
            resp.set(b"server", cfg.server_name)
        elif st == "APPEND_IF_ABSENT":
            resp.set_if_absent(b"server", cfg.server_name)
        if cfg.always_set_request_id_in_response and self.request_id is not None:
            resp.set(_XRID, self.request_id)
        if cfg.via is not None:
            old = resp.get(b"via")
            resp.set(b"via", old + b", " + cfg.via if old else cfg.via)
        if self.hcm.draining and not self.close_connection:
            self.close_connection = True
            cfg.stats.downstream_cx_drain_close += 1
        if not self.request_complete:
            # The response ends before the request: HTTP/1 cannot continue on this
            # connection (Envoy: downstream_rq_response_before_rq_complete).
            self.close_connection = True
        if self.close_connection and (self.request is None or self.request.version != b"1.0"):
            h.append((b"connection", b"close"))
        self.codec.encode_headers(self, resp, end_stream)
        s = resp.status // 100
        stats = cfg.stats
        if s == 2:
            stats.downstream_rq_2xx += 1
        elif s == 5:
            stats.downstream_rq_5xx += 1
        elif s == 4:
            stats.downstream_rq_4xx += 1
        elif s == 3:
            stats.downstream_rq_3xx += 1
        else:
            stats.downstream_rq_1xx += 1
        if end_stream:
            self._on_response_complete()

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.bytes_sent += len(data)
        if self.idle_deadline is not None:
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
            self.config.stats.downstream_rq_response_before_rq_complete += 1
        self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.idle_deadline = self.request_deadline = self.route_deadline = None
        stats = self.config.stats
        stats.downstream_rq_active -= 1
        stats.downstream_rq_completed += 1
        self.hcm.stream_done(self)

    # ------------------------------------------------------------------ resets and timeouts

    def reset_stream(self) -> None:
        """Abort the exchange; for HTTP/1 that means closing the connection."""
        self.config.stats.downstream_rq_tx_reset += 1
        self.hcm.close(abort=True)

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
            r.on_downstream_reset()

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
        d = self.request_deadline
        if d is not None and now >= d:
            self.request_deadline = None
            if not self.request_complete:
                self.config.stats.downstream_rq_timeout += 1
                self._timeout_reply(local_reply.REQUEST_TIMEOUT)
                return None
        d = self.idle_deadline
        if d is not None and now >= d:
            self.idle_deadline = None
            self.config.stats.downstream_rq_idle_timeout += 1
            self._timeout_reply(local_reply.STREAM_IDLE_TIMEOUT)
            return None
        ds = [x for x in (self.route_deadline, self.request_deadline, self.idle_deadline)
              if x is not None]
        return min(ds) if ds else None

    def _timeout_reply(self, reply):
        r = self.router
        if r is not None:
            r.abort_upstream()
        self.close_connection = True
        self.send_local_reply(reply)

    def __repr__(self):
        req = self.request
        return (f"<ActiveStream {req.method.decode() if req else '-'} "
                f"{req.path.decode('latin-1') if req else '-'} status={self.response_status} "
                f"flags={self.response_flags or '-'}>")
