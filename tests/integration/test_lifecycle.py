"""Start-up and shutdown: bad configs never bind a port; SIGTERM drains in-flight requests and
exits 0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml

from tests.support.client import parse_responses
from tests.support.proxies import ProxyProcess, bootstrap, cluster, hcm, listener, \
    simple_proxy_bootstrap
from tests.support.upstream import Reply, Upstream


def _run_meshproxy(tmp_path, boot, timeout=20):
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(boot))
    return subprocess.run([sys.executable, "-m", "meshproxy", "-c", str(path), "-l", "info"],
                          capture_output=True, text=True, timeout=timeout)


def test_bad_config_exits_1_before_binding(tmp_path):
    # Hold a port: if meshproxy tried to bind its listener it would report a bind error;
    # it must report the config error instead, having bound nothing.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    try:
        boot = bootstrap([listener("l", hcm([{"match": {"prefix": "/"},
                                               "route": {"cluster": "c"}}]), port=port)],
                         [cluster("c", [("127.0.0.1", 1)], lb_policy="NO_SUCH_POLICY")])
        r = _run_meshproxy(tmp_path, boot)
    finally:
        held.close()
    assert r.returncode == 1
    assert "static_resources.clusters[0].lb_policy" in r.stderr
    assert "cannot bind" not in r.stderr


def test_bind_failure_exits_1_naming_the_address(tmp_path):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    try:
        boot = bootstrap([listener("l", hcm([{"match": {"prefix": "/"},
                                               "direct_response": {"status": 200}}]),
                                   port=port, enable_reuse_port=False)])
        r = _run_meshproxy(tmp_path, boot)
    finally:
        held.close()
    assert r.returncode == 1
    assert f"cannot bind '127.0.0.1:{port}'" in r.stderr


def test_sigterm_idle_exits_0():
    boot = bootstrap([listener("l", hcm([{"match": {"prefix": "/"},
                                           "direct_response": {"status": 200}}]))])
    p = ProxyProcess("meshproxy", boot).start()
    t0 = time.monotonic()
    assert p.stop(signal.SIGTERM) == 0
    assert time.monotonic() - t0 < 5


def test_sigterm_lets_in_flight_request_finish_then_exits_0():
    def slow(req):
        return Reply(200, [("content-type", "text/plain")], b"late but whole", delay=0.6)

    with Upstream(slow) as up:
        p = ProxyProcess("meshproxy", simple_proxy_bootstrap(up.port)).start()
        s = socket.create_connection(("127.0.0.1", p.port("l")), timeout=5)
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        up.wait_requests(1)
        result = {}
        stopper = threading.Thread(target=lambda: result.update(rc=p.stop(signal.SIGTERM)))
        stopper.start()
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        stopper.join(10)
        s.close()
    (resp,) = parse_responses(data)
    assert resp.status == 200 and resp.body == b"late but whole"
    assert resp.header("connection") == "close"
    assert result["rc"] == 0


def test_new_connections_refused_after_sigterm():
    with Upstream(lambda r: Reply(200, body=b"x", delay=0.5)) as up:
        p = ProxyProcess("meshproxy", simple_proxy_bootstrap(up.port)).start()
        port = p.port("l")
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        up.wait_requests(1)
        p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        refused = False
        while time.monotonic() < deadline and not refused:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.02)
            except ConnectionRefusedError:
                refused = True
        s.close()
        assert p.proc.wait(10) == 0
    assert refused
