"""Path rewriting for routes and redirects (Envoy's ``RouteEntryImplBase::finalizePathHeader``).

``prefix_rewrite`` swaps the matched prefix (or the whole matched path) for the new value;
``regex_rewrite`` substitutes every match of the pattern in the path without its query string,
and the query string is kept (route_components.proto, RouteAction.regex_rewrite).
"""

from __future__ import annotations

from meshproxy.router.route_table import PATH, PREFIX, SEP_PREFIX


def substitute(regex, substitution: bytes, s: bytes) -> bytes:
    return regex.sub(substitution, s)


def rewrite_path(path: bytes, match, action) -> bytes:
    if action.prefix_rewrite is not None:
        kind = match.kind
        if kind in (PREFIX, SEP_PREFIX):
            n = len(match.value)
        elif kind == PATH:
            q = path.find(b"?")
            n = len(path) if q < 0 else q
        else:
            return path
        return action.prefix_rewrite + path[n:]
    rx, sub = action.regex_rewrite
    q = path.find(b"?")
    if q < 0:
        return substitute(rx, sub, path)
    return substitute(rx, sub, path[:q]) + path[q:]
