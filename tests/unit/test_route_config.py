"""What a RouteConfiguration may hold: meshproxy accepts exactly what Envoy 1.40 accepts, and
names the offending field when it refuses. The same table runs against ``envoy --mode validate``
in tests/oracle/test_routing_oracle.py, so every verdict here is Envoy's."""

from __future__ import annotations

import pytest

from meshproxy.config.errors import ConfigError
from meshproxy.router.matchers import HAVE_RE2
from tests.unit.route_helpers import route_config


def R(match=None, **kw):
    r = {"match": match or {"prefix": "/"}}
    if not any(k in kw for k in ("route", "redirect", "direct_response")):
        r["route"] = {"cluster": "up"}
    r.update(kw)
    return r


def V(routes=None, domains=("*",), name="v", **kw):
    d = {"name": name, "domains": list(domains), "routes": routes if routes is not None else [R()]}
    d.update(kw)
    return d


def H(k, v="x", **kw):
    d = {"header": {"key": k, "value": v}}
    d.update(kw)
    return d


def RC(vhosts, **extra):
    rc = {"name": "local_route", "virtual_hosts": vhosts}
    rc.update(extra)
    return rc


def WC(*clusters, **extra):
    d = {"clusters": list(clusters)}
    d.update(extra)
    return R(route={"weighted_clusters": d})


VP = "virtual_hosts[0]"
RP = "virtual_hosts[0].routes[0]"

# (id, route configuration, None if Envoy accepts it, else the field path meshproxy names)
CASES = [
    ("dup vhost name", RC([V(name="a", domains=["a"]), V(name="a", domains=["b"])]), None),
    ("dup domain", RC([V(name="a", domains=["a"]), V(name="b", domains=["A"])]),
     "virtual_hosts[1].domains[0]"),
    ("dup domain same vh", RC([V(domains=["a", "a"])]), f"{VP}.domains[1]"),
    ("two star", RC([V(name="a"), V(name="b")]), "virtual_hosts[1].domains[0]"),
    ("mid wildcard", RC([V(domains=["a*b"])]), None),
    ("both wildcard", RC([V(domains=["*a*"])]), None),
    ("double star", RC([V(domains=["**"])]), None),
    ("empty domain", RC([V(domains=[""])]), None),
    ("no domains", RC([V(domains=[])]), f"{VP}.domains"),
    ("domain newline", RC([V(domains=["a\nb"])]), f"{VP}.domains[0]"),
    ("empty vhost name", RC([V(name="")]), f"{VP}.name"),
    ("dup suffix", RC([V(name="a", domains=["*.a"]), V(name="b", domains=["*.A"])]),
     "virtual_hosts[1].domains[0]"),
    ("suffix and prefix same", RC([V(name="a", domains=["*a"]), V(name="b", domains=["a*"])]),
     None),
    ("no routes", RC([V(routes=[])]), None),
    ("bad regex", RC([V(routes=[R({"safe_regex": {"regex": "("}})])]),
     f"{RP}.match.safe_regex.regex"),
    ("lookahead regex", RC([V(routes=[R({"safe_regex": {"regex": "(?=a)b"}})])]),
     f"{RP}.match.safe_regex.regex"),
    ("backref regex", RC([V(routes=[R({"safe_regex": {"regex": "(a)\\1"}})])]),
     f"{RP}.match.safe_regex.regex"),
    ("Z anchor", RC([V(routes=[R({"safe_regex": {"regex": "a\\Z"}})])]),
     f"{RP}.match.safe_regex.regex"),
    ("empty regex", RC([V(routes=[R({"safe_regex": {"regex": ""}})])]),
     f"{RP}.match.safe_regex.regex"),
    ("regex size 100", RC([V(routes=[R({"safe_regex": {"regex": "a{96}"}})])]), None),
    ("unknown cluster", RC([V(routes=[R(route={"cluster": "nope"})])]), f"{RP}.route.cluster"),
    ("unknown cluster unvalidated", RC([V(routes=[R(route={"cluster": "nope"})])],
                                       validate_clusters=False), None),
    ("empty cluster", RC([V(routes=[R(route={"cluster": ""})])]), f"{RP}.route.cluster"),
    ("unknown weighted cluster", RC([V(routes=[WC({"name": "nope", "weight": 1})])]),
     f"{RP}.route.weighted_clusters.clusters[0].name"),
    ("weights sum 0", RC([V(routes=[WC({"name": "up", "weight": 0})])]),
     f"{RP}.route.weighted_clusters"),
    ("total_weight mismatch", RC([V(routes=[WC({"name": "up", "weight": 30},
                                               total_weight=100)])]), None),
    ("no weighted clusters", RC([V(routes=[WC()])]),
     f"{RP}.route.weighted_clusters.clusters"),
    ("weight missing", RC([V(routes=[WC({"name": "up", "weight": 1}, {"name": "up2"})])]),
     f"{RP}.route.weighted_clusters.clusters[1].weight"),
    ("weights overflow", RC([V(routes=[WC({"name": "up", "weight": 4294967295},
                                          {"name": "up", "weight": 1})])]),
     f"{RP}.route.weighted_clusters"),
    ("weighted no name", RC([V(routes=[WC({"weight": 1})])]),
     f"{RP}.route.weighted_clusters.clusters[0]"),
    ("weighted cluster_header", RC([V(routes=[WC({"cluster_header": "x-c", "weight": 1})])]),
     None),
    ("weighted name and header", RC([V(routes=[WC({"name": "up", "cluster_header": "x-c",
                                                   "weight": 1})])]),
     f"{RP}.route.weighted_clusters.clusters[0]"),
    ("cluster_header empty", RC([V(routes=[R(route={"cluster_header": ""})])]),
     f"{RP}.route.cluster_header"),
    ("no action", RC([V(routes=[{"match": {"prefix": "/"}}])]), RP),
    ("no match", RC([V(routes=[{"route": {"cluster": "up"}}])]), f"{RP}.match"),
    ("empty match", RC([V(routes=[{"match": {}, "route": {"cluster": "up"}}])]), f"{RP}.match"),
    ("route no cluster", RC([V(routes=[R(route={})])]), f"{RP}.route"),
    ("remove :path", RC([V(routes=[R(request_headers_to_remove=[":path"])])]),
     f"{RP}.request_headers_to_remove[0]"),
    ("remove Host", RC([V(routes=[R(request_headers_to_remove=["Host"])])]),
     f"{RP}.request_headers_to_remove[0]"),
    ("remove :authority vhost", RC([V(request_headers_to_remove=[":authority"])]),
     f"{VP}.request_headers_to_remove[0]"),
    ("remove response host", RC([V(routes=[R(response_headers_to_remove=["host"])])]),
     f"{RP}.response_headers_to_remove[0]"),
    ("remove empty", RC([V(routes=[R(request_headers_to_remove=[""])])]),
     f"{RP}.request_headers_to_remove[0]"),
    ("add host", RC([V(routes=[R(request_headers_to_add=[H("host")])])]),
     f"{RP}.request_headers_to_add[0].header.key"),
    ("add :path at route config", RC([V()], request_headers_to_add=[H(":path")]),
     "request_headers_to_add[0].header.key"),
    ("add response :status", RC([V(routes=[R(response_headers_to_add=[H(":status")])])]),
     f"{RP}.response_headers_to_add[0].header.key"),
    ("add empty key", RC([V(routes=[R(request_headers_to_add=[H("")])])]),
     f"{RP}.request_headers_to_add[0].header.key"),
    ("add value with newline", RC([V(routes=[R(request_headers_to_add=[H("a", "x\ny")])])]),
     f"{RP}.request_headers_to_add[0].header.value"),
    ("add without header", RC([V(routes=[R(request_headers_to_add=[
        {"append_action": "ADD_IF_ABSENT"}])])]), f"{RP}.request_headers_to_add[0].header"),
    ("append and append_action", RC([V(routes=[R(request_headers_to_add=[
        H("a", append=True, append_action="ADD_IF_ABSENT")])])]),
     f"{RP}.request_headers_to_add[0]"),
    ("append false, default action", RC([V(routes=[R(request_headers_to_add=[
        H("a", append=False)])])]), None),
    ("unknown operator", RC([V(routes=[R(request_headers_to_add=[H("a", "%FOO%")])])]),
     f"{RP}.request_headers_to_add[0].header.value"),
    ("lone percent", RC([V(routes=[R(request_headers_to_add=[H("a", "50%")])])]),
     f"{RP}.request_headers_to_add[0].header.value"),
    ("REQ without argument", RC([V(routes=[R(request_headers_to_add=[H("a", "%REQ()%")])])]),
     f"{RP}.request_headers_to_add[0].header.value"),
    ("RESP operator", RC([V(routes=[R(response_headers_to_add=[H("a", "%RESP(x)%")])])]),
     None),
    ("UPSTREAM_METADATA operator", RC([V(routes=[R(request_headers_to_add=[
        H("a", '%UPSTREAM_METADATA(["a","b"])%')])])]), None),
    ("direct response 199", RC([V(routes=[R(direct_response={"status": 199})])]),
     f"{RP}.direct_response.status"),
    ("direct response 600", RC([V(routes=[R(direct_response={"status": 600})])]),
     f"{RP}.direct_response.status"),
    ("direct response 599", RC([V(routes=[R(direct_response={"status": 599})])]), None),
    ("body 4096", RC([V(routes=[R(direct_response={
        "status": 200, "body": {"inline_string": "a" * 4096}})])]), None),
    ("body 4097", RC([V(routes=[R(direct_response={
        "status": 200, "body": {"inline_string": "a" * 4097}})])]), f"{RP}.direct_response.body"),
    ("body 5000 with limit 5000", RC([V(routes=[R(direct_response={
        "status": 200, "body": {"inline_string": "a" * 5000}})])],
        max_direct_response_body_size_bytes=5000), None),
    ("body 2 with limit 1", RC([V(routes=[R(direct_response={
        "status": 200, "body": {"inline_string": "ab"}})])],
        max_direct_response_body_size_bytes=1), f"{RP}.direct_response.body"),
    ("body 4097 with limit 0", RC([V(routes=[R(direct_response={
        "status": 200, "body": {"inline_string": "a" * 4097}})])],
        max_direct_response_body_size_bytes=0), None),
    ("body file missing", RC([V(routes=[R(direct_response={
        "status": 200, "body": {"filename": "/nonexistent/x"}})])]),
     f"{RP}.direct_response.body.filename"),
    ("body env missing", RC([V(routes=[R(direct_response={
        "status": 200, "body": {"environment_variable": "MESHPROXY_TEST_NOPE"}})])]),
     f"{RP}.direct_response.body.environment_variable"),
    ("body empty data source", RC([V(routes=[R(direct_response={"status": 200, "body": {}})])]),
     f"{RP}.direct_response.body"),
    ("redirect empty", RC([V(routes=[R(redirect={})])]), None),
    ("redirect bad path", RC([V(routes=[R(redirect={"path_redirect": "a\nb"})])]),
     f"{RP}.redirect.path_redirect"),
    ("redirect bad regex", RC([V(routes=[R(redirect={"regex_rewrite": {
        "pattern": {"regex": "("}, "substitution": "x"}})])]),
     f"{RP}.redirect.regex_rewrite.pattern.regex"),
    ("prefix and regex rewrite", RC([V(routes=[R(route={
        "cluster": "up", "prefix_rewrite": "/a",
        "regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"}})])]), f"{RP}.route"),
    ("prefix rewrite newline", RC([V(routes=[R(route={"cluster": "up",
                                                      "prefix_rewrite": "a\nb"})])]),
     f"{RP}.route.prefix_rewrite"),
    ("host literal newline", RC([V(routes=[R(route={"cluster": "up",
                                                    "host_rewrite_literal": "a\nb"})])]),
     f"{RP}.route.host_rewrite_literal"),
    ("regex_rewrite no pattern", RC([V(routes=[R(route={
        "cluster": "up", "regex_rewrite": {"substitution": "x"}})])]),
     f"{RP}.route.regex_rewrite.pattern"),
    ("separated prefix /", RC([V(routes=[R({"path_separated_prefix": "/"})])]),
     f"{RP}.match.path_separated_prefix"),
    ("separated prefix trailing /", RC([V(routes=[R({"path_separated_prefix": "/a/"})])]),
     f"{RP}.match.path_separated_prefix"),
    ("separated prefix empty", RC([V(routes=[R({"path_separated_prefix": ""})])]),
     f"{RP}.match.path_separated_prefix"),
    ("separated prefix ab", RC([V(routes=[R({"path_separated_prefix": "ab"})])]), None),
    ("prefix without slash", RC([V(routes=[R({"prefix": "abc"})])]), None),
    ("header matcher without name", RC([V(routes=[R({"prefix": "/", "headers": [
        {"exact_match": "a"}]})])]), f"{RP}.match.headers[0].name"),
    ("header prefix_match empty", RC([V(routes=[R({"prefix": "/", "headers": [
        {"name": "a", "prefix_match": ""}]})])]), f"{RP}.match.headers[0].prefix_match"),
    ("string_match prefix empty", RC([V(routes=[R({"prefix": "/", "headers": [
        {"name": "a", "string_match": {"prefix": ""}}]})])]),
     f"{RP}.match.headers[0].string_match.prefix"),
    ("string_match empty", RC([V(routes=[R({"prefix": "/", "headers": [
        {"name": "a", "string_match": {}}]})])]), f"{RP}.match.headers[0].string_match"),
    ("string_match exact empty", RC([V(routes=[R({"prefix": "/", "headers": [
        {"name": "a", "string_match": {"exact": ""}}]})])]), None),
    ("regex with ignore_case", RC([V(routes=[R({"prefix": "/", "headers": [
        {"name": "a", "string_match": {"safe_regex": {"regex": "a"}, "ignore_case": True}}]})])]),
     f"{RP}.match.headers[0].string_match.ignore_case"),
    ("query parameter without name", RC([V(routes=[R({"prefix": "/", "query_parameters": [
        {"present_match": True}]})])]), f"{RP}.match.query_parameters[0].name"),
    ("runtime fraction without default", RC([V(routes=[R({
        "prefix": "/", "runtime_fraction": {"runtime_key": "k"}})])]),
     f"{RP}.match.runtime_fraction.default_value"),
    ("negative timeout", RC([V(routes=[R(route={"cluster": "up", "timeout": "-1s"})])]),
     f"{RP}.route.timeout"),
    ("retry base 0", RC([V(routes=[R(route={"cluster": "up", "retry_policy": {
        "retry_back_off": {"base_interval": "0s"}}})])]),
     f"{RP}.route.retry_policy.retry_back_off.base_interval"),
    ("retry max below base", RC([V(routes=[R(route={"cluster": "up", "retry_policy": {
        "retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}}})])]),
     f"{RP}.route.retry_policy.retry_back_off.max_interval"),
    ("retry max only", RC([V(routes=[R(route={"cluster": "up", "retry_policy": {
        "retry_back_off": {"max_interval": "0.5s"}}})])]),
     f"{RP}.route.retry_policy.retry_back_off.base_interval"),
    ("unknown retry_on", RC([V(routes=[R(route={"cluster": "up", "retry_policy": {
        "retry_on": "bogus,5xx"}})])]), None),
    ("mirror to unknown cluster", RC([V(routes=[R(route={
        "cluster": "up", "request_mirror_policies": [{"cluster": "nope"}]})])]),
     f"{RP}.route.request_mirror_policies[0].cluster"),
    ("empty hash policy", RC([V(routes=[R(route={"cluster": "up", "hash_policy": [{}]})])]),
     f"{RP}.route.hash_policy[0]"),
    ("cluster_not_found NOT_FOUND", RC([V(routes=[R(route={
        "cluster": "up", "cluster_not_found_response_code": "NOT_FOUND"})])]), None),
    ("connect matcher", RC([V(routes=[R({"connect_matcher": {}})])]), None),
    ("vhost_header", RC([V()], vhost_header="x-vh"), None),
]

RE2_ONLY = {"regex size 100"}


def cases():
    for case_id, rc, expected in CASES:
        marks = ()
        if case_id in RE2_ONLY:
            marks = pytest.mark.skipif(not HAVE_RE2, reason="needs google-re2")
        yield pytest.param(rc, expected, id=case_id, marks=marks)


@pytest.mark.parametrize("rc,expected", list(cases()))
def test_route_config_validation(rc, expected):
    if expected is None:
        route_config(rc)
        return
    with pytest.raises(ConfigError) as ei:
        route_config(rc)
    assert ei.value.path == f"route_config.{expected}", str(ei.value)


@pytest.mark.skipif(not HAVE_RE2, reason="needs google-re2")
def test_regex_program_size_limit_is_envoys():
    with pytest.raises(ConfigError) as ei:
        route_config(RC([V(routes=[R({"safe_regex": {"regex": "a{97}"}})])]))
    assert "RE2 program size of 101 > max program size of 100" in ei.value.message


def test_messages_follow_envoy():
    with pytest.raises(ConfigError) as ei:
        route_config(RC([V(name="a", domains=["a"]), V(name="b", domains=["A"])]))
    assert ei.value.message == ("Only unique values for domains are permitted. Duplicate entry "
                                "of domain a in route local_route")
    with pytest.raises(ConfigError) as ei:
        route_config(RC([V(routes=[R(request_headers_to_remove=["host"])])]))
    assert ei.value.message == ":-prefixed or host headers may not be removed"
    with pytest.raises(ConfigError) as ei:
        route_config(RC([V(routes=[R(request_headers_to_add=[H("a", "50%")])])]))
    assert ei.value.message == ("Incorrect configuration: 50%. Couldn't find valid command at "
                                "position 2")
