"""The downstream connection: the only layer that touches an accepted socket.

On accept it runs the listener's listener filters: ``original_dst`` restores the destination
that iptables rewrote, a ``use_original_dst`` listener hands the connection to the listener of
that destination (Envoy: exact ``IP:port``, else ``0.0.0.0:port``, else it stays), and the
inspectors (``tls_inspector``, ``http_inspector``) read the first bytes — kept and replayed to
the chosen filter — until they can decide, or ``listener_filters_timeout`` passes. Then the
filter chain is selected and its network filter created.

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

from meshproxy.listener import inspectors
from meshproxy.network.batch import BatchedWriter, batch_for
from meshproxy.listener.chain_match import conn_info
from meshproxy.listener.listener_filters import HTTP_INSPECTOR, TLS_INSPECTOR
from meshproxy.network.original_dst import original_dst

log = logging.getLogger("meshproxy.connection")

_LINGER_RST = struct.pack("ii", 1, 0)


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
                 "read_disabled", "closed", "close_reason", "write_paused", "id", "pending",
                 "inspect", "server_name", "transport_protocol", "alpn", "inspect_timer",
                 "filter_chain", "out")

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
        self.pending = None          # bytes read while listener filters inspect
        self.inspect = ()            # inspectors still undecided
        self.server_name = ""
        self.transport_protocol = ""
        self.alpn = ()
        self.inspect_timer = None
        self.out = None
        DownstreamConnection._next_id += 1
        self.id = DownstreamConnection._next_id

    # ---------------------------------------------------------------- accept path

    def connection_made(self, transport):
        self.transport = transport
        self.out = BatchedWriter(transport, batch_for(self.listener.ctx.loop))
        self.remote_address = transport.get_extra_info("peername")
        self.local_address = transport.get_extra_info("sockname")
        listener = self.listener
        cfg = listener.config
        if cfg.restores_original_dst:
            sock = transport.get_extra_info("socket")
            od = original_dst(sock) if sock is not None else None
            if od is not None:
                self.local_address = od
        if cfg.use_original_dst:
            target = listener.ctx.listener_manager.find_handoff(self.local_address, listener)
            if target is not None:
                # Envoy counts the connection on the listener that serves it.
                self.listener = listener = target
                cfg = target.config
        limit = cfg.buffer_limit
        transport.set_write_buffer_limits(high=limit, low=limit // 2)
        listener.on_connection_open(self)
        dst_port = self.local_address[1] if isinstance(self.local_address, tuple) else 0
        self.inspect = cfg.inspectors_for(dst_port) if cfg.listener_filters else ()
        if self.inspect:
            self.pending = bytearray()
            listener.stats.downstream_pre_cx_active += 1
            self.inspect_timer = listener.ctx.loop.call_later(cfg.filters_timeout,
                                                              self._inspect_timeout)
            return
        self._start_filter_chain()

    def _start_filter_chain(self) -> None:
        listener = self.listener
        cfg = listener.config
        info = None
        if cfg.matcher is not None:
            info = conn_info(self.local_address, self.remote_address, self.server_name,
                             self.transport_protocol, self.alpn)
        chain = cfg.select_filter_chain(info)
        if chain is None:
            # Envoy: no filter chain matched -> close (listener.<x>.no_filter_chain_match).
            listener.stats.no_filter_chain_match += 1
            self.close(flush=False)
            return
        self.filter_chain = chain
        self.filter = chain.create_filter(self)
        pending = self.pending
        self.pending = None
        if pending and self.filter is not None and not self.closed:
            self.filter.on_data(bytes(pending), False)

    def _run_inspectors(self) -> None:
        data = bytes(self.pending)
        while self.inspect:
            kind = self.inspect[0]
            if kind == TLS_INSPECTOR:
                r = inspectors.inspect_tls(data)
                if r is inspectors.NEED_MORE:
                    return
                stats = self.listener.ctx.inspector_stats
                if r.too_large:
                    stats.tls_inspector__client_hello_too_large += 1
                    return self._abandon()
                if r.is_tls:
                    stats.tls_inspector__tls_found += 1
                    self.transport_protocol = "tls"
                    self.server_name = r.server_name
                    self.alpn = r.alpn
                    stats.tls_inspector__sni_found += bool(r.server_name)
                    stats.tls_inspector__sni_not_found += not r.server_name
                    stats.tls_inspector__alpn_found += bool(r.alpn)
                    stats.tls_inspector__alpn_not_found += not r.alpn
                else:
                    stats.tls_inspector__tls_not_found += 1
            elif kind == HTTP_INSPECTOR:
                stats = self.listener.ctx.inspector_stats
                if self.transport_protocol == "tls":
                    pass  # Envoy's http_inspector leaves TLS connections alone
                else:
                    r = inspectors.inspect_http(data)
                    if r is inspectors.NEED_MORE:
                        return
                    if r is None:
                        stats.http_inspector__http_not_found += 1
                    else:
                        self.alpn = (r,)
                        if r == "h2c":
                            stats.http_inspector__http2_found += 1
                        elif r == "http/1.0":
                            stats.http_inspector__http10_found += 1
                        else:
                            stats.http_inspector__http11_found += 1
            self.inspect = self.inspect[1:]
        self._inspection_done()

    def _inspection_done(self) -> None:
        if self.inspect_timer is not None:
            self.inspect_timer.cancel()
            self.inspect_timer = None
        self.inspect = ()
        self.listener.stats.downstream_pre_cx_active -= 1
        self._start_filter_chain()

    def _inspect_timeout(self) -> None:
        self.inspect_timer = None
        if not self.inspect or self.closed:
            return
        self.listener.stats.downstream_pre_cx_timeout += 1
        if self.listener.config.continue_on_timeout:
            self._inspection_done()
        else:
            self._abandon()

    def _abandon(self) -> None:
        self.inspect = ()
        if self.inspect_timer is not None:
            self.inspect_timer.cancel()
            self.inspect_timer = None
        self.listener.stats.downstream_pre_cx_active -= 1
        self.close(flush=False)

    # ---------------------------------------------------------------- transport callbacks

    def data_received(self, data):
        b = self.out.batch
        b.depth += 1
        try:
            f = self.filter
            if f is not None:
                f.on_data(data, False)
            elif self.inspect:
                self.pending += data
                self._run_inspectors()
        finally:
            b.depth -= 1
            if not b.depth and b.pending:
                b.flush_all()

    def eof_received(self):
        f = self.filter
        if f is not None:
            return f.on_data(b"", True)
        if self.inspect:
            # The peer gave up before the listener filters could decide.
            self.listener.stats.downstream_listener_filter_remote_close += 1
            self._abandon()
        return False

    def connection_lost(self, exc):
        self.closed = True
        if self.close_reason is None:
            self.close_reason = "reset" if isinstance(exc, ConnectionResetError) else "remote"
        if self.inspect_timer is not None:
            self.inspect_timer.cancel()
            self.inspect_timer = None
            if self.inspect:
                self.inspect = ()
                self.listener.stats.downstream_pre_cx_active -= 1
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
