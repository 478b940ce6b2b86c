"""Filter chain selection with Envoy's precedence and no backtracking."""

from __future__ import annotations

import ipaddress

import pytest

from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.listener.chain_match import ConnInfo, FilterChainMatcher

FCM = message_class("envoy.config.listener.v3.FilterChainMatch")


def _m(d):
    return parse_json_into(d, FCM())


def matcher(*entries):
    return FilterChainMatcher([(_m(d), name) for d, name in entries], "listener")


def info(dst="10.0.0.1", dport=80, src="10.0.0.2", sport=40000, sni="", tp="raw_buffer",
         alpn=()):
    return ConnInfo(ipaddress.ip_address(dst), dport, ipaddress.ip_address(src), sport, None,
                    sni, tp, tuple(alpn))


def test_destination_port_beats_unset_and_no_backtracking():
    m = matcher(({"destination_port": 80, "transport_protocol": "tls"}, "port80-tls"),
                ({}, "any"))
    assert m.select(info(dport=80, tp="tls")) == "port80-tls"
    assert m.select(info(dport=81)) == "any"
    # Port 80 picks the port-80 branch; it has no raw_buffer chain and Envoy does not go back
    # to the catch-all: no match.
    assert m.select(info(dport=80, tp="raw_buffer")) is None


def test_longest_prefix_wins():
    m = matcher(({"prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]}, "/8"),
                ({"prefix_ranges": [{"address_prefix": "10.0.0.0", "prefix_len": 24}]}, "/24"),
                ({"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}]}, "/0"))
    assert m.select(info(dst="10.0.0.7")) == "/24"
    assert m.select(info(dst="10.1.0.7")) == "/8"
    assert m.select(info(dst="192.168.1.1")) == "/0"
    assert m.select(info(dst="::1", src="::1")) is None  # no IPv6 range, none unset


def test_server_names_exact_then_longest_wildcard():
    m = matcher(({"server_names": ["www.example.com"]}, "exact"),
                ({"server_names": ["*.example.com"]}, "wild"),
                ({"server_names": ["*.b.example.com"]}, "wild-b"),
                ({}, "none"))
    assert m.select(info(sni="www.example.com")) == "exact"
    assert m.select(info(sni="a.example.com")) == "wild"
    assert m.select(info(sni="x.y.b.example.com")) == "wild-b"
    assert m.select(info(sni="other.org")) == "none"
    assert m.select(info(sni="")) == "none"


def test_alpn_any_of_the_connection_protocols():
    m = matcher(({"application_protocols": ["h2c", "http/1.1"]}, "http"), ({}, "tcp"))
    assert m.select(info(alpn=["http/1.1"])) == "http"
    assert m.select(info(alpn=["istio", "h2c"])) == "http"
    assert m.select(info(alpn=[])) == "tcp"


def test_source_type_ports_and_prefixes():
    m = matcher(({"source_type": "SAME_IP_OR_LOOPBACK"}, "local"),
                ({"source_type": "EXTERNAL", "source_ports": [1234]}, "ext-1234"),
                ({"source_type": "EXTERNAL"}, "ext"))
    assert m.select(info(src="127.0.0.1")) == "local"
    assert m.select(info(src="10.0.0.1", dst="10.0.0.1")) == "local"
    assert m.select(info(src="10.9.9.9", sport=1234)) == "ext-1234"
    assert m.select(info(src="10.9.9.9", sport=1)) == "ext"


def test_duplicate_rules_rejected():
    with pytest.raises(ConfigError, match="same matching rules"):
        matcher(({"destination_port": 80}, "a"), ({"destination_port": 80}, "b"))
    with pytest.raises(ConfigError, match="same matching rules"):
        matcher(({}, "a"), ({}, "b"))


# Istio's virtualInbound (real sidecar, OSSM 2.6 / Istio 1.20): how each kind of connection is
# dispatched.
VIRTUAL_INBOUND = [
    ({"destination_port": 15006}, "blackhole"),
    ({"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}],
      "transport_protocol": "tls",
      "application_protocols": ["istio-http/1.0", "istio-http/1.1", "istio-h2"]}, "http-mtls"),
    ({"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}],
      "transport_protocol": "raw_buffer", "application_protocols": ["http/1.1", "h2c"]},
     "http-plain"),
    ({"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}],
      "transport_protocol": "tls", "application_protocols": ["istio-peer-exchange", "istio"]},
     "tcp-mtls"),
    ({"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}],
      "transport_protocol": "raw_buffer"}, "tcp-plain"),
    ({"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}],
      "transport_protocol": "tls"}, "tls-passthrough"),
    ({"destination_port": 8080, "transport_protocol": "raw_buffer",
      "application_protocols": ["http/1.1", "h2c"]}, "8080-http"),
    ({"destination_port": 8080, "transport_protocol": "raw_buffer"}, "8080-tcp"),
]


@pytest.mark.parametrize("conn,expected", [
    (info(dport=15006), "blackhole"),
    (info(dport=9000, alpn=["http/1.1"]), "http-plain"),
    (info(dport=9000), "tcp-plain"),
    (info(dport=9000, tp="tls", alpn=["istio-http/1.1"]), "http-mtls"),
    (info(dport=9000, tp="tls", alpn=["istio"]), "tcp-mtls"),
    (info(dport=9000, tp="tls", alpn=["h2"]), "tls-passthrough"),
    (info(dport=8080, alpn=["h2c"]), "8080-http"),
    (info(dport=8080), "8080-tcp"),
    (info(dport=8080, tp="tls"), None),   # the 8080 branch has no TLS chain: no backtracking
])
def test_istio_virtual_inbound(conn, expected):
    m = FilterChainMatcher([(_m(d), n) for d, n in VIRTUAL_INBOUND], "virtualInbound")
    assert m.select(conn) == expected
