"""The tool's refusals, run as real processes: no privilege, no iptables, rules iptables rejects.
Each must exit non-zero with one line saying why, and change nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.netns import Pod, package_for_other_users, require_root_tools, unprivileged_python

ARGS = ["-u", "1337", "-b", "*", "-i", "*", "--enable-inbound-ipv6=false"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("meshproxy-iptables: error:")]


@pytest.fixture
def pod():
    require_root_tools("iptables", "iptables-save", "iptables-restore")
    p = Pod()
    try:
        yield p
    finally:
        p.close()


def test_without_cap_net_admin_it_refuses_and_says_so(pod):
    """istio-init runs as uid 0 with NET_ADMIN; uid 0 without the capability is refused."""
    require_root_tools("setpriv")
    p = pod.exec("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
                 sys.executable, "-m", "meshproxy_iptables", *ARGS, check=False)
    assert p.returncode == 1
    assert p.stderr.splitlines() == error_lines(p.stderr) and len(error_lines(p.stderr)) == 1
    assert "CAP_NET_ADMIN" in p.stderr and "--dry-run" in p.stderr
    assert not any(line.startswith("-A") for line in pod.save())


def test_as_an_ordinary_user_it_refuses_and_says_so():
    if os.geteuid() == 0:
        require_root_tools("setpriv")
        python = unprivileged_python()
        with package_for_other_users() as home:
            argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python]
            p = subprocess.run([*argv, "-m", "meshproxy_iptables", *ARGS], capture_output=True,
                               text=True, timeout=30,
                               env={"PYTHONPATH": home, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if "No module named" in p.stderr:
            pytest.skip(f"the package is not readable by uid 65534: {p.stderr.strip()}")
    else:
        p = subprocess.run([sys.executable, "-m", "meshproxy_iptables", *ARGS],
                           capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p.stderr
    assert len(error_lines(p.stderr)) == 1 and p.stderr.splitlines() == error_lines(p.stderr)
    assert "must run as root with CAP_NET_ADMIN" in p.stderr


def test_without_iptables_it_refuses_and_says_so(pod):
    p = pod.exec(sys.executable, "-m", "meshproxy_iptables", *ARGS, check=False,
                 env={"PATH": "/nonexistent"})
    assert p.returncode == 1
    assert p.stderr.splitlines() == error_lines(p.stderr) and len(error_lines(p.stderr)) == 1
    assert "iptables is missing or unusable: iptables not found in PATH" in p.stderr


def test_rules_iptables_rejects_fail_the_run_with_iptables_words(pod):
    p = pod.tool("-p", "not-a-port", *ARGS, check=False)
    assert p.returncode == 1
    last = p.stderr.splitlines()[-1]
    assert last.startswith("meshproxy-iptables: error: iptables") and "-restore" in last
    assert "Error occurred at line" in last, p.stderr
    assert not any(line.startswith("-A") for line in pod.save())  # restore is all-or-nothing
