"""The fault injection HTTP filter, ``envoy.filters.http.fault`` (Envoy's
``source/extensions/filters/http/fault/fault_filter.cc`` and
``source/extensions/filters/common/fault/fault_config.cc``), as Istio uses it for a
VirtualService ``fault``: an empty ``HTTPFault`` in the HCM's filters and the real one in the
route's ``typed_per_filter_config``.

Per request, with the most specific settings (route, then virtual host, then the filter's own):
nothing unless ``upstream_cluster`` names the route's cluster, ``downstream_nodes`` holds
``x-envoy-downstream-service-node`` and ``headers`` match; then a delay (fixed, or
``x-envoy-fault-delay-request`` ms) when its percentage draws true, and after it (or at once)
an abort (``http_status``, ``grpc_status``, or ``x-envoy-fault-abort-request`` /
``x-envoy-fault-abort-grpc-request``) when its own draw is true. The header-controlled kinds
take ``x-envoy-fault-*-request-percentage`` as the numerator, capped at the configured one.
``max_active_faults`` bounds faults in progress (``faults_overflow``). Stats go to
``http.<stat_prefix>.fault.``; a delay sets response flag DI, an abort FI with the local reply
"fault filter abort" (details ``fault_filter_abort``). Request body that arrives during a delay
waits for it. Not implemented: ``response_rate_limit`` (accepted, never applied) and the
per-downstream-cluster stats and runtime keys (meshproxy has no runtime layer).
"""

from __future__ import annotations

import random

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import UnknownExtension, unpack_any
from meshproxy.http import local_reply
from meshproxy.stats import stat_block

FAULT_TYPE = "envoy.extensions.filters.http.fault.v3.HTTPFault"

FaultStats = stat_block(
    "FaultStats",
    counters=("aborts_injected", "delays_injected", "faults_overflow", "response_rl_injected"),
    gauges=("active_faults",),
)

_DENOMINATORS = (100, 10_000, 1_000_000)   # envoy.type.v3.FractionalPercent.DenominatorType
_DELAY = b"x-envoy-fault-delay-request"
_DELAY_PCT = b"x-envoy-fault-delay-request-percentage"
_ABORT = b"x-envoy-fault-abort-request"
_ABORT_GRPC = b"x-envoy-fault-abort-grpc-request"
_ABORT_PCT = b"x-envoy-fault-abort-request-percentage"
_NODE = b"x-envoy-downstream-service-node"


class _Percent:
    __slots__ = ("numerator", "denominator", "header")

    def __init__(self, fp, header: bytes | None):
        self.numerator = fp.numerator
        self.denominator = _DENOMINATORS[fp.denominator] if fp.denominator < 3 else 100
        self.header = header     # header-controlled kinds: the percentage header

    def draw(self, req, rng) -> bool:
        """Envoy's ``featureEnabled(key, percent)`` with no runtime override:
        ``random % denominator < numerator``."""
        n = self.numerator
        if self.header is not None:
            v = _uint(_first(req, self.header))
            if v is not None:
                n = min(v, n)
        return rng.getrandbits(64) % self.denominator < n


class FaultSettings:
    """One ``HTTPFault`` message, translated."""

    __slots__ = ("delay_ms", "delay_pct", "abort_http", "abort_grpc", "abort_header",
                 "abort_pct", "upstream_cluster", "nodes", "headers", "max_active")

    def __init__(self, msg, path: str):
        from meshproxy.router.matchers import build_header_matcher
        self.delay_ms = self.delay_pct = None
        if msg.HasField("delay"):
            d = msg.delay
            which = d.WhichOneof("fault_delay_secifier")
            if which is None:
                raise ConfigError(join(path, "delay"), "fault_delay_secifier: value is required")
            if which == "fixed_delay":
                self.delay_ms = d.fixed_delay.seconds * 1000 + d.fixed_delay.nanos // 1_000_000
                self.delay_pct = _Percent(d.percentage, None)
            else:
                self.delay_pct = _Percent(d.percentage, _DELAY_PCT)
        self.abort_http = self.abort_grpc = None
        self.abort_header = False
        self.abort_pct = None
        if msg.HasField("abort"):
            a = msg.abort
            which = a.WhichOneof("error_type")
            apath = join(path, "abort")
            if which is None:
                raise ConfigError(apath, "error_type: value is required")
            if which == "http_status":
                if not 200 <= a.http_status < 600:
                    raise ConfigError(join(apath, "http_status"),
                                      "value must be inside range [200, 600)")
                self.abort_http = a.http_status
            elif which == "grpc_status":
                self.abort_grpc = a.grpc_status
            self.abort_header = which == "header_abort"
            self.abort_pct = _Percent(a.percentage, _ABORT_PCT if self.abort_header else None)
        self.upstream_cluster = msg.upstream_cluster or None
        self.nodes = frozenset(n.encode() for n in msg.downstream_nodes)
        self.headers = tuple(build_header_matcher(h, f"{join(path, 'headers')}[{i}]")
                             for i, h in enumerate(msg.headers))
        self.max_active = msg.max_active_faults.value if msg.HasField("max_active_faults") \
            else None

    def delay(self, req, rng) -> int | None:
        """Milliseconds to delay this request, or None."""
        pct = self.delay_pct
        if pct is None or not pct.draw(req, rng):
            return None
        ms = self.delay_ms if self.delay_ms is not None else _uint(_first(req, _DELAY))
        return ms if ms else None

    def abort(self, req, rng):
        """(http status, grpc status or None) to abort with, or None."""
        pct = self.abort_pct
        if pct is None or not pct.draw(req, rng):
            return None
        if self.abort_header:
            code = _uint(_first(req, _ABORT))
            if code is not None and 200 <= code < 600:
                return code, None
            grpc = _uint(_first(req, _ABORT_GRPC))
            return (200, grpc) if grpc is not None else None
        if self.abort_http is not None:
            return self.abort_http, None
        return 200, self.abort_grpc


class FaultFilterFactory:
    """One ``envoy.filters.http.fault`` entry of an HCM's ``http_filters``."""

    __slots__ = ("name", "settings", "stats", "rng")

    def __init__(self, name: str, msg, path: str, rng=None):
        self.name = name
        self.settings = FaultSettings(msg, path)
        self.stats = FaultStats()
        self.stats.mark_used("active_faults")
        self.rng = rng or random.Random()

    def stats_blocks(self, prefix: str):
        """(stat prefix, block) pairs for the store, under the HCM's ``http.<prefix>.``."""
        return ((f"{prefix}fault.", self.stats),)

    def create(self, stream) -> FaultFilter:
        return FaultFilter(self, stream)


def per_route_settings(route, name: str, path: str = ""):
    """The most specific ``typed_per_filter_config[name]`` (route, then virtual host) as
    FaultSettings, translated once and kept on the route object."""
    for level in (route, route.vhost):
        cache = level.filter_settings
        if name in cache:
            s = cache[name]
        else:
            s = None
            any_msg = level.typed_per_filter_config.get(name)
            if any_msg is not None:
                msg = unpack_any(any_msg, path)
                if not isinstance(msg, UnknownExtension) and \
                        msg.DESCRIPTOR.full_name == FAULT_TYPE:
                    s = FaultSettings(msg, path)
            cache[name] = s
        if s is not None:
            return s
    return None


class FaultFilter:
    """The filter for one request: ``decode_headers`` returns True when the request must wait
    (a delay) or has been answered (an abort); the stream then holds its body back until
    ``continue_decoding``."""

    __slots__ = ("factory", "stream", "handle", "active", "settings")

    def __init__(self, factory, stream):
        self.factory = factory
        self.stream = stream
        self.handle = None
        self.active = False
        self.settings = None

    def decode_headers(self, req, end_stream: bool) -> bool:
        f = self.factory
        route = self.stream.route
        s = per_route_settings(route, f.name) if route is not None else None
        s = self.settings = s or f.settings
        if s.upstream_cluster is not None and (
                route is None or getattr(route.action, "cluster", None) != s.upstream_cluster):
            return False
        if s.nodes and _first(req, _NODE) not in s.nodes:
            return False
        for m in s.headers:
            if not m.match(req):
                return False
        ms = s.delay(req, f.rng)
        if ms is not None and self._try_activate():
            f.stats.delays_injected += 1
            self.stream.response_flags = "DI"
            self.handle = self.stream.hcm.loop.call_later(ms / 1000.0, self._after_delay)
            return True
        return self._maybe_abort(req, delayed=False)

    def _maybe_abort(self, req, delayed: bool) -> bool:
        a = self.settings.abort(req, self.factory.rng)
        if a is None or not self._try_activate():
            return False
        self.factory.stats.aborts_injected += 1
        status, grpc = a
        flag = "DI,FI" if delayed else "FI"
        self.stream.send_local_reply(
            local_reply.Reply(status, b"fault filter abort", flag, "fault_filter_abort"),
            grpc_status=grpc)
        return True

    def _after_delay(self) -> None:
        self.handle = None
        stream = self.stream
        if self._maybe_abort(stream.request, delayed=True):
            return
        # Envoy: a delay that is over is no longer an active fault.
        self._deactivate()
        stream.continue_decoding()

    def _try_activate(self) -> bool:
        if self.active:
            return True
        st = self.factory.stats
        limit = self.settings.max_active
        if limit is not None and st.active_faults >= limit:
            st.faults_overflow += 1
            return False
        st.active_faults += 1
        self.active = True
        return True

    def _deactivate(self) -> None:
        if self.active:
            self.active = False
            self.factory.stats.active_faults -= 1

    def on_destroy(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self._deactivate()


def build_fault_filter(name: str, typed, path: str) -> FaultFilterFactory:
    return FaultFilterFactory(name, typed, path)


def _first(req, name: bytes):
    for n, v in req.headers:
        if n == name:
            return v
    return None


def _uint(v: bytes | None) -> int | None:
    if v is None or not v.isdigit():
        return None
    return int(v)
