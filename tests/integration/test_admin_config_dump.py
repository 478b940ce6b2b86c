"""``/config_dump`` of real bootstraps parses back into ``envoy.admin.v3.ConfigDump`` with
google.protobuf.json_format, including extension configs meshproxy has no schema for (dumped
as TypedStruct placeholders). The Istio bootstraps come from ../shared/real-configs; the dump is
built in-process from the translated config (no sockets needed for this part)."""

from __future__ import annotations

import glob
import json
import os
import time
import types

import pytest
from google.protobuf import json_format

from meshproxy.admin import config_dump
from meshproxy.config.bootstrap import build_server_config, load_bootstrap
from meshproxy.config.protos import find_message_descriptor, message_class
from tests.support.proxies import REAL_CONFIGS

ISTIO = sorted(glob.glob(os.path.join(REAL_CONFIGS, "istio-bootstrap", "*_golden.json")))


def parse_config_dump(d: dict):
    """Parse a /config_dump body as a ConfigDump (descriptors of every @type loaded first)."""
    def load(v):
        if isinstance(v, dict):
            t = v.get("@type")
            if isinstance(t, str):
                find_message_descriptor(t.rsplit("/", 1)[-1])
            for x in v.values():
                load(x)
        elif isinstance(v, list):
            for x in v:
                load(x)
    load(d)
    return json_format.ParseDict(d, message_class("envoy.admin.v3.ConfigDump")())


def _ctx(path: str, translate: bool = False):
    """What config_dump reads: the parsed bootstrap (``all_golden`` has a TLS cluster the
    translator does not take yet; the dump does not need the translation)."""
    boot = load_bootstrap(path, allow_unknown_fields=True)
    config = build_server_config(boot) if translate else types.SimpleNamespace(bootstrap=boot)
    return types.SimpleNamespace(config=config, start_time=time.time(), cluster_manager=None)


def _istio_or_skip():
    if not ISTIO:
        pytest.skip(f"Istio bootstraps not found under {REAL_CONFIGS} (../shared is absent)")


@pytest.mark.parametrize("name", [os.path.basename(p) for p in ISTIO] or ["none"])
def test_istio_bootstrap_dump_parses(name):
    _istio_or_skip()
    path = os.path.join(REAL_CONFIGS, "istio-bootstrap", name)
    ctx = _ctx(path)
    dump = config_dump.build(ctx)
    msg = parse_config_dump(json.loads(json.dumps(dump)))
    types_ = [c.type_url.rsplit(".", 1)[-1] for c in msg.configs]
    assert types_ == ["BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump",
                      "ScopedRoutesConfigDump", "RoutesConfigDump", "SecretsConfigDump"]
    with open(path) as f:
        raw = json.load(f)
    boot = dump["configs"][0]["bootstrap"]
    assert boot["node"]["id"] == raw["node"]["id"]
    assert boot["node"]["user_agent_name"] == "envoy"
    assert boot["stats_config"]["stats_tags"][0]["tag_name"] == \
        raw["stats_config"]["stats_tags"][0]["tag_name"]
    clusters = [c["cluster"]["name"] for c in dump["configs"][1]["static_clusters"]]
    assert clusters == sorted(c["name"] for c in raw["static_resources"]["clusters"])


def test_istio_resource_and_mask():
    _istio_or_skip()
    ctx = _ctx(ISTIO[0])
    d = config_dump.build(ctx, resource="static_clusters", mask="cluster.name")
    assert all(set(c["cluster"]) == {"@type", "name"} for c in d["configs"])
    parse_config_dump(d)
    d = config_dump.build(ctx, resource="static_listeners", name_regex=".*_15090")
    assert [c["listener"]["name"] for c in d["configs"]] == ["0.0.0.0_15090"]
    with pytest.raises(config_dump.DumpError) as e:
        config_dump.build(ctx, resource="static_clusters", mask="cluster")
    assert e.value.status == 400


UNKNOWN_FILTER = {
    "name": "istio.stats",
    "typed_config": {"@type": "type.googleapis.com/stats.PluginConfig",
                     "disable_host_header_fallback": True,
                     "metrics": [{"name": "requests_total", "dimensions": {"a": "b"}}]}}


def test_unknown_extension_dumped_as_typed_struct(tmp_path):
    from tests.support.proxies import bootstrap, cluster, hcm, listener
    filters = [UNKNOWN_FILTER, {"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    boot = bootstrap([listener("l", hcm([{"match": {"prefix": "/"},
                                          "route": {"cluster": "c"}}],
                                        http_filters=filters))],
                     [cluster("c", [("127.0.0.1", 1)])])
    path = tmp_path / "b.json"
    path.write_text(json.dumps(boot))
    dump = config_dump.build(_ctx(str(path), translate=True))
    lst = dump["configs"][2]["static_listeners"][0]["listener"]
    f = lst["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    assert f["typed_config"] == {
        "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
        "type_url": "type.googleapis.com/stats.PluginConfig",
        "value": {"disable_host_header_fallback": True,
                  "metrics": [{"name": "requests_total", "dimensions": {"a": "b"}}]}}
    msg = parse_config_dump(dump)
    assert len(msg.configs) == 6
    # the bootstrap dump carries the same placeholder
    hf = dump["configs"][0]["bootstrap"]["static_resources"]["listeners"][0][
        "filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    assert hf["typed_config"]["type_url"] == "type.googleapis.com/stats.PluginConfig"
    # masks see through the placeholder too
    d = config_dump.build(_ctx(str(path)), resource="static_listeners", mask="listener.name")
    assert d["configs"][0]["listener"] == {
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "l"}
