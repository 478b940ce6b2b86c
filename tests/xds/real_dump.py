"""Real sidecar ``/config_dump``s (../shared/real-configs) as xDS resources: the listeners,
clusters, route configurations and endpoints of a dump's dynamic sections, each encoded from its
dumped JSON into an ``Any`` with the dumped type URL (Istio's own extension types resolved by
tests/xds/istio_protos.py), ready for ``ControlPlane.set_resources`` as ``RawResource``s.

The only rewrites are the ones a loopback test needs, applied to the JSON before encoding:
listeners that bind get 127.0.0.1 port 0 (additional addresses too), and EDS endpoint addresses
point at loopback upstreams the test runs. Sections (Envoy's admin API, ``ClustersConfigDump``,
``ListenersConfigDump``, ``RoutesConfigDump``, ``EndpointsConfigDump``):
``dynamic_active_clusters[].cluster``, ``dynamic_listeners[].active_state.listener``,
``dynamic_route_configs[].route_config``, ``dynamic_endpoint_configs[].endpoint_config``.
"""

from __future__ import annotations

import copy
import json
import os

from google.protobuf import any_pb2

from meshproxy.config.protos import message_class, parse_json_into, type_name_of
from meshproxy.xds import types as T
from tests.support.proxies import REAL_CONFIGS
from tests.xds import istio_protos
from tests.xds.control_plane import RawResource

DUMPS = {
    "deathstarbench": "TZ-Zephrus_DeathStarBench__config_dump.json",
    "hello-openshift":
        "alizard0_openshift-istio-playground__config_dumps__hello-openshift-config-dump.json",
    "scout": "slime-io_scout__config_dump.json",
}


def dump_path(key: str) -> str:
    return os.path.join(REAL_CONFIGS, DUMPS[key])


def load(key: str) -> dict:
    """{type_url: [resource JSON]} from the dump's dynamic sections."""
    with open(dump_path(key)) as f:
        configs = json.load(f)["configs"]
    out = {T.CLUSTER: [], T.ENDPOINT: [], T.LISTENER: [], T.ROUTE: []}
    for c in configs:
        kind = c["@type"].rsplit(".", 1)[-1]
        if kind == "ClustersConfigDump":
            out[T.CLUSTER] += [x["cluster"] for x in c.get("dynamic_active_clusters", [])]
        elif kind == "ListenersConfigDump":
            out[T.LISTENER] += [x["active_state"]["listener"]
                                for x in c.get("dynamic_listeners", []) if "active_state" in x]
        elif kind == "RoutesConfigDump":
            out[T.ROUTE] += [x["route_config"] for x in c.get("dynamic_route_configs", [])]
        elif kind == "EndpointsConfigDump":
            out[T.ENDPOINT] += [x["endpoint_config"]
                                for x in c.get("dynamic_endpoint_configs", [])]
    return out


def _binds(listener: dict) -> bool:
    # Listener.bind_to_port (default true); Istio's per-port outbound listeners set it false.
    return listener.get("bind_to_port", True) is not False and \
        listener.get("deprecated_v1", {}).get("bind_to_port", True) is not False


def _loopback(address: dict) -> None:
    sa = address.get("socket_address")
    if sa is not None:
        sa["address"] = "127.0.0.1"
        sa["port_value"] = 0
        sa.pop("ipv4_compat", None)


def localize_listeners(listeners: list) -> list:
    """Listeners that bind a socket get 127.0.0.1:0 (and their additional addresses too)."""
    out = []
    for ls in listeners:
        ls = copy.deepcopy(ls)
        if _binds(ls):
            _loopback(ls["address"])
            for extra in ls.get("additional_addresses", []):
                _loopback(extra["address"])
        out.append(ls)
    return out


def localize_endpoints(clas: list, port_for) -> list:
    """Every endpoint of each ClusterLoadAssignment at 127.0.0.1:``port_for(cluster_name)``;
    a cluster with no endpoint gets one."""
    out = []
    for cla in clas:
        cla = copy.deepcopy(cla)
        port = port_for(cla["cluster_name"])
        eps = cla.setdefault("endpoints", [])
        if not any(g.get("lb_endpoints") for g in eps):
            eps[:] = [{"lb_endpoints": [{"endpoint": {}}]}]
        for group in eps:
            for lbe in group.get("lb_endpoints", []):
                lbe.setdefault("endpoint", {})["address"] = {
                    "socket_address": {"address": "127.0.0.1", "port_value": port}}
        out.append(cla)
    return out


def eds_cluster_names(clusters: list) -> list:
    """The EDS service names the dump's EDS clusters subscribe to."""
    names = []
    for c in clusters:
        if c.get("type") == "EDS":
            names.append(c.get("eds_cluster_config", {}).get("service_name") or c["name"])
    return names


def encode(type_url: str, items: list) -> list:
    """RawResources: each item parsed as the type's message (dumped JSON, Istio's types
    included) and packed with the type URL it was dumped with."""
    istio_protos.register()
    out = []
    for item in items:
        item = dict(item)
        url = item.pop("@type", type_url)
        msg = parse_json_into(item, message_class(type_name_of(url))())
        a = any_pb2.Any()
        a.Pack(msg)
        out.append(RawResource(T.resource_name(type_url, msg), a))
    return out


# Extension types an Istio proxy build has and vanilla Envoy 1.40 does not (its NACKs name
# them: "Didn't find a registered implementation for 'istio.stats' ..."), and null-VM Wasm.
ISTIO_ONLY = ("stats.PluginConfig", "envoy.tcp.metadataexchange.config.MetadataExchange",
              "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig",
              "istio.envoy.config.filter.http.authn.v2alpha1.FilterConfig",
              "io.istio.", "envoy.extensions.filters.http.wasm.v3.Wasm",
              "envoy.extensions.filters.network.wasm.v3.Wasm")


def _istio_only(flt: dict) -> bool:
    tc = flt.get("typed_config") or {}
    url = tc.get("type_url") if tc.get("@type", "").endswith("TypedStruct") else tc.get("@type")
    name = (url or "").rsplit("/", 1)[-1]
    return any(name == t or (t.endswith(".") and name.startswith(t)) for t in ISTIO_ONLY)


def _tls(holder: dict) -> bool:
    """A transport socket match or filter chain whose socket is TLS (its certificates come over
    SDS, ``initial_fetch_timeout: 0s``: Envoy waits for them without end, and the test control
    plane serves no SDS)."""
    return "tls.v3" in holder.get("transport_socket", {}).get("typed_config", {}).get("@type", "")


def _keep(filters: list) -> list:
    return [f for f in filters if not _istio_only(f)]


def strip_istio_only(type_url: str, items: list) -> list:
    """The resources without the filters only an Istio build of Envoy has (listener network
    filters, HCM HTTP filters, cluster upstream filters): the config as vanilla Envoy can take
    it, and what meshproxy runs of the original (it skips those telemetry filters); and without
    the TLS transport sockets and filter chains (see ``_tls``)."""
    out = []
    for item in items:
        item = copy.deepcopy(item)
        if type_url == T.CLUSTER and "filters" in item:
            item["filters"] = _keep(item["filters"])
            if not item["filters"]:
                del item["filters"]
        if type_url == T.CLUSTER and "transport_socket_matches" in item:
            item["transport_socket_matches"] = [m for m in item["transport_socket_matches"]
                                                if not _tls(m)]
        if type_url == T.LISTENER:
            item["filter_chains"] = [fc for fc in item.get("filter_chains", []) if not _tls(fc)]
            chains = list(item.get("filter_chains", []))
            if "default_filter_chain" in item:
                chains.append(item["default_filter_chain"])
            for fc in chains:
                fc["filters"] = _keep(fc.get("filters", []))
                for f in fc["filters"]:
                    tc = f.get("typed_config", {})
                    if "http_filters" in tc:
                        tc["http_filters"] = _keep(tc["http_filters"])
        out.append(item)
    return out
