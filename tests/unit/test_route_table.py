"""Route table semantics without sockets: virtual host selection and route matching.

Every expectation here was measured on Envoy 1.40 (tests/oracle/test_routing_oracle.py sends
the same requests to the real Envoy)."""

from __future__ import annotations

import pytest

from meshproxy.router.matchers import HAVE_RE2, simple_atoi
from meshproxy.router.route_table import port_start
from tests.unit.route_helpers import named, req, table, which

# ---------------------------------------------------------------------- virtual hosts

VHOSTS = [
    {"name": "exact", "domains": ["foo.com"], "routes": [named("exact", {"prefix": "/"})]},
    {"name": "exactport", "domains": ["foo.com:8080"],
     "routes": [named("exactport", {"prefix": "/"})]},
    {"name": "suf", "domains": ["*.foo.com"], "routes": [named("suf", {"prefix": "/"})]},
    {"name": "suf2", "domains": ["*-bar.foo.com"], "routes": [named("suf2", {"prefix": "/"})]},
    {"name": "pre", "domains": ["foo.*"], "routes": [named("pre", {"prefix": "/"})]},
    {"name": "pre2", "domains": ["foo.b*"], "routes": [named("pre2", {"prefix": "/"})]},
    {"name": "v6", "domains": ["[::1]"], "routes": [named("v6", {"prefix": "/"})]},
    {"name": "def", "domains": ["*"], "routes": [named("def", {"prefix": "/"})]},
]

VHOST_CASES = [
    ("foo.com", "exact"), ("FOO.com", "exact"), ("foo.com:8080", "exactport"),
    ("foo.com:9090", "pre"), ("a.foo.com", "suf"), ("x-bar.foo.com", "suf2"),
    ("-bar.foo.com", "suf"), (".foo.com", "def"), ("foo.bar", "pre2"), ("foo.", "def"),
    ("foo.b", "pre"), ("foo.com.", "pre"), ("[::1]", "v6"), ("[::1]:80", "def"),
    ("x.foo.com:80", "def"),
]


@pytest.mark.parametrize("host,expected", VHOST_CASES)
def test_virtual_host_precedence(host, expected):
    assert which(table(vhosts=VHOSTS), req(host=host)) == expected


IGNORE_PORT_CASES = [
    ("foo.com:8080", "exact"), ("foo.com:", "exact"), ("foo.com:abc", "exact"),
    ("bar.com:8080", "def"), ("[::1]:80", "v6"), ("[::1]", "v6"), ("a.foo.com:1", "suf"),
    ("::1", "def"), ("foo.com:80:80", "def"),
]


@pytest.mark.parametrize("host,expected", IGNORE_PORT_CASES)
def test_ignore_port_in_host_matching(host, expected):
    vhosts = [VHOSTS[0], {"name": "exactport", "domains": ["bar.com:8080"],
                          "routes": [named("exactport", {"prefix": "/"})]},
              VHOSTS[6], VHOSTS[2], VHOSTS[-1]]
    t = table(vhosts=vhosts, ignore_port_in_host_matching=True)
    assert which(t, req(host=host)) == expected


def test_port_start():
    assert port_start(b"a:1") == 1
    assert port_start(b"[::1]") == -1
    assert port_start(b"[::1]:8") == 5
    assert port_start(b"a") == -1


def test_no_matching_vhost_is_no_route():
    t = table(vhosts=[VHOSTS[0]])
    assert t.route(req(host="other.com")) is None


def test_vhost_header():
    t = table(vhosts=VHOSTS, vhost_header="x-vh")
    assert which(t, req(host="zzz", headers=[("x-vh", "foo.com")])) == "exact"


# ---------------------------------------------------------------------- path matching

def R(name, match):
    return named(name, match)


PATH_ROUTES = [
    R("pq", {"prefix": "/pq?a"}),
    R("path", {"path": "/exact"}),
    R("ci", {"prefix": "/CI", "case_sensitive": False}),
    R("cipath", {"path": "/CIPATH", "case_sensitive": False}),
    R("rx", {"safe_regex": {"regex": "/rx/[0-9]+"}}),
    R("rxci", {"safe_regex": {"regex": "/RXCI"}, "case_sensitive": False}),
    R("sep", {"path_separated_prefix": "/sep"}),
    R("sepci", {"path_separated_prefix": "/SEPCI", "case_sensitive": False}),
    R("grpc", {"prefix": "/g", "grpc": {}}),
    R("conn", {"connect_matcher": {}}),
    R("empty", {"prefix": ""}),
]

PATH_CASES = [
    ("/pq?a=1", "empty"), ("/exact", "path"), ("/exact?x=1", "path"), ("/exact/", "empty"),
    ("/ci", "ci"), ("/cixyz", "ci"), ("/cipath", "ci"), ("/rx/123", "rx"),
    ("/rx/123?x=1", "rx"), ("/rx/12a", "empty"), ("/rxci", "empty"), ("/RXCI", "rxci"),
    ("/sep", "sep"), ("/sep/", "sep"), ("/sep/x", "sep"), ("/sepx", "empty"), ("/sep?x", "sep"),
    ("/sepci/a", "sepci"), ("/SEPCI", "sepci"),
]


@pytest.mark.parametrize("path,expected", PATH_CASES)
def test_path_matchers(path, expected):
    assert which(table(PATH_ROUTES), req(path)) == expected


@pytest.mark.parametrize("ct,expected", [
    ("application/grpc", "grpc"), ("application/grpc+proto", "grpc"),
    ("application/grpc-web", "empty"), ("Application/grpc", "empty"),
    ("application/grpc; charset=x", "empty"), (None, "empty")])
def test_grpc_matcher(ct, expected):
    headers = [("content-type", ct)] if ct else []
    assert which(table(PATH_ROUTES), req("/g", headers=headers)) == expected


def test_connect_only_matches_connect_matcher():
    t = table(PATH_ROUTES)
    assert which(t, req("", method="CONNECT", host="foo.com:443")) == "conn"
    no_conn = table([R("empty", {"prefix": ""}), R("rx", {"safe_regex": {"regex": ".*"}})])
    assert which(no_conn, req("", method="CONNECT", host="foo.com:443")) is None
    assert which(t, req("/x")) == "empty"


# ---------------------------------------------------------------------- headers

HEADER_MATCHERS = {
    "exact": [{"name": "x-a", "string_match": {"exact": "v"}}],
    "dep_exact": [{"name": "x-a", "exact_match": "v"}],
    "dep_exact_empty": [{"name": "x-a", "exact_match": ""}],
    "suffix": [{"name": "x-a", "suffix_match": "v"}],
    "regex": [{"name": "x-a", "safe_regex_match": {"regex": "v+"}}],
    "present": [{"name": "x-a", "present_match": True}],
    "absent": [{"name": "x-a", "present_match": False}],
    "bare": [{"name": "x-a"}],
    "inv_exact": [{"name": "x-a", "string_match": {"exact": "v"}, "invert_match": True}],
    "inv_present": [{"name": "x-a", "present_match": True, "invert_match": True}],
    "inv_absent": [{"name": "x-a", "present_match": False, "invert_match": True}],
    "empty_missing": [{"name": "x-a", "string_match": {"exact": ""},
                       "treat_missing_header_as_empty": True}],
    "present_missing": [{"name": "x-a", "present_match": True,
                         "treat_missing_header_as_empty": True}],
    "absent_missing": [{"name": "x-a", "present_match": False,
                        "treat_missing_header_as_empty": True}],
    "range": [{"name": "x-a", "range_match": {"start": 1, "end": 10}}],
    "inv_range": [{"name": "x-a", "range_match": {"start": -10, "end": 10},
                   "invert_match": True}],
    "joined": [{"name": "x-a", "string_match": {"exact": "v,w"}}],
    "ignore_case": [{"name": "x-a", "string_match": {"exact": "V", "ignore_case": True}}],
    "host": [{"name": "host", "string_match": {"exact": "example.com"}}],
    "scheme": [{"name": ":scheme", "string_match": {"exact": "http"}}],
    "ua_folded": [{"name": "user-agent", "string_match": {"exact": "u1,u2"}}],
    "ua_one": [{"name": "user-agent", "string_match": {"exact": "u1"}}],
}

# (headers sent, names of the matchers that match) -- measured on Envoy 1.40
HEADER_CASES = [
    ([], {"absent", "inv_present", "empty_missing", "present_missing", "host", "scheme"}),
    ([("x-a", "v")], {"exact", "dep_exact", "dep_exact_empty", "suffix", "regex", "present",
                      "bare", "inv_absent", "present_missing", "inv_range", "ignore_case",
                      "host", "scheme"}),
    ([("x-a", "v"), ("x-a", "w")], {"exact", "dep_exact", "dep_exact_empty", "suffix",
                                    "regex", "present", "bare", "inv_absent", "present_missing",
                                    "inv_range", "ignore_case", "host", "scheme"}),
    ([("x-a", "v,w")], {"dep_exact_empty", "present", "bare", "inv_exact", "inv_absent",
                        "present_missing", "inv_range", "joined", "host", "scheme"}),
    ([("x-a", "5"), ("x-a", "60")], {"dep_exact_empty", "present", "bare", "inv_exact",
                                     "inv_absent", "present_missing", "range", "host",
                                     "scheme"}),
    ([("x-a", "+5")], {"dep_exact_empty", "present", "bare", "inv_exact", "inv_absent",
                       "present_missing", "range", "host", "scheme"}),
    ([("x-a", "1_0")], {"dep_exact_empty", "present", "bare", "inv_exact", "inv_absent",
                        "present_missing", "inv_range", "host", "scheme"}),
    ([("user-agent", "u1"), ("user-agent", "u2")],
     {"absent", "inv_present", "empty_missing", "present_missing", "host", "scheme",
      "ua_folded"}),
]


@pytest.mark.parametrize("headers,expected", HEADER_CASES, ids=lambda x: repr(x)[:40])
def test_header_matchers(headers, expected):
    routes = [R(k, {"prefix": "/", "headers": v}) for k, v in HEADER_MATCHERS.items()]
    got = set()
    for name in HEADER_MATCHERS:
        t = table([r for r in routes if r["name"] == name])
        if t.route(req("/", headers=headers)) is not None:
            got.add(name)
    assert got == expected


def test_simple_atoi():
    assert simple_atoi(b" +5 ") == 5
    assert simple_atoi(b"-0") == 0
    assert simple_atoi(b"1_0") is None
    assert simple_atoi(b"0x5") is None
    assert simple_atoi(b"99999999999999999999") is None


# ---------------------------------------------------------------------- query parameters

QUERY = {
    "q1": [{"name": "a", "string_match": {"exact": "b"}}],
    "q2": [{"name": "p", "present_match": True}],
    "q3": [{"name": "np", "present_match": False}],
    "q4": [{"name": "e"}],
    "q6": [{"name": "enc", "string_match": {"exact": "a%20b"}}],
    "q7": [{"name": "ci", "string_match": {"exact": "AB", "ignore_case": True}}],
    "q8": [{"name": "e", "string_match": {"exact": ""}}],
}
QUERY_CASES = [
    ("?a=b", {"q1", "q3"}), ("?a=c&a=b", {"q3"}), ("?a=b&a=c", {"q1", "q3"}),
    ("?p", {"q2", "q3"}), ("?p=", {"q2", "q3"}), ("?e", {"q3", "q4", "q8"}),
    ("?e=1", {"q3", "q4"}), ("?enc=a%20b", {"q3", "q6"}), ("?ci=ab", {"q3", "q7"}),
    ("?np=1", set()), ("?&&a=b", {"q1", "q3"}), ("?%61=b", {"q3"}), ("?a==b", {"q3"}),
    ("", {"q3"}),
]


@pytest.mark.parametrize("query,expected", QUERY_CASES)
def test_query_parameters(query, expected):
    got = set()
    for k, v in QUERY.items():
        t = table([R(k, {"prefix": "/", "query_parameters": v})])
        if t.route(req("/x" + query)) is not None:
            got.add(k)
    assert got == expected


# ---------------------------------------------------------------------- runtime fraction

def test_runtime_fraction_uses_one_random_value_per_request():
    half = {"default_value": {"numerator": 50, "denominator": "HUNDRED"}}
    t = table([R("a", {"prefix": "/", "runtime_fraction": half}),
               R("b", {"prefix": "/", "runtime_fraction": half}), R("c", {"prefix": "/"})])
    vh = t.vhosts[0]
    # Envoy: featureEnabled(random % 100 < 50) with the same random for every route.
    assert vh.route(req(), random_value=49).name == "a"
    assert vh.route(req(), random_value=50).name == "c"
    assert vh.route(req(), random_value=149).name == "a"


def test_runtime_fraction_zero_and_full():
    t0 = table([R("a", {"prefix": "/", "runtime_fraction": {
        "default_value": {"numerator": 0}}}), R("c", {"prefix": "/"})])
    t1 = table([R("a", {"prefix": "/", "runtime_fraction": {
        "default_value": {"numerator": 100}}}), R("c", {"prefix": "/"})])
    for _ in range(50):
        assert which(t0, req()) == "c"
        assert which(t1, req()) == "a"


# ---------------------------------------------------------------------- weighted clusters

def test_weighted_pick_follows_cumulative_weights():
    t = table([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "up", "weight": 30}, {"name": "up2", "weight": 0},
        {"name": "up2", "weight": 70}]}}}])
    action = t.vhosts[0].routes[0].action
    assert action.total_weight == 100
    assert action.pick_weighted(29).weight == 30
    assert action.pick_weighted(30).weight == 70
    assert action.pick_weighted(130).name == "up2"


def test_weighted_header_name_supplies_random_value():
    t = table([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {
        "header_name": "x-rnd",
        "clusters": [{"name": "up", "weight": 1}, {"name": "up2", "weight": 1}]}}}])
    action = t.vhosts[0].routes[0].action
    assert action.pick_weighted(None, req(headers=[("x-rnd", "3")])).name == "up2"
    assert action.pick_weighted(None, req(headers=[("x-rnd", "4")])).name == "up"


@pytest.mark.skipif(not HAVE_RE2, reason="google-re2 not installed")
def test_re2_semantics_in_route_regex():
    # RE2 accepts \z and POSIX classes; Python's re reads them differently.
    t = table([R("z", {"safe_regex": {"regex": "/a\\z"}}),
               R("posix", {"safe_regex": {"regex": "/[[:digit:]]+"}}), R("d", {"prefix": ""})])
    assert which(t, req("/a")) == "z"
    assert which(t, req("/123")) == "posix"
    assert which(t, req("/:")) == "d"
