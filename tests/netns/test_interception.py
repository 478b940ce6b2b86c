"""meshproxy as a sidecar behind real iptables rules, in namespaces the test creates (root).

The pod namespace gets the sidecar's capture rules from meshproxy-iptables, and meshproxy runs
there with a sidecar-shaped static bootstrap (the listeners and clusters istiod would send:
virtualOutbound 15001, virtualInbound 15006, a service listener on 0.0.0.0:80 that is not bound
to a port, a TCP service on its VIP, PassthroughCluster / InboundPassthroughCluster / BlackHole).
An application runs as uid 1000; servers in the peer namespace stand for the rest of the mesh.

meshproxy runs as uid/gid 1337, as the istio-proxy container does, and the capture rules exempt
that owner ("-u 1337"), so its own upstream connections leave the pod instead of coming back to
15001. It is started with ``setpriv`` (see ``tests.netns.as_proxy_user``) keeping three ambient
capabilities: CAP_NET_ADMIN and CAP_NET_BIND_SERVICE, which Istio grants the sidecar (TPROXY's
IP_TRANSPARENT needs the first), and CAP_DAC_READ_SEARCH, only because the test interpreter
lives under /root (mode 700), which uid 1337 could not otherwise read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests.netns import (
    PROXY_UID,
    REPO,
    Pod,
    Server,
    as_proxy_user,
    require_ip6_nat,
    require_root_tools,
    unprivileged_python,
)
from tests.support.proxies import find_envoy

# Servers listen on [::] for IPv4 and IPv6 at once; an IPv4 peer is reported as a.b.c.d.
# HTTP/1.1 server: answers "<port> <method> <host> <path> from=<peer ip>" (and closes).
HTTP = r"""
import socket, sys, threading
def who(peer):
    return peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
ports = [int(p) for p in sys.argv[1].split(",")]
def serve(s, port):
    while True:
        c, peer = s.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            d = c.recv(4096)
            if not d:
                break
            data += d
        lines = data.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        host = next((l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("host:")), "")
        body = ("%d %s %s %s from=%s" % (port, method, host, path, who(peer))).encode()
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
        c.close()
def listen(port):
    try:
        return socket.create_server(("::", port), family=socket.AF_INET6, backlog=64,
                                    dualstack_ipv6=True)
    except OSError:   # a kernel without IPv6
        return socket.create_server(("0.0.0.0", port), backlog=64)
for port in ports:
    s = listen(port)
    threading.Thread(target=serve, args=(s, port), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# TCP echo that also reports who connected, once, at the start.
ECHO = r"""
import socket, sys, threading
def serve(c, peer):
    who = peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
    c.sendall(("hello from=%s\n" % who).encode())
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
try:
    s = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6, backlog=64,
                             dualstack_ipv6=True)
except OSError:   # a kernel without IPv6
    s = socket.create_server(("0.0.0.0", int(sys.argv[1])), backlog=64)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"""

# A TCP client that sends N random bytes and checks the echo byte for byte.
TCP_CLIENT = r"""
import os, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
hello = b""
while not hello.endswith(b"\n"):
    b = s.recv(1)
    if not b:
        print("closed-before-hello")
        sys.exit(0)
    hello += b
payload = os.urandom(int(sys.argv[3]))
s.sendall(payload)
s.shutdown(socket.SHUT_WR)
back = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    back += d
print(hello.decode().strip(), "echo-ok" if back == payload else "echo-BAD %d/%d" % (len(back), len(payload)))
"""

CAPTURE = ["-p", "15001", "-z", "15006", "-u", str(PROXY_UID), "-i", "*", "-x", "", "-b", "*",
           "-d", "15090,15021,15020"]

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
       "HttpConnectionManager")
ROUTER_FILTER = {"name": "envoy.filters.http.router", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
ORIGINAL_DST_FILTER = {"name": "envoy.filters.listener.original_dst", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}


def _tcp(cluster, prefix, match=None):
    fc = {"filters": [{"name": "envoy.filters.network.tcp_proxy",
                       "typed_config": {"@type": TCP_PROXY, "stat_prefix": prefix,
                                        "cluster": cluster}}]}
    if match:
        fc["filter_chain_match"] = match
    return fc


def _static(name, ip, port):
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": ip,
                                                             "port_value": port}}}}]}]}}


class Family:
    """The addresses one IP family uses: wildcard, service VIPs (which exist nowhere), the
    inbound passthrough source."""

    def __init__(self, v6: bool):
        self.v6 = v6
        self.any = "::" if v6 else "0.0.0.0"
        self.http_vip = "fd00:96::10" if v6 else "10.96.0.10"
        self.tcp_vip = "fd00:96::20" if v6 else "10.96.0.20"
        self.inbound_source = "::6" if v6 else "127.0.0.6"

    def url_host(self, ip: str) -> str:
        return f"[{ip}]" if ":" in ip else ip


def sidecar_bootstrap(peer_ip: str, tproxy: bool, v6: bool = False) -> dict:
    fam = Family(v6)
    sa = lambda ip, port: {"socket_address": {"address": ip, "port_value": port}}  # noqa: E731
    vip = fam.url_host(fam.http_vip)
    http_routes = {"name": "80", "virtual_hosts": [
        {"name": "svc.mesh:80", "domains": ["svc.mesh", "svc.mesh:80", vip, f"{vip}:80"],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "outbound|80||svc.mesh"}}]},
        {"name": "allow_any", "domains": ["*"],
         "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "PassthroughCluster"}}]}]}
    inbound = {"name": "virtualInbound", "address": sa(fam.any, 15006),
               "listener_filters": [ORIGINAL_DST_FILTER], "traffic_direction": "INBOUND",
               "filter_chains": [_tcp("BlackHoleCluster", "BlackHoleCluster",
                                      {"destination_port": 15006}),
                                 _tcp("InboundPassthroughCluster", "InboundPassthroughCluster")]}
    if tproxy:
        inbound["transparent"] = True
    inbound_cluster = {"name": "InboundPassthroughCluster", "type": "ORIGINAL_DST",
                       "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s",
                       "upstream_bind_config": {"source_address": {
                           "address": fam.inbound_source, "port_value": 0}}}
    http_name = f"{fam.url_host(fam.any)}_80"   # Istio's names: 0.0.0.0_80, [::]_80
    tcp_name = f"{fam.tcp_vip}_9000"
    return {
        "admin": {"address": sa("127.0.0.1", 15000)},
        "static_resources": {
            "listeners": [
                {"name": "virtualOutbound", "address": sa(fam.any, 15001),
                 "use_original_dst": True, "listener_filters": [ORIGINAL_DST_FILTER],
                 "traffic_direction": "OUTBOUND",
                 "filter_chains": [_tcp("BlackHoleCluster", "BlackHoleCluster",
                                        {"destination_port": 15001}),
                                   _tcp("PassthroughCluster", "PassthroughCluster")]},
                {"name": http_name, "address": sa(fam.any, 80), "bind_to_port": False,
                 "traffic_direction": "OUTBOUND",
                 "filter_chains": [{"filters": [{
                     "name": "envoy.filters.network.http_connection_manager",
                     "typed_config": {"@type": HCM, "stat_prefix": f"outbound_{http_name}",
                                      "route_config": http_routes,
                                      "http_filters": [ROUTER_FILTER]}}]}]},
                {"name": tcp_name, "address": sa(fam.tcp_vip, 9000),
                 "bind_to_port": False, "traffic_direction": "OUTBOUND",
                 "filter_chains": [_tcp("outbound|9000||tcp.mesh", "outbound|9000||tcp.mesh")]},
                inbound,
            ],
            "clusters": [
                {"name": "PassthroughCluster", "type": "ORIGINAL_DST",
                 "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s"},
                {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "1s"},
                inbound_cluster,
                _static("outbound|80||svc.mesh", peer_ip, 8080),
                _static("outbound|9000||tcp.mesh", peer_ip, 9000),
            ],
        },
    }


def dual_stack_bootstrap(peer_ip: str, tproxy: bool) -> dict:
    """The listeners istiod sends a dual-stack sidecar (ISTIO_DUAL_STACK): each one on the IPv4
    address with the IPv6 one in ``additional_addresses`` (virtualOutbound 0.0.0.0:15001 +
    [::]:15001, virtualInbound 0.0.0.0:15006 + [::]:15006, ``0.0.0.0_80`` on 0.0.0.0:80 +
    [::]:80, a dual-stack TCP service on both of its VIPs). The services' endpoints are IPv4.

    Inbound: current Istio renders one InboundPassthroughCluster bound to 127.0.0.6 with ::6 in
    ``upstream_bind_config.extra_source_addresses``; meshproxy's clusters do not implement
    extra_source_addresses yet, so this uses the per-family clusters and filter chains that
    Istio rendered before (InboundPassthroughClusterIpv4 / Ipv6, chosen by destination prefix).
    """
    v4, v6 = Family(False), Family(True)
    boot = sidecar_bootstrap(peer_ip, tproxy, v6=False)
    sa = lambda ip, port: {"socket_address": {"address": ip, "port_value": port}}  # noqa: E731
    listeners = {lst["name"]: lst for lst in boot["static_resources"]["listeners"]}
    listeners["virtualOutbound"]["additional_addresses"] = [{"address": sa("::", 15001)}]
    http = listeners["0.0.0.0_80"]
    http["additional_addresses"] = [{"address": sa("::", 80)}]
    vhost = http["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"][0]
    vip6 = v6.url_host(v6.http_vip)
    vhost["domains"] += [vip6, f"{vip6}:80"]
    tcp = listeners[f"{v4.tcp_vip}_9000"]
    tcp["additional_addresses"] = [{"address": sa(v6.tcp_vip, 9000)}]
    inbound = listeners["virtualInbound"]
    inbound["additional_addresses"] = [{"address": sa("::", 15006)}]
    inbound["filter_chains"] = [
        inbound["filter_chains"][0],                                   # BlackHole on 15006
        _tcp("InboundPassthroughClusterIpv4", "InboundPassthroughClusterIpv4",
             {"prefix_ranges": [{"address_prefix": "0.0.0.0", "prefix_len": 0}]}),
        _tcp("InboundPassthroughClusterIpv6", "InboundPassthroughClusterIpv6",
             {"prefix_ranges": [{"address_prefix": "::", "prefix_len": 0}]})]
    clusters = [c for c in boot["static_resources"]["clusters"]
                if c["name"] != "InboundPassthroughCluster"]
    for fam, name in ((v4, "InboundPassthroughClusterIpv4"), (v6, "InboundPassthroughClusterIpv6")):
        clusters.append({"name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                         "connect_timeout": "1s", "upstream_bind_config": {"source_address": {
                             "address": fam.inbound_source, "port_value": 0}}})
    boot["static_resources"]["clusters"] = clusters
    return boot


def istio_inbound_bootstrap(peer_ip: str) -> dict:
    """``dual_stack_bootstrap`` with inbound as current Istio renders it for dual-stack: one
    InboundPassthroughCluster bound to 127.0.0.6, with ::6 in ``extra_source_addresses`` for
    IPv6 destinations (Envoy picks the source address of the destination's family)."""
    boot = dual_stack_bootstrap(peer_ip, tproxy=False)
    sr = boot["static_resources"]
    inbound = next(lst for lst in sr["listeners"] if lst["name"] == "virtualInbound")
    inbound["filter_chains"] = [inbound["filter_chains"][0],
                                _tcp("InboundPassthroughCluster", "InboundPassthroughCluster")]
    sr["clusters"] = [c for c in sr["clusters"]
                      if not c["name"].startswith("InboundPassthroughClusterIpv")]
    sr["clusters"].append({
        "name": "InboundPassthroughCluster", "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s",
        "upstream_bind_config": {
            "source_address": {"address": "127.0.0.6", "port_value": 0},
            "extra_source_addresses": [{"address": {"address": "::6", "port_value": 0}}]}})
    return boot


def ipv4_compat_bootstrap(peer_ip: str) -> dict:
    """The dual-stack pod served by single dual-stack sockets instead of address pairs:
    virtualOutbound and virtualInbound on [::] with ``ipv4_compat`` (IPv4 connections arrive
    as ::ffff:a.b.c.d and are taken as IPv4), ``[::]_80`` on [::]:80 with ``ipv4_compat``
    (found for 0.0.0.0:80 too) and the TCP service on ``::ffff:10.96.0.20`` with
    ``ipv4_compat`` (found for 10.96.0.20) plus its IPv6 VIP."""
    boot = dual_stack_bootstrap(peer_ip, tproxy=False)
    compat = lambda ip, port: {"socket_address": {  # noqa: E731
        "address": ip, "port_value": port, "ipv4_compat": True}}
    for lst in boot["static_resources"]["listeners"]:
        name = lst["name"]
        if name in ("virtualOutbound", "virtualInbound", "0.0.0.0_80"):
            port = lst["address"]["socket_address"]["port_value"]
            lst["address"] = compat("::", port)
            del lst["additional_addresses"]
            if name == "0.0.0.0_80":
                lst["name"] = "[::]_80"
        elif name.endswith("_9000"):
            lst["address"] = compat("::ffff:10.96.0.20", 9000)
    return boot


class Mesh:
    """A pod with capture rules, meshproxy, an app, and servers in the peer namespace."""

    def __init__(self, tproxy: bool = False, v6: bool = False, dual: bool = False,
                 proxy: str = "meshproxy"):
        """``v6``: an IPv6-only pod; ``dual``: a dual-stack pod (IPv4 and IPv6 addresses,
        Istio's dual-stack listeners, ISTIO_DUAL_STACK capture), or "ipv4_compat" for the same
        pod served by dual-stack sockets (``ipv4_compat_bootstrap``). ``proxy``: "meshproxy", or
        "envoy" for the Envoy 1.40 oracle in the same place."""
        self.fam = Family(v6)
        self.pod = Pod(v4=not v6, v6=v6 or dual)
        self.pod_ip = self.pod.pod_ip6 if v6 else self.pod.pod_ip
        self.peer_ip = self.pod.peer_ip6 if v6 else self.pod.peer_ip
        self.servers = []
        self.proxy = None
        self.dir = tempfile.mkdtemp(prefix="mp-netns-")
        try:
            self.pod.tool(*CAPTURE, "-m", "TPROXY" if tproxy else "REDIRECT",
                          env={"ISTIO_DUAL_STACK": "true"} if dual else None)
            peer = self.pod.peer
            self.servers.append(Server(peer, HTTP, "8080,8081"))
            self.servers.append(Server(peer, ECHO, "9000"))
            self.servers.append(Server(self.pod.name, HTTP, "7070,15021"))
            boot = os.path.join(self.dir, "bootstrap.json")
            if dual == "ipv4_compat":
                config = ipv4_compat_bootstrap(self.pod.peer_ip)
            elif dual == "istio_inbound":
                config = istio_inbound_bootstrap(self.pod.peer_ip)
            elif dual:
                config = dual_stack_bootstrap(self.pod.peer_ip, tproxy)
            else:
                config = sidecar_bootstrap(self.peer_ip, tproxy, v6)
            with open(boot, "w") as f:
                json.dump(config, f)
            self.log = open(os.path.join(self.dir, "meshproxy.log"), "wb")
            os.chown(self.dir, PROXY_UID, PROXY_UID)   # its working directory
            if proxy == "envoy":   # the oracle, run exactly as meshproxy is
                cmd = [find_envoy(), "-c", boot, "-l", "warning", "--disable-hot-restart",
                       "--concurrency", "1", "--base-id", str(os.getpid() % 50000 + 7)]
            else:
                cmd = [sys.executable, "-m", "meshproxy", "-c", boot, "-l", "warning"]
            self.proxy = subprocess.Popen(
                ["ip", "netns", "exec", self.pod.name, *as_proxy_user(*cmd)],
                stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir,
                env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                    x for x in (REPO, os.environ.get("PYTHONPATH")) if x)))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if self.proxy.poll() is not None:
                    raise AssertionError(f"meshproxy exited: {self.proxy_log()}")
                if self.admin("/ready") == "LIVE":
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"meshproxy not ready: {self.proxy_log()}")
        except BaseException:
            self.close()
            raise

    def proxy_log(self) -> str:
        with open(os.path.join(self.dir, "meshproxy.log"), "rb") as f:
            return f.read().decode(errors="replace")[-3000:]

    def admin(self, path: str) -> str:
        r = self.pod.exec("curl", "-s", "-m", "2", f"http://127.0.0.1:15000{path}", check=False)
        return r.stdout.strip()

    def stats(self) -> dict:
        out = {}
        for line in self.admin("/stats").splitlines():
            name, _, value = line.partition(": ")
            if value.isdigit():
                out[name] = int(value)
        return out

    def app(self, *argv: str, uid: int = 1000) -> str:
        r = self.pod.exec("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                          *argv, check=False)
        return (r.stdout + r.stderr).strip()

    def curl(self, url: str, *extra: str) -> str:
        return self.app("curl", "-s", "-m", "5", *extra, url)

    def from_peer(self, *argv: str) -> str:
        r = self.pod.exec(*argv, ns=self.pod.peer, check=False)
        return (r.stdout + r.stderr).strip()

    def close(self) -> None:
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.terminate()
            try:
                self.proxy.wait(10)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
                self.proxy.wait()
        for s in self.servers:
            s.stop()
        self.pod.close()
        if getattr(self, "log", None) is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module", params=["REDIRECT", "TPROXY"])
def mesh(request):
    require_root_tools("iptables", "iptables-save", "iptables-restore", "setpriv", "curl")
    unprivileged_python()
    m = Mesh(tproxy=request.param == "TPROXY")
    try:
        yield m
    finally:
        m.close()


@pytest.fixture(scope="module", params=["REDIRECT", "TPROXY"])
def mesh6(request):
    """An IPv6-only pod (ULA addresses): meshproxy-iptables turns the ip6tables rules on from
    the pod's address, as Istio does."""
    require_root_tools("ip6tables", "ip6tables-save", "ip6tables-restore", "setpriv", "curl")
    require_ip6_nat()
    unprivileged_python()
    m = Mesh(tproxy=request.param == "TPROXY", v6=True)
    try:
        yield m
    finally:
        m.close()


def test_service_vip_that_exists_nowhere_is_routed_to_an_endpoint(mesh):
    # 10.96.0.10 is no address anywhere: only interception + routing can answer.
    out = mesh.curl("http://10.96.0.10/hello", "-H", "Host: svc.mesh")
    assert out.startswith("8080 GET svc.mesh /hello from="), out
    assert mesh.stats()["cluster.outbound|80||svc.mesh.upstream_rq_200"] >= 1


def test_unknown_destination_passes_through_to_the_real_server(mesh):
    peer = mesh.pod.peer_ip
    out = mesh.curl(f"http://{peer}:8081/x")
    assert out.startswith(f"8081 GET {peer}:8081 /x from={mesh.pod.pod_ip}"), out
    assert mesh.stats()["cluster.PassthroughCluster.upstream_cx_total"] >= 1


def test_tcp_service_is_proxied_byte_for_byte(mesh):
    out = mesh.app(unprivileged_python(), "-c", TCP_CLIENT, "10.96.0.20", "9000", "200000")
    assert out == f"hello from={mesh.pod.pod_ip} echo-ok", out
    assert mesh.stats()["tcp.outbound|9000||tcp.mesh.downstream_cx_total"] >= 1


def test_inbound_reaches_the_app_through_15006_from_127_0_0_6(mesh):
    ip = mesh.pod.pod_ip
    before = mesh.stats().get("cluster.InboundPassthroughCluster.upstream_cx_total", 0)
    out = mesh.from_peer("curl", "-s", "-m", "5", f"http://{ip}:7070/in")
    assert out == f"7070 GET {ip}:7070 /in from=127.0.0.6", out
    assert mesh.stats()["cluster.InboundPassthroughCluster.upstream_cx_total"] == before + 1


def test_excluded_inbound_port_is_not_captured(mesh):
    ip = mesh.pod.pod_ip
    out = mesh.from_peer("curl", "-s", "-m", "5", f"http://{ip}:15021/ready")
    assert out == f"15021 GET {ip}:15021 /ready from={mesh.pod.peer_ip}", out


def test_connection_to_the_capture_port_itself_does_not_loop(mesh):
    # Addressed to 15001 directly: the blackhole chain takes it and it is closed, once.
    out = mesh.app(unprivileged_python(), "-c", TCP_CLIENT, "127.0.0.1", "15001", "10")
    assert "echo-ok" not in out
    st = mesh.stats()
    assert st.get("cluster.BlackHoleCluster.upstream_cx_none_healthy", 0) >= 1


def test_virtual_listeners_in_admin(mesh):
    listeners = mesh.admin("/listeners")
    for name in ("virtualOutbound::0.0.0.0:15001", "0.0.0.0_80::0.0.0.0:80",
                 "virtualInbound::0.0.0.0:15006"):
        assert name in listeners
    assert mesh.stats()["listener.0.0.0.0_15001.downstream_cx_total"] >= 0


def _status(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _owner_return_packets(mesh) -> int:
    """Packets the "-m owner --uid-owner 1337 -j RETURN" rule of ISTIO_OUTPUT let through."""
    out = mesh.pod.exec("iptables", "-t", "nat", "-L", "ISTIO_OUTPUT", "-v", "-n", "-x").stdout
    rows = [l.split() for l in out.splitlines()
            if f"owner UID match {PROXY_UID}" in l and "! owner" not in l
            and l.split()[2] == "RETURN" and l.split()[6] == "*"]
    assert len(rows) == 1, out
    return int(rows[0][0])


def test_meshproxy_runs_as_uid_1337(mesh):
    st = _status(mesh.proxy.pid)   # ip netns exec and setpriv exec: this PID is meshproxy
    with open(f"/proc/{mesh.proxy.pid}/cmdline") as f:
        assert "meshproxy" in f.read().replace("\0", " ")
    assert st["Uid"].split() == [str(PROXY_UID)] * 4, st["Uid"]
    assert st["Gid"].split() == [str(PROXY_UID)] * 4, st["Gid"]
    assert st["Groups"].strip() == "", st["Groups"]
    cap_eff = int(st["CapEff"], 16)
    CAP_DAC_READ_SEARCH, CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_SYS_ADMIN = 2, 10, 12, 21
    assert cap_eff == (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_NET_BIND_SERVICE) | (
        1 << CAP_NET_ADMIN), hex(cap_eff)
    assert not cap_eff & (1 << CAP_SYS_ADMIN)


def test_own_upstream_connections_are_not_captured_again(mesh):
    # One app request = one connection into 15001; meshproxy's connection to the endpoint
    # (owned by 1337) leaves through the owner RETURN rule instead of coming back to 15001.
    cx = "listener.0.0.0.0_15001.downstream_cx_total"
    before, pkts = mesh.stats()[cx], _owner_return_packets(mesh)
    peer = mesh.pod.peer_ip
    for i in range(3):
        out = mesh.curl(f"http://{peer}:8081/once{i}")
        assert out.startswith(f"8081 GET {peer}:8081 /once{i} from={mesh.pod.pod_ip}"), out
    assert mesh.stats()[cx] == before + 3
    assert _owner_return_packets(mesh) >= pkts + 3   # at least each SYN of the proxy


# ---------------------------------------------------------------------- IPv6 (ip6tables)


def test_ipv6_pod_has_ip6tables_capture_rules(mesh6):
    nat = mesh6.pod.save(ipv6=True)
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in nat, nat
    assert f"-A ISTIO_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN" in nat, nat


def test_ipv6_service_vip_that_exists_nowhere_is_routed_to_an_endpoint(mesh6):
    # fd00:96::10 is no address anywhere: meshproxy must read the original destination back
    # with IP6T_SO_ORIGINAL_DST and hand the connection to the [::]:80 HTTP listener.
    out = mesh6.curl("http://[fd00:96::10]/hello6", "-H", "Host: svc.mesh")
    assert out.startswith(f"8080 GET svc.mesh /hello6 from={mesh6.pod_ip}"), out
    assert mesh6.stats()["cluster.outbound|80||svc.mesh.upstream_rq_200"] >= 1


def test_ipv6_vip_as_host_header_matches_its_virtual_host(mesh6):
    out = mesh6.curl("http://[fd00:96::10]/bracketed")
    assert out.startswith("8080 GET [fd00:96::10] /bracketed from="), out


def test_ipv6_unknown_destination_passes_through_to_the_real_server(mesh6):
    peer, cx = mesh6.peer_ip, "cluster.PassthroughCluster.upstream_cx_total"
    before = mesh6.stats().get(cx, 0)
    out = mesh6.curl(f"http://[{peer}]:8081/x6")
    assert out.startswith(f"8081 GET [{peer}]:8081 /x6 from={mesh6.pod_ip}"), out
    assert mesh6.stats()[cx] == before + 1


def test_ipv6_tcp_service_is_proxied_byte_for_byte(mesh6):
    out = mesh6.app(unprivileged_python(), "-c", TCP_CLIENT, "fd00:96::20", "9000", "200000")
    assert out == f"hello from={mesh6.pod_ip} echo-ok", out
    assert mesh6.stats()["tcp.outbound|9000||tcp.mesh.downstream_cx_total"] >= 1


def test_ipv6_unknown_tcp_destination_passes_through_byte_for_byte(mesh6):
    out = mesh6.app(unprivileged_python(), "-c", TCP_CLIENT, mesh6.peer_ip, "9000", "100000")
    assert out == f"hello from={mesh6.pod_ip} echo-ok", out


def test_ipv6_inbound_reaches_the_app_through_15006_from_inbound_passthrough_source(mesh6):
    ip = mesh6.pod_ip
    out = mesh6.from_peer("curl", "-s", "-m", "5", f"http://[{ip}]:7070/in6")
    assert out == f"7070 GET [{ip}]:7070 /in6 from=::6", out


# ---------------------------------------------------------------------- dual-stack pod


@pytest.fixture(scope="module", params=[("meshproxy", "REDIRECT"), ("meshproxy", "TPROXY"),
                                        pytest.param(("envoy", "REDIRECT"),
                                                     marks=pytest.mark.oracle),
                                        pytest.param(("envoy", "TPROXY"),
                                                     marks=pytest.mark.oracle)],
                ids=lambda p: "-".join(p))
def mesh_dual(request):
    """A dual-stack pod (10.x and fd00:x addresses) with Istio's dual-stack listeners
    (``additional_addresses``) and ISTIO_DUAL_STACK capture for both families; every test
    runs against meshproxy and, as the oracle, Envoy 1.40 in the same pod shape."""
    proxy, mode = request.param
    require_root_tools("iptables", "iptables-save", "iptables-restore", "ip6tables",
                       "ip6tables-save", "ip6tables-restore", "setpriv", "curl")
    require_ip6_nat()
    unprivileged_python()
    if proxy == "envoy" and find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    m = Mesh(tproxy=mode == "TPROXY", dual=True, proxy=proxy)
    try:
        yield m
    finally:
        m.close()


def _delta(mesh, names, action):
    before = mesh.stats()
    action()
    after = mesh.stats()
    return [after.get(n, 0) - before.get(n, 0) for n in names]


def test_dual_stack_pod_has_capture_rules_for_both_families(mesh_dual):
    # ISTIO_DUAL_STACK: an IPv6 address anywhere on the pod turns the ip6tables rules on
    # (without it the first address, IPv4 here, would decide: IPv4 rules only).
    for v6 in (False, True):
        rules = mesh_dual.pod.save(ipv6=v6)
        assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in rules, (v6, rules)
        assert f"-A ISTIO_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN" in rules, rules


def test_dual_stack_listeners_in_admin(mesh_dual):
    lines = mesh_dual.admin("/listeners").splitlines()
    for line in ("virtualOutbound::0.0.0.0:15001", "virtualOutbound::[::]:15001",
                 "virtualInbound::0.0.0.0:15006", "virtualInbound::[::]:15006",
                 "0.0.0.0_80::0.0.0.0:80", "0.0.0.0_80::[::]:80",
                 "10.96.0.20_9000::10.96.0.20:9000", "10.96.0.20_9000::[fd00:96::20]:9000"):
        assert line in lines, (line, lines)


def test_dual_stack_both_vips_routed_through_the_same_15001_listener(mesh_dual):
    pod4 = mesh_dual.pod.pod_ip
    outs = []
    # Both families reach virtualOutbound (0.0.0.0:15001 and [::]:15001), which hands every
    # connection to 0.0.0.0_80 by its IPv4 or IPv6 address; the connection is counted there.
    names = ["listener.0.0.0.0_80.downstream_cx_total",
             "cluster.outbound|80||svc.mesh.upstream_rq_200",
             "listener.0.0.0.0_80.http.outbound_0.0.0.0_80.downstream_rq_2xx",
             "listener.0.0.0.0_15001.downstream_cx_total"]
    d = _delta(mesh_dual, names, lambda: outs.extend([
        mesh_dual.curl("http://10.96.0.10/v4", "-H", "Host: svc.mesh"),
        mesh_dual.curl("http://[fd00:96::10]/v6", "-H", "Host: svc.mesh"),
        mesh_dual.curl("http://[fd00:96::10]/v6host")]))
    # the endpoints are IPv4: the upstream connection leaves from the pod's IPv4 address
    assert outs[0] == f"8080 GET svc.mesh /v4 from={pod4}", outs
    assert outs[1] == f"8080 GET svc.mesh /v6 from={pod4}", outs
    assert outs[2] == f"8080 GET [fd00:96::10] /v6host from={pod4}", outs
    assert d == [3, 3, 3, 0], d
    assert not any(k.startswith(("listener.[__]_15001.", "listener.[__]_80."))
                   for k in mesh_dual.stats())


def test_dual_stack_tcp_service_on_both_vips(mesh_dual):
    outs = []
    d = _delta(mesh_dual, ["tcp.outbound|9000||tcp.mesh.downstream_cx_total",
                           "listener.10.96.0.20_9000.downstream_cx_total"],
               lambda: outs.extend(mesh_dual.app(unprivileged_python(), "-c", TCP_CLIENT, vip,
                                                 "9000", "100000")
                                   for vip in ("10.96.0.20", "fd00:96::20")))
    assert outs == [f"hello from={mesh_dual.pod.pod_ip} echo-ok"] * 2, outs
    assert d == [2, 2]


def test_dual_stack_unknown_destinations_pass_through(mesh_dual):
    pod, outs = mesh_dual.pod, []
    d = _delta(mesh_dual, ["cluster.PassthroughCluster.upstream_cx_total",
                           "listener.0.0.0.0_15001.downstream_cx_total"],
               lambda: outs.extend([mesh_dual.curl(f"http://{pod.peer_ip}:8081/p4"),
                                    mesh_dual.curl(f"http://[{pod.peer_ip6}]:8081/p6")]))
    assert outs[0] == f"8081 GET {pod.peer_ip}:8081 /p4 from={pod.pod_ip}", outs
    assert outs[1] == f"8081 GET [{pod.peer_ip6}]:8081 /p6 from={pod.pod_ip6}", outs
    assert d == [2, 2]


def test_dual_stack_inbound_over_both_families_through_15006(mesh_dual):
    pod, outs = mesh_dual.pod, []
    d = _delta(mesh_dual, ["listener.0.0.0.0_15006.downstream_cx_total",
                           "cluster.InboundPassthroughClusterIpv4.upstream_cx_total",
                           "cluster.InboundPassthroughClusterIpv6.upstream_cx_total"],
               lambda: outs.extend([
                   mesh_dual.from_peer("curl", "-s", "-m", "5", f"http://{pod.pod_ip}:7070/i4"),
                   mesh_dual.from_peer("curl", "-s", "-m", "5",
                                       f"http://[{pod.pod_ip6}]:7070/i6")]))
    assert outs == [f"7070 GET {pod.pod_ip}:7070 /i4 from=127.0.0.6",
                    f"7070 GET [{pod.pod_ip6}]:7070 /i6 from=::6"], outs
    assert d == [2, 1, 1], d


# ---------------------------------------------------------------------- dual-stack sockets


@pytest.fixture(scope="module", params=["meshproxy", pytest.param("envoy",
                                                                  marks=pytest.mark.oracle)])
def mesh_compat(request):
    """The dual-stack pod with ``ipv4_compat`` listeners (REDIRECT); meshproxy and the Envoy
    oracle."""
    require_root_tools("iptables", "iptables-save", "iptables-restore", "ip6tables",
                       "ip6tables-save", "ip6tables-restore", "setpriv", "curl")
    require_ip6_nat()
    unprivileged_python()
    if request.param == "envoy" and find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    m = Mesh(dual="ipv4_compat", proxy=request.param)
    try:
        yield m
    finally:
        m.close()


def test_ipv4_compat_sockets_take_both_families(mesh_compat):
    m, pod, outs = mesh_compat, mesh_compat.pod, []
    names = ["listener.[__]_80.downstream_cx_total",
             "listener.[__ffff_10.96.0.20]_9000.downstream_cx_total",
             "listener.[__]_15001.downstream_cx_total",
             "cluster.PassthroughCluster.upstream_cx_total",
             "listener.[__]_15006.downstream_cx_total"]
    d = _delta(m, names, lambda: outs.extend([
        # 10.96.0.10:80 is found through [::]:80's IPv4 form (0.0.0.0:80)
        m.curl("http://10.96.0.10/c4", "-H", "Host: svc.mesh"),
        m.curl("http://[fd00:96::10]/c6", "-H", "Host: svc.mesh"),
        # 10.96.0.20:9000 through ::ffff:10.96.0.20 with ipv4_compat
        m.app(unprivileged_python(), "-c", TCP_CLIENT, "10.96.0.20", "9000", "1000"),
        # unknown: stays on virtualOutbound, passes through to the IPv4 destination
        m.curl(f"http://{pod.peer_ip}:8081/u4"),
        m.curl(f"http://[{pod.peer_ip6}]:8081/u6"),
        m.from_peer("curl", "-s", "-m", "5", f"http://{pod.pod_ip}:7070/i4"),
        m.from_peer("curl", "-s", "-m", "5", f"http://[{pod.pod_ip6}]:7070/i6")]))
    assert outs == [f"8080 GET svc.mesh /c4 from={pod.pod_ip}",
                    f"8080 GET svc.mesh /c6 from={pod.pod_ip}",
                    f"hello from={pod.pod_ip} echo-ok",
                    f"8081 GET {pod.peer_ip}:8081 /u4 from={pod.pod_ip}",
                    f"8081 GET [{pod.peer_ip6}]:8081 /u6 from={pod.pod_ip6}",
                    f"7070 GET {pod.pod_ip}:7070 /i4 from=127.0.0.6",
                    f"7070 GET [{pod.pod_ip6}]:7070 /i6 from=::6"], outs
    assert d == [2, 1, 2, 2, 2], d


@pytest.mark.parametrize("proxy", [pytest.param("envoy", marks=pytest.mark.oracle),
                                   "meshproxy"])
def test_dual_stack_inbound_with_istios_extra_source_address(proxy):
    require_root_tools("iptables", "iptables-save", "iptables-restore", "ip6tables",
                       "ip6tables-save", "ip6tables-restore", "setpriv", "curl")
    require_ip6_nat()
    unprivileged_python()
    if proxy == "envoy" and find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    m = Mesh(dual="istio_inbound", proxy=proxy)
    try:
        pod = m.pod
        outs = [m.from_peer("curl", "-s", "-m", "5", f"http://{pod.pod_ip}:7070/i4"),
                m.from_peer("curl", "-s", "-m", "5", f"http://[{pod.pod_ip6}]:7070/i6")]
    finally:
        m.close()
    assert outs == [f"7070 GET {pod.pod_ip}:7070 /i4 from=127.0.0.6",
                    f"7070 GET [{pod.pod_ip6}]:7070 /i6 from=::6"], outs
