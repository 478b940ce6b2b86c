"""The downstream connection: the only layer that touches an accepted socket.

It turns transport callbacks into calls on the connection's network filter (``on_data``,
``on_close``, ``on_write_paused``), counts listener stats, and gives filters ``write``,
``close`` and reference-counted ``read_disable`` (Envoy's ``readDisable``: several parties may
pause reading; reading resumes when the last one lets go). Write backpressure uses the
transport's buffer limits set from ``per_connection_buffer_limit_bytes`` (STYLE.md §10).
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("meshproxy.connection")


class DownstreamConnection(asyncio.Protocol):
    __slots__ = ("listener", "transport", "filter", "remote_address", "local_address",
                 "read_disabled", "closed", "close_reason", "write_paused", "id")

    _next_id = 0

    def __init__(self, listener):
        self.listener = listener
        self.transport = None
        self.filter = None
        self.remote_address = None
        self.local_address = None
        self.read_disabled = 0
        self.closed = False
        self.close_reason = None
        self.write_paused = False
        DownstreamConnection._next_id += 1
        self.id = DownstreamConnection._next_id

    # ---------------------------------------------------------------- transport callbacks

    def connection_made(self, transport):
        self.transport = transport
        self.remote_address = transport.get_extra_info("peername")
        self.local_address = transport.get_extra_info("sockname")
        listener = self.listener
        limit = listener.config.buffer_limit
        transport.set_write_buffer_limits(high=limit, low=limit // 2)
        listener.on_connection_open(self)
        chain = listener.config.select_filter_chain(self)
        if chain is None:
            # Envoy: no filter chain matched -> close (listener.no_filter_chain_match).
            listener.stats.no_filter_chain_match += 1
            self.close(flush=False)
            return
        self.filter = chain.create_filter(self)

    def data_received(self, data):
        f = self.filter
        if f is not None:
            f.on_data(data, False)

    def eof_received(self):
        f = self.filter
        if f is not None:
            return f.on_data(b"", True)
        return False

    def connection_lost(self, exc):
        self.closed = True
        if self.close_reason is None:
            self.close_reason = "remote"
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
        self.transport.write(data)

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
            t.close()
        else:
            t.abort()

    def half_close(self) -> None:
        """Send FIN after pending writes (TCP half-close, for tcp_proxy)."""
        t = self.transport
        if t is not None and not self.closed and t.can_write_eof():
            t.write_eof()

    def __repr__(self):
        return (f"<DownstreamConnection #{self.id} {self.remote_address} -> "
                f"{self.local_address}{' closed' if self.closed else ''}>")
