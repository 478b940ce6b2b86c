"""The settled configuration: flags + environment + facts about the host, validated once.

Mirrors istio/istio tools/common/config/config.go (``Config``, ``FillConfigFromEnvironment``,
``Validate``, ``SeparateV4V6``) and types.go (``Split``, ``ParseInterceptFilter``).  Everything
here is pure: the host facts Istio reads itself (the pod's addresses, /etc/resolv.conf, the
ENVOY_USER account) are passed in as ``HostFacts`` by the caller (cli.py), so the same inputs give
the same rules on any machine.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import constants as C
from .flags import Parsed


class ConfigError(ValueError):
    """The flags or environment describe something istio-iptables would refuse."""


def split(s: str) -> list[str]:
    """types.go Split: comma separated, empty items dropped (so "6000,7000," is two ports)."""
    return [x for x in s.split(",") if x] if s else []


@dataclass(frozen=True)
class InterceptFilter:
    values: tuple[str, ...]
    except_: bool  # True: capture everyone except values; False: capture only values


def parse_intercept_filter(include: str, exclude: str) -> InterceptFilter:
    """types.go ParseInterceptFilter: "*" means all groups except the exclusions."""
    if include == "*":
        return InterceptFilter(tuple(split(exclude)), True)
    return InterceptFilter(tuple(split(include)), False)


@dataclass(frozen=True)
class Prefix:
    """A netip.Prefix: the address is kept as written (1.1.1.1/16 stays 1.1.1.1/16)."""
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    bits: int

    def __str__(self) -> str:
        return f"{go_addr(self.addr)}/{self.bits}"


def go_addr(addr) -> str:
    """netip.Addr.String(): like Python's, except IPv4-mapped IPv6 keeps dotted form."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"::ffff:{addr.ipv4_mapped}"
    return str(addr)


def parse_prefix(text: str) -> Prefix:
    """netip.ParsePrefix: an explicit /bits is required, no zones, no host-bit masking."""
    addr_text, slash, bits_text = text.rpartition("/")
    if not slash:
        raise ConfigError(f'netip.ParsePrefix("{text}"): no \'/\'')
    if "%" in addr_text:
        raise ConfigError(f'netip.ParsePrefix("{text}"): IPv6 zones cannot be present in a prefix')
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError as e:
        raise ConfigError(f'netip.ParsePrefix("{text}"): {e}') from None
    if not bits_text.isdigit() or (len(bits_text) > 1 and bits_text[0] == "0") \
            or int(bits_text) > addr.max_prefixlen:
        raise ConfigError(f'netip.ParsePrefix("{text}"): bad bits after slash: "{bits_text}"')
    return Prefix(addr, int(bits_text))


@dataclass(frozen=True)
class NetworkRange:
    is_wildcard: bool = False
    cidrs: tuple[Prefix, ...] = ()
    has_loopback: bool = False


def separate_v4_v6(cidr_list: str) -> tuple[NetworkRange, NetworkRange]:
    """config.go SeparateV4V6: "*" is a wildcard for both families; a bad CIDR is an error."""
    if cidr_list == "*":
        return NetworkRange(is_wildcard=True), NetworkRange(is_wildcard=True)
    v4: list[Prefix] = []
    v6: list[Prefix] = []
    for item in split(cidr_list):
        p = parse_prefix(item)
        (v4 if p.addr.version == 4 else v6).append(p)
    loop = lambda ps: any(p.addr.is_loopback for p in ps)  # noqa: E731
    return (NetworkRange(False, tuple(v4), loop(v4)), NetworkRange(False, tuple(v6), loop(v6)))


def split_v4_v6(ips: list[str], keep_text: bool = False) -> tuple[list[str], list[str]]:
    """pkg/util/net IPsSplitV4V6: unparsable entries are dropped, the rest normalised."""
    v4, v6 = [], []
    for text in ips:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        (v4 if ip.version == 4 else v6).append(text if keep_text else go_addr(ip))
    return v4, v6


def resolv_conf_servers(text: str) -> list[str]:
    """The ``nameserver`` entries of a resolv.conf (miekg/dns ClientConfigFromReader)."""
    servers = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append(fields[1])
    return servers


def _link_local_multicast(ip) -> bool:
    if ip.version == 4:
        return ip in ipaddress.ip_network("224.0.0.0/24")
    return ip.packed[0] == 0xFF and (ip.packed[1] & 0x0F) == 0x02


def detect_ipv6(addresses: list[str], dual_stack: bool) -> tuple[str, bool]:
    """config.go getLocalIP: is the pod IPv6?  ``addresses`` in the kernel's dump order.

    The first address that is not loopback or link-local decides; with --dual-stack any IPv6
    address among them turns IPv6 on.  No such address is an error, as in Istio.
    """
    found: list[str] = []
    is_v6 = False
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback or ip.is_link_local or _link_local_multicast(ip):
            continue
        is_v6 = ip.version == 6
        found.append(str(ip))
        if not dual_stack or is_v6:
            break
    if not found:
        # Istio's words; the hint is ours.
        raise ConfigError("no valid local IP address found (to decide on IPv6 rules; "
                          "--enable-inbound-ipv6=true|false skips the detection)")
    return found[0], is_v6


@dataclass(frozen=True)
class HostFacts:
    """What Istio looks up on the machine; cli.py gathers it, tests state it."""
    addresses: tuple[str, ...] = ()  # every local address, kernel dump order (IPv4 first)
    resolv_conf: str | None = None  # contents of /etc/resolv.conf, None if unreadable
    envoy_user_uid: str | None = None  # uid of $ENVOY_USER (default istio-proxy), if it exists


@dataclass(frozen=True)
class Config:
    proxy_port: str = "15001"
    inbound_capture_port: str = "15006"
    inbound_tunnel_port: str = "15008"
    proxy_uid: str = C.DEFAULT_PROXY_UID
    proxy_gid: str = C.DEFAULT_PROXY_UID
    inbound_interception_mode: str = ""
    inbound_tproxy_mark: str = "1337"
    inbound_tproxy_route_table: str = "133"
    inbound_ports_include: str = ""
    inbound_ports_exclude: str = ""
    owner_groups_include: str = "*"
    owner_groups_exclude: str = ""
    outbound_ports_include: str = ""
    outbound_ports_exclude: str = ""
    outbound_ip_ranges_include: str = ""
    outbound_ip_ranges_exclude: str = ""
    reroute_virtual_interfaces: str = ""
    exclude_interfaces: str = ""
    iptables_probe_port: int = 15002
    probe_timeout: float = 5.0
    dry_run: bool = False
    skip_rule_apply: bool = False
    run_validation: bool = False
    redirect_dns: bool = False
    drop_invalid: bool = False
    capture_all_dns: bool = False
    enable_ipv6: bool = False
    dns_servers_v4: tuple[str, ...] = ()
    dns_servers_v6: tuple[str, ...] = ()
    network_namespace: str = ""
    cni_mode: bool = False
    dual_stack: bool = False
    host_ip: str = ""
    host_ipv4_loopback_cidr: str = "127.0.0.1/32"
    reconcile: bool = False
    cleanup_only: bool = False
    force_apply: bool = False
    native_nftables: bool = False
    force_iptables_binary: str = ""
    log_level: str = "default:info"

    @property
    def tproxy(self) -> bool:
        # Anything but the exact string TPROXY means REDIRECT, as in run.go.
        return self.inbound_interception_mode == "TPROXY"


def validate(cfg: Config) -> None:
    """config.go Validate (owner groups, forced binary, IPv4 loopback CIDR)."""
    f = parse_intercept_filter(cfg.owner_groups_include, cfg.owner_groups_exclude)
    if not f.except_ and len(f.values) > C.MAX_OWNER_GROUPS_INCLUDE:
        raise ConfigError(
            "number of owner groups whose outgoing traffic should be redirected to Envoy cannot "
            f"exceed {C.MAX_OWNER_GROUPS_INCLUDE}, got {len(f.values)}: [{' '.join(f.values)}]")
    if cfg.force_iptables_binary not in ("", "legacy", "nft"):
        raise ConfigError(f'invalid FORCE_IPTABLES_BINARY value "{cfg.force_iptables_binary}"')
    cidr = cfg.host_ipv4_loopback_cidr
    try:
        p = parse_prefix(cidr)
    except ConfigError as e:
        raise ConfigError(f"failed to parse CIDR {cidr}: {e}") from None
    if p.addr.version != 4 or not p.addr.is_loopback:
        raise ConfigError(f"expected valid IPv4 loopback address in CIDR {cidr}; found {go_addr(p.addr)}")
    if not 8 <= p.bits <= 32:
        raise ConfigError(f"expected CIDR {cidr} to have mask in range [8, 32]; found {p.bits}")


def build(parsed: Parsed, environ: dict[str, str], host: HostFacts) -> Config:
    """Flags + environment + host facts -> Config (config.go FillConfigFromEnvironment)."""
    v = parsed.values
    # Environment-only settings (constants.go env.Register): set-but-empty is kept as empty.
    groups_include = environ.get("ISTIO_OUTBOUND_OWNER_GROUPS", "*")
    groups_exclude = environ.get("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "")
    loopback_cidr = environ.get("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/32")

    uid = v["proxy-uid"] or host.envoy_user_uid or C.DEFAULT_PROXY_UID
    gid = v["proxy-gid"] or uid  # "For TPROXY as its uid and gid are same."

    if v["enable-inbound-ipv6"] is not None:
        enable_ipv6, host_ip = v["enable-inbound-ipv6"], ""
    else:
        host_ip, enable_ipv6 = detect_ipv6(list(host.addresses), v["dual-stack"])

    dns_v4: list[str] = []
    dns_v6: list[str] = []
    # Only read when needed, "in case of some obscure theoretical case where reading
    # /etc/resolv.conf could fail" (config.go).
    if v["redirect-dns"] and not v["capture-all-dns"]:
        if v["dns-servers"] is not None:
            # Like setting Istio's Config.DNSServersV4/V6 directly (as its tests do): sorted by
            # family, kept as written.
            dns_v4, dns_v6 = split_v4_v6(split(v["dns-servers"]), keep_text=True)
        elif host.resolv_conf is None:
            raise ConfigError("failed to load /etc/resolv.conf")
        else:
            dns_v4, dns_v6 = split_v4_v6(resolv_conf_servers(host.resolv_conf))

    return Config(
        proxy_port=v["envoy-port"],
        inbound_capture_port=v["inbound-capture-port"],
        inbound_tunnel_port=v["inbound-tunnel-port"],
        proxy_uid=uid,
        proxy_gid=gid,
        inbound_interception_mode=v["istio-inbound-interception-mode"],
        inbound_tproxy_mark=v["istio-inbound-tproxy-mark"],
        inbound_tproxy_route_table=v["istio-inbound-tproxy-route-table"],
        inbound_ports_include=v["istio-inbound-ports"],
        inbound_ports_exclude=v["istio-local-exclude-ports"],
        owner_groups_include=groups_include,
        owner_groups_exclude=groups_exclude,
        outbound_ports_include=v["istio-outbound-ports"],
        outbound_ports_exclude=v["istio-local-outbound-ports-exclude"],
        outbound_ip_ranges_include=v["istio-service-cidr"],
        outbound_ip_ranges_exclude=v["istio-service-exclude-cidr"],
        reroute_virtual_interfaces=v["kube-virt-interfaces"],
        exclude_interfaces=v["istio-exclude-interfaces"],
        iptables_probe_port=v["iptables-probe-port"],
        probe_timeout=v["probe-timeout"],
        dry_run=v["dry-run"],
        skip_rule_apply=v["skip-rule-apply"],
        run_validation=v["run-validation"],
        redirect_dns=v["redirect-dns"],
        drop_invalid=v["drop-invalid"],
        capture_all_dns=v["capture-all-dns"],
        enable_ipv6=enable_ipv6,
        dns_servers_v4=tuple(dns_v4),
        dns_servers_v6=tuple(dns_v6),
        network_namespace=v["network-namespace"],
        cni_mode=v["cni-mode"],
        dual_stack=v["dual-stack"],
        host_ip=host_ip,
        host_ipv4_loopback_cidr=loopback_cidr,
        reconcile=v["reconcile"],
        cleanup_only=v["cleanup-only"],
        force_apply=v["force-apply"],
        native_nftables=v["native-nftables"],
        force_iptables_binary=v["force-iptables-binary"],
        log_level=v["log_output_level"],
    )
