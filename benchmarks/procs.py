"""Starting the processes under test and reading their CPU time and memory from /proc.

Every process is started from this (long-lived) Python process: Envoy dies with its parent
(PR_SET_PDEATHSIG), so the harness must outlive every run. Processes are pinned with
``taskset`` so the proxy never competes with the load generator or the upstream for a core.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def find_envoy() -> str | None:
    cand = os.environ.get("MESHPROXY_ENVOY")
    if cand and os.access(cand, os.X_OK):
        return cand
    cand = os.path.join(REPO, ".venv-envoy", "bin", "envoy")
    if os.access(cand, os.X_OK):
        return cand
    return shutil.which("envoy")


def free_port() -> int:
    # Small race between close and the server's bind; acceptable on loopback for a benchmark.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    # taskset execs the command, so the PID we get is the proxy's own, and children
    # (nginx workers, Envoy threads) inherit the affinity.
    return ["taskset", "-c", cpus, *cmd] if cpus else list(cmd)


# The sidecar's identity: uid/gid 1337, which the capture rules exempt. setpriv keeps, as
# ambient capabilities, what Istio grants istio-proxy (NET_ADMIN, NET_BIND_SERVICE) and
# DAC_READ_SEARCH, only so that uid 1337 can read an interpreter that lives under /root.
PROXY_UID = 1337
PROXY_CAPS = "+dac_read_search,+net_admin,+net_bind_service"


def in_netns(ns: str, cmd: list[str], uid: int | None = None) -> list[str]:
    """``cmd`` in network namespace ``ns`` (as ``uid``, gid the same, no groups). ``ip netns
    exec`` and ``setpriv`` both exec, so the PID stays the command's."""
    user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            f"--inh-caps={PROXY_CAPS}", f"--ambient-caps={PROXY_CAPS}"] if uid is not None else []
    return ["ip", "netns", "exec", ns, *user, *cmd]


def http_get(url: str, netns: str | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of ``GET url``, from inside ``netns`` (with curl) when given."""
    if netns is None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
    r = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-m", str(timeout),
                        "-o", "-", "-w", "\n%{http_code}", url],
                       capture_output=True, timeout=timeout + 5)
    body, _, code = r.stdout.rpartition(b"\n")
    if r.returncode != 0 or not code.isdigit() or int(code) == 0:
        raise OSError(f"curl in {netns}: rc {r.returncode} {r.stderr.decode(errors='replace')}")
    return int(code), body


# ---------------------------------------------------------------------- /proc readers


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (nginx's master and workers are one proxy)."""
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process tree. /proc/PID/stat counts every thread of the process,
    including threads that have exited, so Envoy's main, worker and flush threads are in."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])   # utime, stime (fields 14, 15)
    return total / CLK_TCK


def preemptions(pid: int) -> int:
    """Involuntary context switches of every thread of the process tree: how often something
    else took the proxy's core while it had work (a direct sign of a noisy run)."""
    total = 0
    for p in process_tree(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("nonvoluntary_ctxt_switches"):
                            total += int(line.split()[1])
            except OSError:
                pass
    return total


def system_busy() -> float:
    """CPU seconds all CPUs spent busy (user, nice, system, irq, softirq; not idle, iowait or
    the hypervisor's steal), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / CLK_TCK


def own_children_cpu() -> float:
    """CPU of this harness and of its finished children (h2load, the open-loop generator)."""
    import resource
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    return total


def uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uid of ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return [int(x) for x in line.split()[1:]]
    return []


def rss_bytes(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


# ---------------------------------------------------------------------- processes


RUNNING: list["Proc"] = []   # every process this harness started and has not stopped


def ours_cpu() -> float:
    """CPU of everything this harness runs: its processes, itself and its finished children."""
    return sum(p.cpu() for p in RUNNING) + own_children_cpu()


def foreign_load(interval: float) -> float:
    """Cores' worth of CPU used by anything but this harness over ``interval`` seconds."""
    b0, o0, t0 = system_busy(), ours_cpu(), time.monotonic()
    time.sleep(interval)
    b1, o1, t1 = system_busy(), ours_cpu(), time.monotonic()
    return ((b1 - b0) - (o1 - o0)) / (t1 - t0)


class Proc:
    """A started process with a name, a port to send traffic to, and its CPU/RSS readers."""

    def __init__(self, name: str, cmd: list[str], cpus: str | None, workdir: str,
                 env: dict | None = None):
        self.name = name
        self.cmd = pinned(cmd, cpus)
        self.workdir = workdir
        self.port = 0
        self.log_path = os.path.join(workdir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=e, cwd=workdir)
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            # SIGINT: Envoy, meshproxy and HAProxy exit on it; nginx treats SIGINT as fast stop.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        if self in RUNNING:
            RUNNING.remove(self)


def wait_http(port: int, path: str, proc: Proc, timeout: float = 30.0, host: str = "127.0.0.1",
              netns: str | None = None) -> bytes:
    """Wait until ``GET path`` on ``host:port`` (seen from ``netns``) answers 200; returns the
    body."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited {proc.proc.returncode}: {proc.log_tail()}")
        try:
            status, body = http_get(f"http://{host}:{port}{path}", netns)
            if status == 200:
                return body
            last = status
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not answering on {host}:{port}{path} ({last}): "
                       f"{proc.log_tail()}")


def checkout(rev: str, dest_root: str) -> str:
    """Extract ``meshproxy/`` as of ``rev`` (read-only use of git) into a fresh directory and
    return it, for PYTHONPATH: it shadows the editable install, whose finder comes after
    sys.path. Lets a run compare commits while others edit the working tree."""
    sha = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", rev], check=True,
                         capture_output=True, text=True).stdout.strip()
    dest = os.path.join(dest_root, f"src-{sha}")
    if not os.path.isdir(dest):
        os.makedirs(dest)
        archive = subprocess.run(["git", "-C", REPO, "archive", sha, "meshproxy"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


def start_envoy_like(kind: str, bootstrap: dict, cpus: str | None, base_id: int,
                     workdir: str, extra_env: dict | None = None,
                     command: list[str] | None = None, source: str | None = None,
                     netns: str | None = None, uid: int | None = None,
                     listener: str = "bench") -> Proc:
    """meshproxy or Envoy on the very same bootstrap dict. Listeners bind port 0; the port
    comes back from the admin API, so both can run at once without port bookkeeping.
    ``command`` replaces ``python -m meshproxy`` (an experiment); ``source`` is a directory
    holding another ``meshproxy/`` (see ``checkout``). With ``netns`` the proxy runs in that
    network namespace (as ``uid``), and the port reported is that of ``listener``."""
    d = tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir)
    if uid is not None:
        os.chown(d, uid, uid)   # its working directory, where it writes the admin address
    cfg = os.path.join(d, "bootstrap.yaml")
    with open(cfg, "w") as f:
        yaml.safe_dump(bootstrap, f)
    addr_path = os.path.join(d, "admin_address")
    common = ["-c", cfg, "--admin-address-path", addr_path, "-l", "warning",
              "--concurrency", "1"]
    if kind == "envoy":
        envoy = find_envoy()
        if envoy is None:
            raise RuntimeError("envoy binary not found (.venv-envoy/bin/envoy or $MESHPROXY_ENVOY)")
        cmd = [envoy, "--base-id", str(base_id), "--disable-hot-restart", *common]
    else:
        cmd = [*(command or [sys.executable, "-m", "meshproxy"]), *common]
        # The proxy runs in its own directory; let a variant command find benchmarks/.
        extra_env = dict(extra_env or {})
        extra_env["PYTHONPATH"] = os.pathsep.join(
            x for x in (source, REPO, os.environ.get("PYTHONPATH", "")) if x)
    if netns is not None:
        cmd = in_netns(netns, cmd, uid)
    p = Proc(kind, cmd, cpus, d, env=extra_env)
    deadline = time.monotonic() + 30
    while not (os.path.exists(addr_path) and os.path.getsize(addr_path) > 0):
        if not p.alive() or time.monotonic() > deadline:
            p.stop()
            raise RuntimeError(f"{kind} did not start: {p.log_tail()}")
        time.sleep(0.05)
    with open(addr_path) as f:
        admin = f.read().strip()
    while True:
        try:
            listeners = json.loads(http_get(f"http://{admin}/listeners?format=json", netns)[1])
            break
        except (OSError, ValueError):
            if not p.alive() or time.monotonic() > deadline:
                p.stop()
                raise RuntimeError(f"{kind} admin not answering: {p.log_tail()}") from None
            time.sleep(0.05)
    for ls in listeners.get("listener_statuses", []):
        sa = ls.get("local_address", {}).get("socket_address")
        if sa and ls.get("name") == listener:
            p.port = sa["port_value"]
    if not p.port:
        p.stop()
        raise RuntimeError(f"{kind}: no {listener!r} listener in {listeners}")
    p.admin = admin
    p.netns = netns
    return p


def start_nginx(name: str, conf: str, cpus: str | None, workdir: str,
                netns: str | None = None) -> Proc:
    d = tempfile.mkdtemp(prefix=f"{name}-", dir=workdir)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf.replace("@DIR@", d))
    cmd = ["nginx", "-p", d, "-c", path, "-e", os.path.join(d, "error.log")]
    return Proc(name, in_netns(netns, cmd) if netns else cmd, cpus, d)


def start_haproxy(conf: str, cpus: str | None, workdir: str) -> Proc:
    d = tempfile.mkdtemp(prefix="haproxy-", dir=workdir)
    path = os.path.join(d, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    # -db: stay in the foreground, no master-worker split, so the PID is the proxy.
    return Proc("haproxy", ["haproxy", "-db", "-f", path], cpus, d)
