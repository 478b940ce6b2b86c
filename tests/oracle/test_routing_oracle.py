"""Differential routing tests: the same route configuration and requests through meshproxy and
the real Envoy 1.40, comparing which route answered (direct responses that name their route),
redirect locations, what the upstream received, and what ``envoy --mode validate`` accepts.

Each configuration starts both proxies once (module-scoped) and sends many requests, so the
whole file runs in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

from tests.support.client import exchange, parse_responses
from tests.support.proxies import ProxyProcess, bootstrap, cluster, find_envoy, hcm, listener
from tests.support.upstream import Reply, Upstream
from tests.unit import test_header_mutation as hm
from tests.unit import test_redirect_rewrite as rr
from tests.unit import test_route_config as rcfg
from tests.unit import test_route_table as rt

pytestmark = pytest.mark.oracle

VOLATILE = {"date", "x-request-id", "x-envoy-upstream-service-time",
            "x-envoy-expected-rq-timeout-ms"}


def _boot(vhosts, upstream_port=1, **rc_extra):
    h = hcm(vhosts)
    h["route_config"].update(rc_extra)
    return bootstrap([listener("l", h)], [cluster("up", [("127.0.0.1", upstream_port)]),
                                          cluster("up2", [("127.0.0.1", upstream_port)])])


def _send(port, method, path, headers, host):
    hs = ([("Host", host)] if host is not None else []) + list(headers)
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in hs) + "\r\n"
    data, _ = exchange(port, head.encode(), timeout=3, expect=1)
    rs = parse_responses(data, head_request=method == "HEAD")
    assert rs, f"no response to {method} {path}: {data[:200]!r}"
    r = rs[0]
    return r.status, [(n, v) for n, v in r.headers if n not in VOLATILE], r.body


class Pair:
    """Envoy and meshproxy on one bootstrap, with one recording upstream."""

    def __init__(self, vhosts, handler=None, **rc_extra):
        if find_envoy() is None:
            pytest.skip("Envoy oracle not installed")
        self.up = Upstream(handler) if handler else Upstream()
        self.up.start()
        boot = _boot(vhosts, self.up.port, **rc_extra)
        self.procs = {}
        for kind in ("envoy", "meshproxy"):
            self.procs[kind] = ProxyProcess(kind, boot).start()

    def both(self, method="GET", path="/", headers=(), host="example.com"):
        out = {}
        for kind, p in self.procs.items():
            n0 = len(self.up.requests)
            status, hs, body = _send(p.port("l"), method, path, headers, host)
            seen = None
            if len(self.up.requests) > n0:
                q = self.up.requests[-1]
                seen = (q.method, q.target, [(n, v) for n, v in q.headers if n not in VOLATILE])
            out[kind] = (status, hs, body, seen)
        return out["envoy"], out["meshproxy"]

    def close(self):
        for p in self.procs.values():
            p.stop()
        self.up.stop()


@pytest.fixture(scope="module")
def matching():
    paths = [r for r in rt.PATH_ROUTES if r["name"] != "empty"]
    headers = [rt.R("h_" + k, {"prefix": "/h_" + k + "/", "headers": v})
               for k, v in rt.HEADER_MATCHERS.items()]
    query = [rt.R(k, {"prefix": "/" + k + "/", "query_parameters": v})
             for k, v in rt.QUERY.items()]
    default = {"name": "def", "domains": ["*"],
               "routes": paths + headers + query + [rt.R("empty", {"prefix": ""})]}
    vhosts = [v for v in rt.VHOSTS if v["name"] != "def"] + [default]
    pair = Pair(vhosts)
    yield pair
    pair.close()


@pytest.mark.parametrize("host,expected", rt.VHOST_CASES)
def test_virtual_host_selection(matching, host, expected):
    envoy, mesh = matching.both(path="/", host=host)
    assert mesh == envoy
    if expected != "def":
        assert envoy[2] == expected.encode()


@pytest.mark.parametrize("path,expected", rt.PATH_CASES)
def test_path_matching(matching, path, expected):
    envoy, mesh = matching.both(path=path, host="other.com")
    assert mesh == envoy
    assert envoy[2] == expected.encode()


@pytest.mark.parametrize("headers,expected", rt.HEADER_CASES, ids=lambda x: repr(x)[:40])
def test_header_matching(matching, headers, expected):
    for name in rt.HEADER_MATCHERS:
        envoy, mesh = matching.both(path=f"/h_{name}/", headers=headers)
        assert mesh == envoy, name
        assert (envoy[2] == f"h_{name}".encode()) == (name in expected), name


@pytest.mark.parametrize("query,expected", rt.QUERY_CASES)
def test_query_matching(matching, query, expected):
    for name in rt.QUERY:
        envoy, mesh = matching.both(path=f"/{name}/{query}", host="other.com")
        assert mesh == envoy, name
        assert (envoy[2] == name.encode()) == (name in expected), name


@pytest.fixture(scope="module")
def redirects():
    routes = [{"name": k, "match": {"prefix": f"/{k}/"}, "redirect": v}
              for k, v in rr.REDIRECTS.items()]
    routes += [
        {"name": "sep", "match": {"path_separated_prefix": "/sep"},
         "redirect": {"prefix_rewrite": "/new"}},
        {"name": "pth", "match": {"path": "/pth"}, "redirect": {"prefix_rewrite": "/new"}},
        {"name": "rx", "match": {"safe_regex": {"regex": "/rx.*"}},
         "redirect": {"prefix_rewrite": "/new"}},
        {"name": "ci", "match": {"prefix": "/CI/", "case_sensitive": False},
         "redirect": {"prefix_rewrite": "/new/"}},
        {"name": "nr", "match": {"prefix": "/nr/"}, "route": {
            "cluster_header": "x-cluster", "cluster_not_found_response_code": "NOT_FOUND"}},
        {"name": "nc", "match": {"prefix": "/nc/"}, "route": {"cluster_header": "x-cluster"},
         "response_headers_to_add": [{"header": {"key": "x-r", "value": "r"}}]},
    ]
    pair = Pair([{"name": "all", "domains": ["example.com", "[::1]", "example.com:*",
                                             "[::1]:*"], "routes": routes}])
    yield pair
    pair.close()


@pytest.mark.parametrize("path,host,xfp,status,location", rr.CASES)
def test_redirects(redirects, path, host, xfp, status, location):
    envoy, mesh = redirects.both(path=path, host=host, headers=[("x-forwarded-proto", xfp)])
    assert mesh == envoy
    assert (envoy[0], dict(envoy[1]).get("location")) == (status, location)


@pytest.mark.parametrize("path,headers,status", [
    ("/none", [], 404),  # no route: 404, empty body (flag NR)
    ("/nr/", [("x-cluster", "nope")], 404),  # cluster_not_found_response_code
    ("/nc/", [], 503),  # unknown cluster: 503, empty body, route response headers
    ("/nc/", [("x-cluster", "nope")], 503),
])
def test_no_route_and_unknown_cluster(redirects, path, headers, status):
    envoy, mesh = redirects.both(path=path, headers=headers, host="example.com")
    assert mesh == envoy
    assert envoy[0] == status and envoy[2] == b""
    envoy, mesh = redirects.both(path=path, headers=headers, host="nomatch.com")
    assert mesh == envoy and envoy[0] == 404


@pytest.fixture(scope="module", params=[False, True], ids=["least-specific-wins",
                                                           "most-specific-wins"])
def mutations(request):
    def handler(req):
        return Reply(200, [("content-type", "text/plain"), ("x-upstream", "1"),
                           ("content-length", "2"), ("cache-control", "u-cc")], b"ok")
    t = request.param
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up"},
               "request_headers_to_add": hm.ROUTE_ADDS,
               "request_headers_to_remove": ["x-rm-route", "x-v"],
               "response_headers_to_add": [
                   hm.H("x-resp-r", "r"), hm.H("x-resp-all", "r"),
                   hm.H("x-upstream", "r-ow", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
                   hm.H("content-type", "r-ct", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
                   hm.H("cache-control", "r-cc")]}]
    vhosts = [{"name": "v", "domains": ["*"], "routes": routes,
               "request_headers_to_add": hm.VH_ADDS,
               "request_headers_to_remove": ["x-rm-vh", "x-r"],
               "response_headers_to_add": [hm.H("x-resp-v", "v"), hm.H("x-resp-all", "v")]}]
    pair = Pair(vhosts, handler, request_headers_to_add=hm.RC_ADDS,
                request_headers_to_remove=["x-rm-rc", "x-c"],
                most_specific_header_mutations_wins=t,
                response_headers_to_add=[hm.H("x-resp-c", "c"), hm.H("x-resp-all", "c")])
    pair.most_specific = t
    yield pair
    pair.close()


@pytest.mark.parametrize("with_client", [False, True], ids=["bare", "client-headers"])
def test_header_mutations(mutations, with_client):
    envoy, mesh = mutations.both(headers=hm.CLIENT if with_client else [])
    assert mesh == envoy
    key = (mutations.most_specific, with_client)
    if key in hm.EXPECTED:
        assert envoy[3][2][1:] == hm.EXPECTED[key]


@pytest.fixture(scope="module")
def rewrites():
    pair = Pair([{"name": "all", "domains": ["*"], "routes": rr.REWRITE_ROUTES}])
    yield pair
    pair.close()


def _rewrite_cases():
    for c in rr.REWRITE_CASES:
        path, headers = c[0], c[1]
        yield pytest.param(path, headers, id=f"{path}-{len(headers)}")


@pytest.mark.parametrize("path,headers", list(_rewrite_cases()))
def test_rewrites(rewrites, path, headers):
    envoy, mesh = rewrites.both(path=path, headers=headers)
    assert mesh == envoy


# ---------------------------------------------------------------------- load-time validation

def _envoy_accepts(rc: dict) -> bool:
    boot = _boot(rc["virtual_hosts"], **{k: v for k, v in rc.items()
                                         if k not in ("virtual_hosts", "name")})
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "b.json")
        with open(f, "w") as fh:
            json.dump(boot, fh)
        p = subprocess.run([find_envoy(), "--mode", "validate", "-c", f, "-l", "critical"],
                           capture_output=True, text=True, timeout=30)
    return p.returncode == 0


@pytest.mark.parametrize("rc,expected", list(rcfg.cases()))
def test_validation_verdicts_are_envoys(rc, expected):
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed")
    assert _envoy_accepts(rc) == (expected is None)
