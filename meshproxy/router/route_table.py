"""The compiled route table: virtual host selection and route matching.

Virtual hosts are chosen by ``:authority`` with Envoy's precedence
(``source/common/router/config_impl.cc`` ``RouteMatcher::findVirtualHost``): exact domain, then
suffix wildcards (``*.foo.com``, longest suffix first), then prefix wildcards (``foo.*``,
longest prefix first), then ``*``. A wildcard matches at least one character. Routes inside a
virtual host are tried in order; the first match wins.
"""

from __future__ import annotations

import random

from meshproxy.router.matchers import parse_query

# Route action kinds
ROUTE, REDIRECT, DIRECT_RESPONSE, NON_FORWARDING, ADMIN = 0, 1, 2, 3, 4

# Path match kinds
PREFIX, PATH, REGEX, SEP_PREFIX, CONNECT, ANY = 0, 1, 2, 3, 4, 5


def strip_query(path: bytes) -> bytes:
    i = path.find(b"?")
    if i >= 0:
        path = path[:i]
    i = path.find(b"#")
    return path[:i] if i >= 0 else path


class RouteMatch:
    __slots__ = ("kind", "value", "regex", "case_sensitive", "headers", "query", "grpc",
                 "runtime_fraction")

    def __init__(self, kind, value=b"", regex=None, case_sensitive=True, headers=(), query=(),
                 grpc=False, runtime_fraction=None):
        self.kind = kind
        self.case_sensitive = case_sensitive
        self.value = value if case_sensitive else value.lower()
        self.regex = regex
        self.headers = headers
        self.query = query
        self.grpc = grpc
        self.runtime_fraction = runtime_fraction

    def matches(self, req) -> bool:
        k = self.kind
        path = req.path
        if k == PREFIX:
            if self.case_sensitive:
                if not path.startswith(self.value):
                    return False
            elif not path.lower().startswith(self.value):
                return False
        elif k == PATH:
            p = strip_query(path)
            if (p if self.case_sensitive else p.lower()) != self.value:
                return False
        elif k == REGEX:
            if self.regex.fullmatch(strip_query(path)) is None:
                return False
        elif k == SEP_PREFIX:
            p = strip_query(path)
            if not self.case_sensitive:
                p = p.lower()
            v = self.value
            if not (p == v or (p.startswith(v) and p[len(v):len(v) + 1] == b"/")):
                return False
        elif k == CONNECT:
            if req.method != b"CONNECT":
                return False
        if k != CONNECT and req.method == b"CONNECT" and k != ANY:
            # CONNECT requests only match connect_matcher routes (Envoy).
            return False
        if self.headers:
            for h in self.headers:
                if not h.match(req):
                    return False
        if self.query:
            params = parse_query(path)
            for q in self.query:
                if not q.match(params):
                    return False
        if self.grpc:
            ct = req.get(b"content-type")
            if ct is None or not ct.startswith(b"application/grpc"):
                return False
        if self.runtime_fraction is not None:
            num, den = self.runtime_fraction
            if random.randrange(den) >= num:
                return False
        return True


class WeightedCluster:
    __slots__ = ("name", "weight", "request_mutation", "response_mutation", "host_rewrite")

    def __init__(self, name, weight, request_mutation=None, response_mutation=None,
                 host_rewrite=None):
        self.name = name
        self.weight = weight
        self.request_mutation = request_mutation
        self.response_mutation = response_mutation
        self.host_rewrite = host_rewrite


class RouteAction:
    """``envoy.config.route.v3.RouteAction`` as the router uses it."""

    __slots__ = ("cluster", "cluster_header", "weighted", "total_weight",
                 "cluster_not_found_status", "prefix_rewrite", "regex_rewrite",
                 "host_rewrite_literal", "auto_host_rewrite", "host_rewrite_header",
                 "host_rewrite_path_regex", "timeout", "idle_timeout", "retry_policy",
                 "max_stream_duration", "grpc_timeout_header_max", "hash_policy",
                 "append_x_forwarded_host", "upgrade_configs", "priority",
                 "internal_redirect", "request_mirror_policies")

    def __init__(self, **kw):
        for name in self.__slots__:
            setattr(self, name, kw.get(name))

    def pick_weighted(self):
        r = random.randrange(self.total_weight)
        acc = 0
        for wc in self.weighted:
            acc += wc.weight
            if r < acc:
                return wc
        return self.weighted[-1]


class Redirect:
    __slots__ = ("scheme", "host", "port", "path", "prefix_rewrite", "regex_rewrite",
                 "status", "strip_query")

    def __init__(self, **kw):
        for name in self.__slots__:
            setattr(self, name, kw.get(name))


class DirectResponse:
    __slots__ = ("status", "body")

    def __init__(self, status: int, body: bytes | None):
        self.status = status
        self.body = body


class Route:
    __slots__ = ("name", "match", "kind", "action", "request_mutation", "response_mutation",
                 "vhost", "decorator", "typed_per_filter_config", "metadata")

    def __init__(self, name, match, kind, action, request_mutation, response_mutation, vhost,
                 decorator=None, typed_per_filter_config=None, metadata=None):
        self.name = name
        self.match = match
        self.kind = kind
        self.action = action
        self.request_mutation = request_mutation
        self.response_mutation = response_mutation
        self.vhost = vhost
        self.decorator = decorator
        self.typed_per_filter_config = typed_per_filter_config or {}
        self.metadata = metadata

    def __repr__(self):
        return f"<Route {self.name or ''} kind={self.kind} in {self.vhost.name}>"


class VirtualHost:
    __slots__ = ("name", "domains", "routes", "request_mutation", "response_mutation",
                 "retry_policy", "require_tls", "include_attempt_count", "table",
                 "typed_per_filter_config")

    def __init__(self, name, domains):
        self.name = name
        self.domains = domains
        self.routes: tuple = ()
        self.request_mutation = None
        self.response_mutation = None
        self.retry_policy = None
        self.require_tls = 0
        self.include_attempt_count = False
        self.table = None
        self.typed_per_filter_config = {}

    def route(self, req):
        for r in self.routes:
            if r.match.matches(req):
                return r
        return None

    def __repr__(self):
        return f"<VirtualHost {self.name} {len(self.routes)} routes>"


class RouteTable:
    """A compiled ``RouteConfiguration``."""

    __slots__ = ("name", "exact", "suffixes", "prefixes", "default", "only_default",
                 "ignore_port", "request_mutation", "response_mutation", "vhosts",
                 "most_specific_header_mutations_wins", "version")

    def __init__(self, name: str):
        self.name = name
        self.exact: dict = {}
        self.suffixes: list = []   # [(len, {suffix: vhost})] longest first
        self.prefixes: list = []   # [(len, {prefix: vhost})] longest first
        self.default = None
        self.only_default = False
        self.ignore_port = False
        self.request_mutation = None
        self.response_mutation = None
        self.vhosts: tuple = ()
        self.most_specific_header_mutations_wins = False
        self.version = ""

    def find_vhost(self, authority: bytes | None):
        if self.only_default:
            return self.default
        host = (authority or b"").lower()
        if self.ignore_port:
            host = strip_port(host)
        vh = self.exact.get(host)
        if vh is not None:
            return vh
        n = len(host)
        for length, table in self.suffixes:
            if n > length:
                vh = table.get(host[n - length:])
                if vh is not None:
                    return vh
        for length, table in self.prefixes:
            if n > length:
                vh = table.get(host[:length])
                if vh is not None:
                    return vh
        return self.default

    def route(self, req):
        vh = self.find_vhost(req.authority)
        if vh is None:
            return None
        return vh.route(req)

    def __repr__(self):
        return f"<RouteTable {self.name!r} {len(self.vhosts)} vhosts>"


def strip_port(host: bytes) -> bytes:
    """``host:port`` -> ``host``; IPv6 literals keep their brackets (``[::1]:80`` -> ``[::1]``)."""
    if host[:1] == b"[":
        end = host.find(b"]")
        return host[:end + 1] if end > 0 else host
    i = host.rfind(b":")
    if i >= 0 and host[i + 1:].isdigit():
        return host[:i]
    return host
