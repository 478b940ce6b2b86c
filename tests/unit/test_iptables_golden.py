"""meshproxy-iptables --dry-run prints, byte for byte, what Istio's istio-iptables records.

The goldens are Istio's (tools/istio-iptables/pkg/capture/testdata at 86c9f01); CASES.md beside
them says which settings each case changes from Istio's test defaults.  CASES below spells those
settings as command-line flags and environment, the way a user of the tool would give them.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

from meshproxy_iptables.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "real-configs")
GOLDENS = os.path.join(SHARED, "istio-iptables")
FIXTURES = os.path.join(REPO, "tests", "fixtures", "iptables")

# Istio's test defaults (run_test.go constructTestConfig).  IPv6 and DNS servers are stated
# explicitly because Istio derives them from the machine (pod address, /etc/resolv.conf).
DEFAULTS = ["-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "--enable-inbound-ipv6=false"]
IPV6 = ["--enable-inbound-ipv6=true"]

# case -> (extra flags, extra environment); later flags override DEFAULTS, as on a command line.
CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "empty": ([], {}),
    "ip-range": (["-x", "1.1.0.0/16", "-i", "9.9.0.0/16", "--redirect-dns",
                  "--dns-servers", "127.0.0.53", "-g", "1,2", "-u", "3,4"], {}),
    "tproxy": (["-m", "TPROXY", "-b", "*", "-x", "1.1.0.0/16", "-i", "9.9.0.0/16",
                "--redirect-dns", "--dns-servers", "127.0.0.53", "-c", "not-istio-nic", *IPV6], {}),
    "inbound-ports-include": (["-b", "32000,31000"], {}),
    "inbound-ports-wildcard": (["-b", "*"], {}),
    "inbound-ports-tproxy": (["-b", "32000,31000", "-m", "TPROXY"], {}),
    "inbound-ports-wildcard-tproxy": (["-b", "*", "-m", "TPROXY"], {}),
    "outbound-ports-include": (["-q", "32000,31000"], {}),
    "ipnets": (["-i", "10.0.0.0/8"], {}),
    "ipv6-inbound-ports": (["-b", "4000,5000", *IPV6], {}),
    "ipv6-outbound-ports": (["-b", "", "-q", "32000,31000", *IPV6], {}),
    "outbound-owner-groups": ([], {"ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"}),
}


def dry_run(name: str) -> bytes:
    flags, env = CASES[name]
    out, err = io.StringIO(), io.StringIO()
    code = main(["--dry-run", *DEFAULTS, *flags], environ=dict(env), stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    return out.getvalue().encode()


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def need_shared() -> None:
    if not os.path.isdir(GOLDENS):
        pytest.skip(f"{GOLDENS} absent (only the copies in tests/fixtures/iptables are checked "
                    "in a clone without ../shared)")


def test_every_case_in_cases_md_has_flags_here():
    need_shared()
    with open(os.path.join(GOLDENS, "CASES.md"), encoding="utf-8") as f:
        rows = re.findall(r"^\| *([a-z0-9-]+) *\|", f.read(), flags=re.M)
    listed = {r for r in rows if r not in ("case", "---")}
    assert listed == set(CASES)
    goldens = {n[:-len(".golden")] for n in os.listdir(GOLDENS) if n.endswith(".golden")}
    assert goldens == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_equals_istio_golden(name):
    need_shared()
    assert dry_run(name) == read(os.path.join(GOLDENS, name + ".golden"))


FIXTURE_NAMES = sorted(n[:-len(".golden")] for n in os.listdir(FIXTURES) if n.endswith(".golden"))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_dry_run_equals_copied_golden(name):
    assert dry_run(name) == read(os.path.join(FIXTURES, name + ".golden"))


def test_copied_goldens_are_unchanged_copies():
    need_shared()
    assert len(FIXTURE_NAMES) >= 3
    for name in FIXTURE_NAMES:
        assert read(os.path.join(FIXTURES, name + ".golden")) == read(os.path.join(GOLDENS, name + ".golden"))


def test_console_entry_point_prints_the_same(tmp_path):
    """Through the real entry point, and Istio's DRY_RUN_FILE_PATH gets the same lines."""
    target = tmp_path / "dry-run.txt"
    flags, _ = CASES["inbound-ports-tproxy"]
    env = {"PATH": os.environ.get("PATH", ""), "DRY_RUN_FILE_PATH": str(target)}
    p = subprocess.run([sys.executable, "-m", "meshproxy_iptables", "-n", *DEFAULTS, *flags],
                       capture_output=True, env=env, timeout=30)
    assert p.returncode == 0, p.stderr
    golden = read(os.path.join(FIXTURES, "inbound-ports-tproxy.golden"))
    assert p.stdout == golden
    assert target.read_bytes() == golden


def test_pilot_agent_style_first_argument_and_env_forms_give_the_same_rules():
    """`pilot-agent istio-iptables ...` passes the subcommand name; settings may come from the
    environment variables Istio binds (ISTIO_INBOUND_PORTS, ISTIO_INBOUND_INTERCEPTION_MODE)."""
    out = io.StringIO()
    env = {"ISTIO_INBOUND_PORTS": "32000,31000", "ISTIO_INBOUND_INTERCEPTION_MODE": "TPROXY"}
    assert main(["istio-iptables", "-n", *DEFAULTS], environ=env, stdout=out,
                stderr=io.StringIO()) == 0
    assert out.getvalue().encode() == read(os.path.join(FIXTURES, "inbound-ports-tproxy.golden"))
