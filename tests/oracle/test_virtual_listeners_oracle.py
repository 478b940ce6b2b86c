"""A sidecar-shaped listener set through Envoy 1.40 and meshproxy side by side (issue 3, item 8
and the original_dst case of "bad input"): virtualOutbound with ``use_original_dst`` and the
original_dst listener filter, virtualInbound with original_dst + tls/http inspectors, and
``bind_to_port: false`` listeners on 0.0.0.0:9080 and [::]:9443 that only receive hand-offs.

The admin views (/listeners, /config_dump, the listener stats) must be the same; only the
ports the two proxies bound for virtualOutbound/virtualInbound legitimately differ, and are
replaced by their role before comparing. Without iptables no destination is ever restored, so
a plain connection to a listener with the original_dst filter stays on it (Envoy compares the
SO_ORIGINAL_DST answer with the local address, ``original_dst.cc``), and it keeps serving.
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from tests.oracle.test_admin_oracle import _normalise_dump
from tests.support.client import exchange, parse_responses
from tests.support.proxies import ProxyProcess, bootstrap, cluster, find_envoy, hcm
from tests.support.tcp import TcpEcho

pytestmark = pytest.mark.oracle

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
LF = "type.googleapis.com/envoy.extensions.filters.listener."
ORIGINAL_DST = {"name": "envoy.filters.listener.original_dst",
                "typed_config": {"@type": LF + "original_dst.v3.OriginalDst"}}
TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector",
                 "typed_config": {"@type": LF + "tls_inspector.v3.TlsInspector"},
                 # as Istio renders it: not on the mTLS-only port range
                 "filter_disabled": {"destination_port_range": {"start": 15006, "end": 15007}}}
HTTP_INSPECTOR = {"name": "envoy.filters.listener.http_inspector",
                  "typed_config": {"@type": LF + "http_inspector.v3.HttpInspector"}}


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _tcp(prefix, cluster_name):
    return {"name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": prefix, "cluster": cluster_name}}


def _bootstrap(out_port, in_port, echo_port):
    direct = [{"match": {"prefix": "/"}, "direct_response": {
        "status": 200, "body": {"inline_string": "inbound"}}}]
    listeners = [
        {"name": "virtualOutbound", "traffic_direction": "OUTBOUND", "use_original_dst": True,
         "address": {"socket_address": {"address": "127.0.0.1", "port_value": out_port}},
         "listener_filters": [ORIGINAL_DST],
         "filter_chains": [{"name": "virtualOutbound-catchall-tcp",
                            "filters": [_tcp("echo", "echo")]}]},
        {"name": "virtualInbound", "traffic_direction": "INBOUND",
         "address": {"socket_address": {"address": "127.0.0.1", "port_value": in_port}},
         "listener_filters_timeout": "0s", "continue_on_listener_filters_timeout": True,
         "listener_filters": [ORIGINAL_DST, TLS_INSPECTOR, HTTP_INSPECTOR],
         "filter_chains": [
             {"name": "virtualInbound-catchall-http",
              "filter_chain_match": {"application_protocols": ["http/1.1", "h2c"]},
              "filters": [{"name": "envoy.filters.network.http_connection_manager",
                           "typed_config": hcm(direct, stat_prefix="inbound_0.0.0.0_15006")}]},
             {"name": "virtualInbound-passthrough", "filters": [_tcp("inbound_tcp", "echo")]}]},
        {"name": "0.0.0.0_9080", "traffic_direction": "OUTBOUND", "bind_to_port": False,
         "address": {"socket_address": {"address": "0.0.0.0", "port_value": 9080}},
         "filter_chains": [{"filters": [{
             "name": "envoy.filters.network.http_connection_manager",
             "typed_config": hcm([{"match": {"prefix": "/"},
                                   "route": {"cluster": "outbound|9080||reviews"}}],
                                 stat_prefix="outbound_0.0.0.0_9080")}]}]},
        {"name": "[::]_9443", "bind_to_port": False,
         "address": {"socket_address": {"address": "::", "port_value": 9443}},
         "filter_chains": [{"filters": [_tcp("outbound_9443", "PassthroughCluster")]}]},
    ]
    clusters = [{"name": "PassthroughCluster", "type": "ORIGINAL_DST",
                 "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s"},
                cluster("outbound|9080||reviews", [("127.0.0.1", echo_port)]),
                cluster("echo", [("127.0.0.1", echo_port)])]
    return bootstrap(listeners, clusters)


class Run:
    def __init__(self, proxy, out_port, in_port):
        self.p = proxy
        self.ports = {out_port: "OUT", in_port: "IN"}

    def normalise(self, text: str) -> str:
        for port, role in self.ports.items():
            text = re.sub(rf"(?<=[_:]){port}\b", role, text)
            text = re.sub(rf'("port_value": ?){port}\b', rf'\g<1>"{role}"', text)
        return text

    def admin(self, path: str) -> str:
        status, body = self.p.get_admin(path)
        assert status == 200, (path, body)
        return self.normalise(body)


@pytest.fixture(scope="module")
def pair():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    with TcpEcho(reply=b"<echo>") as echo:
        runs = {}
        try:
            for kind in ("envoy", "meshproxy"):
                out_port, in_port = _free_port(), _free_port()
                p = ProxyProcess(kind, _bootstrap(out_port, in_port, echo.port))
                runs[kind] = Run(p.start(), out_port, in_port)
            yield runs
        finally:
            for r in runs.values():
                r.p.stop()


def _both(pair, path):
    return pair["envoy"].admin(path), pair["meshproxy"].admin(path)


def test_listeners_page(pair):
    e, m = _both(pair, "/listeners")
    assert m == e
    assert "0.0.0.0_9080::0.0.0.0:9080" in m and "virtualOutbound::127.0.0.1:OUT" in m
    e, m = _both(pair, "/listeners?format=json")
    assert json.loads(m) == json.loads(e)


@pytest.mark.parametrize("query", ["?resource=static_listeners", "?resource=dynamic_listeners",
                                   "?resource=static_listeners&name_regex=virtual"])
def test_config_dump_listeners(pair, query):
    e, m = _both(pair, "/config_dump" + query)
    dm, de = _normalise_dump(json.loads(m), ports=False), _normalise_dump(json.loads(e),
                                                                          ports=False)
    assert dm == de
    if query == "?resource=static_listeners":
        names = [c["listener"]["name"] for c in dm["configs"]]
        assert names == ["virtualOutbound", "virtualInbound", "0.0.0.0_9080", "[::]_9443"]
        bind = {c["listener"]["name"]: c["listener"].get("bind_to_port") for c in dm["configs"]}
        assert bind["0.0.0.0_9080"] is False and bind["virtualOutbound"] is None


def _listener_stats(run) -> dict:
    """listener.* counters and gauges (not the admin listener's, whose numbers count these
    very admin requests; meshproxy has no histograms yet)."""
    out = {}
    for line in run.admin("/stats?filter=^listener\\.").splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("listener.admin.") or not value.isdigit():
            continue
        out[name] = int(value)
    return out


def test_listener_stat_names(pair):
    e, m = _listener_stats(pair["envoy"]), _listener_stats(pair["meshproxy"])
    assert m == e
    for name in ("listener.127.0.0.1_OUT.downstream_cx_total",
                 "listener.0.0.0.0_9080.downstream_cx_total",
                 "listener.[__]_9443.downstream_pre_cx_timeout",
                 "listener.127.0.0.1_IN.worker_0.downstream_cx_active"):
        assert name in m, name


def test_original_dst_without_a_redirect_uses_the_local_address(pair):
    """No recoverable original destination: the connection stays on the listener it reached,
    is served by its catch-all chain, and the listener keeps serving."""
    for kind, run in pair.items():
        port = next(p for p, role in run.ports.items() if role == "OUT")
        before = run.p.stat(f"listener.127.0.0.1_{port}.downstream_cx_total")
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"ping")
                assert s.recv(100) == b"<echo>", kind
        assert run.p.stat(f"listener.127.0.0.1_{port}.downstream_cx_total") == before + 2, kind
        assert run.p.stat("listener.0.0.0.0_9080.downstream_cx_total") == 0, kind
        assert "Traceback" not in run.p.log(), kind


def test_virtual_inbound_inspects_then_serves(pair):
    for kind, run in pair.items():
        port = next(p for p, role in run.ports.items() if role == "IN")
        data, _ = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", expect=1)
        assert parse_responses(data)[0].body == b"inbound", kind
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(b"SSH-2.0-x\r\n")
            assert s.recv(100) == b"<echo>", kind
        assert "Traceback" not in run.p.log(), kind
    # the closes are counted as each proxy notices them
    deadline = time.monotonic() + 3
    while True:
        e, m = _listener_stats(pair["envoy"]), _listener_stats(pair["meshproxy"])
        if m == e or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert m == e
