"""STRICT_DNS and LOGICAL_DNS host discovery, without blocking the loop.

Resolution runs through ``loop.getaddrinfo`` (the executor), every ``dns_refresh_rate`` (5 s by
default). STRICT_DNS turns every address of every endpoint name into a host; LOGICAL_DNS keeps a
single host whose address follows the first answer (Envoy's docs: "Logical DNS" vs "Strict
DNS" service discovery). ``dns_lookup_family`` AUTO prefers IPv6 and falls back to IPv4, as in
Envoy; V4_PREFERRED the reverse.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from meshproxy.upstream.host import Host

log = logging.getLogger("meshproxy.dns")


def _order(infos, family: str) -> list[str]:
    v4 = [i[4][0] for i in infos if i[0] == socket.AF_INET]
    v6 = [i[4][0] for i in infos if i[0] == socket.AF_INET6]
    if family == "V4_ONLY":
        out = v4
    elif family == "V6_ONLY":
        out = v6
    elif family == "V4_PREFERRED":
        out = v4 or v6
    elif family == "ALL":
        out = v4 + v6
    else:  # AUTO: IPv6 first, else IPv4
        out = v6 or v4
    seen = []
    for a in out:
        if a not in seen:
            seen.append(a)
    return seen


class DnsResolver:
    def __init__(self, cluster, loop):
        self.cluster = cluster
        self.loop = loop
        self.config = cluster.config
        self.task = None
        self.first = asyncio.Event()

    def start(self) -> None:
        self.task = self.loop.create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def resolve_once(self) -> bool:
        cfg = self.config
        family = {"V4_ONLY": socket.AF_INET, "V6_ONLY": socket.AF_INET6}.get(cfg.dns_family, 0)
        stats = self.cluster.stats
        stats.update_attempt += 1
        hosts = []
        ok = True
        for ep in cfg.endpoints:
            name, port = ep.address
            try:
                infos = await self.loop.getaddrinfo(name, port, family=family,
                                                    type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                log.warning("cluster %s: DNS resolution of %s failed: %s", cfg.name, name, exc)
                ok = False
                continue
            addrs = _order(infos, cfg.dns_family)
            if cfg.type == "LOGICAL_DNS":
                addrs = addrs[:1]
            for a in addrs:
                hosts.append(Host(self.cluster, (a, port), name, ep.weight, ep.health_status,
                                  ep.priority, ep.locality, ep.metadata))
        if not ok and not hosts:
            stats.update_failure += 1
            return False
        if cfg.type == "LOGICAL_DNS" and self.cluster.hosts and hosts:
            # The logical host stays; only the address for new connections changes.
            h = self.cluster.hosts[0]
            if h.address != hosts[0].address:
                h.address = hosts[0].address
                h.address_str = hosts[0].address_str
                h.address_bytes = hosts[0].address_bytes
            stats.update_no_rebuild += 1
        else:
            self.cluster.set_hosts(hosts)
        stats.update_success += 1
        if not hosts:
            stats.update_empty += 1
        return ok

    async def _run(self) -> None:
        cfg = self.config
        while True:
            ok = await self.resolve_once()
            if not self.first.is_set():
                self.first.set()
                self.cluster.initialized = True
            delay = cfg.dns_refresh_rate if ok else (cfg.dns_failure_refresh_rate or
                                                     cfg.dns_refresh_rate)
            await asyncio.sleep(delay)
