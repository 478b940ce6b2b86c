"""The listener manager: the server's listeners (``listener/active.py``), bound and served at
start-up (a bind failure stops start-up with the address in the error), added, replaced and
removed over LDS (make-before-break, old versions draining), and the ``use_original_dst``
hand-off index by address.
"""

from __future__ import annotations

import logging

from meshproxy.http.hcm_config import HcmStats
from meshproxy.listener.active import ActiveListener, BindError
from meshproxy.listener.addresses import handoff_keys
from meshproxy.listener.config import WORKER_ONLY, ListenerHttpStats, unchanged_chain_connections
from meshproxy.network.tcp_proxy import TcpStats
from meshproxy.stats import stat_block

log = logging.getLogger("meshproxy.config")

ListenerManagerStats = stat_block(
    "ListenerManagerStats",
    counters=("listener_added", "listener_modified", "listener_removed", "listener_stopped",
              "listener_create_success", "listener_create_failure", "listener_in_place_updated"),
    gauges=("total_listeners_warming", "total_listeners_active", "total_listeners_draining",
            "total_filter_chains_draining", "workers_started", "workers_pinned"),
)


class ListenerManager:
    def __init__(self, ctx, store):
        self.ctx = ctx
        self.store = store
        self.listeners: dict[str, ActiveListener] = {}
        self.draining: list[ActiveListener] = []   # old versions finishing their connections
        self._by_address: dict[tuple, ActiveListener] = {}
        self.stats = ListenerManagerStats()
        self.stats.mark_used("total_listeners_warming", "total_listeners_active",
                             "workers_started")
        store.register("listener_manager.", self.stats)

    def find_handoff(self, addr, origin):
        """The listener a ``use_original_dst`` listener hands a connection to (Envoy's
        ``getBalancedHandlerByAddress``): the one with exactly ``IP:port`` among its addresses
        (main or additional), else the one with the wildcard of that family on that port;
        None keeps it on ``origin`` (so a connection addressed to the catch-all itself cannot
        loop)."""
        if not isinstance(addr, tuple):
            return None
        ip, port = addr[0], addr[1]
        by_address = self._by_address
        target = by_address.get((ip, port))
        if target is None:
            target = by_address.get(("::" if ":" in ip else "0.0.0.0", port))
        return None if target is origin else target

    def _index_addresses(self) -> None:
        """Envoy's ``tcp_listener_map_by_address_``, filled listener by listener: each address
        as bound; a dual-stack (``ipv4_compat``) IPv6 address also under its IPv4 form, where
        ``::`` yields ``0.0.0.0`` only to a port no IPv4 wildcard listener has."""
        self._by_address = {}
        for al in self.listeners.values():
            self._index_one(al)

    def _index_one(self, al) -> None:
        """Add one listener to the index, as the last one filled (a listener added while
        running: re-indexing them all per listener made a 1000-listener LDS push quadratic,
        benchmarks/xds_push.py)."""
        index = self._by_address
        for la, (addr, unix) in zip(al.config.addresses, al.local_addresses()):
            for key, compat in handoff_keys(la, None if unix else addr):
                if compat and key[0] == "0.0.0.0" and key in index:
                    continue
                index[key] = al

    def add(self, config, previous: ActiveListener | None = None) -> ActiveListener:
        """``previous``: the version this one replaces; its stats carry on (Envoy's listener
        and HCM scopes are named, so an updated listener keeps counting where it was)."""
        al = ActiveListener(config, self.ctx)
        per_listener_http: dict[str, object] = {}
        prior: dict = {}
        if previous is not None:
            al.stats = previous.stats
            for chain in previous.config.all_chains():
                key = (chain.kind, chain.config.stat_prefix)
                prior.setdefault(key, chain.config.stats)
                lhs = getattr(chain, "listener_http_stats", None)
                if lhs is not None:
                    per_listener_http.setdefault(chain.config.stat_prefix, lhs)
        for chain in config.all_chains():
            chain.ctx = self.ctx
            cfg = chain.config
            if cfg.stats is None:
                cfg.stats = prior.get((chain.kind, cfg.stat_prefix))
            if cfg.stats is None:
                if chain.kind == "http":
                    cfg.stats = HcmStats()
                    cfg.stats.mark_used("downstream_cx_active", "downstream_rq_active",
                                        "downstream_cx_http1_active")
                    self.store.register(f"http.{cfg.stat_prefix}.", cfg.stats)
                else:
                    cfg.stats = TcpStats()
                    self.store.register(f"tcp.{cfg.stat_prefix}.", cfg.stats)
            if chain.kind == "http":
                for f in cfg.filters:
                    for prefix, block in f.stats_blocks(f"http.{cfg.stat_prefix}."):
                        self.store.register(prefix, block)
                lhs = per_listener_http.get(cfg.stat_prefix)
                if lhs is None:
                    lhs = per_listener_http[cfg.stat_prefix] = ListenerHttpStats()
                    self.store.register(f"listener.{config.stat_name}.http.{cfg.stat_prefix}.",
                                        lhs)
                chain.listener_http_stats = lhs
        self.listeners[config.name] = al
        if previous is None:
            self.store.register(f"listener.{config.stat_name}.", al.stats, exclude=WORKER_ONLY)
            self.stats.listener_added += 1
        return al

    async def replace(self, config, drain_time: float, on_drained=None) -> ActiveListener:
        """An update of a live listener, make-before-break (Envoy's listener update): the new
        version takes over the old one's listen sockets when its addresses are the same (else
        binds its own) and serves new connections at once; the old version stops accepting and
        drains - HTTP/1 connections close after their next response - for ``drain_time``
        seconds, then what is left is closed and ``on_drained(name)`` runs."""
        old = self.listeners[config.name]
        same = [(a.address, a.unix) for a in old.config.addresses] == \
            [(a.address, a.unix) for a in config.addresses]
        new = self.add(config, previous=old)
        try:
            if config.bind_to_port:
                if same and old.socks:
                    new.socks = [s.dup() for s in old.socks]
                else:
                    old.stop_accepting()
                    old.close_sockets()
                    new.bind()
                await new.start()
        except (BindError, OSError) as exc:
            log.error("listener '%s' update failed: %s", config.name, exc)
            self.listeners[config.name] = old
            self.stats.listener_create_failure += 1
            return old
        self.stats.listener_modified += 1
        self.stats.listener_create_success += 1
        kept = unchanged_chain_connections(old, new)
        if kept is not None:    # an in-place filter chain update: those connections stay
            self.stats.listener_in_place_updated += 1
            for conn in kept:
                conn.move_to(new)
        self._retire(old, drain_time, on_drained)
        self._index_addresses()
        return new

    def remove(self, name: str, drain_time: float, on_drained=None) -> None:
        """A listener removed over LDS: it stops accepting and drains as in ``replace``."""
        old = self.listeners.pop(name, None)
        if old is None:
            return
        self.stats.listener_removed += 1
        self._retire(old, drain_time, on_drained)
        self._index_addresses()
        self.stats.total_listeners_active = len(self.listeners)

    def _retire(self, old: ActiveListener, drain_time: float, on_drained) -> None:
        old.stop_accepting()
        old.close_sockets()
        old.start_drain()
        self.draining.append(old)
        self.stats.total_listeners_draining = len(self.draining)
        self.stats.mark_used("total_listeners_draining")

        def done():
            for conn in list(old.connections):
                conn.close(flush=True)
            if old in self.draining:
                self.draining.remove(old)
            self.stats.total_listeners_draining = len(self.draining)
            if on_drained is not None:
                on_drained(old.config.name)
        if old.connections:
            self.ctx.loop.call_later(drain_time, done)
        else:
            done()

    async def start_all(self) -> None:
        """Bind every listener (all or nothing), then serve them."""
        bound = []
        try:
            for al in self.listeners.values():
                if al.config.bind_to_port:
                    al.bind()
                    bound.append(al)
        except BindError:
            for al in bound:
                al.close_sockets()
            self.stats.listener_create_failure += 1
            raise
        for al in bound:
            failure = al.apply_listening_options()
            if failure is not None:
                # Envoy: "final pre-worker listener init ... failed"; the listener is removed
                # and the server goes on without it.
                log.error("final pre-worker listener init for listener '%s' failed: %s",
                          al.config.name, failure)
                al.close_sockets()
                del self.listeners[al.config.name]
                self.stats.listener_create_failure += 1
                self.stats.listener_removed += 1
                continue
            await al.start()
            self.stats.listener_create_success += 1
        # Listeners that do not bind are added to the worker too (Envoy counts them; checked
        # against Envoy 1.40 with an xDS bind_to_port: false listener).
        self.stats.listener_create_success += sum(
            1 for al in self.listeners.values() if not al.config.bind_to_port)
        self._index_addresses()
        self.stats.total_listeners_active = len(self.listeners)
        self.stats.workers_started = 1

    async def start_one(self, config) -> ActiveListener | None:
        """Add, bind and serve one listener while the server runs (one that arrived over
        LDS). A bind failure is logged and counted, and the listener dropped, as Envoy does
        with a listener it cannot create."""
        al = self.add(config)
        if config.bind_to_port:
            try:
                al.bind()
            except BindError as exc:
                log.error("listener '%s' failed to bind: %s", config.name, exc)
                del self.listeners[config.name]
                self.stats.listener_create_failure += 1
                self.stats.listener_removed += 1
                return None
            failure = al.apply_listening_options()
            if failure is not None:
                log.error("listener '%s': %s", config.name, failure)
                al.close_sockets()
                del self.listeners[config.name]
                self.stats.listener_create_failure += 1
                self.stats.listener_removed += 1
                return None
            await al.start()
        self.stats.listener_create_success += 1
        if next(reversed(self.listeners.values()), None) is al:
            self._index_one(al)
        else:   # others were added while this one started: fill in their order
            self._index_addresses()
        self.stats.total_listeners_active = len(self.listeners)
        return al

    def drain(self, inbound_only: bool = False) -> None:
        for al in self.listeners.values():
            if inbound_only and al.config.traffic_direction != 1:  # INBOUND
                continue
            al.start_drain()
        self.stats.total_listeners_draining = sum(1 for a in self.listeners.values()
                                                  if a.draining)
        self.stats.mark_used("total_listeners_draining")

    def stop_accepting(self, inbound_only: bool = False) -> None:
        for al in self.listeners.values():
            if inbound_only and al.config.traffic_direction != 1:
                continue
            al.stop_accepting()

    def bound_addresses(self) -> set:
        """(ip, port) of every bound listener socket (every address), as configured and as
        bound."""
        out = set()
        for al in self.listeners.values():
            if not al.socks:
                continue
            for la, (addr, unix) in zip(al.config.addresses, al.local_addresses()):
                if not unix:
                    out.add(tuple(la.address))
                    out.add(tuple(addr))
        return out

    def active_connections(self) -> int:
        return sum(len(al.connections) for al in self.listeners.values())

    def __repr__(self):
        return f"<ListenerManager {len(self.listeners)} listeners>"
