"""Redirect locations (Envoy's ``Http::Utility::newUri`` and ``processRequestHost``,
source/common/http/utility.cc), measured against Envoy 1.40.

- scheme: ``scheme_redirect`` as configured (case kept), ``https`` for ``https_redirect``,
  else the request's ``x-forwarded-proto`` (which the connection manager always sets).
- port: ``:port_redirect`` when set, appended verbatim (``:443`` stays).
- host: ``host_redirect`` as configured (a port in it stays, even with ``port_redirect``); else
  the request host, whose port is dropped when ``port_redirect`` is set, or when the scheme
  changes away from ``x-forwarded-proto`` and the port is that protocol's default (``:80`` for
  http, ``:443`` for https). IPv6 literals keep their brackets.
- path: ``path_redirect`` (keeping the request's query unless it has its own), else the request
  path after the redirect's ``prefix_rewrite`` / ``regex_rewrite``; a ``/`` is prepended when
  missing; ``strip_query`` drops the query unless ``path_redirect`` has one.

A ``direct_response`` with status 201 or 3xx also gets a ``location``: ``new_uri`` with no
redirect, i.e. the request URL (router.cc ``Filter::decodeHeaders``).
"""

from __future__ import annotations

from meshproxy.router.rewrite import rewrite_path

_XFP = b"x-forwarded-proto"


def _process_request_host(req, new_scheme: bytes, new_port: bytes) -> bytes:
    host = req.authority or b""
    if not host:
        return host
    if host[:1] == b"[":
        end = host.rfind(b"]:")
        end = end + 1 if end >= 0 else -1
    else:
        end = host.rfind(b":")
    if end >= 0:
        port = host[end:]
        proto = req.get(_XFP)
        remove = bool(new_port)
        if new_scheme != proto:
            remove = remove or (proto == b"https" and port == b":443") or \
                (proto == b"http" and port == b":80")
        if remove:
            return host[:end]
    return host


def new_uri(req, rd=None, path: bytes | None = None) -> bytes:
    """``Http::Utility::newUri``. ``path`` is the request path after any redirect rewrite."""
    if rd is not None and rd.scheme is not None:
        scheme = rd.scheme
    else:
        scheme = req.get(_XFP) or req.scheme or b"http"
    port = b":%d" % rd.port if rd is not None and rd.port else b""
    if rd is not None and rd.host is not None:
        host = rd.host
    else:
        host = _process_request_host(req, scheme, port)
    if path is None:
        path = req.path
    has_query = False
    if rd is not None and rd.path is not None:
        if b"?" in rd.path:
            has_query = True
            path = rd.path
        else:
            q = path.find(b"?")
            path = rd.path + path[q:] if q >= 0 else rd.path
    if path[:1] != b"/":
        path = b"/" + path
    if rd is not None and not has_query and rd.strip_query:
        q = path.find(b"?")
        if q >= 0:
            path = path[:q]
    return scheme + b"://" + host + port + path


def redirect_location(req, rd, route) -> bytes:
    """The ``location`` of a redirect route's response."""
    path = req.path
    if rd.path is None and (rd.prefix_rewrite is not None or rd.regex_rewrite is not None):
        path = rewrite_path(path, route.match, rd)
    return new_uri(req, rd, path)


def direct_response_location(req, status: int) -> bytes | None:
    """``location`` for a direct response: RFC 9110 §10.2.2 for 201 and 3xx, else None."""
    if status == 201 or 300 <= status < 400:
        return new_uri(req)
    return None
