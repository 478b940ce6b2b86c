"""Request mirroring: a route's ``request_mirror_policies`` (Istio's VirtualService ``mirror``).

As Envoy 1.40's router does it (``source/common/router/router.cc``, streaming shadows): when a
request is routed, each policy whose ``runtime_fraction`` draws true (always, when unset) gets a
copy of the request as it goes upstream — after the route's header mutations, with
``x-envoy-expected-rq-timeout-ms`` — sent to its cluster (``cluster``, or the one named by
``cluster_header``) while the body streams to both. The copy goes out the way Envoy's async
client sends it: the authority gets the ``-shadow`` suffix (before any port, after an IPv6
literal's bracket;
``disable_shadow_host_suffix_append`` keeps it; ``host_rewrite_literal`` replaces it first),
``x-envoy-internal: true`` and the proxy's own address appended to ``x-forwarded-for``. The
shadow's response is read and dropped: fire and forget, bounded by the route timeout. It never
affects the main request; an unknown cluster or no healthy host just means no shadow. CONNECT
is never mirrored.
"""

from __future__ import annotations

import random

from meshproxy.config.errors import ConfigError, join
from meshproxy.http.headers import RequestHeaders
from meshproxy.http.local_reply import upstream_reset
from meshproxy.router.upstream_request import UpstreamRequest

_XFF = b"x-forwarded-for"
_INTERNAL = (b"x-envoy-internal", b"true")
_DENOMINATORS = (100, 10_000, 1_000_000)


class ShadowPolicy:
    __slots__ = ("cluster", "cluster_header", "numerator", "denominator", "suffix",
                 "host_rewrite")

    def __init__(self, msg, path: str, cluster_names=None):
        if msg.cluster and msg.cluster_header:
            raise ConfigError(path, f"Only one of cluster '{msg.cluster}' or cluster_header "
                                    f"'{msg.cluster_header}' in request mirror policy can be "
                                    f"specified")
        if not msg.cluster and not msg.cluster_header:
            raise ConfigError(path, "Exactly one of cluster or cluster_header in request "
                                    "mirror policy need to be specified")
        if msg.cluster and cluster_names is not None and msg.cluster not in cluster_names:
            raise ConfigError(join(path, "cluster"),
                              f"route: unknown shadow cluster '{msg.cluster}'")
        self.cluster = msg.cluster or None
        self.cluster_header = msg.cluster_header.lower().encode() or None
        self.numerator = self.denominator = None
        if msg.HasField("runtime_fraction"):
            d = msg.runtime_fraction.default_value
            self.numerator = d.numerator
            self.denominator = _DENOMINATORS[d.denominator] if d.denominator < 3 else 100
        self.suffix = not msg.disable_shadow_host_suffix_append
        self.host_rewrite = msg.host_rewrite_literal.encode() or None

    def should_shadow(self, rng=random) -> bool:
        """``FilterUtility::shouldShadow`` with no runtime override."""
        if self.numerator is None:
            return True
        return rng.getrandbits(64) % self.denominator < self.numerator


def shadow_host(host: bytes) -> bytes:
    """Envoy's ``shadowAppendedHost`` on ``Http::Utility::parseAuthority``: the suffix goes
    after the host part, before a port (``[::1]:80`` -> ``[::1]-shadow:80``)."""
    if host[:1] == b"[":
        end = host.find(b"]")
        if end > 0:
            rest = host[end + 1:]
            if rest[:1] == b":" and rest[1:].isdigit():
                return host[:end + 1] + b"-shadow" + rest
        return host + b"-shadow"
    name, sep, port = host.rpartition(b":")
    if sep and port.isdigit() and b":" not in name:
        return name + b"-shadow:" + port
    return host + b"-shadow"


def start_shadows(router, req, end_stream: bool, attempt_header: bool):
    """The shadows of this request (a list), or None."""
    if req.method == b"CONNECT":
        return None
    stream = router.stream
    hcm = stream.hcm
    out = None
    for p in router.route.action.request_mirror_policies:
        if not p.should_shadow():
            continue
        if p.cluster is not None:
            name = p.cluster
        else:
            v = req.get(p.cluster_header)
            if not v:
                continue
            name = v.decode("latin-1")
        cluster = hcm.cluster_manager.get(name)
        if cluster is None:
            continue
        shadow = Shadow(hcm, cluster, _copy(req, p, stream.config.local_address,
                                            attempt_header), router.timeout)
        if shadow.start(end_stream):
            if out is None:
                out = []
            out.append(shadow)
    return out


def _copy(req, policy, local_address, attempt_header: bool) -> RequestHeaders:
    headers = list(req.headers)
    if attempt_header:
        headers.append((b"x-envoy-attempt-count", b"1"))
    headers.append(_INTERNAL)
    if local_address:
        addr = local_address.encode()
        for i, (n, v) in enumerate(headers):
            if n == _XFF:
                headers[i] = (n, v + b"," + addr)   # appendXff: "," without a space
                break
        else:
            headers.append((_XFF, addr))
    authority = policy.host_rewrite or req.authority or b""
    if policy.suffix and authority:
        authority = shadow_host(authority)
    c = RequestHeaders(req.method, req.path, authority, headers, req.scheme, req.version)
    c.content_length = req.content_length
    c.chunked = req.chunked
    return c


class _ShadowStream:
    """What an UpstreamRequest asks of its router's stream."""

    __slots__ = ("hcm", "request")

    def __init__(self, hcm, request):
        self.hcm = hcm
        self.request = request


class Shadow:
    """One mirrored request: the router of its own UpstreamRequest, which drops the answer."""

    __slots__ = ("answered", "cluster", "done", "handle", "stream", "timeout", "upstream")

    def __init__(self, hcm, cluster, request, timeout: float):
        self.stream = _ShadowStream(hcm, request)
        self.cluster = cluster
        self.timeout = timeout
        self.upstream = None
        self.handle = None
        self.done = False
        self.answered = False

    def start(self, end_stream: bool) -> bool:
        cluster = self.cluster
        host = cluster.choose_host(None)
        if host is None:
            cluster.stats.upstream_cx_none_healthy += 1
            return False
        up = self.upstream = UpstreamRequest(self, cluster, host)
        if end_stream:
            up.end_pending = True
        if self.timeout:
            self.handle = self.stream.hcm.loop.call_later(self.timeout, self._timeout)
        up.pool = cluster.pool_for(host)
        up.pool.new_stream(up)
        return not self.done

    def send_data(self, data: bytes, end_stream: bool) -> None:
        up = self.upstream
        if up is not None and not up.finished:
            up.send_data(data, end_stream)

    def abort(self) -> None:
        """The client went away before the request was whole."""
        self.handle = None
        up = self.upstream
        if up is not None:
            up.abort()
        self._done()

    def _timeout(self) -> None:
        # The async client's router answers itself 504 (upstream_rq_timeout), as for any route.
        self.handle = None
        if not self.answered:
            self.cluster.stats.upstream_rq_timeout += 1
            self.cluster.charge(504, True)
        self.abort()

    def _done(self) -> None:
        self.done = True
        self.upstream = None
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    # --------------------------------------------------------- UpstreamRequest's callbacks

    def on_upstream_1xx(self, upstream, status: int) -> None:
        pass

    def on_upstream_headers(self, upstream, resp, end_stream: bool) -> None:
        self.answered = True
        self.cluster.charge(resp.status, True)      # the shadow is x-envoy-internal
        if end_stream:
            self._done()

    def on_upstream_data(self, upstream, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self._done()

    def on_upstream_reset(self, upstream, reason: str, detail: str = "") -> None:
        if not self.answered:
            # Its router's local reply to a reset before any response (connect failure...).
            self.answered = True
            self.cluster.charge(upstream_reset(reason).status, True)
        self._done()

    def on_upstream_write_paused(self, paused: bool) -> None:
        pass

    def __repr__(self):
        return f"<Shadow {self.cluster.name} {self.stream.request!r}>"
