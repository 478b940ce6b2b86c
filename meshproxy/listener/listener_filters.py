"""Listener filters meshproxy implements: ``original_dst``, ``tls_inspector``,
``http_inspector``, with ``filter_disabled`` predicates (Envoy's
``ListenerFilterChainMatchPredicate``; Istio disables the inspectors on port 15006 of
virtualInbound this way).

Anything else is refused: a listener filter changes what the rest of the listener sees
(``proxy_protocol`` strips a header from the byte stream), so skipping one would corrupt the
connection rather than just lose telemetry.
"""

from __future__ import annotations

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import UnknownExtension, type_name_of, unpack_any
from meshproxy.listener.http_inspect import MAX_INSPECT
from meshproxy.listener.tls_inspect import MAX_CLIENT_HELLO

ORIGINAL_DST = "original_dst"
TLS_INSPECTOR = "tls_inspector"
HTTP_INSPECTOR = "http_inspector"

_TYPES = {
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst": ORIGINAL_DST,
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": TLS_INSPECTOR,
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector": HTTP_INSPECTOR,
}
_NAMES = {
    "envoy.filters.listener.original_dst": ORIGINAL_DST,
    "envoy.filters.listener.tls_inspector": TLS_INSPECTOR,
    "envoy.filters.listener.http_inspector": HTTP_INSPECTOR,
}


class Predicate:
    """A compiled ListenerFilterChainMatchPredicate; ``matches(dst_port)``."""

    __slots__ = ("kind", "children", "lo", "hi")

    def __init__(self, kind, children=(), lo=0, hi=0):
        self.kind = kind
        self.children = children
        self.lo = lo
        self.hi = hi

    def matches(self, dst_port: int) -> bool:
        k = self.kind
        if k == "any":
            return True
        if k == "port":
            return self.lo <= dst_port < self.hi
        if k == "not":
            return not self.children[0].matches(dst_port)
        if k == "or":
            return any(c.matches(dst_port) for c in self.children)
        return all(c.matches(dst_port) for c in self.children)


def build_predicate(p, path: str) -> Predicate:
    which = p.WhichOneof("rule")
    if which == "any_match":
        return Predicate("any")
    if which == "destination_port_range":
        return Predicate("port", lo=p.destination_port_range.start,
                         hi=p.destination_port_range.end)
    if which == "not_match":
        return Predicate("not", (build_predicate(p.not_match, join(path, "not_match")),))
    if which in ("or_match", "and_match"):
        rules = getattr(p, which).rules
        if len(rules) < 2:
            raise ConfigError(join(path, which + ".rules"), "value must contain at least 2 item(s)")
        return Predicate(which[:-6], tuple(build_predicate(r, f"{join(path, which)}.rules[{i}]")
                                           for i, r in enumerate(rules)))
    raise ConfigError(path, "a match rule is required")


class ListenerFilter:
    """``max_read``: how many bytes the filter may look at (0: it needs none); ``close_on_error``:
    tls_inspector's ``close_connection_on_client_hello_parsing_errors``."""

    __slots__ = ("kind", "disabled", "max_read", "close_on_error")

    def __init__(self, kind, disabled, max_read=0, close_on_error=False):
        self.kind = kind
        self.disabled = disabled
        self.max_read = max_read
        self.close_on_error = close_on_error

    def active_for(self, dst_port: int) -> bool:
        return self.disabled is None or not self.disabled.matches(dst_port)

    def __repr__(self):
        return f"<ListenerFilter {self.kind}>"


def build_listener_filters(filters, path: str) -> tuple:
    out = []
    for i, lf in enumerate(filters):
        fpath = f"{join(path, 'listener_filters')}[{i}]"
        kind = None
        if lf.HasField("typed_config"):
            typed = unpack_any(lf.typed_config, join(fpath, "typed_config"))
            tname = typed.type_url if isinstance(typed, UnknownExtension) else \
                typed.DESCRIPTOR.full_name
            kind = _TYPES.get(type_name_of(tname))
        elif lf.name in _NAMES:
            kind = _NAMES[lf.name]
        if kind is None:
            raise ConfigError(fpath, f"listener filter '{lf.name}' is not supported by meshproxy")
        disabled = build_predicate(lf.filter_disabled, join(fpath, "filter_disabled")) \
            if lf.HasField("filter_disabled") else None
        f = ListenerFilter(kind, disabled)
        if kind == TLS_INSPECTOR:
            _tls_options(f, typed if lf.HasField("typed_config") else None,
                         join(fpath, "typed_config"))
        elif kind == HTTP_INSPECTOR:
            f.max_read = MAX_INSPECT
        out.append(f)
    return tuple(out)


def _tls_options(f: ListenerFilter, typed, path: str) -> None:
    """TlsInspector fields, with the ranges Envoy 1.40 validates (tls_inspector.proto)."""
    f.max_read = MAX_CLIENT_HELLO
    if typed is None or isinstance(typed, UnknownExtension):
        return
    if typed.HasField("max_client_hello_size"):
        v = typed.max_client_hello_size.value
        if not 255 < v <= MAX_CLIENT_HELLO:
            raise ConfigError(join(path, "max_client_hello_size"),
                              f"value must be inside range (255, {MAX_CLIENT_HELLO}]")
        f.max_read = v
    if typed.HasField("initial_read_buffer_size"):
        v = typed.initial_read_buffer_size.value
        if not 255 < v < 65537:
            raise ConfigError(join(path, "initial_read_buffer_size"),
                              "value must be inside range (255, 65537)")
    f.close_on_error = typed.close_connection_on_client_hello_parsing_errors
