"""xDS resources and responses for the tests: dicts in Envoy's JSON form (what the control plane
and an Envoy bootstrap take) and protos (what the state machines take)."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.xds import types as T

HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ADS = {"ads": {}, "resource_api_version": "V3"}


def cluster(name: str, service_name: str | None = None) -> dict:
    c = {"name": name, "type": "EDS", "connect_timeout": "1s",
         "eds_cluster_config": {"eds_config": ADS}}
    if service_name:
        c["eds_cluster_config"]["service_name"] = service_name
    return c


def static_cluster(name: str, port: int) -> dict:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": cla(name, port)}


def bad_cluster(name: str = "bad") -> dict:
    """Refused by Envoy and meshproxy alike: ORIGINAL_DST needs CLUSTER_PROVIDED."""
    return {"name": name, "type": "ORIGINAL_DST", "lb_policy": "ROUND_ROBIN",
            "connect_timeout": "1s"}


def cla(name: str, *ports: int) -> dict:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": p}}}} for p in ports]}]}


def listener(name: str, route_name: str, port: int = 0) -> dict:
    return {"name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {"@type": HCM, "stat_prefix": name,
                                 "rds": {"route_config_name": route_name, "config_source": ADS},
                                 "http_filters": [{"name": "envoy.filters.http.router",
                                                   "typed_config": {"@type": ROUTER}}]}}]}]}


def route(name: str, cluster_name: str, prefix: str = "/") -> dict:
    return {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": prefix}, "route": {"cluster": cluster_name}}]}]}


def proto(type_url: str, d: dict):
    return parse_json_into(d, message_class(T.message_name(type_url))())


def packed(type_url: str, d: dict) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(proto(type_url, d))
    return a


def sotw(type_url: str, version: str, nonce: str, *resources) -> discovery_pb2.DiscoveryResponse:
    """A DiscoveryResponse; resources are dicts (packed as ``type_url``) or ready Anys."""
    r = discovery_pb2.DiscoveryResponse(type_url=type_url, version_info=version, nonce=nonce)
    for d in resources:
        r.resources.add().CopyFrom(d if isinstance(d, any_pb2.Any) else packed(type_url, d))
    return r


def delta(type_url: str, nonce: str, added=(), removed=(), system_version: str = "",
          ttl: dict | None = None) -> discovery_pb2.DeltaDiscoveryResponse:
    """A DeltaDiscoveryResponse; ``added`` is [(name, version, dict or None)] (None: no body)."""
    r = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce,
                                             system_version_info=system_version,
                                             removed_resources=list(removed))
    for name, version, d in added:
        res = r.resources.add(name=name, version=version)
        if d is not None:
            res.resource.CopyFrom(d if isinstance(d, any_pb2.Any) else packed(type_url, d))
        if ttl and name in ttl:
            res.ttl.FromNanoseconds(int(ttl[name] * 1e9))
    return r


def wrapped(type_url: str, name: str, version: str, d: dict | None, ttl: float | None = None):
    """An ``envoy.service.discovery.v3.Resource`` in an Any (SotW TTLs and heartbeats)."""
    w = discovery_pb2.Resource(name=name, version=version)
    if d is not None:
        w.resource.CopyFrom(packed(type_url, d))
    if ttl is not None:
        w.ttl.FromNanoseconds(int(ttl * 1e9))
    a = any_pb2.Any()
    a.Pack(w)
    return a


class Recorder:
    """A Handler that accepts everything except names in ``reject`` and records the updates."""

    def __init__(self, reject: dict | None = None, on_apply=None):
        self.reject = dict(reject or {})
        self.updates = []
        self.failures = []
        self.on_apply = on_apply

    def apply(self, update):
        self.updates.append(update)
        if self.on_apply is not None:
            self.on_apply(update)
        return {n: e for n, e in self.reject.items() if n in {r.name for r in update.added}}

    def on_failure(self, failure):
        self.failures.append(failure)

    def names(self, i=-1):
        u = self.updates[i]
        return [r.name for r in u.added], list(u.removed)


def sidecar_bootstrap(cp, delta: bool, node_id: str, node_cluster: str,
                      initial_fetch_timeout: str | None = None) -> dict:
    """A bootstrap whose listeners and clusters all come over ADS from ``cp`` through the
    static ``xds-grpc`` cluster, as Istio's sidecar bootstrap does (HTTP/2 cluster)."""
    ads = dict(ADS)
    if initial_fetch_timeout is not None:
        ads["initial_fetch_timeout"] = initial_fetch_timeout
    return {
        "node": {"id": node_id, "cluster": node_cluster},
        "dynamic_resources": {
            "ads_config": {"api_type": "DELTA_GRPC" if delta else "GRPC",
                           "transport_api_version": "V3", "set_node_on_first_message_only": True,
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "cds_config": ads, "lds_config": ads},
        "static_resources": {"clusters": [{
            "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                             "HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": cp.envoy_address()}}]}]}}]}}


def untimed(x):
    """A /config_dump (or part of one) without its ``last_updated`` times, which differ
    between runs."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k != "last_updated"}
    if isinstance(x, list):
        return [untimed(v) for v in x]
    return x


def envoy_agrees(scenario, mine, *args) -> None:
    """Run ``scenario("envoy", *args)`` and require the result meshproxy got (``mine``); skip,
    saying so, when the Envoy oracle is not installed (meshproxy's side already passed)."""
    import pytest

    from tests.support.proxies import find_envoy
    if find_envoy() is None:
        pytest.skip("Envoy 1.40 oracle not installed (run ./scripts/test): meshproxy's side "
                    "passed on its own")
    assert scenario("envoy", *args) == mine


def run_proxy(kind: str, cp, delta: bool, read, start_index: int = 0):
    """Start ``kind`` ("meshproxy" or "envoy") on a sidecar bootstrap fed by ``cp`` (initial
    fetch timeouts off), call ``read(proxy)`` once it is LIVE, stop it; return what ``read``
    returned and the NACKs ``cp`` received from it: [(code, message)]."""
    from tests.support.proxies import ProxyProcess
    proxy = ProxyProcess(kind, sidecar_bootstrap(cp, delta, "n", "c",
                                                 initial_fetch_timeout="0s")).start()
    try:
        out = read(proxy)
    finally:
        proxy.stop()
    return out, [r.error for r in cp.requests[start_index:] if r.error]


def serve_one_of_each(cp, port: int = 1) -> None:
    """EDS cluster ``svc`` (endpoint 127.0.0.1:``port``), listener ``in`` on RDS ``r`` to it,
    at versions c1, e1, l1, r1."""
    cp.set_resources(T.CLUSTER, [cluster("svc")], "c1")
    cp.set_resources(T.ENDPOINT, [cla("svc", port)], "e1")
    cp.set_resources(T.LISTENER, [listener("in", "r")], "l1")
    cp.set_resources(T.ROUTE, [route("r", "svc")], "r1")
