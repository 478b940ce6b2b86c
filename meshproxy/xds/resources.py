"""What an xDS response hands to the code that owns a resource type, and how it answers.

A ``Handler`` receives an ``Update`` (resources added or changed, names removed) and returns the
resources it rejected, by name. Like Envoy's ``SubscriptionCallbacks::onConfigUpdate``, a handler
applies the valid resources of a partly invalid update and reports the others; any rejection
makes the response a NACK (``cds_api_helper.cc``: valid clusters are added, then "Error
adding/updating cluster(s) ..." is thrown). Raising ``UpdateRejected`` (or any exception) rejects
the whole update.

Decoding follows ``DecodedResourceImpl::fromResource``: an ``Any`` of the response's type, or an
``envoy.service.discovery.v3.Resource`` wrapper carrying name, version, TTL and (unless it is a
heartbeat) the resource. A type meshproxy has no schema for (Istio's NameTable) decodes to
``message=None``; its handler decides (``IgnoreHandler`` accepts and drops it).
"""

from __future__ import annotations

import dataclasses
import logging

from google.protobuf import message as _message

from meshproxy.config.protos import message_class
from meshproxy.xds import types as T

log = logging.getLogger("meshproxy.xds")

# Envoy's Config::Utility::truncateGrpcStatusMessage: error_detail travels in gRPC messages, but
# Envoy keeps it below the 8 KiB trailer limit all the same.
MAX_ERROR_MESSAGE = 4096
INTERNAL = 13    # google.rpc.Code.INTERNAL, the code Envoy puts in every NACK


class UpdateRejected(Exception):
    """The whole response is refused (malformed, wrong type, duplicate names)."""


@dataclasses.dataclass(frozen=True)
class Resource:
    name: str
    version: str            # per-resource version (delta, or a Resource wrapper), else ""
    message: object         # the decoded proto, or None for a type without a schema
    ttl: float | None = None
    raw: object = None      # the Any it came in

    def __repr__(self) -> str:
        return f"<Resource {self.name!r} v={self.version!r}>"


@dataclasses.dataclass(frozen=True)
class Update:
    type_url: str
    version_info: str                   # SotW version_info / delta system_version_info
    added: tuple[Resource, ...]         # added or changed
    removed: tuple[str, ...] = ()
    # True when ``added`` is the complete set of the type (SotW wildcard: CDS, LDS)
    state_of_the_world: bool = False

    def __repr__(self) -> str:
        return (f"<Update {T.short(self.type_url)} v={self.version_info!r} "
                f"+{[r.name for r in self.added]} -{list(self.removed)}>")


FETCH_TIMEOUT = "fetch_timeout"     # ConfigUpdateFailureReason::FetchTimedout
REJECTED = "rejected"               # ConfigUpdateFailureReason::UpdateRejected
CONNECTION = "connection"           # ConfigUpdateFailureReason::ConnectionFailure


@dataclasses.dataclass(frozen=True)
class Failure:
    reason: str                 # FETCH_TIMEOUT, REJECTED or CONNECTION
    type_url: str
    names: tuple[str, ...] = ()  # the watched names a fetch timeout is about
    message: str = ""


class Handler:
    """The interface the server implements per type URL (see ``catalog.py`` for one)."""

    def apply(self, update: Update) -> dict[str, str]:
        """Apply what is valid; return {name: error} for the rejected resources."""
        raise NotImplementedError

    def on_failure(self, failure: Failure) -> None:
        """Called on initial fetch timeout, whole-response rejection and stream failure
        (Envoy's ``onConfigUpdateFailed``); initialisation should carry on regardless."""


class IgnoreHandler(Handler):
    """Accepts and drops every resource: Istio-only types meshproxy does not implement."""

    def apply(self, update: Update) -> dict[str, str]:
        if update.added:
            log.debug("ignoring %d %s resource(s)", len(update.added), update.type_url)
        return {}


def truncate(message: str) -> str:
    if len(message) <= MAX_ERROR_MESSAGE:
        return message
    return message[:MAX_ERROR_MESSAGE] + "...(truncated)"


def rejection_message(type_url: str, errors: dict[str, str]) -> str:
    """Envoy's wording for a partly rejected update: "Error adding/updating cluster(s) a: why,
    b: why" (cds_api_helper.cc, lds_api.cc)."""
    kind = T.KIND_NAMES.get(type_url, "resource")
    if type_url in (T.ROUTE, T.ENDPOINT):
        # EDS, RDS: each resource is its own subscription in Envoy, and the NACK says what the
        # first refused one threw, without a prefix (checked against Envoy 1.40)
        return next(iter(errors.values()))
    if type_url == T.LISTENER:
        # lds_api.cc appends "{name}: {error}\n" per listener (checked against Envoy 1.40)
        return f"Error adding/updating {kind}(s) " + "".join(f"{n}: {e}\n"
                                                             for n, e in errors.items())
    return f"Error adding/updating {kind}(s) " + ", ".join(f"{n}: {e}" for n, e in errors.items())


def _decode_message(type_url: str, any_msg, where: str):
    cls = message_class(T.message_name(type_url))
    if cls is None:
        return None
    msg = cls()
    try:
        msg.ParseFromString(any_msg.value)
    except _message.DecodeError as exc:
        raise UpdateRejected(f"{where}: unable to decode {T.message_name(type_url)}: {exc}")
    return msg


def decode_sotw(type_url: str, any_msg, index: int) -> tuple[Resource, bool]:
    """Decode one entry of a DiscoveryResponse. Returns (resource, has_body); a Resource wrapper
    without a body is a heartbeat candidate."""
    where = f"resources[{index}]"
    if any_msg.type_url == T.RESOURCE_WRAPPER:
        wrapper = _decode_message(T.RESOURCE_WRAPPER, any_msg, where)
        ttl = _ttl(wrapper)
        if not wrapper.HasField("resource"):
            return Resource(wrapper.name, wrapper.version, None, ttl, None), False
        inner = wrapper.resource
        if inner.type_url != type_url:
            raise UpdateRejected(f"{inner.type_url} does not match the message-wide type URL "
                                 f"{type_url} in DiscoveryResponse")
        msg = _decode_message(type_url, inner, where)
        name = wrapper.name or (T.resource_name(type_url, msg) if msg is not None else "")
        return Resource(name, wrapper.version, msg, ttl, inner), True
    if any_msg.type_url != type_url:
        raise UpdateRejected(f"{any_msg.type_url} does not match the message-wide type URL "
                             f"{type_url} in DiscoveryResponse")
    msg = _decode_message(type_url, any_msg, where)
    # Without a schema the name is unknown (""); the type's handler decides what that means.
    name = T.resource_name(type_url, msg) if msg is not None else ""
    return Resource(name, "", msg, None, any_msg), True


def decode_delta(type_url: str, res, index: int) -> Resource:
    """Decode one ``envoy.service.discovery.v3.Resource`` of a DeltaDiscoveryResponse (the
    caller has already set heartbeats and unresolved aliases aside)."""
    if res.resource.type_url != type_url:
        raise UpdateRejected(f"type URL {res.resource.type_url} embedded in an individual Any "
                             f"does not match the message-wide type URL {type_url} in "
                             f"DeltaDiscoveryResponse")
    msg = _decode_message(type_url, res.resource, f"resources[{index}]")
    return Resource(res.name, res.version, msg, _ttl(res), res.resource)


def _ttl(wrapper) -> float | None:
    if not wrapper.HasField("ttl"):
        return None
    return wrapper.ttl.seconds + wrapper.ttl.nanos / 1e9
