"""ORIGINAL_DST clusters without iptables: the x-envoy-original-dst-host header (use_http_header)
through meshproxy and Envoy alike, and meshproxy's refusal to connect to its own listeners."""

from __future__ import annotations

import socket

import pytest

from tests.support.client import request
from tests.support.proxies import bootstrap, hcm, listener
from tests.support.upstream import Upstream

pytestmark = pytest.mark.oracle

ODST = {"name": "odst", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s", "original_dst_lb_config": {"use_http_header": True}}


def _boot():
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "odst"}}]
    return bootstrap([listener("l", hcm(routes))], [ODST])


@pytest.fixture(params=["envoy", "meshproxy"])
def proxy(request):
    name = "start_envoy" if request.param == "envoy" else "start_meshproxy_default"
    return request.param, request.getfixturevalue(name)


def test_original_dst_host_header(proxy):
    kind, start = proxy
    with Upstream() as up:
        p = start(_boot())
        r = request(p.port("l"), "GET", "/a", [("x-envoy-original-dst-host",
                                                 f"127.0.0.1:{up.port}")])
        assert r.status == 200 and r.body == b"GET /a"
        seen = up.wait_requests(1)[0]
        # Envoy forwards the header it routed by.
        assert seen.header("x-envoy-original-dst-host") == f"127.0.0.1:{up.port}"
        r = request(p.port("l"), "GET", "/b", [("x-envoy-original-dst-host", "not-an-ip:1")])
        assert r.status == 503
        assert p.stat("cluster.odst.original_dst_host_invalid") == 1


def test_own_listener_is_never_a_destination(start_meshproxy_default):
    """A connection whose original destination is this proxy's own listener (here: the
    listener itself, no redirect) must not be proxied back into the proxy."""
    tcp = {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3."
                    "TcpProxy", "stat_prefix": "pass", "cluster": "pass"}
    lst = listener("l", tcp, filter_name="envoy.filters.network.tcp_proxy")
    lst["listener_filters"] = [{"name": "envoy.filters.listener.original_dst", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3."
                 "OriginalDst"}}]
    p = start_meshproxy_default(bootstrap([lst], [{
        "name": "pass", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "1s"}]))
    s = socket.create_connection(("127.0.0.1", p.port("l")), timeout=3)
    s.sendall(b"hello")
    try:
        assert s.recv(100) == b""
    except ConnectionResetError:
        pass
    s.close()
    assert p.stat("cluster.pass.original_dst_host_invalid") == 1
    assert p.stat("cluster.pass.upstream_cx_total") == 0
