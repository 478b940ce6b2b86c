"""Traffic through the installed rules: who gets redirected where, and whether the original
destination survives (SO_ORIGINAL_DST for REDIRECT, the accepted socket's local address for
TPROXY).

A stand-in proxy (a plain Python listener, no meshproxy) runs in the pod namespace; an
"application" connects as uid 1000 (captured) or as the proxy's uid 1337 (never captured), using
setpriv (util-linux) to drop privileges; a real server in the peer namespace answers what is not
captured.  Every reply names the listening port that accepted it, so the route is visible.
"""

from __future__ import annotations

import pytest

from tests.netns import Pod, Server, package_for_other_users, require_root_tools, unprivileged_python
from tests.netns.test_iptables_rules import SIDECAR, TPROXY

# Accepts on each "host:port" given, replies "<port> orig=<SO_ORIGINAL_DST> local=<sockname>".
LISTENER = r"""
import select, socket, struct, sys
transparent = "transparent" in sys.argv[2:]
socks = {}
for spec in sys.argv[1].split(","):
    host, port = spec.rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if transparent:  # IP_TRANSPARENT (19): required for a TPROXY target listener
        s.setsockopt(socket.SOL_IP, 19, 1)
    s.bind((host, int(port)))
    s.listen(64)
    socks[s] = port
print("ready", flush=True)
while True:
    for s in select.select(list(socks), [], [])[0]:
        c, _ = s.accept()
        try:
            raw = c.getsockopt(socket.SOL_IP, 80, 16)  # SO_ORIGINAL_DST -> struct sockaddr_in
            orig = "%s:%d" % (socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0])
        except OSError:
            orig = "none"
        c.sendall(("%s orig=%s local=%s:%d\n" % ((socks[s], orig) + c.getsockname())).encode())
        c.close()
"""

# connect(host, port) [from source address]; print the reply.
CLIENT = r"""
import socket, sys
s = socket.socket()
s.settimeout(10)
if len(sys.argv) > 3:
    s.bind((sys.argv[3], 0))
s.connect((sys.argv[1], int(sys.argv[2])))
print(s.recv(256).decode().strip())
"""


class Scene:
    def __init__(self, mode_flags: list[str], transparent: bool):
        self.pod = Pod()
        self.servers: list[Server] = []
        try:
            self.pod.tool(*mode_flags)
            extra = ("transparent",) if transparent else ()
            # The proxy's listeners (loopback outbound, any-address inbound) and the app's
            # own ports, as in a pod: 9080 the app, 15021 excluded from capture.
            self.servers.append(Server(self.pod.name, LISTENER,
                                       "127.0.0.1:15001,0.0.0.0:15006", *extra))
            self.servers.append(Server(self.pod.name, LISTENER, "0.0.0.0:9080,0.0.0.0:15021"))
            self.servers.append(Server(self.pod.peer, LISTENER, "0.0.0.0:8080"))
        except BaseException:
            self.close()
            raise

    def connect(self, uid: int, host: str, port: int, source: str | None = None) -> str:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                unprivileged_python(), "-c", CLIENT, host, str(port), *([source] if source else [])]
        return self.pod.exec(*argv).stdout.strip()

    def connect_from_peer(self, host: str, port: int) -> str:
        argv = [unprivileged_python(), "-c", CLIENT, host, str(port)]
        return self.pod.exec(*argv, ns=self.pod.peer).stdout.strip()

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        self.pod.close()


@pytest.fixture(scope="module")
def redirect():
    require_root_tools("iptables", "iptables-save", "iptables-restore", "setpriv")
    unprivileged_python()
    scene = Scene(SIDECAR, transparent=False)
    try:
        yield scene
    finally:
        scene.close()


def test_app_call_to_a_service_vip_reaches_the_outbound_listener_with_its_destination(redirect):
    # 10.96.0.10 exists nowhere: only the redirect can answer.
    assert redirect.connect(1000, "10.96.0.10", 80) == "15001 orig=10.96.0.10:80 local=127.0.0.1:15001"


def test_app_call_to_a_real_server_is_captured_but_the_proxy_uid_goes_direct(redirect):
    peer = redirect.pod.peer_ip
    assert redirect.connect(1000, peer, 8080) == f"15001 orig={peer}:8080 local=127.0.0.1:15001"
    direct = redirect.connect(1337, peer, 8080)  # the peer has no conntrack: orig=none there
    assert direct.startswith("8080 ") and direct.endswith(f"local={peer}:8080")


def test_inbound_connection_reaches_the_inbound_listener_except_excluded_ports(redirect):
    ip = redirect.pod.pod_ip
    assert redirect.connect_from_peer(ip, 9080) == f"15006 orig={ip}:9080 local={ip}:15006"
    assert redirect.connect_from_peer(ip, 15021) == f"15021 orig={ip}:15021 local={ip}:15021"


def test_proxy_reaching_the_app_by_pod_ip_is_captured_unless_from_127_0_0_6(redirect):
    ip = redirect.pod.pod_ip
    # proxy (outbound side) -> pod IP over lo goes to the inbound listener (app -> VIP -> self);
    # REDIRECT maps locally generated packets to 127.0.0.1 (iptables-extensions(8), REDIRECT)
    assert redirect.connect(1337, ip, 9080) == f"15006 orig={ip}:9080 local=127.0.0.1:15006"
    # the inbound passthrough cluster binds 127.0.0.6 and reaches the app itself
    assert redirect.connect(1337, ip, 9080, source="127.0.0.6") == f"9080 orig={ip}:9080 local={ip}:9080"


def test_app_to_localhost_is_not_captured(redirect):
    assert redirect.connect(1000, "127.0.0.1", 9080) == "9080 orig=127.0.0.1:9080 local=127.0.0.1:9080"


def test_tproxy_inbound_keeps_the_destination_as_the_local_address():
    require_root_tools("iptables", "iptables-save", "iptables-restore", "setpriv")
    unprivileged_python()
    scene = Scene(TPROXY, transparent=True)
    try:
        ip = scene.pod.pod_ip
        # TPROXY does no NAT: the proxy's socket is bound to the original destination itself.
        assert scene.connect_from_peer(ip, 9080) == f"15006 orig={ip}:9080 local={ip}:9080"
        assert scene.connect_from_peer(ip, 15021) == f"15021 orig={ip}:15021 local={ip}:15021"
        # outbound capture stays REDIRECT in TPROXY mode
        assert scene.connect(1000, "10.96.0.10", 80) == "15001 orig=10.96.0.10:80 local=127.0.0.1:15001"
    finally:
        scene.close()


def test_run_validation_passes_with_the_rules_and_times_out_without():
    """--run-validation (the istio-validation container, which runs as the proxy uid)."""
    require_root_tools("iptables", "iptables-save", "iptables-restore", "setpriv")
    pod = Pod()
    try:
        pod.tool(*SIDECAR)
        with package_for_other_users() as home:
            def validate(timeout: str):
                argv = ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups",
                        unprivileged_python(), "-m", "meshproxy_iptables", "--skip-rule-apply",
                        "--run-validation", f"--probe-timeout={timeout}", "-u", "1337"]
                return pod.exec(*argv, check=False, env={"PYTHONPATH": home, "PATH": "/usr/bin:/bin"})
            ok = validate("20s")  # returns as soon as one probe is seen redirected
            assert ok.returncode == 0 and "Validation passed" in ok.stderr, ok.stderr
            pod.tool("cleanup", *SIDECAR)
            failed = validate("300ms")  # nothing redirects now: Istio's timeout, exit 126
            assert failed.returncode == 126
            assert failed.stderr.splitlines()[-1].endswith("validation timeout")
    finally:
        pod.close()
