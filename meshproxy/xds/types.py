"""xDS resource type URLs and the per-type facts the ADS mux needs.

Wildcard types are the ones Envoy subscribes to without names (CDS and LDS, ``cds_api_impl.cc``
and ``lds_api.cc`` start their subscriptions with an empty name set); the others are named
(EDS by the EDS clusters' service names, RDS by the HCMs' ``rds.route_config_name``, SDS by the
secret names the transport sockets reference).
"""

from __future__ import annotations

_PREFIX = "type.googleapis.com/"

LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE = _PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LB_ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.LbEndpoint"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
# Istio's DNS name table (pilot-agent's NDS); not implemented, accepted and ignored.
NAME_TABLE = _PREFIX + "istio.networking.nds.v1.NameTable"
RESOURCE_WRAPPER = _PREFIX + "envoy.service.discovery.v3.Resource"

SHORT_NAMES = {LISTENER: "LDS", ROUTE: "RDS", CLUSTER: "CDS", ENDPOINT: "EDS", SECRET: "SDS",
               SCOPED_ROUTE: "SRDS", NAME_TABLE: "NDS"}

WILDCARD_TYPES = frozenset((LISTENER, CLUSTER))

# While a response of the key type is applied, requests of these types are held back so that the
# names the update adds or removes go out as one request, before the ACK of the update:
# CdsApiHelper::onConfigUpdate pauses EDS, LEDS and SDS (cds_api_helper.cc); LdsApiImpl pauses
# RDS, SRDS and SDS (lds_api.cc). The type being applied is paused too (grpc_mux_impl.cc
# onDiscoveryResponse, "We pause updates of the same type").
PAUSED_WHILE_APPLYING = {
    CLUSTER: (ENDPOINT, LB_ENDPOINT, SECRET),
    LISTENER: (ROUTE, SCOPED_ROUTE, SECRET),
}

# The human name Envoy uses in its "Error adding/updating ..." rejection messages.
KIND_NAMES = {LISTENER: "listener", CLUSTER: "cluster", ROUTE: "route configuration",
              ENDPOINT: "cluster load assignment", SECRET: "secret"}


def short(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit("/", 1)[-1])


def message_name(type_url: str) -> str:
    """``type.googleapis.com/envoy.config.cluster.v3.Cluster`` -> ``envoy.config.cluster.v3.Cluster``."""
    return type_url.rsplit("/", 1)[-1]


def resource_name(type_url: str, msg) -> str:
    """The name a resource is known by: ``cluster_name`` for a ClusterLoadAssignment (Envoy's
    ``EdsResourceDecoder``), ``name`` for the others."""
    if type_url == ENDPOINT:
        return msg.cluster_name
    return getattr(msg, "name", "")
