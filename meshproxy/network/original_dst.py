"""Recover where an intercepted connection was going (Envoy's ``original_dst`` listener filter).

REDIRECT (iptables nat) rewrites the destination; the kernel keeps the original for the
socket: ``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` returns a ``sockaddr_in`` for IPv4 and
``getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`` a ``sockaddr_in6`` for IPv6 (linux/netfilter_ipv4.h,
linux/netfilter_ipv6/ip6_tables.h; both option numbers are 80). TPROXY leaves the destination
untouched, so the accepted socket's own local address is the original one.
"""

from __future__ import annotations

import socket
import struct

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80


def original_dst(sock: socket.socket):
    """(ip, port) the connection was addressed to before REDIRECT, or None if it was not
    redirected (or the socket is not TCP/IP)."""
    try:
        family = sock.family
    except OSError:
        return None
    try:
        if family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, = struct.unpack_from("!H", raw, 2)
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
        if family == socket.AF_INET6:
            try:
                raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            except OSError:
                # An IPv4 connection accepted on a dual-stack socket: ask the IPv4 table.
                raw4 = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
                port, = struct.unpack_from("!H", raw4, 2)
                return socket.inet_ntop(socket.AF_INET, raw4[4:8]), port
            port, = struct.unpack_from("!H", raw, 2)
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    except OSError:
        return None
    return None
