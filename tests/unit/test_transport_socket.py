"""Which transport socket a host's connection uses (upstream/transport_socket.py): Istio's
``transport_socket_matches`` pick mTLS for ``tlsMode: istio`` endpoints and plain text for the
rest; meshproxy has no TLS yet, so a host that selects TLS fails closed and the cluster is still
accepted (as Envoy accepts it)."""

from __future__ import annotations

import pytest

from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.upstream.cluster_config import build_cluster_config
from meshproxy.upstream.host import Host
from meshproxy.upstream.transport_socket import UnsupportedTransportSocket, check_host
from tests.support.proxies import cluster

TLS = {"name": "envoy.transport_sockets.tls", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "sni": "outbound_.9080_._.reviews.default.svc.cluster.local"}}
RAW = {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}
ISTIO_MATCHES = [{"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": TLS},
                 {"name": "tlsMode-disabled", "match": {}, "transport_socket": RAW}]


def config(**extra):
    d = cluster("c", [("127.0.0.1", 1)], **extra)
    return build_cluster_config(parse_json_into(d, message_class(
        "envoy.config.cluster.v3.Cluster")()), "")


def host(cfg, tls_mode=None):
    md = None
    if tls_mode is not None:
        md = parse_json_into({"filter_metadata": {"envoy.transport_socket_match": {
            "tlsMode": tls_mode}}}, message_class("envoy.config.core.v3.Metadata")())
    return Host(None, ("127.0.0.1", 1), metadata=md)


def test_plain_text_clusters_have_no_selection():
    assert config().socket_select is None
    assert config(transport_socket_matches=[{"name": "m", "match": {}, "transport_socket": RAW}],
                  transport_socket=RAW).socket_select is None


@pytest.mark.parametrize("mode,plain", [("istio", False), ("disabled", True), (None, True)])
def test_istio_matches_pick_by_endpoint_metadata(mode, plain):
    cfg = config(transport_socket_matches=ISTIO_MATCHES)
    h = host(cfg, mode)
    if plain:
        check_host(cfg, h)
    else:
        with pytest.raises(UnsupportedTransportSocket):
            check_host(cfg, h)


def test_no_match_falls_back_to_the_cluster_socket():
    only_tls = [ISTIO_MATCHES[0]]
    check_host(config(transport_socket_matches=only_tls), host(None, "disabled"))
    cfg = config(transport_socket=TLS)
    with pytest.raises(UnsupportedTransportSocket):
        check_host(cfg, host(cfg))
