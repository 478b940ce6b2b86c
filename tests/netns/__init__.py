"""Tests with real iptables in network namespaces the tests create (root only).

``Pod`` makes the shape of a Kubernetes pod: a "pod" namespace whose eth0 is one end of a veth
pair, the other end in a "peer" namespace standing for the rest of the network.  Addresses are
private to these namespaces; nothing touches the host's own network namespace.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

_seq = itertools.count()
IP = shutil.which("ip") or "ip"  # absolute, so commands may run with a PATH of their own
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def require_root_tools(*tools: str) -> None:
    """Skip (never pass) when the test cannot run here, saying why."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and installs iptables rules")
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (install iproute2/iptables/util-linux)")
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot manage network namespaces here: {probe.stderr.strip()}")


def require_ip6_nat() -> None:
    """Skip when the kernel has no IPv6 NAT (ip6table_nat / nf_nat for nftables): REDIRECT
    of IPv6 connections, and so IP6T_SO_ORIGINAL_DST, cannot work without it."""
    ns = f"mpt-{os.getpid()}-probe6"
    subprocess.run(["ip", "netns", "add", ns], capture_output=True, check=True)
    try:
        p = subprocess.run(["ip", "netns", "exec", ns, "ip6tables", "-t", "nat", "-A", "OUTPUT",
                            "-p", "tcp", "--dport", "1", "-j", "REDIRECT", "--to-ports", "2"],
                           capture_output=True, text=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"kernel lacks IPv6 NAT (ip6tables -t nat REDIRECT): {p.stderr.strip()}")


def run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


PROXY_UID = 1337   # istio-proxy's uid and gid; the capture rules exempt this owner
# What Istio grants the sidecar (NET_ADMIN for IP_TRANSPARENT, NET_BIND_SERVICE), plus
# DAC_READ_SEARCH so uid 1337 can read an interpreter that lives under /root (mode 700).
PROXY_CAPS = "+dac_read_search,+net_admin,+net_bind_service"


def as_proxy_user(*argv: str) -> list[str]:
    """``argv`` run as uid/gid 1337 with no supplementary groups, keeping PROXY_CAPS across
    exec as ambient capabilities (setpriv execs: the PID stays the command's)."""
    return ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups",
            f"--inh-caps={PROXY_CAPS}", f"--ambient-caps={PROXY_CAPS}", *argv]


def unprivileged_python() -> str:
    """A python3 other uids can run (the test interpreter may live under /root, mode 700)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if shutil.which(candidate):
            return candidate
    pytest.skip("needs a python3 that other uids can run (/usr/bin/python3)")


@contextlib.contextmanager
def package_for_other_users():
    """A world-readable PYTHONPATH directory holding meshproxy_iptables (a symlink)."""
    home = tempfile.mkdtemp(prefix="mpt-pkg-")
    try:
        os.chmod(home, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        os.symlink(os.path.join(REPO, "iptables"), os.path.join(home, "meshproxy_iptables"))
        yield home
    finally:
        shutil.rmtree(home)


_PATH_PROBE = r"""
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    s = socket.socket(socket.AF_INET6)
    s.settimeout(0.05)
    try:
        s.connect((sys.argv[1], 9))   # nothing listens there yet: expect a refusal
        break
    except ConnectionRefusedError:
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("no IPv6 path to %s after 10 s" % sys.argv[1])
        time.sleep(0.02)
    finally:
        s.close()
"""


class Pod:
    """Two fresh namespaces joined by a veth pair; ``close()`` deletes both."""

    def __init__(self, v4: bool = True, v6: bool = False):
        n = next(_seq)
        self.name = f"mpt-{os.getpid()}-{n}-pod"
        self.peer = f"mpt-{os.getpid()}-{n}-peer"
        net = 64 + (os.getpid() + n) % 64  # 10.<net>.0.0/24, fd00:<net>::/64
        self.pod_ip = f"10.{net}.0.2" if v4 else None
        self.peer_ip = f"10.{net}.0.1" if v4 else None
        self.pod_ip6 = f"fd00:{net}::2" if v6 else None
        self.peer_ip6 = f"fd00:{net}::1" if v6 else None
        self._created: list[str] = []
        try:
            for ns in (self.name, self.peer):
                run(["ip", "netns", "add", ns])
                self._created.append(ns)
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "link", "add", "eth0", "netns", self.name, "type", "veth",
                 "peer", "name", "eth0", "netns", self.peer])
            for ns, a4, a6 in ((self.name, self.pod_ip, self.pod_ip6),
                               (self.peer, self.peer_ip, self.peer_ip6)):
                if a4:
                    run(["ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", "eth0"])
                if a6:  # nodad: usable at once, no wait for duplicate address detection
                    run(["ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", "eth0", "nodad"])
                run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            if v4:  # service VIPs exist nowhere; the pod routes everything to the peer
                run(["ip", "-n", self.name, "route", "add", "default", "via", self.peer_ip])
            if v6:
                run(["ip", "-n", self.name, "-6", "route", "add", "default", "via",
                     self.peer_ip6])
                # IPv6 sends nothing on a new link until the kernel's link watcher has seen its
                # carrier (up to 1 s later); a connection made before then waits for a SYN
                # retransmission. Wait until the peer answers (a refusal will do).
                self.exec(sys.executable, "-c", _PATH_PROBE, self.peer_ip6)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<Pod {self.name} ip={self.pod_ip or self.pod_ip6} peer={self.peer_ip or self.peer_ip6}>"

    def exec(self, *argv: str, ns: str | None = None, check: bool = True, **kw):
        return run([IP, "netns", "exec", ns or self.name, *argv], check=check, **kw)

    def tool(self, *args: str, check: bool = True, env: dict | None = None):
        """Run meshproxy-iptables for real inside the pod namespace."""
        e = dict(os.environ, **(env or {}))
        e.pop("ENABLE_INBOUND_IPV6", None)
        return self.exec(sys.executable, "-m", "meshproxy_iptables", *args, check=check, env=e)

    def save(self, ipv6: bool = False) -> list[str]:
        """iptables-save of the pod, comments dropped."""
        out = self.exec("ip6tables-save" if ipv6 else "iptables-save").stdout
        return [line for line in out.splitlines() if line and not line.startswith("#")]

    def close(self) -> None:
        for ns in self._created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._created = []


class Server:
    """A Python process in a namespace that runs ``code`` and says "ready" once listening."""

    def __init__(self, ns: str, code: str, *args: str):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"server did not start: {line!r} {err}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
