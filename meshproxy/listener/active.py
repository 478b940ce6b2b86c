"""A bound listener and its open connections (Envoy's ``ActiveTcpListener`` with its listen
socket factories).

One socket per listener address (``address`` and each of ``additional_addresses``), bound with
SO_REUSEADDR (and SO_REUSEPORT unless ``enable_reuse_port`` is false) and the address's socket
options, as Envoy binds them; connections from every socket of a listener are its own.
"""

from __future__ import annotations

import socket

from meshproxy.listener.addresses import (
    STATE_BOUND,
    STATE_LISTENING,
    STATE_PREBIND,
    address_text,
)
from meshproxy.listener.config import ListenerStats
from meshproxy.network.connection import DownstreamConnection


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
        self.servers: list = []
        self.socks: list = []
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
        """Bind one socket per address (main first), as Envoy creates one listen socket
        factory per address; if any fails, close the ones already bound."""
        cfg = self.config
        socks = []
        try:
            for la in cfg.addresses:
                socks.append(self._bind_one(la))
        except BindError:
            for s in socks:
                s.close()
            raise
        self.socks = socks

    def _bind_one(self, la):
        cfg = self.config
        sock = None
        try:
            if la.unix:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            else:
                host = la.address[0]
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if cfg.reuse_port and hasattr(socket, "SO_REUSEPORT"):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    # Envoy binds IPv6 only, unless the address sets ipv4_compat.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                    0 if la.ipv4_compat else 1)
                if cfg.transparent:
                    sock.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
                if cfg.freebind:
                    sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
            if not all(o.apply(sock) for o in la.options(STATE_PREBIND)):
                raise BindError("ListenSocket: Setting socket options failed")
            sock.bind(la.address)
            if not all(o.apply(sock) for o in la.options(STATE_BOUND)):
                raise BindError(f"{cfg.name}: Setting socket options failed")
            sock.listen(cfg.backlog)
            sock.setblocking(False)
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise BindError(f"cannot bind '{la.text}': {exc.strerror or exc}") from None
        except BindError:
            sock.close()
            raise
        return sock

    def apply_listening_options(self):
        """STATE_LISTENING socket options, after listen(); the text of the first failure
        (Envoy's ``doFinalPreWorkerInit``), else None."""
        for la, sock in zip(self.config.addresses, self.socks):
            if not all(o.apply(sock) for o in la.options(STATE_LISTENING)):
                text = la.text if la.unix else \
                    address_text((la.address[0], sock.getsockname()[1]), False)
                return f"cannot set post-listen socket option on socket: {text}"
        return None

    def close_sockets(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []

    @property
    def sock(self):
        return self.socks[0] if self.socks else None

    @property
    def bound_address(self):
        """Where the main address is bound (its real port when configured with port 0)."""
        return self.socks[0].getsockname() if self.socks else None

    def local_addresses(self) -> list:
        """(address, unix) of every address, as bound, else as configured (a listener that
        does not bind): what Envoy's socket factories report as ``localAddress()``."""
        out = []
        for i, la in enumerate(self.config.addresses):
            if la.unix or i >= len(self.socks):
                out.append((la.address, la.unix))
            else:
                out.append(((la.address[0], self.socks[i].getsockname()[1]), False))
        return out

    async def start(self) -> None:
        loop = self.ctx.loop
        for sock in self.socks:
            self.servers.append(await loop.create_server(lambda: DownstreamConnection(self),
                                                         sock=sock))

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()
        self.servers = []

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
