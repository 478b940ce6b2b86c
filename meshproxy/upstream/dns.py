"""STRICT_DNS and LOGICAL_DNS host discovery, without blocking the loop.

Resolution runs through ``loop.getaddrinfo`` (the default executor), every ``dns_refresh_rate``
(5 s by default; ``dns_failure_refresh_rate`` after a failure). STRICT_DNS turns every address of
every endpoint name into a host; LOGICAL_DNS keeps a single host whose address follows the first
answer (Envoy docs: service_discovery "Strict DNS" / "Logical DNS"). A name that fails to resolve
keeps the hosts it had (Envoy's ``ResolveTarget`` only replaces hosts on success).

``dns_lookup_family`` as Envoy's c-ares resolver applies it: AUTO asks for IPv6 and falls back to
IPv4, V4_PREFERRED the reverse, ALL returns IPv4 then IPv6 answers. Like c-ares (and RFC 6761
§6.3), ``localhost`` always resolves to the loopback address of the family asked for, even when
the system's hosts file only lists 127.0.0.1: Envoy 1.40 resolves ``localhost`` with AUTO to
``[::1]``.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from meshproxy.upstream.host import Host

log = logging.getLogger("meshproxy.dns")

_LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
_ORDER = {"AUTO": ((socket.AF_INET6, socket.AF_INET), True),
          "V4_PREFERRED": ((socket.AF_INET, socket.AF_INET6), True),
          "V4_ONLY": ((socket.AF_INET,), True),
          "V6_ONLY": ((socket.AF_INET6,), True),
          "ALL": ((socket.AF_INET, socket.AF_INET6), False)}


# Answers that say the name has no address (NXDOMAIN, no data): Envoy's c-ares resolver reports
# these as a successful resolution with no hosts (update_success, not update_failure).
_NO_RECORDS = {getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, n)}


def _is_localhost(name: str) -> bool:
    n = name.lower().rstrip(".")
    return n == "localhost" or n.endswith(".localhost")


async def resolve(loop, name: str, port: int, family: str) -> list[str]:
    """Addresses for ``name`` in the order Envoy would use them. Raises OSError when no family
    asked for has an answer."""
    families, first_only = _ORDER.get(family, _ORDER["AUTO"])
    out: list[str] = []
    error = None
    for fam in families:
        if _is_localhost(name):
            addrs = [_LOOPBACK[fam]]
        else:
            try:
                infos = await loop.getaddrinfo(name, port, family=fam, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                if exc.errno in _NO_RECORDS:
                    continue    # a definite "no such name": an empty answer, not a failure
                error = exc
                continue
            except (OSError, UnicodeError) as exc:
                error = exc
                continue
            addrs = []
            for info in infos:
                a = info[4][0]
                if a not in addrs:
                    addrs.append(a)
        out += [a for a in addrs if a not in out]
        if out and first_only:
            break
    if not out and error is not None:
        raise error if isinstance(error, OSError) else OSError(str(error))
    return out


def _key(h):
    return h.address, h.weight, h.priority, h.health_status


class DnsResolver:
    def __init__(self, cluster, loop):
        self.cluster = cluster
        self.loop = loop
        self.config = cluster.config
        self.task = None
        self.first = asyncio.Event()
        self.targets: list[list[Host]] = [[] for _ in cluster.config.endpoints]

    def start(self) -> None:
        self.task = self.loop.create_task(self._run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def resolve_once(self) -> bool:
        """Resolve every endpoint name once and update the cluster; False if any failed."""
        cfg = self.config
        stats = self.cluster.stats
        ok = True
        for i, ep in enumerate(cfg.endpoints):
            name, port = ep.address
            stats.update_attempt += 1
            try:
                addrs = await resolve(self.loop, name, port, cfg.dns_family)
            except OSError as exc:
                log.warning("cluster %s: DNS resolution of %s failed: %s", cfg.name, name, exc)
                stats.update_failure += 1
                ok = False
                continue
            if cfg.type == "LOGICAL_DNS":
                addrs = addrs[:1]
            # The endpoint's hostname when it has one, else the DNS name (Envoy's StrictDns).
            self.targets[i] = [Host(self.cluster, (a, port), ep.hostname or name, ep.weight,
                                    ep.health_status, ep.priority, ep.locality, ep.metadata)
                               for a in addrs]
            stats.update_success += 1
        hosts = [h for t in self.targets for h in t]
        current = self.cluster.hosts
        if cfg.type == "LOGICAL_DNS" and current and hosts:
            # The logical host stays (with its pool); only new connections use the new address.
            if current[0].address != hosts[0].address:
                current[0].set_address(hosts[0].address)
            stats.update_no_rebuild += 1
        elif [_key(h) for h in hosts] != [_key(h) for h in current]:
            self.cluster.set_hosts(hosts)
        else:
            stats.update_no_rebuild += 1
        return ok

    async def _run(self) -> None:
        cfg = self.config
        while True:
            try:
                ok = await self.resolve_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let discovery die silently
                log.exception("cluster %s: DNS refresh failed", cfg.name)
                ok = False
            if not self.first.is_set():
                self.first.set()
                self.cluster.initialized = True
            delay = cfg.dns_refresh_rate if ok else (cfg.dns_failure_refresh_rate or
                                                     cfg.dns_refresh_rate)
            await asyncio.sleep(delay)
