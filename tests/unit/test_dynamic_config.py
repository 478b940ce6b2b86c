"""What ``dynamic_resources`` translates to (config/dynamic.py): the xDS server's gRPC target,
protocol flavour, node handling, keepalive and per-source initial fetch timeouts. (Envoy's
acceptance of the same bootstraps is checked in tests/oracle/test_dynamic_config_oracle.py.)"""

from __future__ import annotations

import json
import os

import pytest

from meshproxy.config.bootstrap import build_server_config, load_bootstrap
from tests.support.proxies import REAL_CONFIGS


def build(boot: dict, tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps(boot))
    return build_server_config(load_bootstrap(str(p)))


def xds_cluster(address, h2_keepalive=None):
    c = {"name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [
             {"lb_endpoints": [{"endpoint": {"address": address}}]}]}}
    if h2_keepalive is not None:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                         "HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {
                    "connection_keepalive": h2_keepalive}}}}
    return c


def boot(cluster, api_type="DELTA_GRPC", **sources):
    return {"node": {"id": "n", "cluster": "c"},
            "dynamic_resources": {"ads_config": {
                "api_type": api_type, "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}, **sources},
            "static_resources": {"clusters": [cluster]}}


def test_no_dynamic_resources_means_none(tmp_path):
    cfg = build({"static_resources": {}}, tmp_path)
    assert cfg.dynamic is None


def test_unix_socket_delta_with_istio_sources(tmp_path):
    cfg = build(boot(xds_cluster({"pipe": {"path": "./etc/istio/proxy/XDS"}}),
                     cds_config={"ads": {}, "initial_fetch_timeout": "0s"},
                     lds_config={"ads": {}}), tmp_path)
    d = cfg.dynamic
    assert d.ads.target == "unix:./etc/istio/proxy/XDS"
    assert d.ads.api_type == "DELTA_GRPC" and d.ads.set_node_on_first_message_only
    assert d.cds.kind == "ads" and d.cds.server is d.ads and d.cds.initial_fetch_timeout == 0.0
    assert d.lds.initial_fetch_timeout == 15.0     # ConfigSource's default
    assert d.ads.keepalive_interval is None and d.warnings == ()


@pytest.mark.parametrize("ip,target", [("127.0.0.1", "ipv4:127.0.0.1:15010"),
                                       ("::1", "ipv6:[::1]:15010")])
def test_tcp_targets_and_keepalive(tmp_path, ip, target):
    c = xds_cluster({"socket_address": {"address": ip, "port_value": 15010}},
                    h2_keepalive={"interval": "30s", "timeout": "5s"})
    d = build(boot(c, api_type="GRPC", cds_config={"ads": {}}), tmp_path).dynamic
    assert d.ads.target == target and d.ads.api_type == "GRPC"
    assert (d.ads.keepalive_interval, d.ads.keepalive_timeout) == (30.0, 5.0)


def test_ads_source_without_ads_config_is_skipped_with_a_warning(tmp_path):
    cfg = build({"node": {"id": "n", "cluster": "c"},
                 "dynamic_resources": {"cds_config": {"ads": {}}}}, tmp_path)
    assert cfg.dynamic.ads is None and cfg.dynamic.cds.server is None
    assert any("cds_config" in w and "ADS must be configured" in w for w in cfg.warnings)


@pytest.mark.skipif(not os.path.isdir(REAL_CONFIGS),
                    reason=f"{REAL_CONFIGS} not present (only beside the steering repository)")
def test_istio_rendered_bootstrap(tmp_path):
    path = os.path.join(REAL_CONFIGS, "istio-bootstrap", "default_golden.json")
    d = build_server_config(load_bootstrap(path, allow_unknown_fields=True)).dynamic
    assert d.ads.api_type == "DELTA_GRPC" and d.ads.cluster_name == "xds-grpc"
    assert d.ads.target.startswith("unix:") and d.ads.target.endswith("XDS")
    assert d.cds.kind == d.lds.kind == "ads"
    assert d.cds.initial_fetch_timeout == d.lds.initial_fetch_timeout == 0.0
