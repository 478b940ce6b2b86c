"""Translate ``envoy.config.route.v3.RouteConfiguration`` into a ``RouteTable``.

Validation is what Envoy 1.40 enforces at load time (``config_impl.cc`` and the PGV rules in
``route_components.proto``), each rule checked against ``envoy --mode validate`` in
tests/oracle/test_routing_oracle.py. Notable: duplicate domains (case-insensitive) and a second
``*`` are errors, but duplicate virtual host names and odd wildcards (``a*b``, ``**``) are not;
``weighted_clusters.total_weight`` is no longer checked; an unknown cluster is an error only
when clusters are validated (default for an inline route configuration).
"""

from __future__ import annotations

import os

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import duration, wrapped
from meshproxy.router.header_mutation import build_mutation
from meshproxy.router.per_filter_config import check_per_filter_config
from meshproxy.router.shadow import ShadowPolicy
from meshproxy.upstream.hash_policy import build_hash_policy
from meshproxy.router.matchers import (check_header_chars, regex_field, build_header_matcher,
                                       build_query_matcher, compile_rewrite)
from meshproxy.router.route_table import (
    CONNECT, DIRECT_RESPONSE, NON_FORWARDING, PATH, PREFIX, REDIRECT, REGEX, ROUTE, SEP_PREFIX,
    DirectResponse, Redirect, Route, RouteAction, RouteMatch, RouteTable, VirtualHost,
    WeightedCluster)

DEFAULT_ROUTE_TIMEOUT = 15.0  # RouteAction.timeout default (route_components.proto)
MAX_DIRECT_RESPONSE_BODY = 4096  # RouteConfiguration.max_direct_response_body_size_bytes default

_REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
_NOT_FOUND_CODES = {0: 503, 1: 404, 2: 500}
_UINT32_MAX = (1 << 32) - 1


def _mutations(msg, path, response: bool):
    if response:
        return build_mutation(msg.response_headers_to_add, msg.response_headers_to_remove, path,
                              "response_headers_to_add", "response_headers_to_remove", True)
    return build_mutation(msg.request_headers_to_add, msg.request_headers_to_remove, path,
                          "request_headers_to_add", "request_headers_to_remove")


class _Ctx:
    """What route building needs from the route configuration."""

    __slots__ = ("cluster_names", "max_body", "mirror")

    def __init__(self, cluster_names, max_body):
        self.cluster_names = cluster_names
        self.max_body = max_body
        self.mirror = ()    # the route configuration's request_mirror_policies


def build_route_table(rc, path: str = "route_config", *, cluster_names=None,
                      validate_clusters: bool = False) -> RouteTable:
    table = RouteTable(rc.name)
    table.ignore_port = rc.ignore_port_in_host_matching
    table.most_specific_header_mutations_wins = rc.most_specific_header_mutations_wins
    if rc.vhost_header:
        table.vhost_header = rc.vhost_header.lower().encode()
    table.request_mutation = _mutations(rc, path, False)
    table.response_mutation = _mutations(rc, path, True)
    check = rc.validate_clusters.value if rc.HasField("validate_clusters") else validate_clusters
    ctx = _Ctx(cluster_names if check else None,
               wrapped(rc, "max_direct_response_body_size_bytes", MAX_DIRECT_RESPONSE_BODY))
    ctx.mirror = _mirror_policies(rc, path, ctx)
    suffixes: dict[int, dict] = {}
    prefixes: dict[int, dict] = {}
    vhosts = []
    for i, vh_msg in enumerate(rc.virtual_hosts):
        vpath = f"{join(path, 'virtual_hosts')}[{i}]"
        if not vh_msg.name:
            raise ConfigError(join(vpath, "name"), "value length must be at least 1 characters")
        if not vh_msg.domains:
            raise ConfigError(join(vpath, "domains"), "value must contain at least 1 item(s)")
        vh = _build_vhost(vh_msg, vpath, table, ctx)
        vhosts.append(vh)
        for d_i, domain in enumerate(vh_msg.domains):
            dpath = f"{join(vpath, 'domains')}[{d_i}]"
            check_header_chars(domain, dpath)
            # RouteMatcher::RouteMatcher: "*" is the default; a leading "*" makes a suffix
            # wildcard, a trailing one a prefix wildcard; anything else is exact. Lower-cased.
            d = domain.lower()
            if d == "*":
                if table.default is not None:
                    raise ConfigError(dpath, f"Only a single wildcard domain is permitted in "
                                             f"route {rc.name}")
                table.default = vh
                continue
            if d.startswith("*"):
                bucket = suffixes.setdefault(len(d) - 1, {})
                key = d[1:].encode()
            elif d.endswith("*"):
                bucket = prefixes.setdefault(len(d) - 1, {})
                key = d[:-1].encode()
            else:
                bucket = table.exact
                key = d.encode()
            if key in bucket:
                raise ConfigError(dpath, f"Only unique values for domains are permitted. "
                                         f"Duplicate entry of domain {d} in route {rc.name}")
            bucket[key] = vh
    table.suffixes = sorted(suffixes.items(), key=lambda kv: -kv[0])
    table.prefixes = sorted(prefixes.items(), key=lambda kv: -kv[0])
    table.vhosts = tuple(vhosts)
    table.only_default = table.default is not None and len(vhosts) == 1
    return table


def _build_vhost(msg, path, table, ctx) -> VirtualHost:
    vh = VirtualHost(msg.name, tuple(msg.domains))
    vh.table = table
    vh.request_mutation = _mutations(msg, path, False)
    vh.response_mutation = _mutations(msg, path, True)
    vh.require_tls = msg.require_tls
    vh.include_attempt_count = msg.include_request_attempt_count
    if msg.HasField("retry_policy"):
        from meshproxy.router.retry_policy import build_retry_policy
        vh.retry_policy = build_retry_policy(msg.retry_policy, join(path, "retry_policy"))
    vh.typed_per_filter_config = check_per_filter_config(msg.typed_per_filter_config, path)
    vh.request_mirror_policies = _mirror_policies(msg, path, ctx) or ctx.mirror
    vh.routes = tuple(_build_route(r, f"{join(path, 'routes')}[{i}]", vh, ctx)
                      for i, r in enumerate(msg.routes))
    vh.needs_random = any(r.match.runtime_fraction is not None for r in vh.routes)
    return vh


def _build_match(m, path) -> RouteMatch:
    which = m.WhichOneof("path_specifier")
    cs = m.case_sensitive.value if m.HasField("case_sensitive") else True
    headers = tuple(build_header_matcher(h, f"{join(path, 'headers')}[{i}]")
                    for i, h in enumerate(m.headers))
    query = tuple(build_query_matcher(q, f"{join(path, 'query_parameters')}[{i}]")
                  for i, q in enumerate(m.query_parameters))
    grpc = m.HasField("grpc")
    fraction = None
    if m.HasField("runtime_fraction"):
        rf = m.runtime_fraction
        if not rf.HasField("default_value"):
            raise ConfigError(join(path, "runtime_fraction.default_value"), "value is required")
        dv = rf.default_value
        fraction = (dv.numerator, (100, 10000, 1000000)[dv.denominator])
    common = dict(case_sensitive=cs, headers=headers, query=query, grpc=grpc,
                  runtime_fraction=fraction)
    if which == "prefix":
        return RouteMatch(PREFIX, m.prefix.encode(), **common)
    if which == "path":
        return RouteMatch(PATH, m.path.encode(), **common)
    if which == "safe_regex":
        return RouteMatch(REGEX, regex=regex_field(m.safe_regex, join(path, "safe_regex")),
                          **common)
    if which == "path_separated_prefix":
        v = m.path_separated_prefix
        # PGV: pattern "^[^?#]+[^?#/]$"
        if len(v) < 2 or "?" in v or "#" in v or v.endswith("/"):
            raise ConfigError(join(path, "path_separated_prefix"),
                              'value does not match regex pattern "^[^?#]+[^?#/]$"')
        return RouteMatch(SEP_PREFIX, v.encode(), **common)
    if which == "connect_matcher":
        return RouteMatch(CONNECT, **common)
    if which is None:
        raise ConfigError(path, "value is required (one of prefix, path, safe_regex, "
                                "path_separated_prefix, connect_matcher)")
    raise ConfigError(join(path, which), "path matcher not supported by meshproxy")


def _build_route(r, path, vh, ctx) -> Route:
    if not r.HasField("match"):
        raise ConfigError(join(path, "match"), "value is required")
    match = _build_match(r.match, join(path, "match"))
    which = r.WhichOneof("action")
    req_mut = _mutations(r, path, False)
    resp_mut = _mutations(r, path, True)
    if which == "route":
        kind, action = ROUTE, _build_action(r.route, join(path, "route"), ctx)
        if not action.request_mirror_policies:
            action.request_mirror_policies = vh.request_mirror_policies
    elif which == "redirect":
        kind, action = REDIRECT, _build_redirect(r.redirect, join(path, "redirect"))
    elif which == "direct_response":
        kind, action = DIRECT_RESPONSE, _build_direct(r.direct_response,
                                                      join(path, "direct_response"), ctx)
    elif which == "non_forwarding_action":
        kind, action = NON_FORWARDING, None
    elif which is None:
        raise ConfigError(path, "value is required (one of route, redirect, direct_response)")
    else:
        raise ConfigError(join(path, which), "route action not supported by meshproxy")
    decorator = None
    if r.HasField("decorator"):
        if not r.decorator.operation:
            raise ConfigError(join(path, "decorator.operation"),
                              "value length must be at least 1 characters")
        decorator = r.decorator.operation
    return Route(r.name, match, kind, action, req_mut, resp_mut, vh, decorator,
                 check_per_filter_config(r.typed_per_filter_config, path),
                 r.metadata if r.HasField("metadata") else None)


def _regex_substitution(m, path):
    """``envoy.type.matcher.v3.RegexMatchAndSubstitute``: (compiled pattern, rewrite)."""
    if not m.HasField("pattern"):
        raise ConfigError(join(path, "pattern"), "value is required")
    check_header_chars(m.substitution, join(path, "substitution"))
    return regex_field(m.pattern, join(path, "pattern")), compile_rewrite(m.substitution)


def _non_negative(msg, field, path):
    if msg.HasField(field):
        d = getattr(msg, field)
        if d.seconds < 0 or d.nanos < 0:
            # MessageUtil::validateDurationFields
            raise ConfigError(join(path, field), "Invalid duration: Expected positive duration")


def _build_action(a, path, ctx) -> RouteAction:
    which = a.WhichOneof("cluster_specifier")
    names = ctx.cluster_names
    kw = {}
    if which == "cluster":
        if not a.cluster:
            raise ConfigError(join(path, "cluster"), "value length must be at least 1 characters")
        kw["cluster"] = a.cluster
        if names is not None and a.cluster not in names:
            raise ConfigError(join(path, "cluster"), f"route: unknown cluster '{a.cluster}'")
    elif which == "cluster_header":
        if not a.cluster_header:
            raise ConfigError(join(path, "cluster_header"),
                              "value length must be at least 1 characters")
        check_header_chars(a.cluster_header, join(path, "cluster_header"))
        kw["cluster_header"] = a.cluster_header.lower().encode()
    elif which == "weighted_clusters":
        _weighted(a.weighted_clusters, join(path, "weighted_clusters"), names, kw)
    elif which is None:
        raise ConfigError(path, "value is required (one of cluster, cluster_header, "
                                "weighted_clusters)")
    else:
        raise ConfigError(join(path, which), "cluster specifier not supported by meshproxy")
    if a.cluster_not_found_response_code not in _NOT_FOUND_CODES:
        raise ConfigError(join(path, "cluster_not_found_response_code"),
                          "value must be one of the defined enum values")
    kw["cluster_not_found_status"] = _NOT_FOUND_CODES[a.cluster_not_found_response_code]
    check_header_chars(a.prefix_rewrite, join(path, "prefix_rewrite"))
    if a.prefix_rewrite and a.HasField("regex_rewrite"):
        raise ConfigError(path, "Specify only one of prefix_rewrite, regex_rewrite or "
                                "path_rewrite_policy")
    if a.prefix_rewrite:
        kw["prefix_rewrite"] = a.prefix_rewrite.encode()
    if a.HasField("regex_rewrite"):
        kw["regex_rewrite"] = _regex_substitution(a.regex_rewrite, join(path, "regex_rewrite"))
    hw = a.WhichOneof("host_rewrite_specifier")
    if hw == "host_rewrite_literal":
        check_header_chars(a.host_rewrite_literal, join(path, "host_rewrite_literal"))
        if a.host_rewrite_literal:
            kw["host_rewrite_literal"] = a.host_rewrite_literal.encode()
    elif hw == "auto_host_rewrite":
        kw["auto_host_rewrite"] = a.auto_host_rewrite.value
    elif hw == "host_rewrite_header":
        check_header_chars(a.host_rewrite_header, join(path, "host_rewrite_header"))
        if a.host_rewrite_header:
            kw["host_rewrite_header"] = a.host_rewrite_header.lower().encode()
    elif hw == "host_rewrite_path_regex":
        kw["host_rewrite_path_regex"] = _regex_substitution(
            a.host_rewrite_path_regex, join(path, "host_rewrite_path_regex"))
    for f in ("timeout", "idle_timeout"):
        _non_negative(a, f, path)
    kw["timeout"] = duration(a, "timeout", DEFAULT_ROUTE_TIMEOUT)
    kw["idle_timeout"] = duration(a, "idle_timeout", None)
    kw["append_x_forwarded_host"] = a.append_x_forwarded_host
    if a.HasField("retry_policy"):
        from meshproxy.router.retry_policy import build_retry_policy
        kw["retry_policy"] = build_retry_policy(a.retry_policy, join(path, "retry_policy"))
    if a.HasField("max_stream_duration"):
        msd = a.max_stream_duration
        for f in ("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset"):
            _non_negative(msd, f, join(path, "max_stream_duration"))
        kw["max_stream_duration"] = duration(msd, "max_stream_duration", None)
        kw["grpc_timeout_header_max"] = duration(msd, "grpc_timeout_header_max", None)
    kw["hash_policy"] = build_hash_policy(a.hash_policy, path)
    kw["upgrade_configs"] = {u.upgrade_type.lower(): wrapped(u, "enabled", True)
                             for u in a.upgrade_configs}
    kw["priority"] = a.priority
    kw["request_mirror_policies"] = _mirror_policies(a, path, ctx)
    return RouteAction(**kw)


def _mirror_policies(msg, path, ctx) -> tuple:
    """``request_mirror_policies`` of a route action, virtual host or route configuration;
    the most specific level that has any replaces the others."""
    return tuple(ShadowPolicy(p, f"{join(path, 'request_mirror_policies')}[{i}]",
                              ctx.cluster_names)
                 for i, p in enumerate(msg.request_mirror_policies))


def _weighted(wc_msg, path, names, kw) -> None:
    """``WeightedClustersConfig``: each entry names a cluster or a cluster_header (exactly one)
    and has a weight; the sum must be positive and fit in uint32. ``total_weight`` is
    deprecated and no longer checked by Envoy 1.40."""
    if not wc_msg.clusters:
        raise ConfigError(join(path, "clusters"), "value must contain at least 1 item(s)")
    wcs = []
    total = 0
    for i, c in enumerate(wc_msg.clusters):
        cpath = f"{join(path, 'clusters')}[{i}]"
        if c.name and c.cluster_header:
            raise ConfigError(cpath, "Only one of name or cluster_header can be specified")
        if not c.name and not c.cluster_header:
            raise ConfigError(cpath, "At least one of name or cluster_header need to be "
                                     "specified")
        check_header_chars(c.cluster_header, join(cpath, "cluster_header"))
        if not c.HasField("weight"):
            raise ConfigError(join(cpath, "weight"), "Field 'weight' is missing")
        if names is not None and c.name and c.name not in names:
            raise ConfigError(join(cpath, "name"), f"route: unknown weighted cluster '{c.name}'")
        check_header_chars(c.host_rewrite_literal, join(cpath, "host_rewrite_literal"))
        check_per_filter_config(c.typed_per_filter_config, cpath)
        total += c.weight.value
        if total > _UINT32_MAX:
            raise ConfigError(path, f"The sum of weights of all weighted clusters of route "
                                    f"exceeds {_UINT32_MAX}")
        w = WeightedCluster(c.name or None, c.weight.value, _mutations(c, cpath, False),
                            _mutations(c, cpath, True),
                            c.host_rewrite_literal.encode() if c.host_rewrite_literal else None)
        w.cluster_header = c.cluster_header.lower().encode() if c.cluster_header else None
        wcs.append(w)
    if total == 0:
        raise ConfigError(path, "Sum of weights in the weighted_cluster must be greater than 0.")
    kw["weighted"] = tuple(w for w in wcs if w.weight > 0)
    kw["total_weight"] = total
    if wc_msg.header_name:
        kw["weighted_header"] = wc_msg.header_name.lower().encode()


def _build_redirect(r, path) -> Redirect:
    kw = {}
    sw = r.WhichOneof("scheme_rewrite_specifier")
    if sw == "https_redirect" and r.https_redirect:
        kw["scheme"] = b"https"
    elif sw == "scheme_redirect" and r.scheme_redirect:
        kw["scheme"] = r.scheme_redirect.encode()  # case kept, as Envoy does
    check_header_chars(r.host_redirect, join(path, "host_redirect"))
    if r.host_redirect:
        kw["host"] = r.host_redirect.encode()
    if r.port_redirect:
        kw["port"] = r.port_redirect
    pw = r.WhichOneof("path_rewrite_specifier")
    if pw == "path_redirect":
        check_header_chars(r.path_redirect, join(path, "path_redirect"))
        if r.path_redirect:
            kw["path"] = r.path_redirect.encode()
    elif pw == "prefix_rewrite":
        check_header_chars(r.prefix_rewrite, join(path, "prefix_rewrite"))
        if r.prefix_rewrite:
            kw["prefix_rewrite"] = r.prefix_rewrite.encode()
    elif pw == "regex_rewrite":
        kw["regex_rewrite"] = _regex_substitution(r.regex_rewrite, join(path, "regex_rewrite"))
    if r.response_code not in _REDIRECT_CODES:
        raise ConfigError(join(path, "response_code"),
                          "value must be one of the defined enum values")
    kw["status"] = _REDIRECT_CODES[r.response_code]
    kw["strip_query"] = r.strip_query
    return Redirect(**kw)


def _build_direct(d, path, ctx) -> DirectResponse:
    status = d.status
    if status < 200 or status >= 600:
        raise ConfigError(join(path, "status"), "value must be inside range [200, 600)")
    body = None
    if d.HasField("body"):
        body = read_data_source(d.body, join(path, "body"), ctx.max_body)
    return DirectResponse(status, body)


def read_data_source(ds, path: str, limit: int = MAX_DIRECT_RESPONSE_BODY) -> bytes:
    """``envoy.config.core.v3.DataSource`` for a direct response body, within ``limit``
    (``max_direct_response_body_size_bytes``)."""
    which = ds.WhichOneof("specifier")
    if which == "inline_string":
        data = ds.inline_string.encode()
    elif which == "inline_bytes":
        data = ds.inline_bytes
    elif which == "filename":
        if not ds.filename:
            raise ConfigError(join(path, "filename"), "value length must be at least 1 "
                                                      "characters")
        try:
            with open(ds.filename, "rb") as f:
                data = f.read()
        except OSError:
            raise ConfigError(join(path, "filename"), f"file {ds.filename} does not exist")
    elif which == "environment_variable":
        v = os.environ.get(ds.environment_variable)
        if v is None:
            raise ConfigError(join(path, "environment_variable"),
                              f"Environment variable doesn't exist: {ds.environment_variable}")
        data = v.encode()
    else:
        raise ConfigError(path, "value is required (one of filename, inline_bytes, "
                                "inline_string, environment_variable)")
    if limit and len(data) > limit:  # 0 lifts the limit (measured on Envoy 1.40)
        raise ConfigError(path, f"response body size is {len(data)} bytes; maximum is {limit}")
    return data
