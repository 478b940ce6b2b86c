"""Bootstrap loading and translation: formats, merging, and errors that name the field."""

from __future__ import annotations

import json

import pytest
import yaml

from meshproxy.config.bootstrap import build_server_config, load_bootstrap
from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import UnknownExtension, unpack_any
from tests.support.proxies import bootstrap, cluster, hcm, listener

HCM_URL = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
           "HttpConnectionManager")


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(p)


def _load(tmp_path, data, name="b.yaml", **kw):
    return build_server_config(load_bootstrap(_write(tmp_path, name, data), **kw))


def _error(tmp_path, data, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, data, **kw)
    return ei.value


def test_yaml_json_camel_case_all_load(tmp_path):
    b = bootstrap([listener("l", hcm([{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]))],
                  [cluster("c", [("127.0.0.1", 1)])])
    cfg = _load(tmp_path, b)
    assert [c.name for c in cfg.clusters] == ["c"] and [l.name for l in cfg.listeners] == ["l"]
    cfg = _load(tmp_path, json.dumps(b), name="b.json")
    assert cfg.clusters[0].connect_timeout == 1.0
    camel = {"staticResources": {"clusters": [{"name": "c", "connectTimeout": "2.5s",
                                                "lbPolicy": "LEAST_REQUEST"}]}}
    cfg = _load(tmp_path, camel)
    assert cfg.clusters[0].connect_timeout == 2.5 and cfg.clusters[0].lb_policy == "LEAST_REQUEST"


@pytest.mark.parametrize("data,path,fragment", [
    ({"static_resources": {"clusters": [{"name": "x", "lb_policy": "FOO"}]}},
     "static_resources.clusters[0].lb_policy", "FOO"),
    ({"static_resources": {"clusters": [{"name": "x", "foo": 1}]}},
     "static_resources.clusters[0]", "foo"),
    ({"static_resources": {"clusters": [{"name": "x", "connect_timeout": "abc"}]}},
     "static_resources.clusters[0].connect_timeout", ""),
    ({"static_resources": {"clusters": [{"name": "a"}, {"name": "a"}]}},
     "static_resources.clusters[1]", "duplicate cluster 'a'"),
    ({"static_resources": {"clusters": [{"name": ""}]}},
     "static_resources.clusters[0].name", ""),
    ({"static_resources": {"clusters": [{"name": "s", "type": "STATIC", "load_assignment": {
        "cluster_name": "s", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "not-an-ip", "port_value": 1}}}}]}]}}]}},
     "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0]", "not-an-ip"),
])
def test_errors_name_the_field(tmp_path, data, path, fragment):
    err = _error(tmp_path, data)
    assert err.path.startswith(path), (err.path, str(err))
    assert fragment in str(err)


def test_listener_error_path_reaches_into_typed_config(tmp_path):
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "nope"}}]
    err = _error(tmp_path, bootstrap([listener("l", hcm(routes))], []))
    assert err.path == ("static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
                        ".route_config.virtual_hosts[0].routes[0].route.cluster")
    assert "unknown cluster 'nope'" in str(err)


def test_unknown_fields_allowed_with_flag(tmp_path):
    data = {"static_resources": {"clusters": [{"name": "x", "foo": 1}]}}
    cfg = _load(tmp_path, data, allow_unknown_fields=True)
    assert cfg.clusters[0].name == "x"


def test_config_yaml_merges_over_file(tmp_path):
    path = _write(tmp_path, "b.yaml", {"node": {"id": "a", "cluster": "c1"},
                                       "static_resources": {"clusters": [{"name": "one"}]}})
    b = load_bootstrap(path, "{node: {cluster: c2}, static_resources: {clusters: [{name: two}]}}")
    assert b.node.id == "a" and b.node.cluster == "c2"
    assert [c.name for c in b.static_resources.clusters] == ["one", "two"]


def test_service_flags_override_node(tmp_path):
    path = _write(tmp_path, "b.yaml", {"node": {"id": "a", "cluster": "c1"}})
    b = load_bootstrap(path, service_cluster="sc", service_node="sn", service_zone="z")
    assert (b.node.id, b.node.cluster, b.node.locality.zone) == ("sn", "sc", "z")


def test_yaml_is_read_as_yaml_1_2(tmp_path):
    # yaml-cpp (Envoy) keeps "on" a string; PyYAML 1.1 would turn it into True.
    path = _write(tmp_path, "b.yaml", "node: {id: on, cluster: 2001-12-14}\n")
    b = load_bootstrap(path)
    assert b.node.id == "on" and b.node.cluster == "2001-12-14"


def test_text_and_binary_proto_formats(tmp_path):
    from meshproxy.config.protos import message_class
    Bootstrap = message_class("envoy.config.bootstrap.v3.Bootstrap")
    b = Bootstrap()
    b.node.id = "pb"
    (tmp_path / "b.pb").write_bytes(b.SerializeToString())
    assert load_bootstrap(str(tmp_path / "b.pb")).node.id == "pb"
    (tmp_path / "b.pb_text").write_text('node { id: "txt" }')
    assert load_bootstrap(str(tmp_path / "b.pb_text")).node.id == "txt"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="Invalid path"):
        load_bootstrap(str(tmp_path / "missing.yaml"))


def _hcm_with_filters(filters):
    return bootstrap([listener("l", hcm([{"match": {"prefix": "/"},
                                          "direct_response": {"status": 200}}],
                                        http_filters=filters))])


ROUTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def test_telemetry_filters_are_skipped_not_rejected(tmp_path):
    filters = [
        {"name": "istio.metadata_exchange", "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/io.istio.http.peer_metadata.Config", "value": {}}},
        {"name": "istio.alpn", "typed_config": {
            "@type": "type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
            "alpn_override": [{"alpn_override": ["istio-http/1.0"]}]}},
        {"name": "istio.stats", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"root_id": "stats_outbound", "vm_config": {
                "runtime": "envoy.wasm.runtime.null",
                "code": {"local": {"inline_string": "envoy.wasm.stats"}}}}}},
        {"name": "envoy.filters.http.grpc_stats", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"}},
        ROUTER,
    ]
    cfg = _load(tmp_path, _hcm_with_filters(filters))
    assert cfg.listeners[0].chains[0].kind == "http"


@pytest.mark.parametrize("name,typed", [
    ("envoy.filters.http.rbac",
     {"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"}),
    ("envoy.filters.http.ext_authz",
     {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"}),
    ("custom.wasm.authz",
     {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
      "config": {"vm_config": {"code": {"local": {"inline_string": "my-authz.wasm"}}}}}),
])
def test_security_filters_fail_closed_unless_optional(tmp_path, name, typed):
    err = _error(tmp_path, _hcm_with_filters([{"name": name, "typed_config": typed}, ROUTER]))
    assert "fail closed" in str(err)
    assert err.path.endswith("typed_config.http_filters[0]")
    cfg = _load(tmp_path, _hcm_with_filters([{"name": name, "typed_config": typed,
                                              "is_optional": True}, ROUTER]))
    assert cfg.listeners


def test_unknown_any_survives_and_unpacks_as_unknown(tmp_path):
    b = _load(tmp_path, _hcm_with_filters([
        {"name": "x", "typed_config": {"@type": "type.googleapis.com/acme.NoSuch", "a": 1}},
        ROUTER])).bootstrap
    f = b.static_resources.listeners[0].filter_chains[0].filters[0]
    h = unpack_any(f.typed_config, "")
    ext = unpack_any(h.http_filters[0].typed_config, "")
    assert isinstance(ext, UnknownExtension)
    assert ext.type_url == "type.googleapis.com/acme.NoSuch"


def test_typed_struct_is_converted_like_envoy(tmp_path):
    # A TypedStruct wrapping a known type becomes that type (Envoy converts it via JSON).
    b = _load(tmp_path, _hcm_with_filters([{
        "name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "value": {"suppress_envoy_headers": True}}}]))
    hcm_cfg = b.listeners[0].chains[0].config
    assert hcm_cfg.suppress_envoy_headers is True
