"""Differential: request mirroring (``request_mirror_policies``) in meshproxy and in Envoy 1.40
on the same bootstrap and the same requests. Compared, per request: what the client gets, what
the main upstream and the shadow upstream receive (method, target, every header in order,
body; the random x-request-id only checked to be the main request's), and at the end the
shadow clusters' counters."""

from __future__ import annotations

import re
import time

import pytest

from tests.support.client import request
from tests.support.proxies import (ProxyProcess, bootstrap, cluster, find_envoy, hcm, listener,
                                   validate)
from tests.support.upstream import Reply, Upstream

pytestmark = pytest.mark.oracle


def _slow(req):
    return Reply(delay=1.5)          # longer than /slow's route timeout


def _routes(dead_port):
    mirror = lambda c, **kw: {"cluster": c, **kw}  # noqa: E731
    route = lambda prefix, **kw: {"match": {"prefix": prefix},  # noqa: E731
                                  "route": {"cluster": "up", **kw}}
    vhosts = [
        {"name": "v", "domains": ["v.example"],
         "request_mirror_policies": [mirror("shadow")],
         "routes": [route("/own", request_mirror_policies=[mirror("shadow2")]), route("/")]},
        {"name": "all", "domains": ["*"], "routes": [
            route("/m", request_mirror_policies=[mirror("shadow")]),
            route("/two", request_mirror_policies=[mirror("shadow"), mirror("shadow2")]),
            route("/nosuffix", timeout="3s", request_mirror_policies=[
                mirror("shadow", disable_shadow_host_suffix_append=True)]),
            route("/hdr", request_mirror_policies=[{"cluster_header": "x-mirror-to"}]),
            route("/never", request_mirror_policies=[
                mirror("shadow", runtime_fraction={"default_value": {"numerator": 0}})]),
            route("/always", request_mirror_policies=[
                mirror("shadow", runtime_fraction={"default_value": {"numerator": 100}})]),
            route("/dead", request_mirror_policies=[mirror("dead")]),
            route("/slow", timeout="0.5s", request_mirror_policies=[mirror("slow")]),
            route("/attempt", request_mirror_policies=[mirror("shadow")]),
            route("/"),
        ]},
    ]
    vhosts[1]["include_request_attempt_count"] = True
    return vhosts


CASES = [
    ("get", "GET", "/m1", [("x-a", "1")], b"", "example.com"),
    ("post_body", "POST", "/m2", [], b"hello" * 2000, "example.com"),
    ("chunked_body", "POST", "/m3", [("Transfer-Encoding", "chunked")],
     b"5\r\nhello\r\n0\r\n\r\n", "example.com"),
    ("host_with_port", "GET", "/m4", [], b"", "svc.ns:8080"),
    ("ipv6_host", "GET", "/m5", [], b"", "[::1]:8080"),
    ("two_mirrors", "GET", "/two", [], b"", "example.com"),
    ("no_suffix", "GET", "/nosuffix", [], b"", "example.com"),
    ("cluster_header", "GET", "/hdr", [("x-mirror-to", "shadow2")], b"", "example.com"),
    ("cluster_header_missing", "GET", "/hdr", [], b"", "example.com"),
    ("cluster_header_unknown", "GET", "/hdr", [("x-mirror-to", "nope")], b"", "example.com"),
    ("fraction_zero", "GET", "/never", [], b"", "example.com"),
    ("fraction_all", "GET", "/always", [], b"", "example.com"),
    ("xff_present", "GET", "/m6", [("x-forwarded-for", "10.1.2.3")], b"", "example.com"),
    ("vhost_level", "GET", "/x", [], b"", "v.example"),
    ("route_overrides_vhost", "GET", "/own", [], b"", "v.example"),
    ("shadow_refused", "GET", "/dead", [], b"", "example.com"),
    ("shadow_slower_than_timeout", "GET", "/slow", [], b"", "example.com"),
    ("attempt_count", "GET", "/attempt", [], b"", "example.com"),
]


def _seen(up, before):
    return [(r.method, r.target, r.raw_headers, r.body) for r in up.requests[before:]]


def _mask(seen, rid):
    out = []
    for method, target, headers, body in seen:
        hs = []
        for n, v in headers:
            if n.lower() == "x-request-id":
                v = "<main's>" if v == rid else "<other>"
            hs.append((n, v))
        out.append((method, target, hs, body))
    return out


@pytest.fixture(scope="module")
def rig():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    with Upstream() as up, Upstream() as sh, Upstream() as sh2, Upstream(_slow) as slow:
        from tests.integration.test_upstream_servers import dead_port
        dead = dead_port()
        boot = bootstrap([listener("l", hcm(_routes(dead), stat_prefix="mi"))],
                         [cluster("up", [("127.0.0.1", up.port)]),
                          cluster("shadow", [("127.0.0.1", sh.port)]),
                          cluster("shadow2", [("127.0.0.1", sh2.port)]),
                          cluster("dead", [("127.0.0.1", dead)]),
                          cluster("slow", [("127.0.0.1", slow.port)])])
        envoy = ProxyProcess("envoy", boot).start()
        mesh = ProxyProcess("meshproxy", boot).start()
        try:
            yield envoy, mesh, {"up": up, "shadow": sh, "shadow2": sh2, "slow": slow}
        finally:
            envoy.stop()
            mesh.stop()


def _run(proxy, ups, method, path, headers, body, host):
    before = {k: len(u.requests) for k, u in ups.items()}
    r = request(proxy.port("l"), method, path, headers=headers, body=body, host_header=host)
    deadline = time.monotonic() + 3
    # Shadows finish on their own time: wait until they stop changing.
    prev = None
    while time.monotonic() < deadline:
        cur = {k: len(u.requests) - before[k] for k, u in ups.items()}
        if cur == prev:
            break
        prev = cur
        time.sleep(0.15)
    main = _seen(ups["up"], before["up"])
    rid = dict((n.lower(), v) for n, v in main[0][2]).get("x-request-id") if main else None
    return {"status": r.status, "body": r.body,
            "upstreams": {k: _mask(_seen(u, before[k]), rid) for k, u in ups.items()}}


@pytest.mark.parametrize("name,method,path,headers,body,host", CASES,
                         ids=[c[0] for c in CASES])
def test_mirrored_requests_are_envoys(rig, name, method, path, headers, body, host):
    envoy, mesh, ups = rig
    e = _run(envoy, ups, method, path, headers, body, host)
    m = _run(mesh, ups, method, path, headers, body, host)
    assert m == e


def test_shadow_cluster_counters_are_envoys(rig):
    envoy, mesh, ups = rig
    for c in CASES:
        _run(envoy, ups, *c[1:])
        _run(mesh, ups, *c[1:])
    time.sleep(1.6)   # the slow shadow's upstream answers after its timeout
    pat = r"^cluster\.(shadow|shadow2|dead|slow)\.(upstream_rq|upstream_cx_connect|internal)"
    keep = re.compile(r"(rq_total|rq_completed|rq_2xx|rq_200|rq_timeout|connect_fail|"
                      r"rq_pending_total|rq_pending_failure_eject|internal)")
    e = {k: v for k, v in envoy.stats(pat).items() if keep.search(k)}
    m = {k: v for k, v in mesh.stats(pat).items() if keep.search(k)}
    assert e["cluster.shadow.upstream_rq_total"] > 0
    assert m == e


@pytest.mark.parametrize("policy", [
    {"cluster": "up", "cluster_header": "x-c"},
    {},
])
def test_bad_mirror_policies_are_refused_as_envoy_does(tmp_path, policy):
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed")
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up",
                                                   "request_mirror_policies": [policy]}}]
    path = tmp_path / "b.yaml"
    import json
    path.write_text(json.dumps(bootstrap([listener("l", hcm(routes))],
                                         [cluster("up", [("127.0.0.1", 1)])])))
    e_rc, e_msg = validate("envoy", path)
    m_rc, m_msg = validate("meshproxy", path)
    assert e_rc != 0 and m_rc != 0
    assert e_msg.split(": goo.gle")[0] in m_msg, (e_msg, m_msg)
