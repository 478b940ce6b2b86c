"""Header mutations at route, virtual host and route-configuration level, without sockets.

The expected header lists are what Envoy 1.40 sent upstream for the same configuration and
request (tests/oracle/test_routing_oracle.py checks the same configuration end to end)."""

from __future__ import annotations

import pytest

from meshproxy.router.rewrite import finalize_request_headers
from tests.unit.route_helpers import FakeStream, req, resp, table


def H(k, v, **kw):
    d = {"header": {"key": k, "value": v}}
    d.update(kw)
    return d


ROUTE_ADDS = [
    H("x-r", "route"), H("x-all", "route"),
    H("x-ow", "r-ow", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
    H("x-aia", "r-aia", append_action="ADD_IF_ABSENT"),
    H("x-oie", "r-oie", append_action="OVERWRITE_IF_EXISTS"),
    H("x-dep-f", "r-dep", append=False), H("x-dep-t", "r-dep", append=True),
    H("x-empty", ""), H("x-keep", "", keep_empty_value=True),
    H("x-seq", "a"), H("x-seq", "b", append_action="OVERWRITE_IF_EXISTS_OR_ADD"), H("x-seq", "c"),
    H("x-aia2", "1", append_action="ADD_IF_ABSENT"),
    H("x-aia2", "2", append_action="ADD_IF_ABSENT"),
    H("x-fmt", "%REQ(x-in)%"), H("x-in", "new-in", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
    H("x-fmt2", "%REQ(x-in)%"), H("x-pct", "100%%"),
    H("content-type", "ct-route", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
    H("user-agent", "ua-route"),
    H("x-oie-absent", "v", append_action="OVERWRITE_IF_EXISTS"),
]
VH_ADDS = [H("x-v", "vhost"), H("x-all", "vhost"),
           H("x-ow", "v-ow", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
           H("x-aia", "v-aia", append_action="ADD_IF_ABSENT")]
RC_ADDS = [H("x-c", "rc"), H("x-all", "rc"),
           H("x-ow", "c-ow", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
           H("x-aia", "c-aia", append_action="ADD_IF_ABSENT")]


def mutation_table(most_specific: bool):
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up"},
               "request_headers_to_add": ROUTE_ADDS,
               "request_headers_to_remove": ["x-rm-route", "x-v"],
               "response_headers_to_add": [
                   H("x-resp-r", "r"), H("x-resp-all", "r"),
                   H("x-upstream", "r-ow", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
                   H("content-type", "r-ct", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
                   H("cache-control", "r-cc")]}]
    vhosts = [{"name": "v", "domains": ["*"], "routes": routes,
               "request_headers_to_add": VH_ADDS,
               "request_headers_to_remove": ["x-rm-vh", "x-r"],
               "response_headers_to_add": [H("x-resp-v", "v"), H("x-resp-all", "v")]}]
    return table(vhosts=vhosts, request_headers_to_add=RC_ADDS,
                 request_headers_to_remove=["x-rm-rc", "x-c"],
                 most_specific_header_mutations_wins=most_specific,
                 response_headers_to_add=[H("x-resp-c", "c"), H("x-resp-all", "c")])


CLIENT = [("x-ow", "client"), ("x-aia", "client"), ("x-oie", "client"), ("x-dep-f", "c"),
          ("x-dep-t", "c"), ("x-seq", "client"), ("x-in", "client-in"), ("x-rm-route", "1"),
          ("x-rm-vh", "1"), ("x-rm-rc", "1"), ("x-r", "client-r"), ("x-all", "client"),
          ("content-type", "ct-client"), ("user-agent", "ua-client"), ("x-z", "last")]

# Envoy 1.40's upstream request headers after host (host and x-forwarded-proto first).
EXPECTED = {
    (False, False): [
        ("x-forwarded-proto", "http"), ("x-dep-f", "r-dep"), ("x-seq", "b"),
        ("x-in", "new-in"), ("content-type", "ct-route"), ("x-all", "route"),
        ("x-aia", "r-aia"), ("x-dep-t", "r-dep"), ("x-keep", ""), ("x-seq", "a"),
        ("x-seq", "c"), ("x-aia2", "1"), ("x-aia2", "2"), ("x-pct", "100%"),
        ("user-agent", "ua-route"), ("x-v", "vhost"), ("x-all", "vhost"), ("x-ow", "c-ow"),
        ("x-c", "rc"), ("x-all", "rc")],
    (False, True): [
        ("x-aia", "client"), ("x-dep-t", "c"), ("x-all", "client"),
        ("user-agent", "ua-client,ua-route"), ("x-z", "last"), ("x-forwarded-proto", "http"),
        ("x-oie", "r-oie"), ("x-dep-f", "r-dep"), ("x-seq", "b"), ("x-in", "new-in"),
        ("content-type", "ct-route"), ("x-all", "route"), ("x-dep-t", "r-dep"),
        ("x-keep", ""), ("x-seq", "a"), ("x-seq", "c"), ("x-aia2", "1"), ("x-aia2", "2"),
        ("x-fmt", "client-in"), ("x-fmt2", "client-in"), ("x-pct", "100%"),
        ("x-v", "vhost"), ("x-all", "vhost"), ("x-ow", "c-ow"), ("x-c", "rc"),
        ("x-all", "rc")],
    (True, False): [
        ("x-forwarded-proto", "http"), ("x-c", "rc"), ("x-all", "rc"), ("x-aia", "c-aia"),
        ("x-all", "vhost"), ("x-ow", "r-ow"), ("x-dep-f", "r-dep"), ("x-seq", "b"),
        ("x-in", "new-in"), ("content-type", "ct-route"), ("x-r", "route"),
        ("x-all", "route"), ("x-dep-t", "r-dep"), ("x-keep", ""), ("x-seq", "a"),
        ("x-seq", "c"), ("x-aia2", "1"), ("x-aia2", "2"), ("x-pct", "100%"),
        ("user-agent", "ua-route")],
}


@pytest.mark.parametrize("most_specific,with_client", list(EXPECTED), ids=str)
def test_request_mutation_levels_and_actions(most_specific, with_client):
    t = mutation_table(most_specific)
    r = req("/", headers=CLIENT if with_client else [])
    route = t.route(r)
    finalize_request_headers(r, route, None, FakeStream(r), True)
    got = [(n.decode(), v.decode()) for n, v in r.headers]
    assert got == EXPECTED[(most_specific, with_client)]


@pytest.mark.parametrize("most_specific,expected", [
    (False, [("content-length", "5"), ("cache-control", "u-cc,r-cc"), ("x-upstream", "r-ow"),
             ("content-type", "r-ct"), ("x-resp-r", "r"), ("x-resp-all", "r"),
             ("x-resp-v", "v"), ("x-resp-all", "v"), ("x-resp-c", "c"), ("x-resp-all", "c")]),
    (True, [("content-length", "5"), ("cache-control", "u-cc,r-cc"), ("x-resp-c", "c"),
            ("x-resp-all", "c"), ("x-resp-v", "v"), ("x-resp-all", "v"),
            ("x-upstream", "r-ow"), ("content-type", "r-ct"), ("x-resp-r", "r"),
            ("x-resp-all", "r")]),
])
def test_response_mutation_levels(most_specific, expected):
    t = mutation_table(most_specific)
    route = t.route(req())
    r = resp(200, [("content-type", "text/plain"), ("x-upstream", "1"), ("content-length", "5"),
                   ("cache-control", "u-cc")])
    vh = route.vhost
    muts = (route.response_mutation, vh.response_mutation, t.response_mutation)
    for m in (muts[::-1] if most_specific else muts):
        if m is not None:
            m.apply(r, FakeStream())
    assert [(n.decode(), v.decode()) for n, v in r.headers] == expected


def test_formatters():
    t = table([{"match": {"prefix": "/"}, "route": {"cluster": "up"}, "request_headers_to_add": [
        H("x-addr", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
        H("x-alt", "%REQ(x-missing?x-b)%"), H("x-trunc", "%REQ(x-b):2%"),
        H("x-unknown", "%UPSTREAM_METADATA([\"a\",\"b\"])%"),
        H("x-cluster", "[%UPSTREAM_CLUSTER%]")]}])
    r = req("/", headers=[("x-b", "hello")])
    finalize_request_headers(r, t.route(r), None, FakeStream(r), True)
    got = dict((n.decode(), v.decode()) for n, v in r.headers)
    assert got["x-addr"] == "10.0.0.1"
    assert got["x-alt"] == "hello"
    assert got["x-trunc"] == "he"
    assert "x-unknown" not in got
    assert got["x-cluster"] == "[up]"


def test_weighted_cluster_headers_apply_first():
    t = table([{"match": {"prefix": "/"}, "request_headers_to_add": [H("x-h2", "%REQ(host)%"),
                                                                     H("x-all", "route")],
                "route": {"append_x_forwarded_host": True, "weighted_clusters": {"clusters": [
                    {"name": "up", "weight": 1, "host_rewrite_literal": "wc.host",
                     "request_headers_to_add": [H("x-h", "%REQ(:authority)%"),
                                                H("x-all", "wc")]}]}}}])
    r = req("/wc")
    route = t.route(r)
    w = route.action.pick_weighted(0)
    finalize_request_headers(r, route, w, FakeStream(r), True)
    # Envoy 1.40: the weighted host is a plain setHost (no x-envoy-original-host, no XFH).
    assert r.authority == b"wc.host"
    assert [(n.decode(), v.decode()) for n, v in r.headers] == [
        ("x-forwarded-proto", "http"), ("x-h", "example.com"), ("x-all", "wc"),
        ("x-h2", "wc.host"), ("x-all", "route")]
