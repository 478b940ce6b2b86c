"""meshproxy has no TLS yet, and never serves in plain text what the config says is TLS: a filter
chain with a TLS transport socket (Istio's mTLS inbound chains) is accepted, as Envoy accepts
it, and a connection selected into it is closed without a byte reaching the upstream, while the
listener's plain-text chains serve; a cluster whose transport socket is TLS (or whose
``transport_socket_matches`` pick TLS for a host) answers 503 without connecting."""

from __future__ import annotations

import socket
import ssl

from tests.support.client import request
from tests.support.proxies import ProxyProcess, bootstrap, cluster, hcm
from tests.support.upstream import Upstream

TLS_CONTEXT = {"name": "envoy.transport_sockets.tls", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
             "DownstreamTlsContext"}}
UPSTREAM_TLS = {"name": "envoy.transport_sockets.tls", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "sni": "backend.example"}}


def _hcm_chain(match, cluster_name, **extra):
    chain = {"filter_chain_match": match,
             "filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm([{"match": {"prefix": "/"},
                                                "route": {"cluster": cluster_name}}])}]}
    chain.update(extra)
    return chain


def _boot(plain_port, tls_port):
    lst = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
           "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                                 "typed_config": {"@type": "type.googleapis.com/envoy."
                                                  "extensions.filters.listener.tls_inspector."
                                                  "v3.TlsInspector"}}],
           "filter_chains": [_hcm_chain({"transport_protocol": "tls"}, "plain",
                                        transport_socket=TLS_CONTEXT),
                             _hcm_chain({}, "plain")]}
    tls_matches = [{"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
                    "transport_socket": UPSTREAM_TLS},
                   {"name": "tlsMode-disabled", "match": {}, "transport_socket": {
                       "name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                           "@type": "type.googleapis.com/envoy.extensions.transport_sockets."
                                    "raw_buffer.v3.RawBuffer"}}}]
    mtls = cluster("mtls", [("127.0.0.1", tls_port)], transport_socket_matches=tls_matches)
    mtls["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] = {
        "filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}
    lst2 = {"name": "l2", "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hcm([{"match": {"prefix": "/tls"}, "route": {"cluster": "tls"}},
                                     {"match": {"prefix": "/mtls"},
                                      "route": {"cluster": "mtls"}},
                                     {"match": {"prefix": "/"},
                                      "route": {"cluster": "plain"}}])}]}]}
    return bootstrap([lst, lst2], [
        cluster("plain", [("127.0.0.1", plain_port)]),
        cluster("tls", [("127.0.0.1", tls_port)], transport_socket=UPSTREAM_TLS), mtls])


def _get(port, path):
    return request(port, path=path).status


def _tls_handshake(port) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        with ctx.wrap_socket(raw, server_hostname="backend.example"):
            return "handshake completed"
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return type(exc).__name__


def test_tls_chains_and_clusters_fail_closed():
    with Upstream() as plain, Upstream() as tls_up:
        with ProxyProcess("meshproxy", _boot(plain.port, tls_up.port)) as p:
            assert _get(p.port("l"), "/plain") == 200                # the plain-text chain
            assert _tls_handshake(p.port("l")) != "handshake completed"
            assert _get(p.port("l2"), "/tls") == 503                 # cluster transport_socket
            assert _get(p.port("l2"), "/mtls") == 503                # tlsMode: istio host
            assert _get(p.port("l2"), "/ok") == 200
            cx_fail = p.stat("cluster.tls.upstream_cx_connect_fail")
            # the TLS connection never reached an HTTP connection manager (4 plain ones did)
            hcm_cx = p.stat("http.ingress.downstream_cx_total")
        assert len(plain.requests) == 2
        assert tls_up.requests == [] and tls_up.connections == 0
        assert cx_fail == 1
        assert hcm_cx == 4
