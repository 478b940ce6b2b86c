"""State of one type URL on a delta (incremental) ADS stream: a port of Envoy's
``DeltaSubscriptionState`` (``source/extensions/config_subscription/grpc/
delta_subscription_state.cc``). Sans-IO, like ``sotw.py``.

What it keeps:
- ``requested``: names the client asked for -> the version it holds (``None`` while waiting for
  the server); ``"*"`` stands for the wildcard subscription;
- ``wildcard_res``: resources that came through the wildcard -> version;
- ``ambiguous``: resources unsubscribed by name while the wildcard was on (they may still come
  through it) -> version;
- ``names_added`` / ``names_removed``: interest changes not yet told to the server.

Rules:
- the first request on a stream re-sends the whole interest and ``initial_resource_versions``
  (all known versions), except that a plain wildcard subscription stays the legacy wildcard (an
  empty ``resource_names_subscribe``);
- a resource without a body at the version held is a heartbeat (refreshes the TTL only);
- duplicate names, or a name both added and removed, reject the whole response;
- versions are recorded only when the whole response was accepted; a NACK is the nonce plus
  ``error_detail`` (code 13 INTERNAL) - there is no version to carry;
- a removed resource still wanted stays in ``requested`` with no version; an expired TTL removes
  the resource the same way.
"""

from __future__ import annotations

import dataclasses

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from meshproxy.xds import types as T
from meshproxy.xds.resources import (INTERNAL, Update, UpdateRejected, decode_delta,
                                     rejection_message, truncate)
from meshproxy.xds.sotw import Outcome

WILDCARD = "*"


@dataclasses.dataclass(frozen=True)
class Ack:
    """An ACK (error None) or NACK waiting in the mux's ack queue (Envoy's ``UpdateAck``)."""

    type_url: str
    nonce: str
    error: object = None


class DeltaState:
    def __init__(self, type_url: str, names=None, *, ttl=None):
        self.type_url = type_url
        self.ttl = ttl
        self.requested: dict[str, str | None] = {}
        self.wildcard_res: dict[str, str] = {}
        self.ambiguous: dict[str, str] = {}
        self.names_added: set[str] = set()
        self.names_removed: set[str] = set()
        self.interest: frozenset = frozenset()
        # Envoy starts every subscription in "initial legacy wildcard" mode and leaves it at the
        # first named interest; meshproxy creates named subscriptions with their names, so only
        # a wildcard subscription starts in it.
        self.in_initial_legacy_wildcard = names is None
        self.sent_in_stream = False
        self.send_initial_versions = True
        self.must_send = False
        self.system_version_info = ""    # of the last accepted response, for reporting
        if names:
            self.set_names(names)

    # ------------------------------------------------------------------ interest

    @property
    def wildcard(self) -> bool:
        return self.in_initial_legacy_wildcard or WILDCARD in self.requested

    def set_names(self, names) -> bool:
        names = frozenset(names)
        added, removed = names - self.interest, self.interest - names
        self.interest = names
        self.update_interest(added, removed)
        return bool(added or removed)

    def update_interest(self, added, removed) -> None:
        """``updateSubscriptionInterest``."""
        for a in added:
            if self.in_initial_legacy_wildcard and a != WILDCARD:
                self.in_initial_legacy_wildcard = False
            if a in self.wildcard_res:
                self.requested[a] = self.wildcard_res.pop(a)
            elif a in self.ambiguous:
                self.requested[a] = self.ambiguous.pop(a)
            else:
                self.requested[a] = None
            # Removed-then-added before a request went out is an addition: the owner may have
            # forgotten its copy.
            self.names_removed.discard(a)
            self.names_added.add(a)
        for r in removed:
            erased = False
            if WILDCARD in self.requested:
                if r in self.requested:
                    version = self.requested.pop(r)
                    # It may still come through the wildcard: keep it as ambiguous.
                    if version is not None:
                        self.ambiguous[r] = version
                    erased = True
            else:
                erased = self.requested.pop(r, False) is not False
            self.names_added.discard(r)
            if erased:
                self.names_removed.add(r)
                self.in_initial_legacy_wildcard = False
            if self.ttl is not None:
                self.ttl.clear(r)
        if WILDCARD in removed:
            self.wildcard_res.clear()
            self.ambiguous.clear()

    def update_pending(self) -> bool:
        """``subscriptionUpdatePending``: is there interest to tell the server?"""
        if self.names_added or self.names_removed:
            return True
        if not self.sent_in_stream:
            # Everything is re-sent at the start of a stream; an empty interest is sent only as
            # the legacy wildcard.
            return bool(self.requested) or self.in_initial_legacy_wildcard
        return self.must_send

    # ------------------------------------------------------------------ requests

    def stream_fresh(self, send_initial_versions: bool = True) -> None:
        """``markStreamFresh``."""
        self.sent_in_stream = False
        self.send_initial_versions = send_initial_versions

    def request(self, ack: Ack | None = None, node=None) -> discovery_pb2.DeltaDiscoveryRequest:
        """``getNextRequestAckless`` / ``getNextRequestWithAck``."""
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=self.type_url)
        self.must_send = False
        if not self.sent_in_stream:
            self.sent_in_stream = True
            legacy = self._initial_request_is_legacy_wildcard()
            for name, version in self.requested.items():
                if self.send_initial_versions and version is not None:
                    req.initial_resource_versions[name] = version
                self.names_added.add(name)
            if self.send_initial_versions:
                for name, version in (*self.wildcard_res.items(), *self.ambiguous.items()):
                    req.initial_resource_versions[name] = version
            if legacy:
                self.names_added.clear()
            self.names_removed.clear()
        req.resource_names_subscribe.extend(sorted(self.names_added))
        req.resource_names_unsubscribe.extend(sorted(self.names_removed))
        self.names_added.clear()
        self.names_removed.clear()
        if node is not None:
            req.node.CopyFrom(node)
        if ack is not None:
            req.response_nonce = ack.nonce
            if ack.error is not None:
                req.error_detail.CopyFrom(ack.error)
        return req

    def _initial_request_is_legacy_wildcard(self) -> bool:
        if self.in_initial_legacy_wildcard:
            self.requested[WILDCARD] = None
            return True
        # Still only the wildcard, and no change of interest: keep it a legacy wildcard request.
        if self.names_added or self.names_removed:
            return False
        return list(self.requested) == [WILDCARD]

    # ------------------------------------------------------------------ responses

    def handle(self, resp: discovery_pb2.DeltaDiscoveryResponse, apply) -> tuple[Ack, Outcome]:
        """``handleResponse``: the nonce is always echoed, with error_detail on rejection."""
        seen: set[str] = set()
        try:
            added, removed = self._decode(resp, seen)
            rejected = {}
            # An empty response still reaches a wildcard watch (CDS, LDS): a control plane with
            # no listeners answers so, and Envoy 1.40 then initialises LDS and gets ready.
            if added or removed or (self.wildcard and not resp.resources and
                                    not resp.removed_resources):
                rejected = apply(Update(self.type_url, resp.system_version_info, tuple(added),
                                        tuple(removed))) or {}
        except Exception as exc:  # noqa: BLE001 - any failure is this response's NACK
            return self._nack(resp, str(exc) or type(exc).__name__, seen, whole=True)
        if rejected:
            return self._nack(resp, rejection_message(self.type_url, rejected), seen)
        self._record(resp)
        self.system_version_info = resp.system_version_info
        return Ack(self.type_url, resp.nonce), Outcome(True, None, frozenset(seen))

    def _decode(self, resp, seen):
        for r in resp.resources:
            if r.name in seen:
                raise UpdateRejected(f"duplicate name {r.name} found among added/updated "
                                     f"resources")
            seen.add(r.name)
        for name in resp.removed_resources:
            if name in seen:
                raise UpdateRejected(f"duplicate name {name} found in the union of "
                                     f"added+removed resources")
            seen.add(name)
        added = []
        wildcard = self.wildcard
        for i, r in enumerate(resp.resources):
            if self._is_heartbeat(r):
                continue
            if not r.HasField("resource") and r.aliases:
                continue        # an unresolved alias carries no resource
            res = decode_delta(self.type_url, r, i)
            # The watch map delivers only what a watch is interested in.
            if wildcard or r.name in self.requested:
                added.append(res)
        removed = [n for n in resp.removed_resources
                   if wildcard or n in self.requested or n in self.ambiguous]
        return added, removed

    def _is_heartbeat(self, r) -> bool:
        if r.HasField("resource"):
            return False
        if r.name in self.requested:
            held = self.requested[r.name]
            return held is not None and r.version == held
        held = self.wildcard_res.get(r.name, self.ambiguous.get(r.name))
        return held is not None and r.version == held

    def _record(self, resp) -> None:
        """``addResourceStateFromServer`` for each resource, then the removals."""
        for r in resp.resources:
            if WILDCARD not in self.requested and r.name not in self.requested:
                continue
            if self.ttl is not None:
                self.ttl.set(r.name, r.ttl.seconds + r.ttl.nanos / 1e9
                             if r.HasField("ttl") else None)
            if r.name in self.requested:
                self.requested[r.name] = r.version
            else:
                self.wildcard_res[r.name] = r.version
                self.ambiguous.pop(r.name, None)
        for name in resp.removed_resources:
            if name in self.requested:
                self.requested[name] = None
            elif self.ambiguous.pop(name, None) is None:
                self.wildcard_res.pop(name, None)
            if self.ttl is not None:
                self.ttl.clear(name)

    def _nack(self, resp, message, seen, whole=False):
        error = status_pb2.Status(code=INTERNAL, message=truncate(message))
        return (Ack(self.type_url, resp.nonce, error),
                Outcome(True, message, frozenset(seen), whole_rejected=whole))

    # ------------------------------------------------------------------ TTL

    def expire(self, names) -> Update | None:
        """The TTL callback of ``DeltaSubscriptionState``: expired resources are removed."""
        gone = []
        for n in names:
            if n in self.requested:
                self.requested[n] = None
                gone.append(n)
            elif self.wildcard_res.pop(n, None) is not None or \
                    self.ambiguous.pop(n, None) is not None:
                gone.append(n)
        if not gone:
            return None
        return Update(self.type_url, "", (), tuple(gone))

    def versions(self) -> dict[str, str]:
        """Every resource version held (what ``initial_resource_versions`` would say)."""
        out = {n: v for n, v in self.requested.items() if v is not None and n != WILDCARD}
        out.update(self.wildcard_res)
        out.update(self.ambiguous)
        return out

    def __repr__(self) -> str:
        interest = ("*" if self.wildcard else "") + ",".join(sorted(self.interest))
        return (f"<DeltaState {T.short(self.type_url)} [{interest}] "
                f"resources={len(self.versions())} pending={self.update_pending()}>")
