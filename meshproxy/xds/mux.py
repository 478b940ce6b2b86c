"""The ADS multiplexer, sans-IO: every type URL's subscription on one stream, in Envoy's order.

It is Envoy's ``GrpcMuxImpl`` (state of the world) and ``NewGrpcMuxImpl`` (delta) without the
stream: the transport (``ads_client.py``) reports ``stream_started()``, ``on_response(msg)`` and
``stream_closed()``, and sends what ``take_requests()`` returns, in order; ``wakeup`` tells it
there is something to take. Timers (initial fetch timeouts, TTLs) run on the injected ``clock``
(``time()`` and ``call_later()``: an asyncio loop, or ``tests.support.clock.FakeClock``).

Ordering, as Envoy's ADS mux produces it:
- subscriptions keep the order they were first made in (``subscriptions_`` /
  ``subscription_ordering_``); a new stream re-sends them all in that order, so CDS, EDS, LDS,
  RDS when the owners subscribe in Envoy's order (``catalog.py`` does);
- a type can be paused: its requests are held and coalesced into one when the last pause ends
  (``pause()``/``ScopedResume``). While a response is applied, its own type is paused (SotW) and
  so are the types it feeds (``types.PAUSED_WHILE_APPLYING``: CDS holds EDS and SDS, LDS holds
  RDS and SDS), so the names a CDS update adds go out in one EDS request before the CDS ACK;
- requests are built when queued and dropped while no stream is up (the next stream re-sends
  everything); the first request of each stream carries the node, later ones only when
  ``set_node_on_first_message_only`` is false;
- delta: ACKs go before plain interest updates, and a paused type's ACK waits (the
  ``PausableAckQueue``).
"""

from __future__ import annotations

import contextlib
import logging

from meshproxy.xds import types as T
from meshproxy.xds.delta import Ack, DeltaState
from meshproxy.xds.resources import CONNECTION, FETCH_TIMEOUT, REJECTED, Failure
from meshproxy.xds.sotw import SotwState
from meshproxy.xds.ttl import TtlTimers

log = logging.getLogger("meshproxy.xds")

DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0    # ConfigSource.initial_fetch_timeout default


class Subscription:
    """One type URL: its protocol state, its handler, its initial fetch timers, its counters."""

    def __init__(self, type_url, state, handler):
        self.type_url = type_url
        self.state = state
        self.handler = handler
        self.fetch_timers: dict[str | None, object] = {}   # name (None: the wildcard) -> handle
        self.accepted = 0
        self.rejected = 0
        self.fetch_timeouts = 0

    def __repr__(self) -> str:
        return (f"<Subscription {self.state!r} accepted={self.accepted} "
                f"rejected={self.rejected}>")


class AdsMux:
    def __init__(self, node, handlers: dict, *, delta: bool = False, clock,
                 node_on_first_message_only: bool = True,
                 initial_fetch_timeout: float | dict | None = DEFAULT_INITIAL_FETCH_TIMEOUT):
        self.node = node
        self.handlers = dict(handlers)
        self.delta = delta
        self.clock = clock
        self.node_on_first_message_only = node_on_first_message_only
        self._fetch_timeout = initial_fetch_timeout
        # per watched name, from the config source that names it (an EDS cluster's
        # eds_config, an HCM's rds.config_source); 0 waits for ever (Istio's choice)
        self.name_timeouts: dict[tuple[str, str], float] = {}
        self.subscriptions: dict[str, Subscription] = {}    # insertion order is Envoy's order
        self._pauses: dict[str, int] = {}
        self._pending: set[str] = set()     # SotW: a request held back by a pause
        self._acks: list[Ack] = []          # delta: the pausable ACK queue
        self._outbox: list = []
        self.stream_up = False
        self._first_request = True
        self.wakeup = None                  # () -> None, set by the transport

    # ------------------------------------------------------------------ interest (owners)

    def subscribe(self, type_url: str, names=None) -> None:
        """Start watching ``type_url``: everything (``names=None``; CDS, LDS) or the given
        names. Subscribing again replaces the names."""
        if type_url in self.subscriptions:
            self.set_names(type_url, names if names is not None else ())
            return
        handler = self.handlers.get(type_url)
        if handler is None:
            raise ValueError(f"xDS: no handler for {type_url}")
        ttl = TtlTimers(self.clock, lambda expired: self._on_ttl_expired(type_url, expired))
        cls = DeltaState if self.delta else SotwState
        state = cls(type_url, None if names is None else frozenset(names), ttl=ttl)
        sub = self.subscriptions[type_url] = Subscription(type_url, state, handler)
        if names is None:
            self._arm_fetch_timer(sub, None)
        else:
            for n in sorted(set(names)):
                self._arm_fetch_timer(sub, n)
        self._interest_changed(type_url)

    def set_names(self, type_url: str, names) -> None:
        """Replace the names watched for a named type (EDS, RDS, SDS)."""
        sub = self.subscriptions.get(type_url)
        if sub is None:
            self.subscribe(type_url, names)
            return
        names = frozenset(names)
        old = sub.state.interest if self.delta else sub.state.names
        if not sub.state.set_names(names):
            return
        for n in sorted(names - old):
            self._arm_fetch_timer(sub, n)
        for n in old - names:
            handle = sub.fetch_timers.pop(n, None)
            if handle is not None:
                handle.cancel()
        self._interest_changed(type_url)

    def names(self, type_url: str) -> frozenset:
        sub = self.subscriptions.get(type_url)
        if sub is None:
            return frozenset()
        return sub.state.interest if self.delta else sub.state.names

    def _interest_changed(self, type_url: str) -> None:
        if self.delta:
            self._try_send()
        else:
            self._queue(type_url)

    # ------------------------------------------------------------------ pauses

    def pause(self, *type_urls: str) -> "_Resume":
        """Hold back requests of these types until the returned handle's ``resume()`` (or the
        end of its ``with`` block)."""
        for t in type_urls:
            self._pauses[t] = self._pauses.get(t, 0) + 1
        return _Resume(self, type_urls)

    def paused(self, type_url: str) -> bool:
        return self._pauses.get(type_url, 0) > 0

    def _resume(self, type_urls) -> None:
        for t in type_urls:
            self._pauses[t] -= 1
            if self._pauses[t]:
                continue
            if self.delta:
                self._try_send()
            elif t in self._pending:
                self._pending.discard(t)
                if t in self.subscriptions:
                    self._queue(t)

    # ------------------------------------------------------------------ stream events

    def stream_started(self) -> None:
        """``onStreamEstablished``: forget nonces, re-send every subscription in order."""
        self.stream_up = True
        self._first_request = True
        self._pending.clear()
        if self.delta:
            self._acks.clear()
            for sub in self.subscriptions.values():
                sub.state.stream_fresh(True)
            self._try_send()
        else:
            for t, sub in self.subscriptions.items():
                sub.state.stream_fresh()
                self._queue(t)

    def stream_closed(self) -> None:
        self.stream_up = False
        self._outbox.clear()
        for sub in list(self.subscriptions.values()):
            # Envoy's subscriptions only count this (update_failure); initialisation does not
            # proceed on it, only on an initial fetch timeout.
            sub.handler.on_failure(Failure(CONNECTION, sub.type_url))

    def on_response(self, resp) -> None:
        type_url = resp.type_url
        sub = self.subscriptions.get(type_url)
        if sub is None:
            log.warning("xDS: ignoring a response for %s, which has no subscription", type_url)
            return
        if self.delta:
            ack, outcome = sub.state.handle(resp, lambda u: self._apply(sub, u))
            self._after_response(sub, outcome)
            self._acks.append(ack)
            self._try_send()
            return
        # SotW pauses the type being applied so that watch changes made while applying it
        # collapse into the ACK (grpc_mux_impl.cc onDiscoveryResponse).
        with self.pause(type_url):
            outcome = sub.state.handle(resp, lambda u: self._apply(sub, u))
            self._after_response(sub, outcome)
            if outcome.send:
                self._queue(type_url)

    def _apply(self, sub: Subscription, update):
        with self.pause(*T.PAUSED_WHILE_APPLYING.get(sub.type_url, ())):
            return sub.handler.apply(update)

    def _after_response(self, sub: Subscription, outcome) -> None:
        if outcome.error is None:
            if outcome.send:
                sub.accepted += 1
            self._cancel_fetch_timers(sub, outcome.names)
            return
        sub.rejected += 1
        log.warning("xDS: %s update rejected: %s", T.short(sub.type_url), outcome.error)
        # Every watch of the type hears onConfigUpdateFailed(UpdateRejected), which ends its
        # initial fetch wait.
        self._cancel_fetch_timers(sub, None)
        sub.handler.on_failure(Failure(REJECTED, sub.type_url, (), outcome.error))

    def take_requests(self) -> list:
        out, self._outbox = self._outbox, []
        return out

    # ------------------------------------------------------------------ request production

    def _node(self):
        if self._first_request or not self.node_on_first_message_only:
            self._first_request = False
            return self.node
        return None

    def _emit(self, req) -> None:
        self._outbox.append(req)
        if self.wakeup is not None:
            self.wakeup()

    def _queue(self, type_url: str) -> None:
        """SotW ``queueDiscoveryRequest``: dropped without a stream, held while paused."""
        if not self.stream_up:
            return
        if self.paused(type_url):
            self._pending.add(type_url)
            return
        self._emit(self.subscriptions[type_url].state.request(self._node()))

    def _try_send(self) -> None:
        """Delta ``trySendDiscoveryRequests``: ACKs first, then interest in subscription order."""
        if not self.stream_up:
            return
        while True:
            ack = next((a for a in self._acks if not self.paused(a.type_url)), None)
            if ack is not None:
                self._acks.remove(ack)
                state = self.subscriptions[ack.type_url].state
                self._emit(state.request(ack, self._node()))
                continue
            sub = next((s for t, s in self.subscriptions.items()
                        if s.state.update_pending() and not self.paused(t)), None)
            if sub is None:
                return
            self._emit(sub.state.request(None, self._node()))

    # ------------------------------------------------------------------ timers

    def _timeout_for(self, type_url: str) -> float | None:
        t = self._fetch_timeout
        if isinstance(t, dict):
            t = t.get(type_url, DEFAULT_INITIAL_FETCH_TIMEOUT)
        return t or None

    def _arm_fetch_timer(self, sub: Subscription, name) -> None:
        """``GrpcSubscriptionImpl::start``: each watch waits at most initial_fetch_timeout for
        its first update (one watch for a wildcard type, one per name for named types)."""
        timeout = self._timeout_for(sub.type_url)
        if name is not None and (sub.type_url, name) in self.name_timeouts:
            timeout = self.name_timeouts[(sub.type_url, name)] or None
        if timeout is None or name in sub.fetch_timers:
            return
        sub.fetch_timers[name] = self.clock.call_later(
            timeout, self._on_fetch_timeout, sub.type_url, name)

    def set_fetch_timeout(self, type_url: str, name: str, seconds: float) -> None:
        """The initial fetch timeout of one named watch (0: none), set before it is watched."""
        self.name_timeouts[(type_url, name)] = seconds

    def _cancel_fetch_timers(self, sub: Subscription, names) -> None:
        for key in list(sub.fetch_timers):
            if names is None or key is None or key in names:
                sub.fetch_timers.pop(key).cancel()

    def _on_fetch_timeout(self, type_url: str, name) -> None:
        sub = self.subscriptions.get(type_url)
        if sub is None or sub.fetch_timers.pop(name, None) is None:
            return
        sub.fetch_timeouts += 1
        log.warning("xDS: initial fetch timed out for %s%s", type_url,
                    f" ({name})" if name else "")
        sub.handler.on_failure(Failure(FETCH_TIMEOUT, type_url, (name,) if name else ()))

    def _on_ttl_expired(self, type_url: str, names) -> None:
        sub = self.subscriptions.get(type_url)
        if sub is None:
            return
        update = sub.state.expire(names)
        if update is not None:
            errors = sub.handler.apply(update)
            if errors:
                log.warning("xDS: removing expired %s resources: %s", T.short(type_url), errors)

    # ------------------------------------------------------------------ introspection

    def version(self, type_url: str) -> str:
        sub = self.subscriptions.get(type_url)
        if sub is None:
            return ""
        return sub.state.system_version_info if self.delta else sub.state.version_info

    def __repr__(self) -> str:
        kind = "delta" if self.delta else "sotw"
        subs = ", ".join(T.short(t) for t in self.subscriptions)
        return (f"<AdsMux {kind} [{subs}] stream={'up' if self.stream_up else 'down'} "
                f"queued={len(self._outbox)}>")


class _Resume(contextlib.AbstractContextManager):
    """Envoy's ``ScopedResume``: resumes once, explicitly or at the end of a ``with``."""

    def __init__(self, mux: AdsMux, type_urls):
        self._mux = mux
        self._types = type_urls
        self._done = False

    def resume(self) -> None:
        if not self._done:
            self._done = True
            self._mux._resume(self._types)

    def __exit__(self, *exc):
        self.resume()
        return False
