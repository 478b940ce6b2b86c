"""The downstream connection: the only layer that touches an accepted socket.

On accept, a listener with listener filters runs them first (``listener.pre_connection``,
Envoy's ``ActiveTcpSocket``: ``original_dst``, the inspectors, the timeout, the hand-off of a
``use_original_dst`` listener); then the filter chain is selected and its network filter
created, and only then is it a connection in the listener's stats (``downstream_cx_total``).

Afterwards it turns transport callbacks into calls on the network filter (``on_data``,
``on_close``, ``on_write_paused``) and gives filters ``write``, ``close`` and
reference-counted ``read_disable`` (Envoy's ``readDisable``: several parties may pause reading;
reading resumes when the last one lets go). Write backpressure uses the transport's buffer
limits set from ``per_connection_buffer_limit_bytes`` (STYLE.md §10).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

from meshproxy.listener.chain_match import conn_info
from meshproxy.listener.pre_connection import PreConnection
from meshproxy.network.batch import BatchedWriter, batch_for

log = logging.getLogger("meshproxy.connection")

_LINGER_RST = struct.pack("ii", 1, 0)


def _unmap(addr):
    ip = addr[0]
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:], addr[1]
    return addr


def reset_transport(transport) -> None:
    """Close with RST rather than FIN (SO_LINGER 0): how Envoy passes a reset on."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
    transport.abort()


class DownstreamConnection(asyncio.Protocol):
    __slots__ = ("listener", "transport", "filter", "remote_address", "local_address",
                 "read_disabled", "closed", "close_reason", "write_paused", "id", "pre",
                 "filter_chain", "out", "counted")

    _next_id = 0

    def __init__(self, listener):
        self.listener = listener
        self.transport = None
        self.filter = None
        self.filter_chain = None
        self.remote_address = None
        self.local_address = None
        self.read_disabled = 0
        self.closed = False
        self.close_reason = None
        self.write_paused = False
        self.pre = None              # listener.pre_connection.PreConnection while filters run
        self.out = None
        self.counted = False         # a filter chain was chosen: a connection in Envoy's stats
        DownstreamConnection._next_id += 1
        self.id = DownstreamConnection._next_id

    # ---------------------------------------------------------------- accept path

    def connection_made(self, transport):
        self.transport = transport
        self.out = BatchedWriter(transport, batch_for(self.listener.ctx.loop))
        remote = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if len(local) == 4 and local[0].startswith("::ffff:"):
            # An IPv4 connection on a dual-stack (ipv4_compat) socket: Envoy reports both ends
            # as IPv4 (addressFromSockAddr with v6only false), for filter chain matching,
            # original_dst hand-off and everything after.
            local = _unmap(local)
            remote = _unmap(remote)
        self.remote_address = remote
        self.local_address = local
        listener = self.listener
        listener.connections.add(self)
        if listener.config.listener_filters:
            PreConnection(self, listener).start()
        else:
            self.start_chain(None)

    def start_chain(self, pre) -> None:
        """Pick the filter chain (after the listener filters, ``pre``) and create its network
        filter; the bytes the inspectors read are its first data."""
        listener = self.listener
        cfg = listener.config
        info = None
        if cfg.matcher is not None:
            if pre is None:
                info = conn_info(self.local_address, self.remote_address)
            else:
                info = conn_info(self.local_address, self.remote_address,
                                 pre.server_name.lower(), pre.transport_protocol, pre.alpn)
        chain = cfg.select_filter_chain(info)
        lost = pre is not None and pre.lost
        if chain is None:
            # Envoy: no filter chain matched -> close (listener.<x>.no_filter_chain_match);
            # the socket closes with the inspected bytes unread, so the client sees an RST.
            listener.stats.no_filter_chain_match += 1
            if lost:
                self.release()
            else:
                self.abort(rst=pre is not None and bool(pre.data))
            return
        if chain.tls_unsupported:
            # A TLS filter chain (listener/config.py): closed, never served in plain text.
            if lost:
                self.release()
            else:
                self.abort(rst=pre is not None and bool(pre.data))
            return
        limit = cfg.buffer_limit
        if not lost:
            self.transport.set_write_buffer_limits(high=limit, low=limit // 2)
        self.filter_chain = chain
        self.counted = True
        listener.on_connection_open(self)
        self.filter = chain.create_filter(self)
        data = pre.data if pre is not None else None
        if data and self.filter is not None and (lost or not self.closed):
            self.filter.on_data(bytes(data), False)
        if lost:
            # The client reset the connection while Envoy was still peeking: the connection
            # it creates on the timeout sees the reset at once.
            listener.ctx.loop.call_soon(self._lost_after_chain)

    def _lost_after_chain(self) -> None:
        f = self.filter
        self.filter = None
        if f is not None:
            f.on_close("reset")
        self.release()

    def move_to(self, listener) -> None:
        """Hand-off to the listener of the restored destination (``use_original_dst``)."""
        self.listener.connections.discard(self)
        self.listener = listener
        listener.connections.add(self)

    def abort(self, rst: bool) -> None:
        """Close during the listener-filter stage: RST when bytes were read (Envoy never
        consumed them), else FIN."""
        if self.closed or self.transport is None:
            return
        self.close_reason = "local"
        if rst:
            reset_transport(self.transport)
        else:
            self.transport.abort()

    def release(self) -> None:
        """Forget a connection whose transport is already gone."""
        self.listener.on_connection_close(self)

    # ---------------------------------------------------------------- transport callbacks

    def data_received(self, data):
        b = self.out.batch
        b.depth += 1
        try:
            f = self.filter
            if f is not None:
                f.on_data(data, False)
            elif self.pre is not None:
                self.pre.on_data(data)
        finally:
            b.depth -= 1
            if not b.depth and b.pending:
                b.flush_all()

    def eof_received(self):
        f = self.filter
        if f is not None:
            return f.on_data(b"", True)
        if self.pre is not None:
            # The peer gave up before the listener filters could decide.
            self.pre.on_eof()
        return False

    def connection_lost(self, exc):
        self.closed = True
        if self.close_reason is None:
            self.close_reason = "reset" if isinstance(exc, ConnectionResetError) else "remote"
        if self.pre is not None:
            self.pre.on_lost(exc)
            return
        f = self.filter
        self.filter = None
        if f is not None:
            f.on_close(self.close_reason)
        self.listener.on_connection_close(self)

    def pause_writing(self):
        self.write_paused = True
        f = self.filter
        if f is not None:
            f.on_write_paused(True)

    def resume_writing(self):
        self.write_paused = False
        f = self.filter
        if f is not None:
            f.on_write_paused(False)

    # ---------------------------------------------------------------- filter API

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def read_disable(self, disable: bool) -> None:
        if disable:
            self.read_disabled += 1
            if self.read_disabled == 1 and not self.closed:
                self.transport.pause_reading()
        else:
            if self.read_disabled == 0:
                return
            self.read_disabled -= 1
            if self.read_disabled == 0 and not self.closed:
                self.transport.resume_reading()

    def close(self, flush: bool = True) -> None:
        """Close: after pending writes drain (``flush``), or at once (abort, RST)."""
        if self.closed:
            return
        if self.close_reason is None:
            self.close_reason = "local"
        t = self.transport
        if t is None:
            return
        if flush:
            self.out.flush()
            t.close()
        else:
            self.out.discard()
            t.abort()

    def reset(self) -> None:
        """Abort with RST (a reset passed on from the other side)."""
        if self.closed or self.transport is None:
            return
        if self.close_reason is None:
            self.close_reason = "local"
        self.out.discard()
        reset_transport(self.transport)

    def half_close(self) -> None:
        """Send FIN after pending writes (TCP half-close, for tcp_proxy)."""
        t = self.transport
        if t is not None and not self.closed and t.can_write_eof():
            self.out.flush()
            t.write_eof()

    def __repr__(self):
        return (f"<DownstreamConnection #{self.id} {self.remote_address} -> "
                f"{self.local_address}{' closed' if self.closed else ''}>")
