"""meshproxy-iptables for real (not dry-run) in fresh network namespaces: what it installs, that a
second run changes nothing, and that cleanup removes it all (rules, policy routing, ::6).

Istio runs the same kind of check in tools/istio-iptables/pkg/capture/run_linux_test.go
(TestIdempotentEquivalentRerun): every golden case, applied twice, then --cleanup-only.
"""

from __future__ import annotations

import pytest

from tests.netns import Pod, require_root_tools
from tests.unit.test_iptables_golden import CASES, DEFAULTS

# The sidecar injection template's arguments (injection-template.yaml, istio-init).
SIDECAR = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
           "-b", "*", "-d", "15090,15021,15020"]
TPROXY = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-x", "",
          "-b", "*", "-d", "15090,15021,15020"]

# As iptables-save (1.8.9) prints them; per chain, in order.
SIDECAR_NAT = {
    "PREROUTING": ["-A PREROUTING -p tcp -j ISTIO_INBOUND"],
    "OUTPUT": ["-A OUTPUT -j ISTIO_OUTPUT"],
    "ISTIO_INBOUND": [
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"],
    "ISTIO_IN_REDIRECT": ["-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"],
    "ISTIO_OUTPUT": [
        "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -j ISTIO_REDIRECT"],
    "ISTIO_REDIRECT": ["-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"],
}

TPROXY_MANGLE = {
    "PREROUTING": [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A PREROUTING -p tcp -m mark --mark 0x539 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"],
    "OUTPUT": [
        "-A OUTPUT -o lo -p tcp -m mark --mark 0x539 -j RETURN",
        "-A OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff",
        "-A OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j MARK --set-xmark 0x53a/0xffffffff",
        "-A OUTPUT -p tcp -m connmark --mark 0x539 -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"],
    "ISTIO_DIVERT": ["-A ISTIO_DIVERT -j MARK --set-xmark 0x539/0xffffffff", "-A ISTIO_DIVERT -j ACCEPT"],
    "ISTIO_INBOUND": [
        "-A ISTIO_INBOUND -p tcp -m mark --mark 0x539 -j RETURN",
        "-A ISTIO_INBOUND -s 127.0.0.6/32 -i lo -p tcp -j RETURN",
        "-A ISTIO_INBOUND -i lo -p tcp -m mark ! --mark 0x53a -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15090 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
        "-A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT",
        "-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY"],
    "ISTIO_TPROXY": [
        "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --on-port 15006 --on-ip 0.0.0.0 --tproxy-mark 0x539/0xffffffff"],
}


@pytest.fixture
def pod():
    require_root_tools("iptables", "iptables-save", "iptables-restore")
    p = Pod()
    try:
        yield p
    finally:
        p.close()


def by_chain(lines: list[str], table: str) -> dict[str, list[str]]:
    """Rules of one table of iptables-save output, grouped by chain (order kept)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith("*"):
            current = line[1:].strip()
        elif current == table and line.startswith("-A "):
            out.setdefault(line.split()[1], []).append(line)
    return out


def assert_clean(p: Pod, ipv6: bool = False) -> None:
    for family in (False, True) if ipv6 else (False,):
        lines = p.save(ipv6=family)
        assert [x for x in lines if x.startswith("-A ") or x.startswith(":ISTIO")] == [], lines


def ip_rules(p: Pod, ipv6: bool = False) -> str:
    return p.exec("ip", *(["-6"] if ipv6 else []), "rule").stdout


def table_133(p: Pod, ipv6: bool = False) -> str:
    # ip exits non-zero once the table is gone ("FIB table does not exist")
    return p.exec("ip", *(["-6"] if ipv6 else []), "route", "show", "table", "133", check=False).stdout


def test_sidecar_redirect_install_rerun_cleanup(pod):
    first = pod.tool(*SIDECAR)
    assert "Clean-state detected" in first.stderr
    installed = pod.save()
    assert by_chain(installed, "nat") == SIDECAR_NAT
    assert by_chain(installed, "mangle") == {} and by_chain(installed, "raw") == {}

    again = pod.tool(*SIDECAR)  # idempotent: recognised, nothing added
    assert "Found compatible residues" in again.stderr and "Applying" not in again.stderr
    assert pod.save() == installed

    pod.tool("cleanup", *SIDECAR)
    assert_clean(pod)


def test_tproxy_install_with_policy_routing_then_cleanup(pod):
    pod.tool(*TPROXY)
    installed = pod.save()
    assert by_chain(installed, "mangle") == TPROXY_MANGLE
    # Outbound capture stays REDIRECT in TPROXY mode; inbound moves to mangle.
    nat = by_chain(installed, "nat")
    assert nat["ISTIO_REDIRECT"] == SIDECAR_NAT["ISTIO_REDIRECT"] and "PREROUTING" not in nat
    assert "from all fwmark 0x539 lookup 133" in ip_rules(pod)
    assert table_133(pod).split() == ["local", "default", "dev", "lo", "scope", "host"]

    pod.tool(*TPROXY)  # a rerun must not add a second ip rule
    assert ip_rules(pod).count("fwmark 0x539") == 1

    pod.tool("--cleanup-only", *TPROXY)
    assert_clean(pod)
    assert "fwmark" not in ip_rules(pod) and table_133(pod) == ""


def test_cleanup_command_without_mode_flags_removes_tproxy_too(pod):
    """Istio's --cleanup-only needs the install flags; `cleanup` also covers the other mode."""
    pod.tool(*TPROXY)
    pod.tool("cleanup", "-u", "1337")
    assert_clean(pod)
    assert "fwmark" not in ip_rules(pod) and table_133(pod) == ""


def test_ipv6_pod_gets_ip6tables_rules_and_the_inbound_passthrough_address():
    require_root_tools("iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore")
    p = Pod(v4=False, v6=True)  # an IPv6-only pod: Istio turns IPv6 on from its address
    try:
        p.tool(*TPROXY)
        v6 = by_chain(p.save(ipv6=True), "nat")
        assert "-A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN" in v6["ISTIO_OUTPUT"]
        assert "-A ISTIO_OUTPUT -d ::1/128 -j RETURN" in v6["ISTIO_OUTPUT"]
        assert by_chain(p.save(ipv6=True), "mangle")["ISTIO_TPROXY"] == [
            "-A ISTIO_TPROXY ! -d ::1/128 -p tcp -j TPROXY --on-port 15006 --on-ip :: --tproxy-mark 0x539/0xffffffff"]
        assert by_chain(p.save(), "nat")["ISTIO_REDIRECT"]  # IPv4 rules are installed as well
        assert "inet6 ::6/128" in p.exec("ip", "-6", "addr", "show", "dev", "lo").stdout
        assert "fwmark 0x539 lookup 133" in ip_rules(p, ipv6=True)
        assert "local default dev lo" in table_133(p, ipv6=True)

        p.tool("cleanup", "-u", "1337")
        assert_clean(p, ipv6=True)
        assert "::6" not in p.exec("ip", "-6", "addr", "show", "dev", "lo").stdout
        assert "fwmark" not in ip_rules(p, ipv6=True)
    finally:
        p.close()


def _real_flags(name: str) -> tuple[list[str], dict[str, str]]:
    flags, env = CASES[name]
    env = dict(env)
    if "ISTIO_OUTBOUND_OWNER_GROUPS" in env:
        # iptables resolves group names when the rule is added; "java" need not exist here
        # (Istio's own rerun test substitutes too).
        env["ISTIO_OUTBOUND_OWNER_GROUPS"] = "0,202"
    return [*DEFAULTS, *flags], env


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_golden_case_applies_reruns_and_cleans_up(pod, name):
    flags, env = _real_flags(name)
    ipv6 = "--enable-inbound-ipv6=true" in flags
    if ipv6:
        require_root_tools("ip6tables", "ip6tables-save", "ip6tables-restore")
    pod.tool(*flags, env=env)
    installed = (pod.save(), pod.save(ipv6=True) if ipv6 else None)
    assert any(line.startswith(":ISTIO") for line in installed[0])

    again = pod.tool(*flags, env=env)
    assert "Found compatible residues" in again.stderr, again.stderr
    assert (pod.save(), pod.save(ipv6=True) if ipv6 else None) == installed

    pod.tool("--cleanup-only", *flags, env=env)
    assert_clean(pod, ipv6=ipv6)
    assert "fwmark" not in ip_rules(pod)
