"""Which rules capture a sidecar's traffic: Config in, RuleBuilder out, no I/O.

A line-by-line port of istio/istio tools/istio-iptables/pkg/capture/run.go (``Run`` up to
``executeCommands``, ``SetupDNSRedir``, ``addDNSConntrackZones``, ``handle*``) at 86c9f01.  The
order in which rules are added is significant twice over: iptables evaluates them in order, and
Istio's goldens (and its reconciliation) compare the text.
"""

from __future__ import annotations

from . import constants as C
from .builder import RuleBuilder
from .config import Config, ConfigError, NetworkRange, parse_intercept_filter, separate_v4_v6, split

V = C.IP_VERSION_SPECIFIC


def build_rules(cfg: Config) -> RuleBuilder:
    b = RuleBuilder(enable_ipv6=cfg.enable_ipv6)
    lo4 = cfg.host_ipv4_loopback_cidr

    # OUTBOUND_IP_RANGES_EXCLUDE may mix families; a wildcard exclude makes no sense.
    v4_exclude, v6_exclude = separate_v4_v6(cfg.outbound_ip_ranges_exclude)
    if v4_exclude.is_wildcard:
        raise ConfigError("invalid value for OUTBOUND_IP_RANGES_EXCLUDE")
    v4_include, v6_include = separate_v4_v6(cfg.outbound_ip_ranges_include)

    redirect_dns = cfg.redirect_dns
    # "REDIRECT_DNS is set, but CAPTURE_ALL_DNS is false, and no DNS servers provided. DNS
    # capture disabled." (run.go)
    if redirect_dns and not cfg.capture_all_dns and not cfg.dns_servers_v4 and not cfg.dns_servers_v6:
        redirect_dns = False

    _exclude_interfaces(b, cfg)
    # Do not capture internal (KubeVirt) interfaces.
    for iface in split(cfg.reroute_virtual_interfaces):
        b.insert("PREROUTING", "nat", 1, "-i", iface, "-j", "RETURN")

    # Drop out-of-window packets instead of letting them reset the connection.
    if cfg.drop_invalid:
        b.append("PREROUTING", "mangle", "-m", "conntrack", "--ctstate", "INVALID", "-j", C.ISTIO_DROP)
        b.append(C.ISTIO_DROP, "mangle", "-j", "DROP")

    # The tunnel (HBONE) port reaches the proxy directly.
    b.append(C.ISTIO_INBOUND, "nat", "-p", "tcp", "--dport", cfg.inbound_tunnel_port, "-j", "RETURN")
    # '-j ISTIO_REDIRECT' sends outbound to the proxy's outbound port, ISTIO_IN_REDIRECT inbound.
    b.append(C.ISTIO_REDIRECT, "nat", "-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg.proxy_port)
    b.append(C.ISTIO_IN_REDIRECT, "nat", "-p", "tcp", "-j", "REDIRECT", "--to-ports",
             cfg.inbound_capture_port)

    _inbound_ports_include(b, cfg)

    # Every locally generated packet goes through ISTIO_OUTPUT; UDP is handled inside it.
    b.append("OUTPUT", "nat", "-j", C.ISTIO_OUTPUT)

    # Port exclusions must precede the redirect of connections back to self.
    for port in split(cfg.outbound_ports_exclude):
        b.append(C.ISTIO_OUTPUT, "nat", "-p", "tcp", "--dport", port, "-j", "RETURN")
        b.append(C.ISTIO_OUTPUT, "nat", "-p", "udp", "--dport", port, "-j", "RETURN")

    # The inbound passthrough cluster connects from 127.0.0.6 / ::6.
    b.append_versioned(C.INBOUND_PASSTHROUGH_V4, C.INBOUND_PASSTHROUGH_V6, C.ISTIO_OUTPUT, "nat",
                       "-o", "lo", "-s", V, "-j", "RETURN")

    loopback_included = v4_include.has_loopback or v6_include.has_loopback
    for owner, ids in (("--uid-owner", split(cfg.proxy_uid)), ("--gid-owner", split(cfg.proxy_gid))):
        for ident in ids:
            _proxy_owner_rules(b, cfg, owner, ident, redirect_dns, loopback_included, lo4)

    groups = parse_intercept_filter(cfg.owner_groups_include, cfg.owner_groups_exclude)
    if groups.except_:
        for group in groups.values:
            b.append(C.ISTIO_OUTPUT, "nat", "-m", "owner", "--gid-owner", group, "-j", "RETURN")
    else:
        none_of = [w for g in groups.values for w in ("-m", "owner", "!", "--gid-owner", g)]
        b.append(C.ISTIO_OUTPUT, "nat", *none_of, "-j", "RETURN")

    if redirect_dns:
        setup_dns_redirect(b, cfg)

    # Envoy-aware applications and container-to-container traffic use localhost directly.
    b.append_versioned(lo4, C.IPV6_LOOPBACK, C.ISTIO_OUTPUT, "nat", "-d", V, "-j", "RETURN")
    # Exclusions must come before inclusions.
    for cidr in v4_exclude.cidrs:
        b.append_v4(C.ISTIO_OUTPUT, "nat", "-d", str(cidr), "-j", "RETURN")
    for cidr in v6_exclude.cidrs:
        b.append_v6(C.ISTIO_OUTPUT, "nat", "-d", str(cidr), "-j", "RETURN")

    for port in split(cfg.outbound_ports_include):
        b.append(C.ISTIO_OUTPUT, "nat", "-p", "tcp", "--dport", port, "-j", C.ISTIO_REDIRECT)

    _outbound_include(b, cfg, v4_include, b.append_v4, b.insert_v4)
    _outbound_include(b, cfg, v6_include, b.append_v6, b.insert_v6)

    if cfg.tproxy:
        _tproxy_output(b, cfg, lo4)
    return b


def _exclude_interfaces(b: RuleBuilder, cfg: Config) -> None:
    for iface in split(cfg.exclude_interfaces):
        b.append("PREROUTING", "nat", "-i", iface, "-j", "RETURN")
        b.append("OUTPUT", "nat", "-o", iface, "-j", "RETURN")
    if cfg.tproxy:
        for iface in split(cfg.exclude_interfaces):
            b.append("PREROUTING", "mangle", "-i", iface, "-j", "RETURN")
            b.append("OUTPUT", "mangle", "-o", iface, "-j", "RETURN")


def _inbound_ports_include(b: RuleBuilder, cfg: Config) -> None:
    """run.go handleInboundPortsInclude.  Empty -b: no inbound capture at all."""
    if not cfg.inbound_ports_include:
        return
    if cfg.tproxy:
        # Packets entering ISTIO_DIVERT get the mark, so policy routing (table 133) delivers
        # them to the loopback interface, where the transparent listener picks them up.
        b.append(C.ISTIO_DIVERT, "mangle", "-j", "MARK", "--set-mark", cfg.inbound_tproxy_mark)
        b.append(C.ISTIO_DIVERT, "mangle", "-j", "ACCEPT")
        b.append_versioned(cfg.host_ipv4_loopback_cidr, C.IPV6_LOOPBACK, C.ISTIO_TPROXY, "mangle",
                           "!", "-d", V, "-p", "tcp", "-j", "TPROXY", "--tproxy-mark",
                           cfg.inbound_tproxy_mark + "/0xffffffff", "--on-port",
                           cfg.inbound_capture_port)
        table = "mangle"
    else:
        table = "nat"
    b.append("PREROUTING", table, "-p", "tcp", "-j", C.ISTIO_INBOUND)

    if cfg.inbound_ports_include == "*":
        for port in split(cfg.inbound_ports_exclude):
            b.append(C.ISTIO_INBOUND, table, "-p", "tcp", "--dport", port, "-j", "RETURN")
        if cfg.tproxy:
            # Packets of an established connection only need rerouting to loopback; a new
            # connection goes through TPROXY.
            b.append(C.ISTIO_INBOUND, "mangle", "-p", "tcp", "-m", "conntrack", "--ctstate",
                     "RELATED,ESTABLISHED", "-j", C.ISTIO_DIVERT)
            b.append(C.ISTIO_INBOUND, "mangle", "-p", "tcp", "-j", C.ISTIO_TPROXY)
        else:
            b.append(C.ISTIO_INBOUND, "nat", "-p", "tcp", "-j", C.ISTIO_IN_REDIRECT)
        return
    for port in split(cfg.inbound_ports_include):
        if cfg.tproxy:
            b.append(C.ISTIO_INBOUND, "mangle", "-p", "tcp", "--dport", port, "-m", "conntrack",
                     "--ctstate", "RELATED,ESTABLISHED", "-j", C.ISTIO_DIVERT)
            b.append(C.ISTIO_INBOUND, "mangle", "-p", "tcp", "--dport", port, "-j", C.ISTIO_TPROXY)
        else:
            b.append(C.ISTIO_INBOUND, "nat", "-p", "tcp", "--dport", port, "-j", C.ISTIO_IN_REDIRECT)


def _proxy_owner_rules(b: RuleBuilder, cfg: Config, owner: str, ident: str, redirect_dns: bool,
                       loopback_included: bool, lo4: str) -> None:
    """The three rules per proxy uid and per proxy gid (run.go Run, the ProxyUID/ProxyGID loops)."""
    # App calling itself through a service VIP: app -> proxy (outbound) -> proxy (inbound) -> app.
    # With DNS capture (uid only, as in Istio) port 53 is skipped so that
    # app -> agent -> DNS server does not detour through the inbound listener.
    if redirect_dns and owner == "--uid-owner":
        ports = ("-m", "multiport", "!", "--dports", "53," + cfg.inbound_tunnel_port)
    else:
        ports = ("!", "--dport", cfg.inbound_tunnel_port)
    b.append_versioned(lo4, C.IPV6_LOOPBACK, C.ISTIO_OUTPUT, "nat", "-o", "lo", "!", "-d", V,
                       "-p", "tcp", *ports, "-m", "owner", owner, ident, "-j", C.ISTIO_IN_REDIRECT)
    # App calling itself by endpoint address over lo is not captured, unless loopback was
    # explicitly included; with DNS capture, TCP to a local DNS server on 53 still is.
    if not loopback_included:
        if redirect_dns:
            b.append(C.ISTIO_OUTPUT, "nat", "-o", "lo", "-p", "tcp", "!", "--dport", "53",
                     "-m", "owner", "!", owner, ident, "-j", "RETURN")
        else:
            b.append(C.ISTIO_OUTPUT, "nat", "-o", "lo", "-m", "owner", "!", owner, ident, "-j", "RETURN")
    # Never redirect the proxy's own traffic back to itself (any protocol, any destination).
    b.append(C.ISTIO_OUTPUT, "nat", "-m", "owner", owner, ident, "-j", "RETURN")


def _outbound_include(b: RuleBuilder, cfg: Config, rng: NetworkRange, append, insert) -> None:
    """run.go handleOutboundIncludeRules, once per family."""
    virt = split(cfg.reroute_virtual_interfaces)
    if rng.is_wildcard:
        append(C.ISTIO_OUTPUT, "nat", "-j", C.ISTIO_REDIRECT)
        for iface in virt:
            insert("PREROUTING", "nat", 1, "-i", iface, "-j", C.ISTIO_REDIRECT)
        return
    for cidr in rng.cidrs:
        for iface in virt:
            insert("PREROUTING", "nat", 1, "-i", iface, "-d", str(cidr), "-j", C.ISTIO_REDIRECT)
        append(C.ISTIO_OUTPUT, "nat", "-d", str(cidr), "-j", C.ISTIO_REDIRECT)


def _tproxy_output(b: RuleBuilder, cfg: Config, lo4: str) -> None:
    mark = cfg.inbound_tproxy_mark
    # Save the mark (set by original_src) as the connection mark.
    b.append("PREROUTING", "mangle", "-p", "tcp", "-m", "mark", "--mark", mark,
             "-j", "CONNMARK", "--save-mark")
    # Already marked: proxy -> app traffic, do not mark again.
    b.append("OUTPUT", "mangle", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")
    # app -> VIP -> proxy outbound -(mark 1338)-> proxy inbound -> app
    for owner, ids in (("--uid-owner", split(cfg.proxy_uid)), ("--gid-owner", split(cfg.proxy_gid))):
        for ident in ids:
            b.append_versioned(lo4, C.IPV6_LOOPBACK, "OUTPUT", "mangle", "!", "-d", V, "-p", "tcp",
                               "-o", "lo", "-m", "owner", owner, ident, "-j", "MARK", "--set-mark",
                               C.OUTBOUND_MARK)
    # Replies of the workload follow the connection mark to the policy routing table.
    b.append("OUTPUT", "mangle", "-p", "tcp", "-m", "connmark", "--mark", mark,
             "-j", "CONNMARK", "--restore-mark")
    # Prevent infinite redirects; let the proxy reach the app by 127.0.0.6; app -> app by pod IP.
    b.insert(C.ISTIO_INBOUND, "mangle", 1, "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN")
    b.insert_v4(C.ISTIO_INBOUND, "mangle", 2, "-p", "tcp", "-s", C.INBOUND_PASSTHROUGH_V4, "-i", "lo",
                "-j", "RETURN")
    b.insert_v6(C.ISTIO_INBOUND, "mangle", 2, "-p", "tcp", "-s", C.INBOUND_PASSTHROUGH_V6, "-i", "lo",
                "-j", "RETURN")
    b.insert(C.ISTIO_INBOUND, "mangle", 3, "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark",
             C.OUTBOUND_MARK, "-j", "RETURN")


def setup_dns_redirect(b: RuleBuilder, cfg: Config) -> None:
    """run.go SetupDNSRedir: TCP and UDP port 53 to the agent (15053), plus conntrack zones."""
    v4, v6, all_dns = cfg.dns_servers_v4, cfg.dns_servers_v6, cfg.capture_all_dns
    # DNS needs a jump in raw:OUTPUT too.
    b.append("OUTPUT", "raw", "-j", C.ISTIO_OUTPUT_DNS)
    # Jump per family only when there is something to capture for it.
    if all_dns or v4:
        b.append_v4(C.ISTIO_OUTPUT, "nat", "-j", C.ISTIO_OUTPUT_DNS)
    if all_dns or v6:
        b.append_v6(C.ISTIO_OUTPUT, "nat", "-j", C.ISTIO_OUTPUT_DNS)

    # Only the resolv.conf servers, not all of port 53: a local forwarder (dnsmasq) querying
    # upstream must not loop back into the agent.
    if all_dns:
        b.append(C.ISTIO_OUTPUT_DNS, "nat", "-p", "tcp", "--dport", "53", "-j", "REDIRECT",
                 "--to-ports", C.AGENT_DNS_PORT)
    else:
        for s in v4:
            b.append_v4(C.ISTIO_OUTPUT_DNS, "nat", "-p", "tcp", "--dport", "53", "-d", s + "/32",
                        "-j", "REDIRECT", "--to-ports", C.AGENT_DNS_PORT)
        for s in v6:
            b.append_v6(C.ISTIO_OUTPUT_DNS, "nat", "-p", "tcp", "--dport", "53", "-d", s + "/128",
                        "-j", "REDIRECT", "--to-ports", C.AGENT_DNS_PORT)
    # Istio spells it --to-port (singular) for UDP; iptables accepts both.
    if all_dns:
        b.append(C.ISTIO_OUTPUT_DNS, "nat", "-p", "udp", "--dport", "53", "-j", "REDIRECT",
                 "--to-port", C.AGENT_DNS_PORT)
    else:
        for s in v4:
            b.append_v4(C.ISTIO_OUTPUT_DNS, "nat", "-p", "udp", "--dport", "53", "-d", s + "/32",
                        "-j", "REDIRECT", "--to-port", C.AGENT_DNS_PORT)
        for s in v6:
            b.append_v6(C.ISTIO_OUTPUT_DNS, "nat", "-p", "udp", "--dport", "53", "-d", s + "/128",
                        "-j", "REDIRECT", "--to-port", C.AGENT_DNS_PORT)
    _dns_conntrack_zones(b, cfg)


def _dns_conntrack_zones(b: RuleBuilder, cfg: Config) -> None:
    """run.go addDNSConntrackZones: agent <-> upstream DNS in zone 1, app <-> agent in zone 2,
    so the two UDP flows sharing addresses do not collide in conntrack."""
    for owner, ids in (("--uid-owner", split(cfg.proxy_uid)), ("--gid-owner", split(cfg.proxy_gid))):
        for ident in ids:
            b.append(C.ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53", "-m", "owner", owner,
                     ident, "-j", "CT", "--zone", "1")
            b.append(C.ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--sport", C.AGENT_DNS_PORT, "-m",
                     "owner", owner, ident, "-j", "CT", "--zone", "2")
    if cfg.capture_all_dns:
        b.append("PREROUTING", "raw", "-j", C.ISTIO_INBOUND)
        b.append(C.ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2")
        b.append(C.ISTIO_INBOUND, "raw", "-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1")
        return
    # The raw:PREROUTING jump exists only with rules behind it, or cleanup would miss it.
    if cfg.dns_servers_v4:
        b.append_v4("PREROUTING", "raw", "-j", C.ISTIO_INBOUND)
    for s in cfg.dns_servers_v4:
        b.append_v4(C.ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53", "-d", s + "/32",
                    "-j", "CT", "--zone", "2")
        b.append_v4(C.ISTIO_INBOUND, "raw", "-p", "udp", "--sport", "53", "-s", s + "/32",
                    "-j", "CT", "--zone", "1")
    if cfg.dns_servers_v6:
        b.append_v6("PREROUTING", "raw", "-j", C.ISTIO_INBOUND)
    for s in cfg.dns_servers_v6:
        b.append_v6(C.ISTIO_OUTPUT_DNS, "raw", "-p", "udp", "--dport", "53", "-d", s + "/128",
                    "-j", "CT", "--zone", "2")
        b.append_v6(C.ISTIO_INBOUND, "raw", "-p", "udp", "--sport", "53", "-s", s + "/128",
                    "-j", "CT", "--zone", "1")
