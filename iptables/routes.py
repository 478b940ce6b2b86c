"""Policy routing for TPROXY and the ::6 loopback address, over netlink (pyroute2).

istio/istio tools/common/tproxy/run_linux.go ``ConfigureRoutes`` at 86c9f01:
- with IPv6 on, ``ip -6 addr add ::6/128 dev lo``: the inbound passthrough source for IPv6 (IPv4
  can bind any of 127/8 already; IPv6 loopback is only ::1/128);
- in TPROXY mode with inbound ports, ``ip rule add fwmark MARK lookup TABLE`` and ``ip route add
  local default dev lo table TABLE`` (per family): packets marked in ISTIO_DIVERT/ISTIO_TPROXY
  are routed to the local stack, where the transparent listener accepts them (see
  https://www.kernel.org/doc/Documentation/networking/tproxy.txt).

Deviation from Istio, on purpose: adding is idempotent (Istio adds the rule again on every run,
and the kernel keeps duplicates), and ``remove()`` undoes it all (Istio's --cleanup-only does not
touch routing).
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass

from .config import Config

log = logging.getLogger("meshproxy-iptables")

RTN_LOCAL = 2
RT_SCOPE_HOST = 254
RTPROT_BOOT = 3  # what `ip route add` and vishvananda/netlink use by default


class RoutingError(RuntimeError):
    pass


@dataclass(frozen=True)
class RoutingPlan:
    """What ConfigureRoutes would do for a config; pure, so it can be tested and printed."""
    ipv6_loopback: bool
    tproxy_families: tuple[int, ...]  # socket.AF_INET / AF_INET6
    mark: int
    table: int

    def describe(self) -> list[str]:
        out = ["ip -6 addr add ::6/128 dev lo"] if self.ipv6_loopback else []
        for fam in self.tproxy_families:
            v = "-6 " if fam == socket.AF_INET6 else ""
            out.append(f"ip {v}rule add fwmark {self.mark} lookup {self.table}")
            out.append(f"ip {v}route add local default dev lo table {self.table}")
        return out


def plan(cfg: Config) -> RoutingPlan:
    families: tuple[int, ...] = ()
    mark = table = 0
    if cfg.inbound_ports_include and cfg.tproxy:
        try:
            table = int(cfg.inbound_tproxy_route_table)
        except ValueError:
            raise RoutingError("failed to parse InboundTProxyRouteTable: "
                               f'invalid syntax "{cfg.inbound_tproxy_route_table}"') from None
        try:
            mark = int(cfg.inbound_tproxy_mark)
        except ValueError:
            raise RoutingError("failed to parse InboundTProxyMark: "
                               f'invalid syntax "{cfg.inbound_tproxy_mark}"') from None
        families = (socket.AF_INET, socket.AF_INET6) if cfg.enable_ipv6 else (socket.AF_INET,)
    return RoutingPlan(cfg.enable_ipv6, families, mark, table)


def _default_dst(family: int) -> str:
    return "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"


def _ignore(e: Exception, *codes: int) -> bool:
    return getattr(e, "code", None) in codes


def _has_rule(ipr, family: int, mark: int, table: int) -> bool:
    return any(r.get_attr("FRA_FWMARK") == mark and (r.get_attr("FRA_TABLE") or r["table"]) == table
               for r in ipr.get_rules(family=family))


def apply(p: RoutingPlan) -> None:
    if not p.ipv6_loopback and not p.tproxy_families:
        return
    from pyroute2 import IPRoute  # imported only when routing is needed

    with IPRoute() as ipr:
        lo = _lo(ipr)
        if p.ipv6_loopback:
            try:
                ipr.addr("add", index=lo, address="::6", prefixlen=128, family=socket.AF_INET6)
                log.info("Added ::6 address on the loopback iface")
            except Exception as e:  # noqa: BLE001 - pyroute2 raises NetlinkError
                if not _ignore(e, errno.EEXIST):
                    raise RoutingError(f"failed to add IPv6 inbound address: {e}") from None
        for fam in p.tproxy_families:
            # No priority: the kernel picks one, as `ip rule add` does (32765 on a fresh netns).
            if not _has_rule(ipr, fam, p.mark, p.table):
                try:
                    ipr.rule("add", family=fam, table=p.table, fwmark=p.mark, priority=None)
                except Exception as e:  # noqa: BLE001
                    raise RoutingError(f"failed to configure netlink rule: {e}") from None
        for fam in p.tproxy_families:
            try:
                ipr.route("add", family=fam, dst=_default_dst(fam), table=p.table, oif=lo,
                          type=RTN_LOCAL, scope=RT_SCOPE_HOST, proto=RTPROT_BOOT)
            except Exception as e:  # noqa: BLE001
                if not _ignore(e, errno.EEXIST):
                    raise RoutingError(f"failed to add route: {e}") from None


def remove(p: RoutingPlan) -> None:
    """Undo ``apply``: every matching rule, the table's default local route, and ::6."""
    if not p.ipv6_loopback and not p.tproxy_families:
        return
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        lo = _lo(ipr)
        for fam in p.tproxy_families:
            while _has_rule(ipr, fam, p.mark, p.table):
                try:
                    ipr.rule("del", family=fam, table=p.table, fwmark=p.mark, priority=None)
                except Exception as e:  # noqa: BLE001
                    raise RoutingError(f"failed to delete netlink rule: {e}") from None
            try:
                ipr.route("del", family=fam, dst=_default_dst(fam), table=p.table, oif=lo,
                          type=RTN_LOCAL, scope=RT_SCOPE_HOST)
            except Exception as e:  # noqa: BLE001
                if not _ignore(e, errno.ESRCH, errno.ENOENT):
                    raise RoutingError(f"failed to delete route: {e}") from None
        if p.ipv6_loopback:
            try:
                ipr.addr("del", index=lo, address="::6", prefixlen=128, family=socket.AF_INET6)
            except Exception as e:  # noqa: BLE001
                if not _ignore(e, errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                    raise RoutingError(f"failed to delete IPv6 inbound address: {e}") from None


def _lo(ipr) -> int:
    found = ipr.link_lookup(ifname="lo")
    if not found:
        raise RoutingError("failed to find 'lo' link")
    return found[0]


def local_addresses() -> list[str]:
    """Every address of every interface, in the kernel's dump order, like Go's
    net.InterfaceAddrs (which Istio's getLocalIP uses): one RTM_GETADDR dump over a plain
    netlink socket.  Not pyroute2, whose import alone takes most of a second; this runs on
    every invocation that has to detect IPv6."""
    import struct

    nlmsg_done, nlmsg_error, rtm_newaddr, rtm_getaddr = 3, 2, 20, 22
    ifa_address, ifa_local = 1, 2
    out: list[str] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.bind((0, 0))
        body = struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)  # struct ifaddrmsg
        s.send(struct.pack("=IHHII", 16 + len(body), rtm_getaddr, 0x1 | 0x300, 1, 0) + body)
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == nlmsg_done:
                    return out
                if kind == nlmsg_error:
                    raise OSError("netlink RTM_GETADDR dump failed")
                if kind == rtm_newaddr:
                    family = data[off + 16]
                    attrs: dict[int, bytes] = {}
                    a = off + 16 + 8
                    while a + 4 <= off + length:
                        alen, atype = struct.unpack_from("=HH", data, a)
                        if alen < 4:
                            break
                        attrs.setdefault(atype, data[a + 4:a + alen])
                        a += (alen + 3) & ~3
                    # IFA_LOCAL is the interface's own address (differs from IFA_ADDRESS only
                    # on point-to-point links); Go prefers it the same way.
                    raw = attrs.get(ifa_local) or attrs.get(ifa_address)
                    if raw and family in (socket.AF_INET, socket.AF_INET6):
                        out.append(socket.inet_ntop(family, raw))
                off += (length + 3) & ~3
                if length == 0:
                    break
