"""The router filter: sends a routed request to its cluster and relays the response
(Envoy's ``source/common/router/router.cc``, reduced to what is built so far).

Per request it picks the cluster (``cluster``, ``weighted_clusters`` or ``cluster_header``),
finalises the upstream request headers (route/vhost/route-config mutations, rewrites,
``x-envoy-expected-rq-timeout-ms``), picks a host, and streams the request and response through
an ``UpstreamRequest``. Failures become Envoy's local replies: no host 503 ``no healthy
upstream`` (UH), circuit breaker 503 ``overflow`` with ``x-envoy-overloaded`` (UO), connect
failure 503 (UF), termination before headers 503 (UC), a malformed response 502 ``protocol
error`` (UPE); after the response started, the downstream is reset instead. The route timeout
(15 s unless configured, 0 disables; ``x-envoy-upstream-rq-timeout-ms`` overrides) runs from the
end of the downstream request to the end of the upstream response: 504 ``upstream request
timeout`` (UT). Every response code, upstream or local, is charged to the cluster's code stats
(``Filter::chargeUpstreamCode``), split ``internal``/``external`` by ``x-envoy-internal``.
"""

from __future__ import annotations

from meshproxy.http import local_reply
from meshproxy.router.upstream_request import UpstreamRequest
from meshproxy.upstream.h1_connection import OVERFLOW

_RQ_TIMEOUT_HDR = b"x-envoy-upstream-rq-timeout-ms"
_PER_TRY_HDR = b"x-envoy-upstream-rq-per-try-timeout-ms"
_EXPECTED_HDR = b"x-envoy-expected-rq-timeout-ms"
_SERVICE_TIME_HDR = b"x-envoy-upstream-service-time"
_ORIGINAL_PATH_HDR = b"x-envoy-original-path"
_INTERNAL_HDR = b"x-envoy-internal"
PROTOCOL_ERROR = "protocol error"


def reset_reply(reason: str, detail: str = "") -> local_reply.Reply:
    """The local reply for an upstream reset before response headers. Envoy answers a protocol
    error with 502 (``Http::Code::BadGateway``) and flag UPE, everything else with 503.
    TODO(owner of http/local_reply.py): fold the 502/UPE case into ``upstream_reset``."""
    reply = local_reply.upstream_reset(reason, detail)
    if reason == PROTOCOL_ERROR:
        reply = local_reply.Reply(502, reply.body, "UPE", reply.details)
    return reply


class Router:
    __slots__ = ("stream", "route", "cluster", "weighted", "upstream", "timeout", "request_done",
                 "paused_downstream", "host_rewritten", "internal")

    def __init__(self, stream, route):
        self.stream = stream
        self.route = route
        self.cluster = None
        self.weighted = None
        self.upstream = None
        self.timeout = 0.0
        self.request_done = False
        self.paused_downstream = False
        self.host_rewritten = False
        self.internal = False

    # ------------------------------------------------------------------ request

    def decode_headers(self, req, end_stream: bool) -> None:
        stream = self.stream
        action = self.route.action
        hcm = stream.hcm
        name = action.cluster
        if name is None:
            if action.weighted is not None:
                self.weighted = action.pick_weighted()
                name = self.weighted.name
            elif action.cluster_header is not None:
                v = req.get(action.cluster_header)
                name = v.decode("latin-1") if v else None
        cluster = hcm.cluster_manager.get(name) if name else None
        stream.upstream_cluster_name = name.encode() if name else None
        if cluster is None:
            stream.config.stats.no_cluster += 1
            reply = local_reply.CLUSTER_NOT_FOUND
            if action.cluster_not_found_status != 503:
                reply = local_reply.Reply(action.cluster_not_found_status, b"", "NC",
                                          "cluster_not_found")
            return stream.send_local_reply(reply, route_mutations=True)
        self.cluster = cluster
        if cluster.config.http2 and not cluster.config.use_downstream_protocol:
            # HTTP/2 upstreams land with the HTTP/2 work; refuse clearly rather than speak
            # HTTP/1.1 to an HTTP/2-only server.
            return stream.send_local_reply(local_reply.upstream_reset("protocol error"),
                                           route_mutations=True)
        if req.envoy_headers or stream.config.internal_address_config:
            self.internal = req.get(_INTERNAL_HDR) == b"true"
        self._finalize_request(req, action, cluster)
        if end_stream:
            self.request_done = True
        self._start_attempt()
        if end_stream and self.timeout and self.upstream is not None:
            self._arm_timeout()

    def _finalize_request(self, req, action, cluster) -> None:
        stream = self.stream
        suppress = stream.config.suppress_envoy_headers
        # Timeout: route, overridden by x-envoy-upstream-rq-timeout-ms (consumed).
        timeout = action.timeout
        if req.envoy_headers:
            kept = []
            for n, v in req.headers:
                if n == _RQ_TIMEOUT_HDR:
                    try:
                        timeout = int(v) / 1000.0
                    except ValueError:
                        pass
                elif n != _EXPECTED_HDR:
                    kept.append((n, v))
            req.headers = kept
        self.timeout = timeout
        # Route header mutations: weighted cluster, route, vhost, route config; the least
        # specific last so it wins, unless most_specific_header_mutations_wins.
        route = self.route
        table = route.vhost.table
        w = self.weighted
        muts = (w.request_mutation if w is not None else None, route.request_mutation,
                route.vhost.request_mutation, table.request_mutation)
        if table.most_specific_header_mutations_wins:
            muts = muts[::-1]
        for m in muts:
            if m is not None:
                m.apply(req, stream)
        # Path and host rewrites (RouteEntryImplBase::finalizeRequestHeaders).
        if action.prefix_rewrite is not None or action.regex_rewrite is not None:
            from meshproxy.router.rewrite import rewrite_path
            new_path = rewrite_path(req.path, route.match, action)
            if new_path != req.path:
                if not suppress:
                    req.set(_ORIGINAL_PATH_HDR, req.path)
                req.path = new_path
        if w is not None and w.host_rewrite is not None:
            self._rewrite_host(req, w.host_rewrite, action)
        elif action.host_rewrite_literal is not None:
            self._rewrite_host(req, action.host_rewrite_literal, action)
        elif action.host_rewrite_header is not None:
            v = req.get(action.host_rewrite_header)
            if v:
                self._rewrite_host(req, v, action)
        elif action.host_rewrite_path_regex is not None:
            from meshproxy.router.rewrite import substitute
            rx, sub = action.host_rewrite_path_regex
            from meshproxy.router.route_table import strip_query
            self._rewrite_host(req, substitute(rx, sub, strip_query(req.path)), action)
        if timeout and not suppress:
            req.set(_EXPECTED_HDR, b"%d" % int(timeout * 1000))

    def _rewrite_host(self, req, host: bytes, action) -> None:
        if action.append_x_forwarded_host and req.authority:
            old = req.get(b"x-forwarded-host")
            req.set(b"x-forwarded-host", old + b"," + req.authority if old else req.authority)
        req.authority = host
        self.host_rewritten = True

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self.request_done = True
        up = self.upstream
        if up is not None:
            up.send_data(data, end_stream)
            if end_stream and self.timeout and self.stream.route_deadline is None:
                self._arm_timeout()

    def _arm_timeout(self) -> None:
        stream = self.stream
        stream.route_deadline = stream.hcm.loop.time() + self.timeout
        stream.hcm.timer.schedule(stream.route_deadline)

    # ------------------------------------------------------------------ attempts

    def _start_attempt(self) -> None:
        stream = self.stream
        cluster = self.cluster
        host = cluster.choose_host(stream)
        if host is None:
            cluster.stats.upstream_cx_none_healthy += 1
            cluster.charge(503, self.internal)
            return stream.send_local_reply(local_reply.NO_HEALTHY_UPSTREAM, route_mutations=True)
        stream.upstream_host = host
        if self.host_rewritten is False and self.route.action.auto_host_rewrite and host.hostname:
            stream.request.authority = host.hostname.encode()
        self.upstream = UpstreamRequest(self, cluster, host)
        self.upstream.start()

    # ------------------------------------------------------------------ callbacks from attempts

    def on_upstream_1xx(self, upstream, status: int) -> None:
        # Envoy charges 1xx heads it drops (Filter::onUpstream1xxHeaders).
        self.cluster.charge(status, self.internal)

    def on_upstream_headers(self, upstream, resp, end_stream: bool) -> None:
        stream = self.stream
        status = resp.status
        self.cluster.charge(status, self.internal)
        hs = upstream.host.stats
        if status >= 500 and status < 600:
            hs.rq_error += 1
        else:
            hs.rq_success += 1
        if not stream.config.suppress_envoy_headers and stream.request_complete:
            ms = int((stream.hcm.loop.time() - stream.request_complete_time) * 1000)
            resp.headers.append((_SERVICE_TIME_HDR, b"%d" % ms))
        stream.apply_route_response_mutations(resp, self.weighted)
        if end_stream:
            stream.route_deadline = None
            self.upstream = None
        stream.encode_headers(resp, end_stream)

    def on_upstream_data(self, upstream, data: bytes, end_stream: bool) -> None:
        stream = self.stream
        if end_stream:
            stream.route_deadline = None
            self.upstream = None
        stream.encode_data(data, end_stream)

    def on_upstream_reset(self, upstream, reason: str, detail: str = "") -> None:
        stream = self.stream
        self.upstream = None
        if stream.done:
            return
        if stream.response_started:
            # Too late for a reply (Filter::chargeUpstreamAbort charges nothing then).
            stream.config.stats.rq_reset_after_downstream_response_started += 1
            stream.response_flags = "UPE" if reason == PROTOCOL_ERROR else "UC"
            stream.reset_stream()
            return
        stream.route_deadline = None
        if reason == OVERFLOW:
            self.cluster.charge(503, self.internal)
            upstream.host.stats.rq_error += 1
            return stream.send_local_reply(local_reply.OVERFLOW, route_mutations=True)
        reply = reset_reply(reason, detail)
        self.cluster.charge(reply.status, self.internal)
        upstream.host.stats.rq_error += 1
        stream.send_local_reply(reply, route_mutations=True)

    def on_timeout(self) -> None:
        stream = self.stream
        cluster = self.cluster
        up = self.upstream
        if up is not None:
            cluster.stats.upstream_rq_timeout += 1
            up.host.stats.rq_timeout += 1
            self.upstream = None
            up.abort()
            if up.awaiting_headers and not stream.response_started:
                cluster.charge(504, self.internal)
                up.host.stats.rq_error += 1
        if stream.response_started:
            stream.response_flags = "UT"
            stream.reset_stream()
        else:
            stream.send_local_reply(local_reply.UPSTREAM_TIMEOUT, route_mutations=True)

    def abort_upstream(self) -> None:
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abort()

    def on_downstream_reset(self) -> None:
        # Envoy counts no upstream_rq_tx_reset when it resets an HTTP/1 upstream request.
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abort()

    def on_upstream_write_paused(self, paused: bool) -> None:
        # Upstream can't take more request body: stop reading the client (STYLE.md §10).
        if paused != self.paused_downstream:
            self.paused_downstream = paused
            self.stream.hcm.conn.read_disable(paused)
            stats = self.stream.config.stats
            if paused:
                stats.downstream_flow_control_paused_reading_total += 1
            else:
                stats.downstream_flow_control_resumed_reading_total += 1

    def on_downstream_write_paused(self, paused: bool) -> None:
        up = self.upstream
        if up is not None:
            up.read_disable(paused)

    def release_flow_control(self) -> None:
        if self.paused_downstream:
            self.paused_downstream = False
            self.stream.hcm.conn.read_disable(False)

