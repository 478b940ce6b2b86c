"""ORIGINAL_DST clusters: the host is wherever the downstream connection was going
(Envoy's ``original_dst_cluster.cc``; Istio's PassthroughCluster and InboundPassthroughCluster).

The destination comes from the downstream connection's restored original destination (the
``original_dst`` listener filter), or, with ``use_http_header``, from the
``x-envoy-original-dst-host`` request header (``ip:port``). Hosts are created on first use and
removed by a sweep every ``cleanup_interval`` (5 s) once unused since the previous sweep.

A destination that is one of this proxy's own listener sockets is refused
(``original_dst_host_invalid``): connecting to it would feed the connection back into the
proxy, forever.
"""

from __future__ import annotations

import ipaddress

from meshproxy.upstream.cluster import Cluster
from meshproxy.upstream.host import Host


def _parse_host_header(value: bytes):
    text = value.decode("latin-1").strip()
    try:
        if text.startswith("["):
            host, _, port = text[1:].partition("]:")
        else:
            host, _, port = text.rpartition(":")
        ip = ipaddress.ip_address(host)
        p = int(port)
    except ValueError:
        return None
    if not 0 < p < 65536:
        return None
    return str(ip), p


class OriginalDstCluster(Cluster):
    def __init__(self, config, loop, pool_factory, rng=None, is_own_address=None):
        super().__init__(config, loop, pool_factory, rng)
        self.by_address: dict[tuple, Host] = {}
        self.used: set = set()
        self.is_own_address = is_own_address or (lambda addr: False)
        self.sweep_handle = loop.call_later(config.cleanup_interval, self._sweep) \
            if hasattr(loop, "call_later") else None

    def destination(self, ctx):
        """(ip, port) for this request/connection, or None."""
        cfg = self.config
        addr = None
        if cfg.odst_use_http_header:
            req = getattr(ctx, "request", None)
            value = req.get(cfg.odst_http_header) if req is not None else None
            if value is not None:
                addr = _parse_host_header(value)
                if addr is None:
                    return None
        if addr is None:
            conn = getattr(ctx, "conn", None) or getattr(ctx, "downstream", None)
            local = getattr(conn, "local_address", None)
            if not isinstance(local, tuple):
                return None
            ip = local[0]
            if ip.startswith("::ffff:") and "." in ip:
                ip = ip[7:]
            addr = (ip, local[1])
        if cfg.odst_port_override:
            addr = (addr[0], cfg.odst_port_override)
        return addr

    def choose_host(self, ctx=None):
        addr = self.destination(ctx)
        if addr is None or self.is_own_address(addr):
            self.stats.original_dst_host_invalid += 1
            return None
        host = self.by_address.get(addr)
        if host is None:
            host = self.by_address[addr] = Host(self, addr)
            self.hosts.append(host)
            self._membership()
        self.used.add(addr)
        return host

    def _membership(self) -> None:
        s = self.stats
        s.membership_change += 1
        s.membership_total = len(self.hosts)
        s.membership_healthy = len(self.hosts)

    def _sweep(self) -> None:
        """Drop hosts not used since the last sweep and with nothing in flight."""
        keep = []
        for h in self.hosts:
            busy = h.stats.cx_active or h.stats.rq_active
            if h.address in self.used or busy:
                keep.append(h)
            else:
                self.by_address.pop(h.address, None)
                if h.pool is not None:
                    h.pool.drain()
        if len(keep) != len(self.hosts):
            self.hosts = keep
            self._membership()
        self.used = set()
        self.sweep_handle = self.loop.call_later(self.config.cleanup_interval, self._sweep)

    def close(self) -> None:
        if self.sweep_handle is not None:
            self.sweep_handle.cancel()
        super().close()
