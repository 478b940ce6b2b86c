"""Filter chain selection with Envoy's precedence (docs: "Filter chain match";
``source/common/listener_manager/filter_chain_manager_impl.cc``).

Criteria are tried in this order: destination port, destination IP, server name (SNI),
transport protocol, application protocols (ALPN), direct source IP, source type, source IP,
source port. At each level the most specific entry that matches the connection wins (an exact
port over no port, the longest IP prefix, an exact server name over the longest ``*.`` suffix);
an entry that leaves the criterion unset is the fallback. There is no backtracking: once a level
picks its most specific branch, a miss further down means no chain (then the listener's
``default_filter_chain``, if any). The tree is built once per listener config.
"""

from __future__ import annotations

import ipaddress

from meshproxy.config.errors import ConfigError, join

SOURCE_ANY, SOURCE_LOCAL, SOURCE_EXTERNAL = 0, 1, 2


class ConnInfo:
    """What filter-chain matching knows about a connection (after listener filters)."""

    __slots__ = ("dst_ip", "dst_port", "src_ip", "src_port", "direct_src_ip", "server_name",
                 "transport_protocol", "application_protocols")

    def __init__(self, dst_ip=None, dst_port=0, src_ip=None, src_port=0, direct_src_ip=None,
                 server_name="", transport_protocol="", application_protocols=()):
        self.dst_ip = dst_ip
        self.dst_port = dst_port
        self.src_ip = src_ip
        self.src_port = src_port
        self.direct_src_ip = direct_src_ip if direct_src_ip is not None else src_ip
        self.server_name = server_name
        self.transport_protocol = transport_protocol
        self.application_protocols = application_protocols

    def __repr__(self):
        return (f"<ConnInfo {self.src_ip}:{self.src_port} -> {self.dst_ip}:{self.dst_port} "
                f"sni={self.server_name!r} tp={self.transport_protocol!r} "
                f"alpn={list(self.application_protocols)}>")


def _ip(value):
    if value is None or isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _networks(ranges, path) -> tuple:
    nets = []
    for i, r in enumerate(ranges):
        plen = r.prefix_len.value if r.HasField("prefix_len") else None
        try:
            addr = ipaddress.ip_address(r.address_prefix)
            if plen is None:
                plen = addr.max_prefixlen
            nets.append(ipaddress.ip_network(f"{r.address_prefix}/{plen}", strict=False))
        except ValueError as exc:
            raise ConfigError(f"{path}[{i}]", f"malformed IP range: {exc}") from None
    return tuple(nets)


# A chain's key at each level: (level name, value or None for "unset").
def _keys(m, path):
    """The nine criteria of one FilterChainMatch as a list of (kind, values)."""
    if m.HasField("suffix_len") or m.address_suffix:
        raise ConfigError(path, "address_suffix / suffix_len are not supported (nor by Envoy)")
    port = m.destination_port.value if m.HasField("destination_port") else None
    return [
        ("port", (port,) if port is not None else (None,)),
        ("ip", _networks(m.prefix_ranges, join(path, "prefix_ranges")) or (None,)),
        ("sni", tuple(s.lower() for s in m.server_names) or (None,)),
        ("tp", (m.transport_protocol,) if m.transport_protocol else (None,)),
        ("alpn", tuple(m.application_protocols) or (None,)),
        ("dip", _networks(m.direct_source_prefix_ranges,
                          join(path, "direct_source_prefix_ranges")) or (None,)),
        ("stype", (m.source_type,) if m.source_type else (None,)),
        ("sip", _networks(m.source_prefix_ranges, join(path, "source_prefix_ranges")) or (None,)),
        ("sport", tuple(m.source_ports) or (None,)),
    ]


class _Level:
    """One criterion: value -> next level (or chain at the leaf), plus the unset branch."""

    __slots__ = ("kind", "exact", "nets", "wild", "unset")

    def __init__(self, kind):
        self.kind = kind
        self.exact: dict = {}
        self.nets: list = []      # [(network, child)] most specific first after freeze
        self.wild: dict = {}      # sni suffix ".example.com" -> child
        self.unset = None

    def child(self, value, make):
        if value is None:
            if self.unset is None:
                self.unset = make()
            return self.unset
        if self.kind in ("ip", "dip", "sip"):
            for net, c in self.nets:
                if net == value:
                    return c
            c = make()
            self.nets.append((value, c))
            return c
        if self.kind == "sni" and value.startswith("*."):
            key = value[1:]
            if key not in self.wild:
                self.wild[key] = make()
            return self.wild[key]
        if value not in self.exact:
            self.exact[value] = make()
        return self.exact[value]

    def freeze(self):
        self.nets.sort(key=lambda nc: -nc[0].prefixlen)

    def select(self, info):
        k = self.kind
        if k == "port":
            c = self.exact.get(info.dst_port)
        elif k in ("ip", "dip", "sip"):
            addr = info.dst_ip if k == "ip" else info.direct_src_ip if k == "dip" else info.src_ip
            c = None
            if addr is not None:
                for net, child in self.nets:
                    if addr.version == net.version and addr in net:
                        c = child
                        break
        elif k == "sni":
            name = info.server_name
            c = self.exact.get(name) if name else None
            if c is None and name:
                # Wildcards: the longest suffix first ("*.b.example.com" before "*.example.com").
                i = name.find(".")
                while i >= 0 and c is None:
                    c = self.wild.get(name[i:])
                    i = name.find(".", i + 1)
        elif k == "tp":
            c = self.exact.get(info.transport_protocol)
        elif k == "alpn":
            c = None
            for proto in info.application_protocols:
                c = self.exact.get(proto)
                if c is not None:
                    break
        elif k == "stype":
            c = None
            if self.exact:
                local = _is_local(info)
                c = self.exact.get(SOURCE_LOCAL if local else SOURCE_EXTERNAL)
        else:  # sport
            c = self.exact.get(info.src_port)
        return c if c is not None else self.unset


def _is_local(info) -> bool:
    """SAME_IP_OR_LOOPBACK: the source is a loopback address or equals the destination."""
    src = info.src_ip
    return src is not None and (src.is_loopback or src == info.dst_ip)


_KINDS = ("port", "ip", "sni", "tp", "alpn", "dip", "stype", "sip", "sport")


class FilterChainMatcher:
    """Built from (FilterChainMatch proto, chain) pairs; ``select(info)`` -> chain or None."""

    def __init__(self, entries, path: str):
        self.root = _Level("port")
        self.any_criteria = False
        self._needs_sni = self._needs_alpn = self._needs_tp = False
        seen = set()
        for idx, (m, chain) in enumerate(entries):
            cpath = f"{join(path, 'filter_chains')}[{idx}].filter_chain_match"
            keys = _keys(m, cpath)
            self._needs_sni |= keys[2][1] != (None,)
            self._needs_tp |= keys[3][1] != (None,)
            self._needs_alpn |= keys[4][1] != (None,)
            self.any_criteria |= any(v != (None,) for _, v in keys)
            for combo in _expand(keys):
                if combo in seen:
                    raise ConfigError(cpath, "multiple filter chains with the same matching "
                                             "rules are defined")
                seen.add(combo)
                self._insert(combo, chain)
        self._freeze(self.root, 0)

    def _insert(self, combo, chain):
        level = self.root
        for depth, value in enumerate(combo):
            last = depth == len(combo) - 1
            if last:
                # the leaf level (source port) maps values straight to chains
                if value is None:
                    level.unset = chain
                else:
                    level.exact[value] = chain
                return
            nxt_kind = _KINDS[depth + 1]
            level = level.child(value, lambda k=nxt_kind: _Level(k))

    def _freeze(self, level, depth):
        if not isinstance(level, _Level):
            return
        level.freeze()
        if depth == len(_KINDS) - 1:
            return
        for c in list(level.exact.values()) + [c for _, c in level.nets] + \
                list(level.wild.values()) + ([level.unset] if level.unset is not None else []):
            self._freeze(c, depth + 1)

    @property
    def uses_tls_or_alpn(self) -> bool:
        return self._needs_sni or self._needs_alpn or self._needs_tp

    def select(self, info: ConnInfo):
        node = self.root
        while isinstance(node, _Level):
            node = node.select(info)
            if node is None:
                return None
        return node


def _expand(keys):
    """Every combination of one value per criterion (a chain listing two ports matches both)."""
    combos = [()]
    for _, values in keys:
        combos = [c + (v,) for c in combos for v in values]
    return combos


def conn_info(local, remote, server_name="", transport_protocol="",
              application_protocols=()) -> ConnInfo:
    """ConnInfo from socket addresses as asyncio reports them."""
    dst_ip = _ip(local[0]) if isinstance(local, tuple) else None
    src_ip = _ip(remote[0]) if isinstance(remote, tuple) and remote else None
    return ConnInfo(dst_ip, local[1] if isinstance(local, tuple) else 0, src_ip,
                    remote[1] if isinstance(remote, tuple) and remote else 0, None,
                    server_name, transport_protocol or "raw_buffer", tuple(application_protocols))
