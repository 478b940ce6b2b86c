"""The plug-in point for the server: ``AdsClient.from_dynamic_config`` turns the bootstrap's
``dynamic_resources`` (config/dynamic.py) into a client, and the channel options it uses."""

from __future__ import annotations

import json
import os

import pytest
from envoy.config.core.v3 import base_pb2

from meshproxy.config.bootstrap import build_server_config, load_bootstrap
from meshproxy.xds import types as T
from meshproxy.xds.ads_client import AdsClient, Keepalive, channel_options
from tests.support.proxies import REAL_CONFIGS


def test_channel_options_keepalive_and_no_message_limit():
    opts = dict(channel_options(Keepalive(interval=30, timeout=5)))
    assert opts["grpc.keepalive_time_ms"] == 30000
    assert opts["grpc.keepalive_timeout_ms"] == 5000
    assert opts["grpc.keepalive_permit_without_calls"] == 1
    assert opts["grpc.max_receive_message_length"] == -1
    assert "grpc.keepalive_time_ms" not in dict(channel_options(None))


def test_client_from_a_tcp_sotw_bootstrap(tmp_path):
    boot = {"node": {"id": "n", "cluster": "c"},
            "dynamic_resources": {
                "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                               "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]},
                "cds_config": {"ads": {}, "initial_fetch_timeout": "3s"},
                "lds_config": {"ads": {}}},
            "static_resources": {"clusters": [{
                "name": "xds", "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                                 "HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {
                            "connection_keepalive": {"interval": "10s", "timeout": "2s"}}}}},
                "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": 15010}}}}]}]}}]}}
    p = tmp_path / "b.json"
    p.write_text(json.dumps(boot))
    cfg = build_server_config(load_bootstrap(str(p)))
    client = AdsClient.from_dynamic_config(cfg.dynamic, base_pb2.Node(id="n"), {})
    assert client.target == "ipv4:127.0.0.1:15010" and not client.delta
    assert not client.mux.node_on_first_message_only
    assert client.mux._timeout_for(T.CLUSTER) == 3.0
    assert client.mux._timeout_for(T.LISTENER) == 15.0
    opts = dict(client._options)
    assert (opts["grpc.keepalive_time_ms"], opts["grpc.keepalive_timeout_ms"]) == (10000, 2000)


@pytest.mark.skipif(not os.path.isdir(REAL_CONFIGS),
                    reason=f"{REAL_CONFIGS} not present (only beside the steering repository)")
def test_client_from_istios_rendered_bootstrap():
    path = os.path.join(REAL_CONFIGS, "istio-bootstrap", "default_golden.json")
    boot = load_bootstrap(path, allow_unknown_fields=True)
    cfg = build_server_config(boot)
    client = AdsClient.from_dynamic_config(cfg.dynamic, boot.node, {})
    assert client.delta and client.target.startswith("unix:")
    assert client.mux.node_on_first_message_only
    # Istio: initial_fetch_timeout 0s for CDS and LDS - wait for ever
    assert client.mux._timeout_for(T.CLUSTER) is None
    assert client.mux._timeout_for(T.LISTENER) is None
    assert client.mux._timeout_for(T.ENDPOINT) == 15.0
