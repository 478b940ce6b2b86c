"""``dynamic_resources`` in a bootstrap: meshproxy accepts what Envoy 1.40 accepts and refuses
what it refuses, with Envoy's words (``--mode validate``)."""

from __future__ import annotations

import pytest
import yaml

from tests.support.proxies import find_envoy, validate

pytestmark = pytest.mark.oracle

NODE = {"id": "sidecar~10.0.0.1~app.ns~ns.svc.cluster.local", "cluster": "app.ns"}


def xds_cluster(name="xds-grpc", kind="STATIC", address=None):
    address = address or {"pipe": {"path": "/tmp/XDS"}}
    c = {"name": name, "type": kind, "connect_timeout": "1s"}
    if kind == "EDS":
        c["eds_cluster_config"] = {"eds_config": {"ads": {}}}
    else:
        c["load_assignment"] = {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": address}}]}]}
    return c


def ads(cluster="xds-grpc", api_type="DELTA_GRPC", n=1):
    return {"api_type": api_type, "set_node_on_first_message_only": True,
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": cluster}}] * n}


ISTIO_SOURCES = {"lds_config": {"ads": {}, "initial_fetch_timeout": "0s",
                                "resource_api_version": "V3"},
                 "cds_config": {"ads": {}, "initial_fetch_timeout": "0s",
                                "resource_api_version": "V3"}}

CASES = {
    "istio": ({"ads_config": ads(), **ISTIO_SOURCES}, [xds_cluster()], NODE),
    "sotw_tcp": ({"ads_config": ads(api_type="GRPC"), **ISTIO_SOURCES},
                 [xds_cluster(address={"socket_address": {"address": "127.0.0.1",
                                                          "port_value": 15010}})], NODE),
    "unknown_cluster": ({"ads_config": ads("nope"), **ISTIO_SOURCES}, [xds_cluster()], NODE),
    "eds_cluster": ({"ads_config": ads(), **ISTIO_SOURCES}, [xds_cluster(kind="EDS")], NODE),
    "rest_ads": ({"ads_config": {"api_type": "REST", "cluster_names": ["xds-grpc"]},
                  **ISTIO_SOURCES}, [xds_cluster()], NODE),
    "two_services": ({"ads_config": ads(n=2), **ISTIO_SOURCES}, [xds_cluster()], NODE),
    "no_services": ({"ads_config": {"api_type": "GRPC"}, **ISTIO_SOURCES}, [xds_cluster()],
                    NODE),
    "no_node": ({"ads_config": ads(), **ISTIO_SOURCES}, [xds_cluster()], None),
    "no_node_sotw": ({"ads_config": ads(api_type="GRPC"), **ISTIO_SOURCES}, [xds_cluster()],
                     None),
    "no_node_delta_lds_only": ({"ads_config": ads(), "lds_config": ISTIO_SOURCES["lds_config"]},
                               [xds_cluster()], None),
    "no_node_delta_no_sources": ({"ads_config": ads()}, [xds_cluster()], None),
    "api_source_unknown": ({"cds_config": {"api_config_source": {
        "api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "nope"}}]}}},
        [xds_cluster()], NODE),
    "api_source_ok": ({"cds_config": {"api_config_source": {
        "api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}}},
        [xds_cluster()], NODE),
    "missing_path": ({"cds_config": {"path_config_source": {"path": "/nonexistent/cds.yaml"}}},
                     [], NODE),
    "ads_source_without_ads": ({"cds_config": {"ads": {}}}, [], NODE),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dynamic_resources_validate_as_envoy(tmp_path, name):
    envoy = find_envoy()
    if envoy is None:
        pytest.skip("Envoy 1.40 binary not found (.venv-envoy/bin/envoy or $MESHPROXY_ENVOY)")
    dynamic, clusters, node = CASES[name]
    boot = {"dynamic_resources": dynamic, "static_resources": {"clusters": clusters},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": 0}}}}
    if node is not None:
        boot["node"] = node
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(boot))
    e_rc, e_msg = validate("envoy", path)
    m_rc, m_msg = validate("meshproxy", path)
    assert m_rc == e_rc, (e_msg, m_msg)
    if e_rc:
        # Envoy appends the offending proto's debug string after ": goo.gle/..." in some
        # messages; meshproxy names the field before the message instead.
        core = e_msg.split(": goo.gle")[0].strip()
        assert core in m_msg, (core, m_msg)
