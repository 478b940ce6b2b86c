"""istio-iptables' command line and environment, and the config derived from them.

Expected behaviour is Istio's: pflag parsing, pkg/flag BindEnv/AdditionalEnv precedence, and
tools/common/config (FillConfigFromEnvironment, Validate, SeparateV4V6, getLocalIP).
"""

from __future__ import annotations

import io

import pytest

from meshproxy_iptables import capture, flags
from meshproxy_iptables.cli import Failure, load, main
from meshproxy_iptables.config import (
    ConfigError, HostFacts, detect_ipv6, parse_prefix, resolv_conf_servers, separate_v4_v6,
    split_v4_v6)

V4_POD = HostFacts(addresses=("127.0.0.1", "10.1.2.3", "::1", "fe80::1"))


def cfg(*argv: str, env: dict | None = None, facts: HostFacts = V4_POD):
    return load(list(argv), env or {}, facts)[0]


def rules_v4(*argv: str, env: dict | None = None) -> str:
    return capture.build_rules(cfg(*argv, env=env)).restore_v4()


@pytest.mark.parametrize("argv", [
    ["-p", "16001"], ["-p16001"], ["-p=16001"], ["--envoy-port", "16001"], ["--envoy-port=16001"],
])
def test_flag_spellings_pflag_accepts(argv):
    assert cfg(*argv).proxy_port == "16001"


def test_defaults_are_istios():
    c = cfg()
    assert (c.proxy_port, c.inbound_capture_port, c.inbound_tunnel_port) == ("15001", "15006", "15008")
    assert (c.inbound_tproxy_mark, c.inbound_tproxy_route_table) == ("1337", "133")
    assert (c.owner_groups_include, c.host_ipv4_loopback_cidr) == ("*", "127.0.0.1/32")
    assert (c.proxy_uid, c.proxy_gid) == ("1337", "1337")
    assert not c.tproxy and not c.enable_ipv6 and not c.dry_run


def test_proxy_uid_defaults_to_envoy_user_and_gid_to_uid():
    assert cfg(facts=HostFacts(("10.0.0.1",), envoy_user_uid="1500")).proxy_uid == "1500"
    c = cfg("-u", "3,4")
    assert (c.proxy_uid, c.proxy_gid) == ("3,4", "3,4")


def test_bool_flags_take_no_separate_argument():
    c = cfg("--redirect-dns", "--dns-servers", "10.0.0.10", "-n")
    assert c.redirect_dns and c.dry_run
    assert not cfg("--redirect-dns=false").redirect_dns
    with pytest.raises(Failure, match='unknown command "false"'):
        cfg("--redirect-dns", "false")


def test_environment_binds_like_istio_and_command_line_wins():
    assert cfg(env={"INBOUND_CAPTURE_PORT": "16006"}).inbound_capture_port == "16006"
    assert cfg("-z", "17006", env={"INBOUND_CAPTURE_PORT": "16006"}).inbound_capture_port == "17006"
    # --envoy-port is flag.Bind, not BindEnv: ENVOY_PORT is only logged by Istio.
    assert cfg(env={"ENVOY_PORT": "16001"}).proxy_port == "15001"
    assert cfg(env={"ISTIO_INBOUND_PORTS": "*"}).inbound_ports_include == "*"


def test_additional_env_alias_wins_over_canonical_and_bad_values_are_ignored():
    env = {"REDIRECT_DNS": "false", "ISTIO_META_DNS_CAPTURE": "true", "DNS_SERVERS": "10.0.0.10"}
    assert cfg(env=env).redirect_dns
    assert not cfg(env={"REDIRECT_DNS": "maybe"}).redirect_dns
    assert cfg(env={"INVALID_DROP": "1"}).drop_invalid


def test_errors_name_the_flag():
    with pytest.raises(Failure, match="unknown flag: --envoy-prot"):
        cfg("--envoy-prot", "1")
    with pytest.raises(Failure, match="unknown shorthand flag: 'y'"):
        cfg("-y")
    with pytest.raises(Failure, match='invalid argument "yes" for "--dry-run" flag'):
        cfg("--dry-run=yes")
    with pytest.raises(Failure, match="flag needs an argument: --istio-service-cidr"):
        cfg("--istio-service-cidr")


def test_cleanup_command_also_covers_the_other_interception_mode():
    redirect, tproxy = load(["cleanup", "-b", "80"], {}, V4_POD)
    assert redirect.cleanup_only and tproxy.cleanup_only
    assert not redirect.tproxy and tproxy.tproxy and tproxy.inbound_ports_include == "80"
    assert len(load(["--cleanup-only"], {}, V4_POD)) == 1


def test_duration_and_uint16_as_go_parses_them():
    assert flags.parse_duration("1m30s") == 90.0
    assert flags.parse_duration("250ms") == 0.25
    assert cfg("--probe-timeout", "2s", "--iptables-probe-port", "15003").iptables_probe_port == 15003
    with pytest.raises(Failure, match="value out of range"):
        cfg("--iptables-probe-port", "70000")


def test_ipv6_is_decided_by_the_first_non_loopback_address():
    assert detect_ipv6(["127.0.0.1", "169.254.1.1", "10.1.2.3", "fd00::2"], False) == ("10.1.2.3", False)
    assert detect_ipv6(["::1", "fe80::1", "fd00::2"], False) == ("fd00::2", True)
    # --dual-stack: any IPv6 address turns it on; the host IP stays the first found.
    assert detect_ipv6(["10.1.2.3", "fd00::2"], True) == ("10.1.2.3", True)
    with pytest.raises(ConfigError, match="no valid local IP address found"):
        detect_ipv6(["127.0.0.1", "::1", "fe80::1"], False)
    assert cfg(facts=HostFacts(("fd00::2",))).enable_ipv6
    assert not cfg("--enable-inbound-ipv6=false", facts=HostFacts(("fd00::2",))).enable_ipv6
    assert cfg("--enable-inbound-ipv6", facts=HostFacts()).enable_ipv6  # no detection at all
    assert cfg(env={"ENABLE_INBOUND_IPV6": "true"}, facts=HostFacts()).enable_ipv6
    with pytest.raises(Failure, match="no valid local IP address found"):
        cfg(facts=HostFacts(("127.0.0.1", "::1")))


def test_dns_servers_come_from_resolv_conf_split_by_family():
    text = "search svc.cluster.local\nnameserver 10.96.0.10\nnameserver ::127.0.0.53\noptions ndots:5\n"
    assert resolv_conf_servers(text) == ["10.96.0.10", "::127.0.0.53"]
    assert split_v4_v6(["10.96.0.10", "::127.0.0.53", "bogus"]) == (["10.96.0.10"], ["::7f00:35"])
    c = cfg("--redirect-dns", facts=HostFacts(("10.0.0.1",), resolv_conf=text))
    assert (c.dns_servers_v4, c.dns_servers_v6) == (("10.96.0.10",), ("::7f00:35",))
    # --dns-servers states them instead (kept as written); given empty, there are none
    c = cfg("--redirect-dns", "--dns-servers", "::127.0.0.53", facts=HostFacts(("10.0.0.1",), resolv_conf=text))
    assert (c.dns_servers_v4, c.dns_servers_v6) == ((), ("::127.0.0.53",))
    assert cfg("--redirect-dns", "--dns-servers=", facts=HostFacts(("10.0.0.1",), resolv_conf=text)).dns_servers_v4 == ()
    # --capture-all-dns never reads resolv.conf
    assert cfg("--redirect-dns", "--capture-all-dns", facts=HostFacts(("10.0.0.1",))).dns_servers_v4 == ()


def test_redirect_dns_without_servers_is_quietly_off():
    out = rules_v4("--redirect-dns", "--dns-servers", "bogus")
    assert "ISTIO_OUTPUT_DNS" not in out and "53" not in out


def test_cidrs_keep_their_text_and_loopback_include_drops_the_lo_return():
    assert str(parse_prefix("1.1.1.1/16")) == "1.1.1.1/16"  # netip does not mask host bits
    v4, v6 = separate_v4_v6("10.0.0.0/8,2001:db8::/32,127.1.2.3/32")
    assert [str(p) for p in v4.cidrs] == ["10.0.0.0/8", "127.1.2.3/32"] and v4.has_loopback
    assert [str(p) for p in v6.cidrs] == ["2001:db8::/32"]
    assert "-o lo -m owner ! --uid-owner" in rules_v4()
    assert "-o lo -m owner ! --uid-owner" not in rules_v4("-i", "127.1.2.3/32")


@pytest.mark.parametrize("argv, env, message", [
    (["-x", "*"], {}, "invalid value for OUTBOUND_IP_RANGES_EXCLUDE"),
    (["-i", "10.0.0.0"], {}, "no '/'"),
    (["-i", "10.0.0.0/33"], {}, "bad bits"),
    ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.0/8"}, "expected valid IPv4 loopback"),
    ([], {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/7"}, "mask in range"),
    ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(str(g) for g in range(65))}, "cannot exceed 64"),
    (["--force-iptables-binary", "iptables-nft"], {}, "invalid FORCE_IPTABLES_BINARY"),
])
def test_invalid_settings_exit_1_with_one_line(argv, env, message):
    out, err = io.StringIO(), io.StringIO()
    code = main(["-n", "--enable-inbound-ipv6=false", *argv], environ=env, stdout=out, stderr=err)
    assert code == 1 and out.getvalue() == ""
    lines = [line for line in err.getvalue().splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0], err.getvalue()


def test_owner_group_filters():
    excluded = rules_v4(env={"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "888,ftp"})
    assert ("-A ISTIO_OUTPUT -m owner --gid-owner 888 -j RETURN\n"
            "-A ISTIO_OUTPUT -m owner --gid-owner ftp -j RETURN\n") in excluded
    # Set but empty means "no group is captured", exactly as Istio's env.Register.Get reads it.
    assert "-A ISTIO_OUTPUT -j RETURN\n" in rules_v4(env={"ISTIO_OUTBOUND_OWNER_GROUPS": ""})


def test_help_lists_every_istio_flag():
    out = io.StringIO()
    assert main(["--help"], environ={}, stdout=out, stderr=io.StringIO()) == 0
    for name in ("--envoy-port", "--istio-inbound-interception-mode", "--kube-virt-interfaces",
                 "--istio-exclude-interfaces", "--capture-all-dns", "--cleanup-only"):
        assert name in out.getvalue()
