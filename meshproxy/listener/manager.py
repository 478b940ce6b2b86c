"""The listener manager: binds listener sockets and accepts connections onto them.

Sockets are bound with SO_REUSEADDR (and SO_REUSEPORT unless ``enable_reuse_port`` is false),
as Envoy binds them, before the loop serves them; a bind failure stops start-up with the
listener's name in the error.
"""

from __future__ import annotations

import logging
import socket

from meshproxy.http.hcm_config import HcmStats
from meshproxy.listener.config import WORKER_ONLY, ListenerHttpStats, ListenerStats
from meshproxy.network.connection import DownstreamConnection
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


class BindError(Exception):
    pass


class ActiveListener:
    """A bound listener and its open connections."""

    def __init__(self, config, ctx):
        self.config = config
        self.ctx = ctx
        self.stats = ListenerStats()
        self.stats.mark_used("downstream_cx_active", "downstream_pre_cx_active",
                             "worker_0.downstream_cx_active", "main_thread.downstream_cx_active")
        self.connections: set = set()
        self.server = None
        self.sock = None
        self.draining = False

    def on_connection_open(self, conn) -> None:
        """A filter chain was chosen: Envoy's ``ActiveTcpConnection`` (sockets still in the
        listener-filter stage, or closed there, are not connections in its stats)."""
        self.connections.add(conn)
        st = self.stats
        st.downstream_cx_total += 1
        st.downstream_cx_active += 1
        # One event loop: the per-thread copies equal the totals (worker_0 for data-plane
        # listeners, main_thread for admin; the other copy is not registered).
        st.worker_0__downstream_cx_total += 1
        st.worker_0__downstream_cx_active += 1
        st.main_thread__downstream_cx_total += 1
        st.main_thread__downstream_cx_active += 1

    def on_connection_close(self, conn) -> None:
        self.connections.discard(conn)
        if not conn.counted:
            return
        conn.counted = False
        st = self.stats
        st.downstream_cx_active -= 1
        st.downstream_cx_destroy += 1
        st.worker_0__downstream_cx_active -= 1
        st.main_thread__downstream_cx_active -= 1

    def bind(self) -> None:
        cfg = self.config
        try:
            if cfg.unix:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(cfg.address)
            else:
                host, port = cfg.address
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if cfg.reuse_port and hasattr(socket, "SO_REUSEPORT"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    # Envoy binds IPv6 only, unless the address sets ipv4_compat.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                    0 if cfg.ipv4_compat else 1)
                if cfg.transparent:
                    sock.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
                if cfg.freebind:
                    sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
                sock.bind((host, port))
            sock.listen(cfg.backlog)
            sock.setblocking(False)
        except OSError as exc:
            raise BindError(f"cannot bind '{_addr_text(cfg)}': {exc.strerror or exc}") from None
        self.sock = sock

    @property
    def bound_address(self):
        return self.sock.getsockname() if self.sock is not None else None

    async def start(self) -> None:
        loop = self.ctx.loop
        self.server = await loop.create_server(lambda: DownstreamConnection(self), sock=self.sock)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def start_drain(self) -> None:
        """Stop taking new connections' requests gracefully: HTTP connections close after
        their current response (``Connection: close``); idle ones close now."""
        self.draining = True
        for conn in list(self.connections):
            f = conn.filter
            if f is not None and hasattr(f, "start_drain"):
                f.start_drain()

    def __repr__(self):
        return f"<ActiveListener {self.config.name} {len(self.connections)} connections>"


def _addr_text(cfg) -> str:
    if cfg.unix:
        return str(cfg.address)
    h, p = cfg.address
    return f"[{h}]:{p}" if ":" in h else f"{h}:{p}"


class ListenerManager:
    def __init__(self, ctx, store):
        self.ctx = ctx
        self.store = store
        self.listeners: dict[str, ActiveListener] = {}
        self._by_address: dict[tuple, ActiveListener] = {}
        self.stats = ListenerManagerStats()
        self.stats.mark_used("total_listeners_warming", "total_listeners_active",
                             "workers_started")
        store.register("listener_manager.", self.stats)

    def find_handoff(self, addr, origin):
        """The listener a ``use_original_dst`` listener hands a connection to (Envoy's
        ``getBalancedHandlerByAddress``): the one configured on exactly ``IP:port``, else on
        the wildcard address with that port; None keeps it on ``origin`` (so a connection
        addressed to the catch-all itself cannot loop)."""
        if not isinstance(addr, tuple):
            return None
        ip, port = addr[0], addr[1]
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]
        for key in ((ip, port), ("::" if ":" in ip else "0.0.0.0", port)):
            target = self._by_address.get(key)
            if target is not None:
                return None if target is origin else target
        return None

    def add(self, config) -> ActiveListener:
        al = ActiveListener(config, self.ctx)
        per_listener_http: dict[str, object] = {}
        if not config.unix:
            self._by_address.setdefault((config.address[0], config.address[1]), al)
        for chain in config.all_chains():
            chain.ctx = self.ctx
            cfg = chain.config
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
                lhs = per_listener_http.get(cfg.stat_prefix)
                if lhs is None:
                    lhs = per_listener_http[cfg.stat_prefix] = ListenerHttpStats()
                    self.store.register(f"listener.{config.stat_name}.http.{cfg.stat_prefix}.",
                                        lhs)
                chain.listener_http_stats = lhs
        self.listeners[config.name] = al
        self.store.register(f"listener.{config.stat_name}.", al.stats, exclude=WORKER_ONLY)
        self.stats.listener_added += 1
        return al

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
                al.sock.close()
            self.stats.listener_create_failure += 1
            raise
        for al in bound:
            await al.start()
            self.stats.listener_create_success += 1
        self.stats.total_listeners_active = len(self.listeners)
        self.stats.workers_started = 1

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
        """(ip, port) of every bound listener socket, as configured and as bound."""
        out = set()
        for al in self.listeners.values():
            if al.sock is not None and not al.config.unix:
                out.add(tuple(al.config.address))
                out.add(tuple(al.sock.getsockname()[:2]))
        return out

    def active_connections(self) -> int:
        return sum(len(al.connections) for al in self.listeners.values())

    def __repr__(self):
        return f"<ListenerManager {len(self.listeners)} listeners>"
