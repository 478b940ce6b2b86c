"""Request finalisation for a routed request (Envoy's
``RouteEntryImplBase::finalizeRequestHeaders``, source/common/router/config_impl.cc).

The order is Envoy's and matters: weighted-cluster headers and host, then the header mutations
of the route levels, then the host rewrite (which sees the original path), then the path rewrite.

``prefix_rewrite`` swaps the matched part of the path: the configured prefix (prefix and
path_separated_prefix routes), the configured path (path routes) or the whole path without its
query string (safe_regex routes). ``regex_rewrite`` substitutes every match in the path without
its query string and fragment, with RE2's rewrite syntax (``\\1``, ``\\0`` for the whole match)
and ``RE2::GlobalReplace`` semantics, and keeps the query string. Whenever a path rewrite is
configured, ``x-envoy-original-path`` carries the path as received, even if the rewrite left it
unchanged; a host rewrite records the old host in ``x-envoy-original-host``. Both are left out
with ``suppress_envoy_headers`` (router ``keep_original_host_or_path``).
"""

from __future__ import annotations

from meshproxy.router.matchers import replace_all
from meshproxy.router.route_table import PATH, PREFIX, REGEX, SEP_PREFIX

ORIGINAL_PATH = b"x-envoy-original-path"
ORIGINAL_HOST = b"x-envoy-original-host"
FORWARDED_HOST = b"x-forwarded-host"


def substitute(regex, rewrite, s: bytes) -> bytes:
    """``RE2::GlobalReplace(s, regex, rewrite)``; ``rewrite`` from ``compile_rewrite``."""
    return replace_all(regex, rewrite, s)


def _split_path(path: bytes) -> int:
    """Length of the path without query string and fragment (PathUtil::removeQueryAndFragment)."""
    n = len(path)
    q = path.find(b"?")
    if q >= 0:
        n = q
    f = path.find(b"#", 0, n)
    return f if f >= 0 else n


def rewrite_path(path: bytes, match, action) -> bytes:
    """The path after ``action.prefix_rewrite`` or ``action.regex_rewrite`` (one is set); the
    action may be a route action or a redirect."""
    return _rewrite(path, match, action.prefix_rewrite, action.regex_rewrite)


def _rewrite(path: bytes, match, prefix_rewrite, regex_rewrite) -> bytes:
    if prefix_rewrite is not None:
        kind = match.kind
        if kind in (PREFIX, SEP_PREFIX, PATH):
            n = len(match.value)
        elif kind == REGEX:
            n = _split_path(path)
        else:
            return path
        return prefix_rewrite + path[n:]
    rx, sub = regex_rewrite
    n = _split_path(path)
    return substitute(rx, sub, path[:n]) + path[n:]


def update_authority(req, host: bytes, append_xfh: bool, keep_original: bool) -> None:
    """``Http::Utility::updateAuthority``: remember the old host, optionally append it to
    ``x-forwarded-host``, then replace it."""
    old = req.authority
    if old:
        if keep_original:
            req.set(ORIGINAL_HOST, old)
        if append_xfh:
            prev = req.get(FORWARDED_HOST)
            req.set(FORWARDED_HOST, prev + b"," + old if prev else old)
    req.authority = host


def finalize_request_headers(req, route, weighted, stream, keep_original: bool) -> bool:
    """Apply every route-level change to the upstream request headers, in Envoy's order.
    Returns True when the host was rewritten (auto_host_rewrite then stays off)."""
    rewritten = False
    if weighted is not None:
        if weighted.request_mutation is not None:
            weighted.request_mutation.apply(req, stream)
        if weighted.host_rewrite is not None:
            req.authority = weighted.host_rewrite  # WeightedClusterEntry: a plain setHost
            rewritten = True
    for m in route.req_chain:
        m.apply(req, stream)
    if not route.rewrites:
        return rewritten
    action = route.action
    host = None
    if action.host_rewrite_literal is not None:
        host = action.host_rewrite_literal
    elif action.host_rewrite_header is not None:
        # Only the first value of this untrusted header is used, and only if non-empty.
        host = req.get_pseudo_or_header(action.host_rewrite_header) or None
    elif action.host_rewrite_path_regex is not None:
        rx, sub = action.host_rewrite_path_regex
        path = req.path
        host = substitute(rx, sub, path[:_split_path(path)])
    if host is not None:
        update_authority(req, host, bool(action.append_x_forwarded_host), keep_original)
        rewritten = True
    if action.prefix_rewrite is not None or action.regex_rewrite is not None:
        old = req.path
        if keep_original:
            req.set(ORIGINAL_PATH, old)
        req.path = _rewrite(old, route.match, action.prefix_rewrite, action.regex_rewrite)
    return rewritten
