"""Translate ``envoy.config.route.v3.RouteConfiguration`` into a ``RouteTable``.

Validation follows what Envoy enforces at load time (``config_impl.cc`` and the PGV rules in
``route_components.proto``): duplicate virtual host names and duplicate domains are errors, a
domain may hold at most one ``*`` at its start or end, a route needs exactly one action.
"""

from __future__ import annotations

import os

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import duration, wrapped
from meshproxy.router.header_mutation import build_mutation
from meshproxy.router.matchers import (build_header_matcher, build_query_matcher,
                                       compile_regex)
from meshproxy.router.route_table import (
    CONNECT, DIRECT_RESPONSE, NON_FORWARDING, PATH, PREFIX, REDIRECT, REGEX, ROUTE, SEP_PREFIX,
    DirectResponse, Redirect, Route, RouteAction, RouteMatch, RouteTable, VirtualHost,
    WeightedCluster)

DEFAULT_ROUTE_TIMEOUT = 15.0  # RouteAction.timeout default (route_components.proto)

_REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
_NOT_FOUND_CODES = {0: 503, 1: 404, 2: 500}


def build_route_table(rc, path: str = "route_config", *, cluster_names=None,
                      validate_clusters: bool = False) -> RouteTable:
    table = RouteTable(rc.name)
    table.ignore_port = rc.ignore_port_in_host_matching
    table.most_specific_header_mutations_wins = rc.most_specific_header_mutations_wins
    table.request_mutation = build_mutation(
        rc.request_headers_to_add, rc.request_headers_to_remove, path,
        "request_headers_to_add", "request_headers_to_remove")
    table.response_mutation = build_mutation(
        rc.response_headers_to_add, rc.response_headers_to_remove, path,
        "response_headers_to_add", "response_headers_to_remove")
    check_clusters = validate_clusters if not rc.HasField("validate_clusters") \
        else rc.validate_clusters.value
    seen_names = set()
    suffixes: dict[int, dict] = {}
    prefixes: dict[int, dict] = {}
    vhosts = []
    for i, vh_msg in enumerate(rc.virtual_hosts):
        vpath = f"{join(path, 'virtual_hosts')}[{i}]"
        if not vh_msg.name:
            raise ConfigError(join(vpath, "name"), "value length must be at least 1 characters")
        if vh_msg.name in seen_names:
            raise ConfigError(vpath, f"Only unique values for name are permitted. Duplicate "
                                     f"entry of domain {vh_msg.name}")
        seen_names.add(vh_msg.name)
        if not vh_msg.domains:
            raise ConfigError(join(vpath, "domains"), "value must contain at least 1 item(s)")
        vh = _build_vhost(vh_msg, vpath, table, check_clusters and cluster_names)
        vhosts.append(vh)
        for d_i, domain in enumerate(vh_msg.domains):
            dpath = f"{join(vpath, 'domains')}[{d_i}]"
            d = domain.lower()
            if d == "*":
                if table.default is not None:
                    raise ConfigError(dpath, f"Only a single wildcard domain is permitted in "
                                             f"route {rc.name}")
                table.default = vh
                continue
            if "*" in d[1:-1] or (d.startswith("*") and d.endswith("*")):
                raise ConfigError(dpath, f"Only unique values for domains are permitted and "
                                         f"wildcards are allowed only at the start or end: "
                                         f"'{domain}'")
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
                                         f"Duplicate entry of domain {domain}")
            bucket[key] = vh
    table.suffixes = sorted(suffixes.items(), key=lambda kv: -kv[0])
    table.prefixes = sorted(prefixes.items(), key=lambda kv: -kv[0])
    table.vhosts = tuple(vhosts)
    table.only_default = table.default is not None and len(vhosts) == 1
    return table


def _build_vhost(msg, path, table, cluster_names) -> VirtualHost:
    vh = VirtualHost(msg.name, tuple(msg.domains))
    vh.table = table
    vh.request_mutation = build_mutation(msg.request_headers_to_add, msg.request_headers_to_remove,
                                         path, "request_headers_to_add",
                                         "request_headers_to_remove")
    vh.response_mutation = build_mutation(msg.response_headers_to_add,
                                          msg.response_headers_to_remove, path,
                                          "response_headers_to_add", "response_headers_to_remove")
    vh.require_tls = msg.require_tls
    vh.include_attempt_count = msg.include_request_attempt_count
    if msg.HasField("retry_policy"):
        from meshproxy.router.retry_policy import build_retry_policy
        vh.retry_policy = build_retry_policy(msg.retry_policy, join(path, "retry_policy"))
    vh.typed_per_filter_config = dict(msg.typed_per_filter_config)
    vh.routes = tuple(_build_route(r, f"{join(path, 'routes')}[{i}]", vh, cluster_names)
                      for i, r in enumerate(msg.routes))
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
        dv = m.runtime_fraction.default_value
        fraction = (dv.numerator, (100, 10000, 1000000)[dv.denominator])
    common = dict(case_sensitive=cs, headers=headers, query=query, grpc=grpc,
                  runtime_fraction=fraction)
    if which == "prefix":
        return RouteMatch(PREFIX, m.prefix.encode(), **common)
    if which == "path":
        return RouteMatch(PATH, m.path.encode(), **common)
    if which == "safe_regex":
        return RouteMatch(REGEX, regex=compile_regex(m.safe_regex.regex,
                                                     join(path, "safe_regex.regex")), **common)
    if which == "path_separated_prefix":
        v = m.path_separated_prefix
        if v.endswith("/") or "?" in v or "#" in v:
            raise ConfigError(join(path, "path_separated_prefix"),
                              "value must not end in '/' nor contain '?' or '#'")
        return RouteMatch(SEP_PREFIX, v.encode(), **common)
    if which == "connect_matcher":
        return RouteMatch(CONNECT, **common)
    if which is None:
        raise ConfigError(path, "route match needs one of prefix, path, safe_regex, "
                                "path_separated_prefix, connect_matcher")
    raise ConfigError(join(path, which), "path matcher not supported by meshproxy")


def _build_route(r, path, vh, cluster_names) -> Route:
    if not r.HasField("match"):
        raise ConfigError(join(path, "match"), "value is required")
    match = _build_match(r.match, join(path, "match"))
    which = r.WhichOneof("action")
    req_mut = build_mutation(r.request_headers_to_add, r.request_headers_to_remove, path,
                             "request_headers_to_add", "request_headers_to_remove")
    resp_mut = build_mutation(r.response_headers_to_add, r.response_headers_to_remove, path,
                              "response_headers_to_add", "response_headers_to_remove")
    if which == "route":
        kind, action = ROUTE, _build_action(r.route, join(path, "route"), cluster_names)
    elif which == "redirect":
        kind, action = REDIRECT, _build_redirect(r.redirect, join(path, "redirect"))
    elif which == "direct_response":
        kind, action = DIRECT_RESPONSE, _build_direct(r.direct_response,
                                                      join(path, "direct_response"))
    elif which == "non_forwarding_action":
        kind, action = NON_FORWARDING, None
    elif which is None:
        raise ConfigError(path, "route needs one of route, redirect, direct_response")
    else:
        raise ConfigError(join(path, which), "route action not supported by meshproxy")
    decorator = r.decorator.operation if r.HasField("decorator") else None
    return Route(r.name, match, kind, action, req_mut, resp_mut, vh, decorator,
                 dict(r.typed_per_filter_config), r.metadata if r.HasField("metadata") else None)


def _build_action(a, path, cluster_names) -> RouteAction:
    which = a.WhichOneof("cluster_specifier")
    kw = {}
    if which == "cluster":
        if not a.cluster:
            raise ConfigError(join(path, "cluster"), "value length must be at least 1 characters")
        kw["cluster"] = a.cluster
        if cluster_names is not None and a.cluster not in cluster_names:
            raise ConfigError(join(path, "cluster"), f"route: unknown cluster '{a.cluster}'")
    elif which == "cluster_header":
        kw["cluster_header"] = a.cluster_header.lower().encode()
    elif which == "weighted_clusters":
        wcs = []
        for i, c in enumerate(a.weighted_clusters.clusters):
            cpath = f"{join(path, 'weighted_clusters.clusters')}[{i}]"
            if cluster_names is not None and c.name and c.name not in cluster_names:
                raise ConfigError(join(cpath, "name"), f"route: unknown weighted cluster '{c.name}'")
            weight = c.weight.value if c.HasField("weight") else 0
            wcs.append(WeightedCluster(
                c.name, weight,
                build_mutation(c.request_headers_to_add, c.request_headers_to_remove, cpath,
                               "request_headers_to_add", "request_headers_to_remove"),
                build_mutation(c.response_headers_to_add, c.response_headers_to_remove, cpath,
                               "response_headers_to_add", "response_headers_to_remove"),
                c.host_rewrite_literal.encode() if c.host_rewrite_literal else None))
        total = sum(w.weight for w in wcs)
        if a.weighted_clusters.HasField("total_weight"):
            declared = a.weighted_clusters.total_weight.value
            if declared != total:
                raise ConfigError(join(path, "weighted_clusters.total_weight"),
                                  f"Sum of weights in the weighted_cluster must add up to "
                                  f"{declared}")
        if total == 0:
            raise ConfigError(join(path, "weighted_clusters"),
                              "Sum of weights in the weighted_cluster must be greater than 0")
        wcs = [w for w in wcs if w.weight > 0]
        kw["weighted"] = tuple(wcs)
        kw["total_weight"] = total
    elif which is None:
        raise ConfigError(path, "route action needs one of cluster, cluster_header, "
                                "weighted_clusters")
    else:
        raise ConfigError(join(path, which), "cluster specifier not supported by meshproxy")
    kw["cluster_not_found_status"] = _NOT_FOUND_CODES.get(a.cluster_not_found_response_code, 503)
    if a.prefix_rewrite:
        kw["prefix_rewrite"] = a.prefix_rewrite.encode()
    if a.HasField("regex_rewrite"):
        rr = a.regex_rewrite
        kw["regex_rewrite"] = (compile_regex(rr.pattern.regex, join(path, "regex_rewrite.pattern")),
                               _re_substitution(rr.substitution))
    hw = a.WhichOneof("host_rewrite_specifier")
    if hw == "host_rewrite_literal":
        kw["host_rewrite_literal"] = a.host_rewrite_literal.encode()
    elif hw == "auto_host_rewrite":
        kw["auto_host_rewrite"] = a.auto_host_rewrite.value
    elif hw == "host_rewrite_header":
        kw["host_rewrite_header"] = a.host_rewrite_header.lower().encode()
    elif hw == "host_rewrite_path_regex":
        h = a.host_rewrite_path_regex
        kw["host_rewrite_path_regex"] = (compile_regex(h.pattern.regex,
                                                       join(path, "host_rewrite_path_regex")),
                                         _re_substitution(h.substitution))
    kw["timeout"] = duration(a, "timeout", DEFAULT_ROUTE_TIMEOUT)
    kw["idle_timeout"] = duration(a, "idle_timeout", None)
    kw["append_x_forwarded_host"] = a.append_x_forwarded_host
    if a.HasField("retry_policy"):
        from meshproxy.router.retry_policy import build_retry_policy
        kw["retry_policy"] = build_retry_policy(a.retry_policy, join(path, "retry_policy"))
    if a.HasField("max_stream_duration"):
        msd = a.max_stream_duration
        kw["max_stream_duration"] = duration(msd, "max_stream_duration", None)
        kw["grpc_timeout_header_max"] = duration(msd, "grpc_timeout_header_max", None)
    kw["hash_policy"] = tuple(a.hash_policy)
    kw["upgrade_configs"] = {u.upgrade_type.lower(): wrapped(u, "enabled", True)
                             for u in a.upgrade_configs}
    kw["priority"] = a.priority
    return RouteAction(**kw)


def _re_substitution(sub: str) -> bytes:
    # RE2 substitutions use \1; Python's re uses \1 too (and \g<1>).
    return sub.encode()


def _build_redirect(r, path) -> Redirect:
    kw = {}
    sw = r.WhichOneof("scheme_rewrite_specifier")
    if sw == "https_redirect" and r.https_redirect:
        kw["scheme"] = b"https"
    elif sw == "scheme_redirect":
        kw["scheme"] = r.scheme_redirect.lower().encode()
    if r.host_redirect:
        kw["host"] = r.host_redirect.encode()
    if r.port_redirect:
        kw["port"] = r.port_redirect
    pw = r.WhichOneof("path_rewrite_specifier")
    if pw == "path_redirect":
        kw["path"] = r.path_redirect.encode()
    elif pw == "prefix_rewrite":
        kw["prefix_rewrite"] = r.prefix_rewrite.encode()
    elif pw == "regex_rewrite":
        kw["regex_rewrite"] = (compile_regex(r.regex_rewrite.pattern.regex,
                                             join(path, "regex_rewrite.pattern")),
                               _re_substitution(r.regex_rewrite.substitution))
    kw["status"] = _REDIRECT_CODES.get(r.response_code, 301)
    kw["strip_query"] = r.strip_query
    return Redirect(**kw)


def _build_direct(d, path) -> DirectResponse:
    status = d.status
    if status < 200 or status >= 600:
        raise ConfigError(join(path, "status"), "value must be inside range [200, 600)")
    body = None
    if d.HasField("body"):
        body = read_data_source(d.body, join(path, "body"))
    return DirectResponse(status, body)


MAX_DIRECT_RESPONSE_BODY = 4096  # Envoy's max_direct_response_body_size_bytes default


def read_data_source(ds, path: str) -> bytes:
    which = ds.WhichOneof("specifier")
    if which == "inline_string":
        data = ds.inline_string.encode()
    elif which == "inline_bytes":
        data = ds.inline_bytes
    elif which == "filename":
        try:
            with open(ds.filename, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ConfigError(join(path, "filename"), f"Invalid path: {ds.filename} ({exc.strerror})")
    elif which == "environment_variable":
        v = os.environ.get(ds.environment_variable)
        if v is None:
            raise ConfigError(join(path, "environment_variable"),
                              f"Environment variable doesn't exist: {ds.environment_variable}")
        data = v.encode()
    else:
        return b""
    if len(data) > MAX_DIRECT_RESPONSE_BODY:
        raise ConfigError(path, f"response body size is {len(data)} bytes; maximum is "
                                f"{MAX_DIRECT_RESPONSE_BODY}")
    return data
