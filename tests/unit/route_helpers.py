"""Helpers for the routing unit tests: build a RouteTable from a RouteConfiguration dict the
way the connection manager does, and make requests without sockets."""

from __future__ import annotations

from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.http.headers import RequestHeaders, ResponseHeaders
from meshproxy.router.route_config import build_route_table


def route_config(rc: dict, clusters=("up", "up2")):
    msg = message_class("envoy.config.route.v3.RouteConfiguration")()
    parse_json_into(rc, msg)
    return build_route_table(msg, "route_config", cluster_names=set(clusters),
                             validate_clusters=True)


def table(routes=None, vhosts=None, **rc_extra):
    if vhosts is None:
        vhosts = [{"name": "all", "domains": ["*"], "routes": routes}]
    rc = {"name": "rc", "virtual_hosts": vhosts}
    rc.update(rc_extra)
    return route_config(rc)


def named(name: str, match: dict, **extra) -> dict:
    """A route that answers with a direct response naming it."""
    r = {"name": name, "match": match,
         "direct_response": {"status": 200, "body": {"inline_string": name}}}
    r.update(extra)
    return r


def req(path="/", method="GET", host="example.com", headers=(), xfp=b"http"):
    hs = [(n.lower().encode() if isinstance(n, str) else n,
           v.encode() if isinstance(v, str) else v) for n, v in headers]
    if xfp is not None and not any(n == b"x-forwarded-proto" for n, _ in hs):
        hs.append((b"x-forwarded-proto", xfp))
    return RequestHeaders(method.encode(), path.encode(),
                          host.encode() if host is not None else None, hs)


def resp(status=200, headers=()):
    return ResponseHeaders(status, [(n.encode(), v.encode()) for n, v in headers])


def which(t, r) -> str | None:
    route = t.route(r)
    return None if route is None else route.name


class FakeStream:
    """What header formatters read from a stream."""

    def __init__(self, request=None):
        self.request = request
        self.conn = type("C", (), {"remote_address": ("10.0.0.1", 5555),
                                    "local_address": ("10.0.0.2", 80)})()
        self.upstream_host = None
        self.upstream_cluster_name = "up"
        self.start_time = 0.0
