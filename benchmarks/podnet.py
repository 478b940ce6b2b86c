"""Network namespaces for the ``redirect`` scenario: a sidecar's pod, for real.

    node ns  (mpb-<pid>-node)   lo: UPSTREAM_IP/32, the nginx upstream listens there
      ├─ veth p0 10.N.0.1/24 ── eth0 10.N.0.2/24  pod ns mpb-<pid>-pod0 (one proxy + the load)
      ├─ veth p1 10.N.1.1/24 ── eth0 10.N.1.2/24  pod ns mpb-<pid>-pod1 (the next proxy)
      └─ ...

Each pod gets Istio's capture rules from meshproxy-iptables (REDIRECT, ``-u 1337``, every
outbound and inbound port), a default route to the node, and one proxy running as uid 1337.
The load generator runs in the pod as root (not exempt: captured) and calls the service VIP
``10.96.0.10:80``, which exists nowhere: only the capture rule and the proxy's original
destination recovery make it answer. Every proxy gets a pod of its own (two cannot share the
pod's 15001) and the same bootstrap: the upstream has one address, the same from every pod.

Addresses are private to these namespaces; nothing is added to the harness's own network
namespace. ``close()`` deletes every namespace this harness created (``run`` calls it on
errors, Ctrl-C and SIGTERM too); namespaces left by a harness that was SIGKILLed (its PID
gone), and the processes still in them, are removed when the next one starts.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys

PREFIX = "mpb"
UPSTREAM_PORT = 8080
CAPTURE = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
           "-b", "*", "-d", "15090,15021,15020"]

_OPEN: list[PodNet] = []


def _run(argv: list[str]) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def usable() -> str | None:
    """Why the scenario cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    for tool in ("ip", "iptables-restore", "setpriv", "curl"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def remove_stale() -> None:
    """Delete namespaces a killed harness left behind (``mpb-<pid>-...`` with <pid> gone)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(rf"({PREFIX}-(\d+)-\S+)", line)
        if m and not os.path.exists(f"/proc/{m.group(2)}"):
            # Its proxies and upstream too: they live on in the namespace otherwise.
            pids = subprocess.run(["ip", "netns", "pids", m.group(1)], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ValueError, OSError):
                    pass
            subprocess.run(["ip", "netns", "del", m.group(1)], capture_output=True)


class PodNet:
    def __init__(self):
        remove_stale()
        pid = os.getpid()
        self.tag = f"{PREFIX}-{pid}"
        self.net = 128 + pid % 64          # 10.N.i.0/24; the tests use 10.64-127
        self.upstream_ip = f"10.{self.net}.255.1"
        self.node = f"{self.tag}-node"
        self.pods: list[str] = []
        self.created: list[str] = []
        _OPEN.append(self)
        try:
            self._add_ns(self.node)
            _run(["ip", "-n", self.node, "addr", "add", f"{self.upstream_ip}/32", "dev", "lo"])
        except BaseException:
            self.close()
            raise

    def _add_ns(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self.created.append(ns)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def add_pod(self) -> str:
        """A new pod namespace with capture rules; returns its name."""
        i = len(self.pods)
        if i > 250:
            raise RuntimeError("too many pods")
        ns = f"{self.tag}-pod{i}"
        self._add_ns(ns)
        pod_ip, node_ip = f"10.{self.net}.{i}.2", f"10.{self.net}.{i}.1"
        _run(["ip", "link", "add", "eth0", "netns", ns, "type", "veth",
              "peer", "name", f"p{i}", "netns", self.node])
        _run(["ip", "-n", ns, "addr", "add", f"{pod_ip}/24", "dev", "eth0"])
        _run(["ip", "-n", self.node, "addr", "add", f"{node_ip}/24", "dev", f"p{i}"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", self.node, "link", "set", f"p{i}", "up"])
        _run(["ip", "-n", ns, "route", "add", "default", "via", node_ip])
        env = {k: v for k, v in os.environ.items() if k != "ENABLE_INBOUND_IPV6"}
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m",
                            "meshproxy_iptables", *CAPTURE], capture_output=True, text=True,
                           timeout=60, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"meshproxy-iptables in {ns} exited {p.returncode}: "
                               f"{p.stderr.strip()[-2000:]}")
        self.pods.append(ns)
        return ns

    def close(self) -> None:
        """Delete the namespaces (stop the processes in them first)."""
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created = []
        if self in _OPEN:
            _OPEN.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@atexit.register
def close_all() -> None:
    for net in _OPEN:
        net.close()
