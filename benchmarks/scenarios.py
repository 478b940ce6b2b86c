"""The routing jobs, each as one Envoy bootstrap dict (fed unchanged to meshproxy and Envoy)
plus the nginx and HAProxy configurations that do the same job where those can.

The upstream is one nginx worker serving fixed bodies from memory-mapped files; see
``upstream_conf``. Every proxy's listener is called "bench", except in ``redirect``, whose
bootstrap is sidecar-shaped (Istio's listener names; see ``redirect_bootstrap``).
"""

from __future__ import annotations

import dataclasses

SMALL_BODY = 64          # bytes; a typical small JSON answer
LARGE_BODY = 64 * 1024   # the throughput scenarios

_HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager")
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

# What istiod puts on every outbound HTTP route (copied from a real sidecar config_dump,
# ../shared/real-configs/TZ-Zephrus_DeathStarBench__config_dump.json).
ISTIO_RETRY_POLICY = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retry_host_predicate": [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host."
                                  "previous_hosts.v3.PreviousHostsPredicate"}}],
    "host_selection_retry_max_attempts": 5,
    "retriable_status_codes": [503],
}

# Istio's outbound cluster circuit breakers: effectively unlimited.
_UNLIMITED = 4294967295
ISTIO_CIRCUIT_BREAKERS = {"thresholds": [{
    "max_connections": _UNLIMITED, "max_pending_requests": _UNLIMITED,
    "max_requests": _UNLIMITED, "max_retries": _UNLIMITED, "track_remaining": True}]}


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    path: str                 # request path the load generators use
    body_bytes: int           # response body size, for MB/s
    kind: str                 # "http", "direct" (no upstream), "tcp", or "redirect" (http
                              # from an app in a pod namespace, captured by iptables)
    requests: int             # closed-loop request count per run (scaled by --scale)
    connections: int = 32
    # Every request on a new connection (the client sends "Connection: close"; h2load opens
    # the next one): what a proxy spends per connection (accept, listener filters, original
    # destination, the hand-off between listeners) shows up per request.
    new_connections: bool = False

    def envoy_bootstrap(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> dict:
        if self.kind == "redirect":
            return redirect_bootstrap(upstream_host, upstream_port)
        if self.kind == "tcp":
            return _bootstrap(_tcp_listener(), [_cluster(upstream_port)])
        if self.kind == "direct":
            route = {"match": {"prefix": "/"},
                     "direct_response": {"status": 200,
                                         "body": {"inline_string": "x" * (SMALL_BODY - 1) + "\n"}}}
            return _bootstrap(_http_listener([route]), [])
        route = {"match": {"prefix": "/"},
                 "route": {"cluster": "upstream", "timeout": "0s",
                           "retry_policy": ISTIO_RETRY_POLICY, "max_grpc_timeout": "0s"}}
        return _bootstrap(_http_listener([route]), [_cluster(upstream_port)])

    def nginx_conf(self, listen_port: int, upstream_port: int) -> str | None:
        if self.kind == "redirect":
            return None   # no SO_ORIGINAL_DST listener in nginx
        if self.kind == "tcp":
            return None   # Debian's nginx-light has no stream module
        if self.kind == "direct":
            loc = f'default_type text/plain; return 200 "{"x" * (SMALL_BODY - 1)}\\n";'
        else:
            # proxy_next_upstream's default ("error timeout") is the nearest to Istio's retries.
            loc = ("proxy_pass http://up; proxy_http_version 1.1; "
                   'proxy_set_header Connection "";')
        return NGINX_PROXY.format(port=listen_port, upstream=upstream_port, location=loc)

    def haproxy_conf(self, listen_port: int, upstream_port: int) -> str | None:
        if self.kind == "redirect":
            return None   # not compared here: the job is Istio's virtual outbound listener
        if self.kind == "tcp":
            return HAPROXY_TCP.format(port=listen_port, upstream=upstream_port)
        if self.kind == "direct":
            body = "x" * (SMALL_BODY - 1)
            backend = (f'    http-request return status 200 content-type text/plain '
                       f'string "{body}\\n"\n')
            return HAPROXY_HTTP.format(port=listen_port, backend=backend)
        backend = (f"    retries 2\n    retry-on conn-failure empty-response 503\n"
                   f"    http-reuse always\n"
                   f"    server up 127.0.0.1:{upstream_port} maxconn 1000\n")
        return HAPROXY_HTTP.format(port=listen_port, backend=backend)


SCENARIOS = {s.name: s for s in (
    Scenario("route", "HTTP/1.1 keep-alive, STATIC cluster, Istio retry policy", "/small",
             SMALL_BODY, "http", 40000),
    Scenario("direct", "direct_response, no upstream", "/small", SMALL_BODY, "direct", 60000),
    Scenario("large", "64 KiB responses through a STATIC cluster", "/64k", LARGE_BODY,
             "http", 25000),
    Scenario("tcp", "tcp_proxy, 64 KiB HTTP responses carried as bytes", "/64k", LARGE_BODY,
             "tcp", 40000),
    Scenario("redirect", "as route, but the app calls a service VIP from a pod namespace and "
             "iptables REDIRECT (meshproxy-iptables -u 1337) takes it to 15001", "/small",
             SMALL_BODY, "redirect", 40000),
    Scenario("route-close", "as route, a new connection per request (Connection: close)",
             "/small", SMALL_BODY, "http", 20000, new_connections=True),
    Scenario("redirect-close", "as redirect, a new intercepted connection per request "
             "(Connection: close)", "/small", SMALL_BODY, "redirect", 20000,
             new_connections=True),
)}

# ---------------------------------------------------------------------- redirect (sidecar)

SERVICE_VIP = "10.96.0.10"   # what the app calls; an address that exists nowhere
SERVICE_PORT = 80
SERVICE_CLUSTER = "outbound|80||svc.bench"
_ORIGINAL_DST = {"name": "envoy.filters.listener.original_dst", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}


def redirect_bootstrap(upstream_host: str, upstream_port: int) -> dict:
    """What istiod gives a sidecar for one HTTP service, reduced to the path a request takes:
    ``virtualOutbound`` on 0.0.0.0:15001 (``use_original_dst``, the ``original_dst`` listener
    filter, Istio's BlackHole chain for connections to 15001 itself and PassthroughCluster for
    the rest) hands each connection to ``0.0.0.0_80`` (``bind_to_port: false``), whose HTTP
    connection manager routes as ``route`` does: Istio's retry policy, a STATIC cluster with
    Istio's circuit breakers. The proxy runs as uid 1337 in the pod namespace."""
    sa = lambda ip, port: {"socket_address": {"address": ip, "port_value": port}}  # noqa: E731
    tcp = lambda cluster, match=None: dict(  # noqa: E731
        {"filters": [{"name": "envoy.filters.network.tcp_proxy",
                      "typed_config": {"@type": _TCP, "stat_prefix": cluster,
                                       "cluster": cluster}}]},
        **({"filter_chain_match": match} if match else {}))
    route = {"match": {"prefix": "/"},
             "route": {"cluster": SERVICE_CLUSTER, "timeout": "0s",
                       "retry_policy": ISTIO_RETRY_POLICY, "max_grpc_timeout": "0s"}}
    hcm = {"@type": _HCM, "stat_prefix": "outbound_0.0.0.0_80",
           "route_config": {"name": "80", "virtual_hosts": [
               {"name": "svc.bench:80", "domains": ["*"], "routes": [route]}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": _ROUTER}}]}
    cluster = _cluster(upstream_port, upstream_host)
    cluster["name"] = cluster["load_assignment"]["cluster_name"] = SERVICE_CLUSTER
    return {
        "admin": {"address": sa("127.0.0.1", 0)},
        "static_resources": {
            "listeners": [
                {"name": "virtualOutbound", "address": sa("0.0.0.0", 15001),
                 "use_original_dst": True, "listener_filters": [_ORIGINAL_DST],
                 "traffic_direction": "OUTBOUND",
                 "filter_chains": [tcp("BlackHoleCluster", {"destination_port": 15001}),
                                   tcp("PassthroughCluster")]},
                {"name": "0.0.0.0_80", "address": sa("0.0.0.0", SERVICE_PORT),
                 "bind_to_port": False, "traffic_direction": "OUTBOUND",
                 "filter_chains": [{"filters": [{
                     "name": "envoy.filters.network.http_connection_manager",
                     "typed_config": hcm}]}]},
            ],
            "clusters": [
                {"name": "PassthroughCluster", "type": "ORIGINAL_DST",
                 "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "10s"},
                {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"},
                cluster,
            ],
        },
    }


def _bootstrap(listener: dict, clusters: list) -> dict:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def _http_listener(routes: list) -> dict:
    hcm = {"@type": _HCM, "stat_prefix": "bench",
           "route_config": {"name": "bench", "virtual_hosts": [
               {"name": "all", "domains": ["*"], "routes": routes}]},
           "http_filters": [{"name": "envoy.filters.http.router",
                             "typed_config": {"@type": _ROUTER}}]}
    return _listener({"name": "envoy.filters.network.http_connection_manager",
                      "typed_config": hcm})


def _tcp_listener() -> dict:
    return _listener({"name": "envoy.filters.network.tcp_proxy",
                      "typed_config": {"@type": _TCP, "stat_prefix": "bench",
                                       "cluster": "upstream"}})


def _listener(network_filter: dict) -> dict:
    return {"name": "bench",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [network_filter]}]}


def _cluster(port: int, host: str = "127.0.0.1") -> dict:
    return {"name": "upstream", "type": "STATIC", "connect_timeout": "10s",
            "lb_policy": "ROUND_ROBIN", "circuit_breakers": ISTIO_CIRCUIT_BREAKERS,
            "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": host, "port_value": port}}}}]}]}}


# ---------------------------------------------------------------------- nginx and HAProxy

# Shared by the upstream and nginx-as-proxy: one worker, no access log, connections that live
# for the whole run (nginx's default keepalive_requests of 1000 would make every proxy reconnect
# upstream every 1000 requests, which is noise, not the proxy's cost).
_NGINX_HEAD = """daemon off;
master_process on;
user root;
worker_processes 1;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 3600s;
    client_body_temp_path @DIR@/tmp;
    proxy_temp_path @DIR@/tmp;
"""

NGINX_PROXY = _NGINX_HEAD + """
    upstream up {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 100000000; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{ {location} }}
    }}
}}
"""

UPSTREAM_NGINX = _NGINX_HEAD + """
    sendfile on;
    open_file_cache max=16 inactive=3600s;
    open_file_cache_valid 3600s;
    etag off;
    server {{
        listen {addr}:{port} reuseport;
        root {root};
        location / {{ default_type text/plain; }}
    }}
}}
"""

_HAPROXY_GLOBAL = """global
    nbthread 1
    maxconn 4000
defaults
    timeout connect 10s
    timeout client 3600s
    timeout server 3600s
"""

HAPROXY_HTTP = _HAPROXY_GLOBAL + """    mode http
    option http-keep-alive
frontend bench
    bind 127.0.0.1:{port}
    default_backend up
backend up
{backend}"""

HAPROXY_TCP = _HAPROXY_GLOBAL + """    mode tcp
frontend bench
    bind 127.0.0.1:{port}
    default_backend up
backend up
    server up 127.0.0.1:{upstream}
"""


def upstream_conf(port: int, root: str, addr: str = "127.0.0.1") -> str:
    return UPSTREAM_NGINX.format(port=port, root=root, addr=addr)


def write_upstream_files(root: str) -> None:
    with open(f"{root}/small", "wb") as f:
        f.write(b"y" * (SMALL_BODY - 1) + b"\n")
    with open(f"{root}/64k", "wb") as f:
        f.write(b"z" * (LARGE_BODY - 1) + b"\n")
