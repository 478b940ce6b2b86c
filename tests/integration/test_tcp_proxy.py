"""tcp_proxy to a cluster through a running meshproxy: bytes both ways, half-close, backpressure
both ways, idle_timeout, max_downstream_connection_duration, connect failure, resets, and the
``tcp.<stat_prefix>.*`` and cluster stats Envoy 1.40 reports for the same traffic (checked
against Envoy itself in tests/oracle/test_upstream_oracle.py)."""

from __future__ import annotations

import select
import socket
import time

import pytest

from tests.integration.test_upstream_servers import TcpServer, dead_port, wait_for
from tests.support.proxies import ProxyProcess, bootstrap, cluster, listener

TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
MODES = ("echo", "eofreply", "greet", "flood", "silent", "stall", "rst")


def tcp_listener(name, cluster_name, **extra):
    cfg = {"@type": TCP, "stat_prefix": name, "cluster": cluster_name, **extra}
    return listener(name, cfg, filter_name="envoy.filters.network.tcp_proxy")


@pytest.fixture(scope="module")
def env():
    servers = {m: TcpServer(m) for m in MODES}
    clusters = [cluster(m, [("127.0.0.1", s.port)]) for m, s in servers.items()]
    clusters.append(cluster("dead", [("127.0.0.1", dead_port())]))
    listeners = [tcp_listener(m, m) for m in MODES]
    listeners += [tcp_listener("idle", "silent", idle_timeout="0.3s"),
                  tcp_listener("duration", "echo", max_downstream_connection_duration="0.3s"),
                  tcp_listener("dead", "dead", max_connect_attempts=3),
                  tcp_listener("nocluster", "missing")]
    p = ProxyProcess("meshproxy", bootstrap(listeners, clusters)).start()
    try:
        yield p, servers
    finally:
        for s in servers.values():
            s.__exit__()
        p.stop()


def connect(p, name):
    s = socket.create_connection(("127.0.0.1", p.port(name)), timeout=5)
    return s


def read_to_eof(s, timeout=5.0):
    s.settimeout(timeout)
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            return data
        data += d


def test_bytes_both_ways_and_stats(env):
    p, servers = env
    before = p.stats("^(tcp\\.echo|cluster\\.echo)\\.")
    s = connect(p, "echo")
    s.sendall(b"ping")
    assert s.recv(100) == b"ping"
    s.sendall(b"x" * 100000)
    got = b""
    while len(got) < 100000:
        got += s.recv(65536)
    s.shutdown(socket.SHUT_WR)
    assert read_to_eof(s) == b""
    s.close()
    assert wait_for(lambda: p.stat("cluster.echo.upstream_cx_active") == 0)
    after = p.stats("^(tcp\\.echo|cluster\\.echo)\\.")
    d = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert d["tcp.echo.downstream_cx_total"] == 1
    assert d["tcp.echo.downstream_cx_rx_bytes_total"] == 100004
    assert d["tcp.echo.downstream_cx_tx_bytes_total"] == 100004
    assert d["cluster.echo.upstream_cx_tx_bytes_total"] == 100004
    assert d["cluster.echo.upstream_rq_total"] == 1 and d["cluster.echo.upstream_cx_total"] == 1
    assert d["cluster.echo.upstream_rq_pending_total"] == 1
    # Our FIN went first, the upstream's last: a remote close, with the "request" active.
    assert d["cluster.echo.upstream_cx_destroy_remote_with_active_rq"] == 1


def test_half_close_keeps_the_reply_direction_open(env):
    p, servers = env
    s = connect(p, "eofreply")
    s.sendall(b"a" * 1000)
    s.shutdown(socket.SHUT_WR)          # the server only answers after our FIN
    assert read_to_eof(s) == b"got 1000"
    s.close()


def test_server_speaks_first(env):
    p, _ = env
    s = connect(p, "greet")
    assert s.recv(100) == b"hello"
    s.sendall(b"abc")
    assert s.recv(100) == b"abc"
    s.close()


def test_slow_reader_stalls_the_upstream(env):
    p, servers = env
    srv = servers["flood"]
    s = connect(p, "flood")
    # The upstream writes for 3 s without reading; we read nothing for 1.5 s.
    assert wait_for(lambda: srv.flooded > 0)
    deadline = time.monotonic() + 1.5
    samples = []
    while time.monotonic() < deadline:
        samples.append(srv.flooded)
        time.sleep(0.1)
    s.close()
    assert samples[-1] < 24 << 20, samples[-1]
    assert samples[-1] - samples[-4] < 1 << 20   # stalled, not merely slow


def test_slow_upstream_stalls_the_client(env):
    p, _ = env
    s = connect(p, "stall")
    s.setblocking(False)
    chunk = b"y" * 65536
    sent = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and sent < 64 << 20:
        select.select([], [s], [], 0.05)
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            pass
    s.close()
    assert 0 < sent < 24 << 20, sent


def test_idle_timeout_closes_both_sides(env):
    p, _ = env
    n0 = p.stat("tcp.idle.idle_timeout")
    s = connect(p, "idle")
    t0 = time.monotonic()
    assert read_to_eof(s, timeout=3) == b""
    assert 0.25 < time.monotonic() - t0 < 2.5
    s.close()
    assert wait_for(lambda: p.stat("tcp.idle.idle_timeout") == n0 + 1)
    assert p.stat("cluster.silent.upstream_cx_destroy_local_with_active_rq") >= 1


def test_max_downstream_connection_duration(env):
    p, _ = env
    s = connect(p, "duration")
    s.sendall(b"hi")
    assert s.recv(10) == b"hi"
    assert read_to_eof(s, timeout=3) == b""
    s.close()
    assert wait_for(lambda: p.stat("tcp.duration.max_downstream_connection_duration") == 1)


def test_connect_failure_closes_downstream(env):
    p, _ = env
    s = connect(p, "dead")
    assert read_to_eof(s, timeout=3) == b""
    s.close()
    st = p.stats("^cluster\\.dead\\.")
    assert st["cluster.dead.upstream_cx_connect_fail"] == 3
    assert st["cluster.dead.upstream_cx_connect_attempts_exceeded"] == 1
    assert st["cluster.dead.upstream_rq_pending_failure_eject"] == 3
    assert st["cluster.dead.upstream_cx_destroy_remote"] == 3
    assert st["cluster.dead.upstream_rq_total"] == 0


def test_unknown_cluster_closes_and_counts_no_route(env):
    p, _ = env
    s = connect(p, "nocluster")
    try:
        assert read_to_eof(s, timeout=3) == b""
    except ConnectionResetError:
        pass
    s.close()
    assert wait_for(lambda: p.stat("tcp.nocluster.downstream_cx_no_route") == 1)


def test_upstream_reset_resets_downstream(env):
    p, _ = env
    s = connect(p, "rst")
    with pytest.raises(ConnectionResetError):
        read_to_eof(s, timeout=3)
    s.close()


def test_downstream_close_closes_upstream(env):
    p, servers = env
    srv = servers["echo"]
    n = len(srv.ends)
    s = connect(p, "echo")
    s.sendall(b"x")
    assert s.recv(10) == b"x"
    s.close()
    assert wait_for(lambda: len(srv.ends) > n)
