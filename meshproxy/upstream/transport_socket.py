"""Which transport socket an upstream connection to a host uses, and failing closed where that
is one meshproxy does not implement (TLS).

Envoy picks a host's socket from the cluster's ``transport_socket_matches``: the first entry
whose ``match`` fields all equal the host's ``envoy.transport_socket_match`` filter metadata,
else the cluster's ``transport_socket`` (cluster.proto ``TransportSocketMatch``;
source/common/upstream/transport_socket_match_impl.cc ``TransportSocketMatcherImpl::resolve``,
with ``Config::Metadata::metadataLabelMatch``). Istio sends every outbound cluster this way:
``{tlsMode: istio}`` selects its mTLS ``UpstreamTlsContext``, ``{}`` plain text.

meshproxy has no TLS yet. A cluster that asks for it is accepted as Envoy accepts it (a NACK
would fail the whole CDS update and pilot-agent's readiness): hosts that select plain text work,
and a connection to a host that selects TLS fails as a connect failure (503, ``UF``), never
downgraded to plain text.
"""

from __future__ import annotations

import dataclasses
import logging

from google.protobuf import json_format

from meshproxy.config.errors import ConfigError, join

log = logging.getLogger("meshproxy.upstream")

RAW_BUFFER = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
MATCH_KEY = "envoy.transport_socket_match"


def socket_type(ts) -> str:
    """The transport socket's type name ('' for an unset typed_config: raw_buffer)."""
    return ts.typed_config.type_url.rsplit("/", 1)[-1] if ts.HasField("typed_config") else ""


def is_plaintext(ts) -> bool:
    return socket_type(ts) in ("", RAW_BUFFER)


@dataclasses.dataclass(frozen=True)
class SocketSelect:
    """``matches``: ((criteria, plaintext), ...) in order; ``default_plain`` for no match."""

    matches: tuple
    default_plain: bool

    def plaintext_for(self, metadata) -> bool:
        fields = {}
        if metadata is not None and MATCH_KEY in metadata.filter_metadata:
            fields = json_format.MessageToDict(metadata.filter_metadata[MATCH_KEY])
        for criteria, plain in self.matches:
            if all(k in fields and fields[k] == v for k, v in criteria):
                return plain
        return self.default_plain


def check_typed(ts, path: str) -> None:
    """A transport socket named without a ``typed_config`` (Istio <= 1.9 sent
    ``envoy.transport_sockets.raw_buffer`` so) is refused by Envoy 1.40, which finds
    extensions by type URL only."""
    if ts.name and not ts.HasField("typed_config"):
        raise ConfigError(path, f"Didn't find a registered implementation for '{ts.name}' with "
                                f"type URL: ''")


def build_socket_select(c, cluster_name: str, path: str = "") -> SocketSelect | None:
    """None when every socket the cluster can pick is plain text (the common case)."""
    if c.HasField("transport_socket"):
        check_typed(c.transport_socket, join(path, "transport_socket"))
    for i, m in enumerate(c.transport_socket_matches):
        check_typed(m.transport_socket,
                    f"{join(path, 'transport_socket_matches')}[{i}].transport_socket")
    if is_plaintext(c.transport_socket) and \
            all(is_plaintext(m.transport_socket) for m in c.transport_socket_matches):
        return None
    if not is_plaintext(c.transport_socket):
        log.warning("cluster '%s': transport socket %s is not supported by meshproxy yet; hosts "
                    "selecting it fail to connect (never plain text)", cluster_name,
                    socket_type(c.transport_socket))
    matches = []
    for m in c.transport_socket_matches:
        criteria = tuple(sorted(json_format.MessageToDict(m.match).items()))
        plain = is_plaintext(m.transport_socket)
        if not plain:
            log.warning("cluster '%s': transport socket match '%s' (%s) is not supported by "
                        "meshproxy yet; hosts selecting it fail to connect (never plain text)",
                        cluster_name, m.name, socket_type(m.transport_socket))
        matches.append((criteria, plain))
    return SocketSelect(tuple(matches), is_plaintext(c.transport_socket))


class UnsupportedTransportSocket(OSError):
    """Raised instead of connecting to a host whose transport socket is TLS."""


def check_host(cfg, host) -> None:
    sel = cfg.socket_select
    if sel is not None and not sel.plaintext_for(host.metadata):
        raise UnsupportedTransportSocket(
            f"cluster '{cfg.name}': host {host.address_str} needs a TLS transport socket")
