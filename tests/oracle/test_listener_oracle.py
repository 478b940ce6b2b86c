"""Listener filters and filter-chain selection, through meshproxy and Envoy 1.40 alike:
http_inspector and tls_inspector pick the chain; the bytes they read are replayed intact."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.support.client import exchange, parse_responses
from tests.support.proxies import bootstrap, cluster, hcm
from tests.support.tcp import TcpEcho
from tests.unit.test_inspectors import client_hello

pytestmark = pytest.mark.oracle

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _tcp_chain(match, cluster_name, prefix):
    return {"filter_chain_match": match, "filters": [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY, "stat_prefix": prefix, "cluster": cluster_name}}]}


def _boot(echo_port, tls_port, port_match=None):
    http_chain = {"filter_chain_match": {"application_protocols": ["http/1.1", "h2c"]},
                  "filters": [{"name": "envoy.filters.network.http_connection_manager",
                               "typed_config": hcm([{"match": {"prefix": "/"},
                                                     "direct_response": {
                                                         "status": 200,
                                                         "body": {"inline_string": "http"}}}])}]}
    chains = [http_chain,
              _tcp_chain({"transport_protocol": "tls", "server_names": ["*.example.com"]},
                         "tls", "tls"),
              _tcp_chain({}, "echo", "plain")]
    lst = {"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
           "listener_filters": [
               {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.listener."
                            "tls_inspector.v3.TlsInspector"}},
               {"name": "envoy.filters.listener.http_inspector", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.listener."
                            "http_inspector.v3.HttpInspector"}}],
           "filter_chains": chains}
    return bootstrap([lst], [cluster("echo", [("127.0.0.1", echo_port)]),
                             cluster("tls", [("127.0.0.1", tls_port)])])


@pytest.fixture(params=["envoy", "meshproxy"])
def proxy(request):
    name = "start_envoy" if request.param == "envoy" else "start_meshproxy_default"
    return request.param, request.getfixturevalue(name)


def _send(port, data, until=None, timeout=2.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while until is None or until not in out:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out


def test_http_goes_to_the_http_chain(proxy):
    kind, start = proxy
    with TcpEcho() as echo, TcpEcho() as tls:
        p = start(_boot(echo.port, tls.port))
        data, _ = exchange(p.port("l"), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", expect=1)
        assert parse_responses(data)[0].body == b"http"


def test_plain_tcp_goes_to_the_default_chain_intact(proxy):
    kind, start = proxy
    with TcpEcho() as echo, TcpEcho() as tls:
        p = start(_boot(echo.port, tls.port))
        msg = b"SSH-2.0-not-http\r\nmore bytes"
        assert _send(p.port("l"), msg, until=msg) == msg
        assert echo.wait_bytes(len(msg)) == msg


def test_tls_with_matching_sni_is_passed_through_byte_for_byte(proxy):
    kind, start = proxy
    with TcpEcho(reply=b"") as echo, TcpEcho(reply=b"tls-upstream") as tls:
        p = start(_boot(echo.port, tls.port))
        hello = client_hello("svc.example.com", ["h2"])
        assert _send(p.port("l"), hello, until=b"tls-upstream") == b"tls-upstream"
        assert tls.wait_bytes(len(hello)) == hello


def test_tls_with_other_sni_falls_to_default_chain(proxy):
    kind, start = proxy
    with TcpEcho(reply=b"plain-upstream") as echo, TcpEcho(reply=b"tls-upstream") as tls:
        p = start(_boot(echo.port, tls.port))
        hello = client_hello("other.org")
        assert _send(p.port("l"), hello, until=b"upstream") == b"plain-upstream"


def test_port_specific_branch_does_not_backtrack(proxy):
    """A chain for this listener's own port that only accepts TLS wins the port level; a
    plaintext connection then matches nothing (no fallback to the catch-all), and is closed."""
    kind, start = proxy
    with TcpEcho(reply=b"catch-all") as echo:
        boot = bootstrap([], [cluster("echo", [("127.0.0.1", echo.port)])])
        # bind to a fixed free port so the chain can name it
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        lst_chains = [_tcp_chain({"destination_port": port, "transport_protocol": "tls"},
                                 "echo", "a"),
                      _tcp_chain({}, "echo", "b")]
        boot["static_resources"]["listeners"] = [{
            "name": "l", "address": {"socket_address": {"address": "127.0.0.1",
                                                        "port_value": port}},
            "listener_filters": [{"name": "envoy.filters.listener.tls_inspector",
                                  "typed_config": {"@type": "type.googleapis.com/envoy."
                                                   "extensions.filters.listener.tls_inspector."
                                                   "v3.TlsInspector"}}],
            "filter_chains": lst_chains}]
        p = start(boot)
        assert _send(p.port("l"), b"plain text\n", until=b"catch-all") == b""
        assert p.stat("listener.127.0.0.1_%d.no_filter_chain_match" % port) == 1
