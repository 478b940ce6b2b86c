"""State of one type URL on a state-of-the-world ADS stream, as Envoy's ``GrpcMuxImpl`` keeps it
(``source/extensions/config_subscription/grpc/grpc_mux_impl.cc``, ``ApiState``).

Sans-IO: it builds ``DiscoveryRequest``s and digests ``DiscoveryResponse``s; applying resources
is the injected ``apply`` callable's job, timers are the injected ``TtlTimers``'.

The rules, all from ``onDiscoveryResponse`` / ``processDiscoveryResources``:
- every response is processed; the client never drops one for its nonce (stale nonces are a
  server-side rule), and the next request echoes the response's nonce, ACK or NACK;
- ``version_info`` advances only when the whole response was accepted; a NACK carries the last
  accepted version and ``error_detail`` {code 13 INTERNAL, message}, once;
- a response for a type with nothing watched is not applied: empty, its version is taken
  silently; with resources, a request goes back with the old version and no error;
- a ``Resource`` wrapper without a body at the current version is a heartbeat: it refreshes the
  TTL and is not applied;
- named types hear only of the names they watch, and only when the response carries one;
- for wildcard types (CDS, LDS) the response is the complete set: names the handler holds that
  are missing from it are removed (``CdsApiImpl::onConfigUpdate`` SotW, ``LdsApiImpl``);
- the nonce is forgotten when a new stream starts (``clearNonce``); the version is kept, so the
  first request on the new stream says what the client has.
"""

from __future__ import annotations

import dataclasses
import logging

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from meshproxy.xds import types as T
from meshproxy.xds.resources import (INTERNAL, Update, UpdateRejected, decode_sotw,
                                     rejection_message, truncate)

log = logging.getLogger("meshproxy.xds")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What handling a response decided: send a request (ACK/NACK) or not, the rejection
    message if any, and the names the response carried (they end initial fetch timers)."""

    send: bool
    error: str | None = None
    names: frozenset = frozenset()
    whole_rejected: bool = False


class SotwState:
    def __init__(self, type_url: str, names=None, *, ttl=None):
        """``names=None`` subscribes to everything (wildcard, CDS/LDS); a set names resources."""
        self.type_url = type_url
        self.wildcard = names is None
        self.names: frozenset = frozenset(names or ())
        self.version_info = ""          # last accepted
        self.nonce = ""                 # last received, echoed by the next request
        self.error = None               # google.rpc.Status of the NACK still to send
        self.known: dict[str, str] = {}  # accepted resources the handler holds -> version
        self.ttl = ttl

    # ------------------------------------------------------------------ interest

    @property
    def watching(self) -> bool:
        return self.wildcard or bool(self.names)

    def set_names(self, names) -> bool:
        """Replace the watched names (a named type); True if they changed."""
        names = frozenset(names)
        if names == self.names and not self.wildcard:
            return False
        self.wildcard = False
        removed = self.names - names
        self.names = names
        # Resources no longer watched are forgotten (and their TTLs with them); the handler that
        # dropped the names drops the resources itself, as Envoy's EDS/RDS owners do.
        for n in removed:
            self.known.pop(n, None)
            if self.ttl is not None:
                self.ttl.clear(n)
        return True

    # ------------------------------------------------------------------ requests

    def stream_fresh(self) -> None:
        self.nonce = ""

    def request(self, node=None) -> discovery_pb2.DiscoveryRequest:
        req = discovery_pb2.DiscoveryRequest(
            type_url=self.type_url, version_info=self.version_info, response_nonce=self.nonce,
            resource_names=sorted(self.names))
        if node is not None:
            req.node.CopyFrom(node)
        if self.error is not None:
            # "clear error_detail after the request is sent" (sendDiscoveryRequest)
            req.error_detail.CopyFrom(self.error)
            self.error = None
        return req

    # ------------------------------------------------------------------ responses

    def handle(self, resp: discovery_pb2.DiscoveryResponse, apply) -> Outcome:
        """Digest one response; ``apply(update) -> {name: error}`` applies it."""
        if not self.watching:
            self.nonce = resp.nonce
            if not resp.resources:
                self.version_info = resp.version_info
                return Outcome(send=False)
            log.warning("xDS: ignoring %d resource(s) of unwatched type %s",
                        len(resp.resources), self.type_url)
            return Outcome(send=True)
        errors: dict[str, str] = {}
        seen: set[str] = set()
        try:
            added, heartbeats = self._decode(resp, errors, seen)
            removed = ()
            if self.wildcard:
                present = seen | heartbeats
                removed = tuple(n for n in self.known if n not in present)
            rejected = {}
            # Named watches hear only of responses that carry one of their names.
            if self.wildcard or added:
                update = Update(self.type_url, resp.version_info, tuple(added), removed,
                                state_of_the_world=self.wildcard)
                rejected = apply(update) or {}
        except Exception as exc:  # noqa: BLE001 - any failure is this response's NACK
            message = str(exc) or type(exc).__name__
            self._nack(message)
            self.nonce = resp.nonce
            return Outcome(send=True, error=message, names=frozenset(seen), whole_rejected=True)
        errors.update(rejected)
        for r in added:
            if r.name not in errors:
                self.known[r.name] = r.version or resp.version_info
                if self.ttl is not None:
                    self.ttl.set(r.name, r.ttl)
        for n in removed:
            self.known.pop(n, None)
            if self.ttl is not None:
                self.ttl.clear(n)
        message = None
        if errors:
            message = rejection_message(self.type_url, errors)
            self._nack(message)
        else:
            self.version_info = resp.version_info
        self.nonce = resp.nonce
        return Outcome(send=True, error=message, names=frozenset(seen))

    def _decode(self, resp, errors, seen):
        added = []
        heartbeats = set()
        for i, any_msg in enumerate(resp.resources):
            res, has_body = decode_sotw(self.type_url, any_msg, i)
            if not has_body:
                # isHeartbeatResource: no body, and the version the client already has.
                if res.version != self.version_info:
                    raise UpdateRejected(f"resource '{res.name}' has no body and version "
                                         f"'{res.version}' is not the current one")
                heartbeats.add(res.name)
                if self.ttl is not None and res.name in self.known:
                    self.ttl.set(res.name, res.ttl)
                continue
            if not self.wildcard and res.name not in self.names:
                # processDiscoveryResources delivers only the watched names.
                continue
            if res.name in seen:
                # cds_api_helper.cc: "duplicate cluster X found"; the first one is applied.
                errors[res.name] = f"duplicate {T.KIND_NAMES.get(self.type_url, 'resource')} " \
                                   f"{res.name} found"
                continue
            seen.add(res.name)
            added.append(res)
        return added, heartbeats

    def _nack(self, message: str) -> None:
        self.error = status_pb2.Status(code=INTERNAL, message=truncate(message))

    # ------------------------------------------------------------------ TTL

    def expire(self, names) -> Update | None:
        """Resources whose TTL ran out are removed (``GrpcMuxImpl::expiryCallback``)."""
        gone = tuple(n for n in names if self.known.pop(n, None) is not None)
        if not gone:
            return None
        return Update(self.type_url, "", (), gone)

    def __repr__(self) -> str:
        interest = "*" if self.wildcard else sorted(self.names)
        return (f"<SotwState {T.short(self.type_url)} {interest} v={self.version_info!r} "
                f"nonce={self.nonce!r} resources={len(self.known)}"
                f"{' NACK pending' if self.error is not None else ''}>")
