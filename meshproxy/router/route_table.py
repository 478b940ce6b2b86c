"""The compiled route table: virtual host selection and route matching.

Virtual hosts are chosen by ``:authority`` with Envoy's precedence
(``source/common/router/config_impl.cc`` ``RouteMatcher::findVirtualHost``): exact domain, then
suffix wildcards (``*.foo.com``, longest suffix first), then prefix wildcards (``foo.*``,
longest prefix first), then ``*``. A wildcard matches at least one character. The port is part
of the host unless ``ignore_port_in_host_matching`` (then everything from the last ``:`` outside
``[...]`` goes, as ``HeaderUtility::getPortStart``). Routes inside a virtual host are tried in
order; the first match wins.

Path matchers see the path without its query string and fragment (``PathMatcher::match`` ->
``PathUtil::removeQueryAndFragment``). A CONNECT request matches only ``connect_matcher``
routes. ``runtime_fraction`` and ``weighted_clusters`` use one random value per request, as
Envoy's stream id does, so two 50% routes split traffic 50/50 rather than 50/25.
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
                 "runtime_fraction", "never", "plain_prefix")

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
        # A prefix holding '?' or '#' can never match a path stripped of query and fragment.
        # Otherwise startswith() on the full path is the same test and needs no copy.
        self.never = kind == PREFIX and (b"?" in value or b"#" in value)
        # The commonest route (Istio's "prefix: /"): one startswith, nothing else to check.
        self.plain_prefix = (kind == PREFIX and case_sensitive and not self.never
                             and runtime_fraction is None and not grpc and not headers
                             and not query)

    def matches(self, req, random_value: int = 0) -> bool:
        """Envoy ANDs runtime fraction, gRPC, headers, query parameters and path
        (RouteEntryImplBase::matchRoute, then the path matcher); all are pure, so the cheap
        path test goes first."""
        if self.plain_prefix:
            return req.method != b"CONNECT" and req.path.startswith(self.value)
        if not self._path_matches(req):
            return False
        if self.runtime_fraction is not None:
            num, den = self.runtime_fraction
            # Runtime::SnapshotImpl::featureEnabled: random_value % denominator < numerator
            if random_value % den >= num:
                return False
        if self.grpc and not is_grpc_request(req):
            return False
        if self.headers:
            for h in self.headers:
                if not h.match(req):
                    return False
        if self.query:
            params = parse_query(req.path)
            for q in self.query:
                if not q.match(params):
                    return False
        return True

    def _path_matches(self, req) -> bool:
        k = self.kind
        if req.method == b"CONNECT":
            # A CONNECT request matches only connect_matcher routes (ConnectRouteEntryImpl);
            # ANY is meshproxy's own admin catch-all.
            return k == CONNECT or k == ANY
        path = req.path
        if k == PREFIX:
            if self.never:
                return False
            if self.case_sensitive:
                return path.startswith(self.value)
            return path[:len(self.value)].lower() == self.value
        if k == PATH:
            p = strip_query(path)
            return (p if self.case_sensitive else p.lower()) == self.value
        if k == REGEX:
            return self.regex.fullmatch(strip_query(path)) is not None
        if k == SEP_PREFIX:
            p = strip_query(path)
            if not self.case_sensitive:
                p = p.lower()
            v = self.value
            return p == v or (p.startswith(v) and p[len(v):len(v) + 1] == b"/")
        return k == ANY


_GRPC = b"application/grpc"


def is_grpc_request(req) -> bool:
    """``Grpc::Common::isGrpcRequestHeaders``: content-type exactly ``application/grpc`` or
    starting ``application/grpc+`` (so not ``application/grpc-web``), case-sensitive."""
    ct = req.get(b"content-type")
    if ct is None or not ct.startswith(_GRPC):
        return False
    return len(ct) == 16 or ct[16:17] == b"+"


class WeightedCluster:
    __slots__ = ("name", "weight", "request_mutation", "response_mutation", "host_rewrite",
                 "cluster_header")

    def __init__(self, name, weight, request_mutation=None, response_mutation=None,
                 host_rewrite=None, cluster_header=None):
        self.name = name
        self.cluster_header = cluster_header  # ClusterWeight.cluster_header, lower-case bytes
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
                 "internal_redirect", "request_mirror_policies", "weighted_header")

    def __init__(self, **kw):
        for name in self.__slots__:
            setattr(self, name, kw.get(name))

    def pick_weighted(self, random_value: int | None = None, req=None):
        """``WeightedClusterUtil::pickCluster``: ``random_value % total_weight`` walks the
        cumulative weights. ``weighted_clusters.header_name`` supplies the value from a request
        header when it holds an unsigned integer."""
        if self.weighted_header is not None and req is not None:
            v = req.get(self.weighted_header)
            if v is not None and v.isdigit() and int(v) < 1 << 64:
                random_value = int(v)
        if random_value is None:
            random_value = random.getrandbits(63)
        r = random_value % self.total_weight
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
                 "vhost", "decorator", "typed_per_filter_config", "metadata",
                 "req_chain", "resp_chain", "rewrites", "filter_settings")

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
        self.filter_settings = {}  # filter name -> its translated per-route config (lazily)
        self.metadata = metadata
        self._plan()

    def _plan(self) -> None:
        """The header mutations of route, virtual host and table in the order Envoy applies
        them (``most_specific_header_mutations_wins`` reverses it), without the empty levels,
        and whether the action rewrites anything: fixed per route, so worked out once. The
        virtual host and its table are complete (mutations set) before their routes are made."""
        vhost = self.vhost
        table = vhost.table
        req = (self.request_mutation, vhost.request_mutation, table.request_mutation)
        resp = (self.response_mutation, vhost.response_mutation, table.response_mutation)
        if table.most_specific_header_mutations_wins:
            req, resp = req[::-1], resp[::-1]
        self.req_chain = tuple(m for m in req if m is not None)
        self.resp_chain = tuple(m for m in resp if m is not None)
        a = self.action
        self.rewrites = a is not None and self.kind == ROUTE and (
            a.host_rewrite_literal is not None or a.host_rewrite_header is not None
            or a.host_rewrite_path_regex is not None or a.prefix_rewrite is not None
            or a.regex_rewrite is not None)

    def __repr__(self):
        return f"<Route {self.name or ''} kind={self.kind} in {self.vhost.name}>"


class VirtualHost:
    __slots__ = ("name", "domains", "routes", "request_mutation", "response_mutation",
                 "retry_policy", "require_tls", "include_attempt_count", "table",
                 "typed_per_filter_config", "needs_random", "filter_settings",
                 "request_mirror_policies")

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
        self.filter_settings = {}
        self.request_mirror_policies = ()
        self.needs_random = False  # some route has a runtime_fraction

    def route(self, req, random_value: int | None = None):
        if random_value is None:
            random_value = random.getrandbits(63) if self.needs_random else 0
        for r in self.routes:
            if r.match.matches(req, random_value):
                return r
        return None

    def __repr__(self):
        return f"<VirtualHost {self.name} {len(self.routes)} routes>"


class RouteTable:
    """A compiled ``RouteConfiguration``."""

    __slots__ = ("name", "exact", "suffixes", "prefixes", "default", "only_default",
                 "ignore_port", "request_mutation", "response_mutation", "vhosts",
                 "most_specific_header_mutations_wins", "version", "vhost_header")

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
        self.vhost_header = None  # RouteConfiguration.vhost_header: match on it, not :authority

    def find_vhost(self, authority: bytes | None):
        if self.only_default:
            return self.default
        if authority is None:
            return None
        host = authority.lower()
        if self.ignore_port:
            i = port_start(host)
            if i >= 0:
                host = host[:i]
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
        if self.only_default:
            vh = self.default
        elif self.vhost_header is None:
            vh = self.find_vhost(req.authority)
        else:
            vh = self.find_vhost(req.get_pseudo_or_header(self.vhost_header))
        if vh is None:
            return None
        if vh.needs_random:
            return vh.route(req)
        for r in vh.routes:      # VirtualHost.route without runtime fractions, inline
            if r.match.matches(req, 0):
                return r
        return None

    def __repr__(self):
        return f"<RouteTable {self.name!r} {len(self.vhosts)} vhosts>"


def port_start(host: bytes) -> int:
    """``HeaderUtility::getPortStart``: index of the last ``:`` unless it sits inside an IPv6
    literal's brackets (RFC 3986 §3.2.2), else -1. The port need not be digits."""
    i = host.rfind(b":")
    if i < 0:
        return -1
    j = host.rfind(b"]")
    if j < 0 or j < i:
        return i
    return -1


def strip_port(host: bytes) -> bytes:
    """``host:port`` -> ``host``; IPv6 literals keep their brackets (``[::1]:80`` -> ``[::1]``)."""
    if host[:1] == b"[":
        end = host.find(b"]")
        return host[:end + 1] if end > 0 else host
    i = host.rfind(b":")
    if i >= 0 and host[i + 1:].isdigit():
        return host[:i]
    return host
