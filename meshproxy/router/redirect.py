"""Redirect responses (Envoy's ``RouteEntryImplBase::newUri``): scheme, host, port and path
of the request, each replaced where the route's ``redirect`` says so."""

from __future__ import annotations

from meshproxy.router.rewrite import substitute
from meshproxy.router.route_table import PATH, PREFIX, SEP_PREFIX, strip_port

_DEFAULT_PORTS = {b"http": 80, b"https": 443}


def redirect_location(req, rd, route) -> bytes:
    scheme = rd.scheme or req.scheme or b"http"
    authority = req.authority or b""
    host = strip_port(authority)
    port = authority[len(host) + 1:] if len(authority) > len(host) else b""
    if rd.host is not None:
        new_host = rd.host
        if b":" in new_host and not new_host.startswith(b"["):
            host, _, port = new_host.partition(b":")
        else:
            host = new_host
    if rd.port:
        port = b"%d" % rd.port
    elif rd.scheme is not None and rd.scheme != req.scheme:
        # Changing scheme drops a port that was the old scheme's default (Envoy).
        if port and int(port) == _DEFAULT_PORTS.get(req.scheme, -1):
            port = b""
    if port and int(port) == _DEFAULT_PORTS.get(scheme, -1):
        port = b""
    path = req.path
    q = path.find(b"?")
    query = path[q:] if q >= 0 else b""
    p = path[:q] if q >= 0 else path
    if rd.path is not None:
        p = rd.path
        if b"?" in p:
            p, _, query = p.partition(b"?")
            query = b"?" + query if query else b""
    elif rd.prefix_rewrite is not None:
        kind = route.match.kind
        if kind in (PREFIX, SEP_PREFIX):
            p = rd.prefix_rewrite + p[len(route.match.value):]
        elif kind == PATH:
            p = rd.prefix_rewrite
    elif rd.regex_rewrite is not None:
        rx, sub = rd.regex_rewrite
        p = substitute(rx, sub, p)
    if rd.strip_query:
        query = b""
    return scheme + b"://" + host + (b":" + port if port else b"") + p + query
