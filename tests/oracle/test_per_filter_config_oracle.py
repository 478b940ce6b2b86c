"""``typed_per_filter_config`` on routes, virtual hosts and weighted clusters: meshproxy accepts
what Envoy 1.40 accepts and refuses what it refuses, with Envoy's words (``--mode validate``).
The deliberate difference (types meshproxy has no descriptor for, which Istio's Envoy build
registers) is tested on its own below."""

from __future__ import annotations

import json

import pytest

from tests.support.proxies import find_envoy, validate

pytestmark = pytest.mark.oracle

_T = "type.googleapis.com/"
_FC = _T + "envoy.config.route.v3.FilterConfig"
_STRUCT = {"@type": _T + "google.protobuf.Struct"}
_ROUTER = {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"}

CASES = {
    "struct_is_no_filter": {"envoy.filters.http.nonexistent": _STRUCT},
    "fault_by_type": {"envoy.filters.http.fault": {
        "@type": _T + "envoy.extensions.filters.http.fault.v3.HTTPFault"}},
    "fault_under_any_name": {"my.fault": {
        "@type": _T + "envoy.extensions.filters.http.fault.v3.HTTPFault"}},
    "inner_message_is_no_filter": {"f": {
        "@type": _T + "envoy.extensions.filters.http.fault.v3.FaultAbort", "http_status": 503}},
    "router_has_no_route_config": {"envoy.filters.http.router": _ROUTER},
    "grpc_web_has_no_route_config": {"g": {
        "@type": _T + "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"}},
    "lua_per_route": {"envoy.filters.http.lua": {
        "@type": _T + "envoy.extensions.filters.http.lua.v3.LuaPerRoute", "disabled": True}},
    "rbac_per_route": {"envoy.filters.http.rbac": {
        "@type": _T + "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"}},
    "typed_struct_router": {"r": {"@type": _T + "xds.type.v3.TypedStruct",
                                  "type_url": _ROUTER["@type"], "value": {}}},
    "filter_config_optional_unknown": {"x.y": {"@type": _FC, "is_optional": True,
                                               "config": _STRUCT}},
    "filter_config_optional_router": {"x.y": {"@type": _FC, "is_optional": True,
                                              "config": _ROUTER}},
    "filter_config_unknown": {"x.y": {"@type": _FC, "config": _STRUCT}},
    "filter_config_disabled": {"x.y": {"@type": _FC, "disabled": True}},
    "filter_config_disabled_ignores_config": {"x.y": {"@type": _FC, "disabled": True,
                                                      "config": _STRUCT}},
    "filter_config_empty": {"x.y": {"@type": _FC}},
}


def _boot(where: str, tpfc: dict) -> dict:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "c"}}
    vhost = {"name": "v", "domains": ["*"], "routes": [route]}
    if where == "route":
        route["typed_per_filter_config"] = tpfc
    elif where == "vhost":
        vhost["typed_per_filter_config"] = tpfc
    else:
        route["route"] = {"weighted_clusters": {"clusters": [
            {"name": "c", "weight": 1, "typed_per_filter_config": tpfc}]}}
    hcm = {"@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3."
                         "HttpConnectionManager",
           "stat_prefix": "x", "route_config": {"virtual_hosts": [vhost]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": _ROUTER}]}
    return {"static_resources": {
        "listeners": [{"name": "l", "address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}],
        "clusters": [{"name": "c", "connect_timeout": "1s", "type": "STATIC",
                      "load_assignment": {"cluster_name": "c", "endpoints": []}}]}}


@pytest.mark.parametrize("where", ["route", "vhost", "weighted_cluster"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_per_filter_config_verdicts_are_envoys(tmp_path, name, where):
    if find_envoy() is None:
        pytest.skip("Envoy 1.40 binary not found (.venv-envoy/bin/envoy or $MESHPROXY_ENVOY)")
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(_boot(where, CASES[name])))
    e_rc, e_msg = validate("envoy", path)
    m_rc, m_msg = validate("meshproxy", path)
    assert (m_rc == 0) == (e_rc == 0), (e_msg, m_msg)
    if e_rc:
        assert e_msg in m_msg, (e_msg, m_msg)


def test_types_meshproxy_has_no_schema_for_are_accepted_as_istios_envoy_does(tmp_path):
    """Istio sends its own filters' per-route configs in a TypedStruct (``connect_authority``,
    io.istio.http.connect_authority.Config, in ../shared/real-configs' istioctl authz dump);
    Istio's Envoy build has them, so meshproxy does not refuse them."""
    tpfc = {"connect_authority": {"@type": _T + "udpa.type.v1.TypedStruct",
                                  "type_url": _T + "io.istio.http.connect_authority.Config",
                                  "value": {"enabled": True}}}
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(_boot("route", tpfc)))
    assert validate("meshproxy", path) == (0, "")
