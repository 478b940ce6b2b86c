"""Differential: the same bootstrap and requests through meshproxy and Envoy 1.40 give the same
status and the same upstream-observed request (method, path, host, headers added/removed)."""

from __future__ import annotations

import pytest

from tests.support.client import request
from tests.support.proxies import simple_proxy_bootstrap
from tests.support.upstream import Upstream

pytestmark = pytest.mark.oracle

# Headers whose values legitimately differ between two proxies on every request.
VOLATILE = {"x-request-id", "date", "x-envoy-upstream-service-time"}


def _normalise(req):
    return (req.method, req.target,
            [(n, "*" if n in VOLATILE else v) for n, v in req.headers])


CASES = [
    ("GET", "/a?b=c", [("X-Foo", "Bar")], b""),
    ("POST", "/post", [("Content-Type", "text/plain")], b"hello body"),
    ("GET", "/hop", [("Connection", "keep-alive, X-Drop"), ("X-Drop", "1"), ("TE", "trailers"),
                     ("Keep-Alive", "5"), ("Proxy-Connection", "x")], b""),
    ("GET", "/ids", [("X-Request-Id", "my-id"), ("X-Forwarded-Proto", "https")], b""),
    ("PUT", "/empty", [], b""),
    ("DELETE", "/del", [], b""),
    ("GET", "/t", [("x-envoy-upstream-rq-timeout-ms", "1234")], b""),
    ("GET", "/t-internal", [("x-envoy-upstream-rq-timeout-ms", "1234"),
                            ("x-envoy-internal", "true")], b""),
    ("GET", "/xff-internal", [("x-forwarded-for", "10.1.2.3"), ("x-envoy-retry-on", "5xx"),
                              ("x-envoy-upstream-rq-timeout-ms", "1234")], b""),
    ("GET", "/xff-loopback", [("x-forwarded-for", "127.0.0.1"), ("x-envoy-max-retries", "1")],
     b""),
    ("GET", "/envoy-hdrs", [("x-envoy-max-retries", "3"), ("x-envoy-retry-on", "5xx"),
                            ("x-envoy-foo", "bar"), ("x-envoy-expected-rq-timeout-ms", "10"),
                            ("x-envoy-original-path", "/zzz")], b""),
]


@pytest.mark.parametrize("method,path,headers,body", CASES, ids=[c[1] for c in CASES])
def test_upstream_sees_same_request(start_meshproxy, start_envoy, method, path, headers, body):
    seen = {}
    for name, start in (("envoy", start_envoy), ("meshproxy", start_meshproxy)):
        with Upstream() as up:
            p = start(simple_proxy_bootstrap(up.port))
            r = request(p.port("l"), method, path, headers, body)
            got = up.wait_requests(1)[0]
            seen[name] = (r.status, _normalise(got), got.body,
                          [n for n in r.header_names if n not in VOLATILE])
            p.stop()
    assert seen["meshproxy"] == seen["envoy"]


@pytest.mark.parametrize("xff", ["10.1.2.3", "192.168.0.1", "10.1.2.3, 10.0.0.9"])
def test_internal_address_config_keeps_control_headers(start_meshproxy_default, start_envoy, xff):
    """With internal_address_config, a request whose single XFF address is internal keeps its
    x-envoy-* control headers and gets x-envoy-internal: true (after x-forwarded-proto)."""
    seen = {}
    hdrs = [("x-forwarded-for", xff), ("x-envoy-retry-on", "5xx"), ("x-envoy-internal", "no")]
    for name, start in (("envoy", start_envoy), ("meshproxy", start_meshproxy_default)):
        with Upstream() as up:
            boot = simple_proxy_bootstrap(up.port, hcm_extra={"internal_address_config": {
                "cidr_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}})
            p = start(boot)
            request(p.port("l"), "GET", "/", hdrs)
            seen[name] = _normalise(up.wait_requests(1)[0])
            p.stop()
    assert seen["meshproxy"] == seen["envoy"]
