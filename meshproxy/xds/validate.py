"""Check xDS resources with the translation the static bootstrap already uses, so a resource is
refused over xDS for exactly the reasons it would be refused in ``static_resources``.

- Cluster: ``upstream.cluster_config.build_cluster_config``;
- ClusterLoadAssignment: the endpoint translation of the same module;
- Listener: ``listener.config.build_listener_config``. That translation does not pass an RDS
  registry down to ``http/hcm_config.build_hcm_config`` yet (without one it refuses ``rds``), so
  a copy of the listener is checked with each RDS reference replaced by an empty inline route
  configuration of the same name: everything but the routes is checked, and the routes are
  checked when RDS delivers them. When the server integrates xDS it will build listeners with
  its ``router.rds.RdsRegistry`` and this copy goes away;
- RouteConfiguration: ``router.route_config.build_route_table`` (RDS does not validate cluster
  names unless the route configuration asks: ``validate_clusters`` defaults to false for RDS;
  ``route_clusters`` checks them against the cluster manager's names when it does);
- Secret: decoded only (TLS comes later).

Errors are ``ConfigError``s whose path starts at the resource.
"""

from __future__ import annotations

from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import message_class
from meshproxy.xds import types as T

HCM_TYPE = ("envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")


def validate(type_url: str, msg) -> None:
    if msg is None:
        raise ConfigError("", f"no schema for {type_url}")
    fn = _VALIDATORS.get(type_url)
    if fn is not None:
        fn(msg)


def _cluster(c) -> None:
    from meshproxy.upstream.cluster_config import build_cluster_config
    build_cluster_config(c, "")


def _endpoints(cla) -> None:
    from meshproxy.upstream.cluster_config import _endpoints as endpoints
    if not cla.cluster_name:
        raise ConfigError("cluster_name", "value length must be at least 1 characters")
    # EDS hosts are addresses, never names to resolve (as for STATIC clusters).
    endpoints(cla, "", "STATIC")


def _listener(lst) -> None:
    from meshproxy.listener.config import build_listener_config
    if not lst.name:
        raise ConfigError("name", "value length must be at least 1 characters")
    copy, _ = inline_rds(lst)
    cfg = build_listener_config(copy, "")
    if cfg.bind_to_port and not (cfg.freebind or cfg.transparent):
        for a in cfg.addresses:
            _check_assignable(a)


class BindFailure(ConfigError):
    """A listener whose socket cannot be made (Envoy also counts listener_create_failure)."""


def _check_assignable(a) -> None:
    """Envoy binds a listener's sockets while adding it (ListenSocketFactoryImpl, main thread),
    so an address the host does not have is a rejection of that listener: ``cannot bind
    '10.1.2.3:8080': Cannot assign requested address`` (checked against Envoy 1.40). meshproxy
    binds later, when the listener activates; here it asks the kernel whether the IP is
    assignable (a bind to port 0), which is what a pod-IP listener from a real dump hits.
    A port already in use is still found only at activation (logged, listener_create_failure)."""
    import errno
    import socket
    if a.unix or a.address[0] in ("0.0.0.0", "::"):
        return
    family = socket.AF_INET6 if ":" in a.address[0] else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((a.address[0], 0))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise BindFailure("", f"cannot bind '{a.text}': {exc.strerror}") from None
    finally:
        s.close()


def _route(rc) -> None:
    from meshproxy.router.route_config import build_route_table
    build_route_table(rc, "", validate_clusters=False)


def route_clusters(rc, cluster_names) -> None:
    """A route configuration that sets ``validate_clusters`` (false by default over RDS) names
    only clusters the cluster manager has, static or from CDS, else it is rejected:
    ``route: unknown weighted cluster 'ghost'`` (checked against Envoy 1.40,
    tests/xds/test_rds_validate_clusters.py)."""
    from meshproxy.router.route_config import build_route_table
    if rc.HasField("validate_clusters") and rc.validate_clusters.value:
        build_route_table(rc, "", cluster_names=frozenset(cluster_names))


_VALIDATORS = {T.CLUSTER: _cluster, T.ENDPOINT: _endpoints, T.LISTENER: _listener,
               T.ROUTE: _route}


# ------------------------------------------------------------------------ dependencies


def eds_service_name(cluster) -> str | None:
    """The ClusterLoadAssignment an EDS cluster watches: ``eds_cluster_config.service_name``,
    else the cluster's name (``EdsClusterImpl``); None for other cluster types."""
    if cluster.type != 3 or cluster.WhichOneof("cluster_discovery_type") != "type":
        return None
    return cluster.eds_cluster_config.service_name or cluster.name


def _hcms(lst):
    """(filter, HttpConnectionManager) of every HCM in the listener's filter chains."""
    chains = list(lst.filter_chains)
    if lst.HasField("default_filter_chain"):
        chains.append(lst.default_filter_chain)
    for fc in chains:
        for f in fc.filters:
            if f.HasField("typed_config") and f.typed_config.type_url.endswith("/" + HCM_TYPE):
                cls = message_class(HCM_TYPE)
                hcm = cls()
                if f.typed_config.Unpack(hcm):
                    yield f, hcm


def rds_names(lst) -> set[str]:
    """The route configurations the listener's HCMs fetch over RDS."""
    return set(rds_names_in_order(lst))


def rds_names_in_order(lst) -> list[str]:
    """The same, in filter chain order (the order Envoy subscribes to them)."""
    out = []
    for _, hcm in _hcms(lst):
        if hcm.WhichOneof("route_specifier") == "rds" and hcm.rds.route_config_name not in out:
            out.append(hcm.rds.route_config_name)
    return out


def inline_rds(lst):
    """A copy of the listener whose RDS references are empty inline route configurations
    (for validation); and the RDS names."""
    copy = type(lst)()
    copy.CopyFrom(lst)
    names = set()
    for f, hcm in list(_hcms(copy)):
        if hcm.WhichOneof("route_specifier") != "rds":
            continue
        name = hcm.rds.route_config_name
        names.add(name)
        hcm.ClearField("rds")
        hcm.route_config.name = name
        f.typed_config.Pack(hcm)
    return copy, names
