"""RDS route configuration providers (router/rds.py): HCMs that name a route configuration
share it, get 404 NR until it arrives, switch tables when an update is accepted, and keep the
last good table when an update is bad."""

from __future__ import annotations

import gc

import pytest

from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.http.hcm_config import build_hcm_config
from meshproxy.http.headers import RequestHeaders
from meshproxy.router.rds import RdsRegistry

HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
RC = "envoy.config.route.v3.RouteConfiguration"
ADS_RDS = {"route_config_name": "80", "config_source": {"ads": {}, "resource_api_version": "V3"}}


def hcm_with_rds(rds_field=ADS_RDS, prefix="in"):
    msg = message_class(HCM)()
    parse_json_into({"stat_prefix": prefix, "rds": rds_field,
                     "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                         "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3."
                                  "Router"}}]}, msg)
    return msg


def route_config(cluster, name="80", domain="*"):
    msg = message_class(RC)()
    parse_json_into({"name": name, "virtual_hosts": [
        {"name": "vh", "domains": [domain],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}, msg)
    return msg


def cluster_of(cfg, host=b"svc"):
    r = cfg.route_table.route(RequestHeaders(b"GET", b"/x", host))
    return None if r is None else r.action.cluster


def test_without_xds_an_rds_hcm_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as e:
        build_hcm_config(hcm_with_rds(), "hcm")
    assert "hcm.rds" in str(e.value)


def test_config_source_is_required():
    with pytest.raises(ConfigError) as e:
        build_hcm_config(hcm_with_rds({"route_config_name": "80"}), "hcm", rds=RdsRegistry())
    assert "hcm.rds.config_source" in str(e.value)


def test_no_route_until_the_configuration_arrives_then_every_user_switches():
    reg = RdsRegistry(clock=lambda: 1000.0)
    a = build_hcm_config(hcm_with_rds(prefix="a"), "a", rds=reg)
    b = build_hcm_config(hcm_with_rds(prefix="b"), "b", rds=reg)
    assert reg.names() == {"80"}
    ready = []
    reg.provider("80").when_ready(lambda: ready.append(True))
    assert cluster_of(a) is None and cluster_of(b) is None      # 404 NR meanwhile
    assert not reg.provider("80").ready and ready == []
    assert reg.apply(route_config("one"), "v1")
    assert cluster_of(a) == "one" and cluster_of(b) == "one"
    assert ready == [True] and reg.provider("80").version == "v1"
    assert a.route_table.version == "v1" and reg.provider("80").last_updated == 1000.0
    old_table = a.route_table
    assert reg.apply(route_config("two"), "v2")
    assert cluster_of(a) == "two" and cluster_of(b) == "two"
    # a request that matched before the update keeps its route
    assert old_table.route(RequestHeaders(b"GET", b"/", b"svc")).action.cluster == "one"


def test_a_bad_update_keeps_the_last_good_table():
    reg = RdsRegistry()
    a = build_hcm_config(hcm_with_rds(), "a", rds=reg)
    reg.apply(route_config("one"), "v1")
    bad = route_config("two")
    bad.virtual_hosts[0].domains[:] = []
    with pytest.raises(ConfigError) as e:
        reg.apply(bad, "v2", path="RouteConfiguration 80")
    assert "virtual_hosts[0].domains" in str(e.value)
    assert cluster_of(a) == "one" and reg.provider("80").version == "v1"


def test_unrequested_names_are_ignored_and_unused_providers_forgotten():
    reg = RdsRegistry()
    a = build_hcm_config(hcm_with_rds(), "a", rds=reg)
    assert reg.apply(route_config("x", name="other"), "v1") is False
    assert "other" not in reg.providers
    assert reg.names() == {"80"}
    del a
    gc.collect()
    assert reg.names() == set()
    assert reg.forget_unused() == ["80"] and reg.providers == {}


def test_validate_clusters_when_the_configuration_asks():
    reg = RdsRegistry()
    build_keep = build_hcm_config(hcm_with_rds(), "a", rds=reg)
    rc = route_config("missing")
    rc.validate_clusters.value = True
    with pytest.raises(ConfigError):
        reg.apply(rc, "v1", cluster_names={"present"})
    assert cluster_of(build_keep) is None
