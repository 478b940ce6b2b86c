"""The listener-filter stage of an accepted connection: Envoy's ``ActiveTcpSocket``
(``source/common/listener_manager/active_tcp_socket.cc``).

The listener filters run in order. ``original_dst`` restores the destination iptables rewrote
(only when it differs from the local address, ``original_dst.cc``); the inspectors read the
first bytes (kept here and replayed to the network filter) until they decide. Each filter's
``filter_disabled`` predicate is evaluated when the filter is reached, against the (possibly
restored) destination port. What Envoy 1.40 does at this stage, and so what this does:

- ``listener_filters_timeout`` (0 disables it) runs from accept until the filters finish:
  ``downstream_pre_cx_timeout``, then the connection closes, or with
  ``continue_on_listener_filters_timeout`` goes on to filter-chain matching with what has been
  detected so far;
- a FIN while a filter waits for bytes is ``downstream_listener_filter_remote_close`` (Envoy's
  listener filter buffer checks for ``Closed`` before it peeks, so a FIN that arrives with the
  bytes wins even over bytes that would have completed the inspection); an error reading before any byte
  arrived (an RST) is ``downstream_listener_filter_error``; an RST after bytes goes unnoticed
  until the timeout, since Envoy only peeks;
- a socket closed at this stage is reset (RST) when the client's bytes were never consumed,
  as the kernel does for Envoy, which only ever peeked them;
- none of this counts ``downstream_cx_total``: a connection exists only once a filter chain is
  chosen (``ActiveTcpConnection``);
- after the filters, a ``use_original_dst`` listener hands a connection whose destination was
  restored to the listener of that destination (``ActiveTcpSocket::newConnection``), which runs
  its own listener filters with its own timeout.
"""

from __future__ import annotations

import socket

from meshproxy.listener.http_inspect import READ_ERROR, inspect_http
from meshproxy.listener.listener_filters import ORIGINAL_DST, TLS_INSPECTOR
from meshproxy.listener.tls_inspect import NEED_MORE, inspect_tls
from meshproxy.network.original_dst import original_dst

WAIT, NEXT, CLOSE = 0, 1, 2
_TCP_CLOSE_WAIT = 8          # include/net/tcp_states.h


class PreConnection:
    __slots__ = ("conn", "listener", "index", "data", "timer", "restored", "server_name",
                 "transport_protocol", "alpn", "lost", "done")

    def __init__(self, conn, listener, data=None):
        self.conn = conn
        self.listener = listener
        self.index = 0
        self.data = data if data is not None else bytearray()
        self.timer = None
        self.restored = False
        self.server_name = ""
        self.transport_protocol = ""
        self.alpn = ()
        self.lost = False
        self.done = False

    def start(self) -> None:
        """Run the filters; if they cannot finish now, wait for bytes under the timeout."""
        listener = self.listener
        listener.stats.downstream_pre_cx_active += 1
        self.conn.pre = self
        self._run()
        if not self.done:
            timeout = listener.config.filters_timeout
            if timeout:
                self.timer = listener.ctx.loop.call_later(timeout, self._timeout)
            elif self.lost:
                self._close()       # handed off after a reset, and nothing would end it

    # ---------------------------------------------------------------- events

    def on_data(self, data: bytes) -> None:
        self.data += data
        if _peer_closed(self.conn.transport):
            # Envoy's listener filter buffer sees the FIN (``Closed``) before it peeks.
            self.on_eof()
            return
        self._run()

    def on_eof(self) -> None:
        self.listener.stats.downstream_listener_filter_remote_close += 1
        self._close()

    def on_lost(self, exc) -> None:
        """The transport is gone (our own close, or the peer's RST)."""
        if exc is not None and self.data:
            if self.timer is not None:
                # Envoy only peeks: a reset behind unread bytes goes unseen until the timeout.
                self.lost = True
                return
            # Without a timeout Envoy would hold such a socket forever: just forget it.
        elif exc is not None:
            self.listener.stats.downstream_listener_filter_error += 1
        self._finish()
        self.conn.release()

    def _timeout(self) -> None:
        self.timer = None
        if self.done:
            return
        listener = self.listener
        listener.stats.downstream_pre_cx_timeout += 1
        if listener.config.continue_on_timeout:
            self._new_connection()
        else:
            self._close()

    # ---------------------------------------------------------------- filter iteration

    def _run(self) -> None:
        filters = self.listener.config.listener_filters
        while self.index < len(filters):
            f = filters[self.index]
            if f.disabled is not None and f.disabled.matches(self._dst_port()):
                step = NEXT
            elif f.kind == ORIGINAL_DST:
                step = self._original_dst()
            elif f.kind == TLS_INSPECTOR:
                step = self._tls(f) if self.data else WAIT
            elif self.transport_protocol not in ("", "raw_buffer"):
                step = NEXT                 # http_inspector leaves TLS alone (onAccept)
            else:
                step = self._http() if self.data else WAIT
            if step == WAIT:
                return
            if step == CLOSE:
                self._close()
                return
            self.index += 1
        self._new_connection()

    def _dst_port(self) -> int:
        a = self.conn.local_address
        return a[1] if isinstance(a, tuple) else 0

    def _original_dst(self) -> int:
        conn = self.conn
        local = conn.local_address
        sock = conn.transport.get_extra_info("socket") if not self.lost else None
        if isinstance(local, tuple) and sock is not None:
            od = original_dst(sock)
            if od is not None and (od[0], od[1]) != (local[0], local[1]):
                conn.local_address = od
                self.restored = True
        return NEXT

    def _tls(self, f) -> int:
        r = inspect_tls(self.data, f.max_read)
        if r is NEED_MORE:
            return WAIT
        st = self.listener.ctx.inspector_stats
        if r.sni_seen:
            if r.server_name:
                st.tls_inspector__sni_found += 1
                self.server_name = r.server_name
            else:
                st.tls_inspector__sni_not_found += 1
            self.alpn = r.alpn or self.alpn
        if r.is_tls:
            st.tls_inspector__tls_found += 1
            if r.alpn:
                st.tls_inspector__alpn_found += 1
            else:
                st.tls_inspector__alpn_not_found += 1
            self.transport_protocol = "tls"
            return NEXT
        if r.too_large:
            st.tls_inspector__client_hello_too_large += 1
            return CLOSE
        if r.close:
            st.tls_inspector__tls_not_found += r.not_found_counted
            return CLOSE
        if f.close_on_error:
            # close_connection_on_client_hello_parsing_errors: a full buffer counts as too large
            if len(self.data) >= f.max_read:
                st.tls_inspector__client_hello_too_large += 1
            else:
                st.tls_inspector__tls_not_found += 1
            return CLOSE
        st.tls_inspector__tls_not_found += 1
        return NEXT

    def _http(self) -> int:
        r = inspect_http(self.data)
        if r is NEED_MORE:
            return WAIT
        st = self.listener.ctx.inspector_stats
        if r is READ_ERROR:
            st.http_inspector__read_error += 1
            return CLOSE
        if r is None:
            st.http_inspector__http_not_found += 1
        else:
            self.alpn = (r,)
            if r == "h2c":
                st.http_inspector__http2_found += 1
            elif r == "http/1.0":
                st.http_inspector__http10_found += 1
            else:
                st.http_inspector__http11_found += 1
        return NEXT

    # ---------------------------------------------------------------- endings

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.listener.stats.downstream_pre_cx_active -= 1
        if self.conn.pre is self:
            self.conn.pre = None

    def _close(self) -> None:
        self._finish()
        if self.lost:
            self.conn.release()
        else:
            self.conn.abort(rst=bool(self.data))

    def _new_connection(self) -> None:
        """Envoy's ``ActiveTcpSocket::newConnection``: hand off, or pick the filter chain."""
        self._finish()
        listener = self.listener
        conn = self.conn
        if self.restored and listener.config.use_original_dst:
            target = listener.ctx.listener_manager.find_handoff(conn.local_address, listener)
            if target is not None:
                conn.move_to(target)
                if target.config.listener_filters:
                    nxt = PreConnection(conn, target, self.data)
                    nxt.server_name = self.server_name
                    nxt.transport_protocol = self.transport_protocol
                    nxt.alpn = self.alpn
                    nxt.lost = self.lost
                    nxt.start()
                    return
        conn.start_chain(self)

    def __repr__(self):
        return (f"<PreConnection {self.listener.config.name} filter {self.index} "
                f"{len(self.data)} bytes tp={self.transport_protocol!r} "
                f"sni={self.server_name!r} alpn={list(self.alpn)}>")


def _peer_closed(transport) -> bool:
    """Whether the peer's FIN has arrived (TCP state CLOSE_WAIT): Envoy sees it as ``Closed``.
    TCP_INFO rather than a zero-byte peek, which would consume a pending reset."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_CLOSE_WAIT
    except OSError:
        return False
