"""Endpoints that arrive over EDS (Envoy's ``EdsClusterImpl``, ``source/extensions/clusters/eds``).

A ClusterLoadAssignment replaces the cluster's host set: hosts that stay (same address) keep
their connection pools and stats, hosts that go have their pools drained (requests in flight
finish), new hosts start with empty pools (``Cluster.set_hosts``). The endpoint translation is
the one static clusters use (``cluster_config._endpoints``), so an assignment is refused over
EDS for the same reasons a static ``load_assignment`` is refused at start-up. The first
assignment ends the cluster's warming (``initialized``).
"""

from __future__ import annotations

from meshproxy.config.errors import ConfigError, join
from meshproxy.upstream.cluster_config import _endpoints
from meshproxy.upstream.host import Host


def eds_service_name(cluster_config) -> str:
    """The ClusterLoadAssignment name an EDS cluster watches: ``eds_cluster_config.service_name``
    if set, else the cluster's own name (Envoy's ``EdsClusterImpl``)."""
    proto = cluster_config.proto
    if proto is not None and proto.HasField("eds_cluster_config") and \
            proto.eds_cluster_config.service_name:
        return proto.eds_cluster_config.service_name
    return cluster_config.name


def check_load_assignment(cla, path: str = "") -> tuple:
    """Translate an assignment's endpoints (ConfigError naming the field if one is bad)."""
    if cla.HasField("policy") and cla.policy.HasField("overprovisioning_factor") and \
            cla.policy.overprovisioning_factor.value < 1:
        raise ConfigError(join(path, "policy.overprovisioning_factor"),
                          "value must be greater than 0")
    # EDS hosts are addresses, never names to resolve: checked as a STATIC cluster's are.
    return _endpoints(cla, path, "STATIC")


def apply_load_assignment(cluster, cla, path: str = "") -> None:
    """Install an assignment on ``cluster`` (an EDS cluster). Validation happens first: a bad
    assignment changes nothing."""
    endpoints = check_load_assignment(cla, path)
    # An address listed twice is one host, the first (upstream_impl.cc updateDynamicHostList:
    # "a bad EDS implementation could do the same thing"; checked against Envoy 1.40's dump).
    seen = set()
    hosts = []
    for e in endpoints:
        if (e.address, e.unix) in seen:
            continue
        seen.add((e.address, e.unix))
        hosts.append(Host(cluster, e.address, e.hostname, e.weight, e.health_status,
                          e.priority, e.locality, e.metadata, e.unix, e.locality_weight))
    cluster.set_hosts(hosts)
    cluster.initialized = True
