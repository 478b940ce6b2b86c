"""The router filter: sends a routed request to its cluster and relays the response
(Envoy's ``source/common/router/router.cc``, reduced to what is built so far).

Per request it picks the cluster (``cluster``, ``weighted_clusters`` or ``cluster_header``),
finalises the upstream request headers (``rewrite.finalize_request_headers``,
``x-envoy-expected-rq-timeout-ms``, ``x-envoy-attempt-count``), picks a host, and streams the
request and response through an ``UpstreamRequest``. Failures become Envoy's local replies: no
host 503 ``no healthy upstream`` (UH), circuit breaker 503 ``overflow`` with
``x-envoy-overloaded`` (UO), connect failure 503 (UF), termination before headers 503 (UC), a
malformed response 502 ``protocol error`` (UPE); after the response started, the downstream is
reset instead. The route timeout (15 s unless configured, 0 disables;
``x-envoy-upstream-rq-timeout-ms`` overrides) runs from the end of the downstream request to the
end of the upstream response: 504 ``upstream request timeout`` (UT); a retry policy's
``per_try_timeout`` bounds each attempt until its response starts.

Retries follow the route's (else the virtual host's) retry policy and ``x-envoy-retry-on`` /
``x-envoy-max-retries`` (``upstream.retry_state``); the request body is kept for them up to the
connection's buffer limit (beyond it retries are abandoned, ``retry_or_shadow_abandoned``).
Every response code, upstream or local, is charged to the cluster's code stats
(``Filter::chargeUpstreamCode``), split ``internal``/``external`` by ``x-envoy-internal``; a
response that is retried is charged under ``retry.``.
"""

from __future__ import annotations

from meshproxy.http import local_reply
from meshproxy.router.control_headers import EXPECTED_HDR, consume_control_headers
from meshproxy.router.rewrite import finalize_request_headers
from meshproxy.router.shadow import start_shadows
from meshproxy.router.upstream_request import UpstreamRequest
from meshproxy.upstream.h1_connection import OVERFLOW
from meshproxy.upstream.outlier import LOCAL_ORIGIN_CONNECT_FAILED, LOCAL_ORIGIN_TIMEOUT
from meshproxy.upstream.retry_state import LIMIT_EXCEEDED, YES, RetryState

_SERVICE_TIME_HDR = b"x-envoy-upstream-service-time"
_ATTEMPT_HDR = b"x-envoy-attempt-count"
PROTOCOL_ERROR = "protocol error"
BUFFER_LIMIT_REPLY = local_reply.Reply(507, b"exceeded request buffer limit while retrying "
                                            b"upstream", "", "request_payload_exceeded_retry_"
                                                             "buffer_limit")


_SMALL_INTS = tuple(b"%d" % i for i in range(1000))   # formatting costs more than a lookup


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


class Router:
    __slots__ = ("stream", "route", "cluster", "weighted", "upstream", "timeout", "per_try",
                 "request_done", "paused_downstream", "host_rewritten", "internal", "retry",
                 "buffered", "buffered_bytes", "attempts", "retry_handle", "per_try_handle",
                 "extra_flag", "retry_policy", "shadows")

    def __init__(self, stream, route):
        self.stream = stream
        self.route = route
        self.cluster = None
        self.weighted = None
        self.upstream = None
        self.timeout = 0.0
        self.per_try = 0.0
        self.request_done = False
        self.paused_downstream = False
        self.host_rewritten = False
        self.internal = False
        self.retry = None          # RetryState, made when a retry is first considered
        self.retry_policy = None   # the policy it will be made from until then
        self.buffered = None
        self.buffered_bytes = 0
        self.attempts = 0
        self.retry_handle = None
        self.per_try_handle = None
        self.extra_flag = ""
        self.shadows = None        # router.shadow.Shadow list: mirrored copies of the request

    # ------------------------------------------------------------------ request

    def decode_headers(self, req, end_stream: bool) -> None:
        stream = self.stream
        action = self.route.action
        hcm = stream.hcm
        name = action.cluster
        if name is None:
            if action.weighted is not None:
                self.weighted = action.pick_weighted(req=req)
                name = self.weighted.name
            elif action.cluster_header is not None:
                v = req.get(action.cluster_header)
                name = v.decode("latin-1") if v else None
        cluster = hcm.cluster_manager.get(name) if name else None
        stream.upstream_cluster_name = name or None   # str; encoded where it is printed
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
        self._finalize_request(req, action)
        if end_stream:
            self.request_done = True
        if action.request_mirror_policies:
            self.shadows = start_shadows(self, req, end_stream,
                                         self.route.vhost.include_attempt_count)
        self._start_attempt()
        if end_stream and self.upstream is not None and (self.timeout or self.per_try):
            self._on_request_complete()

    def _finalize_request(self, req, action) -> None:
        stream = self.stream
        keep = not stream.config.suppress_envoy_headers
        timeout = action.timeout
        policy = action.retry_policy or self.route.vhost.retry_policy
        per_try = (policy.per_try_timeout or 0.0) if policy is not None else 0.0
        retry_on = max_retries = codes = names = None
        hedge = False
        if req.envoy_headers or stream.config.internal_address_config:
            c = consume_control_headers(req, timeout, per_try)
            timeout, per_try, retry_on, max_retries, codes, hedge, self.internal, names = c
        if per_try and timeout and per_try >= timeout:
            per_try = 0.0
        self.timeout = timeout
        self.per_try = per_try
        # retriable_request_headers: a request none of them matches is never retried, whatever
        # its x-envoy-retry-on says (RetryStateImpl clears retry_on_).
        if retry_on is not None or max_retries is not None or codes is not None or names:
            if policy is None or not policy.request_matchers or policy.allows_request(req):
                state = RetryState(policy, self.cluster, retry_on_header=retry_on,
                                   max_retries_header=max_retries, codes_header=codes,
                                   header_names=names)
                if state.enabled:
                    self.retry = state
        elif policy is not None and policy.retry_on and (
                not policy.request_matchers or policy.allows_request(req)):
            # Most requests are never retried: their RetryState (and its bookkeeping) is made
            # only when a response or reset might be retried (_retry_state).
            self.retry_policy = policy
        self.host_rewritten = finalize_request_headers(req, self.route, self.weighted, stream,
                                                       keep)
        if timeout or per_try:
            self._set_timeout_header(req, 0.0, hedge)

    def _set_timeout_header(self, req, elapsed: float, hedge: bool = False) -> None:
        """``FilterUtility::setTimeoutHeaders``: the per-try timeout if set (and not hedging),
        else the global one, less the time already spent."""
        expected = self.timeout if hedge else (self.per_try or self.timeout)
        if not expected or self.stream.config.suppress_envoy_headers:
            return
        ms = _ms(expected)
        if self.timeout:
            left = _ms(self.timeout) - int(elapsed * 1000)
            ms = min(ms, left) if left > 0 else 1
        req.set(EXPECTED_HDR, b"%d" % ms)

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self.request_done = True
        if self.shadows is not None:
            for s in self.shadows:
                s.send_data(data, end_stream)
        if data and (self.retry is not None or self.retry_policy is not None):
            if self.buffered is None:
                self.buffered = []
            self.buffered.append(data)
            self.buffered_bytes += len(data)
            if self.buffered_bytes > self.stream.hcm.listener_buffer_limit:
                self._abandon_retries()
                if self.upstream is None:
                    return self._local_reply(BUFFER_LIMIT_REPLY)
        up = self.upstream
        if up is not None:
            up.send_data(data, end_stream)
            if end_stream:
                self._on_request_complete()

    def decode_trailers(self, trailers: list) -> None:
        """Request trailers end the request; the attempt sends them if it can (an HTTP/1
        upstream writes them in the last chunk, or drops them as Envoy does by default)."""
        self.request_done = True
        up = self.upstream
        if up is None:
            return
        send = getattr(up, "send_trailers", None)
        conn = up.conn
        if send is not None:
            send(trailers)
        elif conn is not None and conn.stream is up:
            conn.send_trailers(trailers)
        else:
            up.send_data(b"", True)
        self._on_request_complete()

    def _abandon_retries(self) -> None:
        self.cluster.stats.retry_or_shadow_abandoned += 1
        if self.retry is not None:
            self.retry.release()
        self.retry = self.retry_policy = None
        self.buffered = None
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None

    def _on_request_complete(self) -> None:
        stream = self.stream
        if self.timeout and stream.route_deadline is None:
            stream.route_deadline = stream.hcm.loop.time() + self.timeout
            stream.hcm.timer.schedule(stream.route_deadline)
        if self.per_try and self.per_try_handle is None:
            self.per_try_handle = stream.hcm.loop.call_later(self.per_try, self._on_per_try_timeout)

    # ------------------------------------------------------------------ attempts

    def _start_attempt(self) -> None:
        stream = self.stream
        cluster = self.cluster
        retry = self.retry
        host = cluster.choose_host(stream)
        if retry is not None:
            # retry_host_predicate (previous_hosts): up to host_selection_retry_max_attempts
            # more picks to avoid tried hosts (ZoneAwareLoadBalancerBase::chooseHost makes
            # hostSelectionRetryCount() + 1 picks in all).
            tries = 0
            while host is not None and retry.reject_host(host) and \
                    tries < retry.max_host_attempts:
                host = cluster.choose_host(stream)
                tries += 1
        if host is None:
            cluster.stats.upstream_cx_none_healthy += 1
            cluster.charge(503, self.internal)
            return self._local_reply(local_reply.NO_HEALTHY_UPSTREAM)
        if retry is not None:
            retry.host_attempted(host)
        stream.upstream_host = host
        req = stream.request
        if not self.host_rewritten and self.route.action.auto_host_rewrite and host.hostname:
            req.authority = host.hostname.encode()
        self.attempts += 1
        if self.route.vhost.include_attempt_count:
            req.set(_ATTEMPT_HDR, b"%d" % self.attempts)
        up = self.upstream = UpstreamRequest(self, cluster, host)
        if self.attempts > 1 and self.buffered:
            up.pending = list(self.buffered)
            up.pending_bytes = self.buffered_bytes
        # UpstreamRequest.start, inline: ask the host's pool for a connection
        if self.request_done:
            up.end_pending = True
        up.pool = cluster.pool_for(host)
        up.pool.new_stream(up)

    def _retry(self, up, host) -> bool:
        """Schedule another attempt if the retry budget allows (True), else note why not."""
        status = self.retry.should_retry(True)
        if status != YES:
            self.extra_flag = "URX" if status == LIMIT_EXCEEDED else "UO"
            return False
        host.stats.rq_error += 1
        self._cancel_per_try()
        self.upstream = None
        self.retry_handle = self.stream.hcm.loop.call_later(self.retry.backoff(), self._do_retry)
        return True

    def _do_retry(self) -> None:
        self.retry_handle = None
        stream = self.stream
        if stream.done:
            return
        req = stream.request
        if stream.request_complete:
            self._set_timeout_header(req, stream.hcm.loop.time() - stream.request_complete_time)
        self._start_attempt()
        if self.request_done and self.upstream is not None:
            self._on_request_complete()

    # ------------------------------------------------------------------ callbacks from attempts

    def on_upstream_1xx(self, upstream, status: int) -> None:
        # Envoy charges 1xx heads it drops (Filter::onUpstream1xxHeaders).
        self.cluster.charge(status, self.internal)

    def _retry_state(self):
        """The request's RetryState, made from the route's policy on first need; the hosts
        tried so far (one attempt, until a retry exists) are remembered for previous_hosts."""
        retry = self.retry
        if retry is None and self.retry_policy is not None:
            retry = self.retry = RetryState(self.retry_policy, self.cluster)
            self.retry_policy = None
            if self.stream.upstream_host is not None:
                retry.host_attempted(self.stream.upstream_host)
        return retry

    def on_upstream_headers(self, upstream, resp, end_stream: bool) -> None:
        stream = self.stream
        status = resp.status
        mon = upstream.host.outlier     # outlier detection: Filter::onUpstreamHeaders
        if mon is not None:
            mon.put_http_status(status)
        retry = self.retry
        if retry is None and self.retry_policy is not None:
            if self.retry_policy.may_retry_headers(resp):
                retry = self._retry_state()
            else:
                self.retry_policy = None
        if retry is not None:
            would = retry.would_retry_headers(resp)
            if would and self._retry(upstream, upstream.host):
                self.cluster.charge_retry(status)
                if not end_stream:
                    upstream.abort()
                return
            if not would:
                retry.should_retry(False)
            retry.release()
            self.retry = None
        if self.per_try_handle is not None:
            self._cancel_per_try()
        self.cluster.charge(status, self.internal)
        hs = upstream.host.stats
        if status >= 500 and status < 600:
            hs.rq_error += 1
        else:
            hs.rq_success += 1
        if self.extra_flag:
            stream.response_flags = self.extra_flag
        if not stream.config.suppress_envoy_headers and stream.request_complete:
            ms = int((stream.hcm.loop.time() - stream.request_complete_time) * 1000)
            resp.headers.append((_SERVICE_TIME_HDR,
                                 _SMALL_INTS[ms] if ms < 1000 else b"%d" % ms))
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
        self._cancel_per_try()
        mon = upstream.host.outlier     # not for a circuit breaker's overflow (Envoy #25487)
        if mon is not None and reason != OVERFLOW:
            mon.put_result(LOCAL_ORIGIN_CONNECT_FAILED)
        if stream.done:
            return
        if stream.response_started:
            # Too late for a reply (Filter::chargeUpstreamAbort charges nothing then).
            stream.config.stats.rq_reset_after_downstream_response_started += 1
            stream.response_flags = "UPE" if reason == PROTOCOL_ERROR else "UC"
            stream.reset_stream()
            return
        retry = self._retry_state()
        if retry is not None and retry.would_retry_reset(reason) and \
                self._retry(upstream, upstream.host):
            return
        self._fail(upstream, reason, detail)

    def _fail(self, upstream, reason: str, detail: str) -> None:
        stream = self.stream
        stream.route_deadline = None
        if reason == OVERFLOW:
            reply = local_reply.OVERFLOW
        else:
            reply = local_reply.upstream_reset(reason, detail, self.attempts > 1)
        self.cluster.charge(reply.status, self.internal)
        upstream.host.stats.rq_error += 1
        self._local_reply(reply)

    def _local_reply(self, reply) -> None:
        self._cleanup()
        stream = self.stream
        stream.send_local_reply(reply, route_mutations=True)
        if self.extra_flag and reply.flag:
            stream.response_flags = reply.flag + "," + self.extra_flag

    def _on_per_try_timeout(self) -> None:
        self.per_try_handle = None
        up = self.upstream
        stream = self.stream
        if up is None or stream.done or stream.response_started:
            return
        self.cluster.stats.upstream_rq_per_try_timeout += 1
        up.host.stats.rq_timeout += 1
        if up.host.outlier is not None:
            up.host.outlier.put_result(LOCAL_ORIGIN_TIMEOUT, 504)
        self.upstream = None
        up.abort()
        retry = self._retry_state()
        if retry is not None and retry.would_retry_reset("local reset") and \
                self._retry(up, up.host):
            return
        self.cluster.charge(504, self.internal)
        up.host.stats.rq_error += 1
        self._local_reply(local_reply.UPSTREAM_TIMEOUT)

    def on_timeout(self) -> None:
        stream = self.stream
        cluster = self.cluster
        up = self.upstream
        if up is not None:
            cluster.stats.upstream_rq_timeout += 1
            up.host.stats.rq_timeout += 1
            self.upstream = None
            up.abort()
            if up.awaiting_headers and up.host.outlier is not None:
                up.host.outlier.put_result(LOCAL_ORIGIN_TIMEOUT, 504)
            if up.awaiting_headers and not stream.response_started:
                cluster.charge(504, self.internal)
                up.host.stats.rq_error += 1
        if stream.response_started:
            self._cleanup()
            stream.response_flags = "UT"
            stream.reset_stream()
        else:
            self._local_reply(local_reply.UPSTREAM_TIMEOUT)

    def _cancel_per_try(self) -> None:
        h = self.per_try_handle
        if h is not None:
            h.cancel()
            self.per_try_handle = None

    def _cleanup(self) -> None:
        self._cancel_per_try()
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None
        if self.retry is not None:
            self.retry.release()
        self.retry = self.retry_policy = None

    def abort_upstream(self) -> None:
        self._cleanup()
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abort()

    def on_downstream_reset(self) -> None:
        # Envoy counts no upstream_rq_tx_reset when it resets an HTTP/1 upstream request.
        self.abort_upstream()
        if self.shadows is not None and not self.request_done:
            # A shadow still streaming the request has nothing whole to send: cancel it.
            for s in self.shadows:
                s.abort()

    # ------------------------------------------------------------------ flow control

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
