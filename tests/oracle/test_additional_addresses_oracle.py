"""Listeners with ``additional_addresses`` (Istio's dual-stack shape) through Envoy 1.40 and
meshproxy side by side: the same bootstrap, the same connections to every address, and then the
same admin views (/listeners in text and JSON, the listeners' /config_dump, the listener stats),
the same listen-socket options per address (read back with ``ss``), and the same verdicts of
``--mode validate`` on bad addresses.

Listeners here:
- ``dual``: 127.0.0.1 plus ::1 plus a second 127.0.0.1 socket, one tcp_proxy chain;
- ``compat``: [::] with ``ipv4_compat``, chains chosen by destination and source prefix, so
  an IPv4 connection is only served if it is seen as IPv4 on both ends;
- ``outbound``: ``use_original_dst`` with the original_dst filter on 127.0.0.2 and ::1 (no
  iptables here, so nothing is restored and connections stay on it, from either address);
- ``0.0.0.0_9080``: ``bind_to_port: false`` on 0.0.0.0:9080 and [::]:9080, as Istio renders it;
- ``opts``: listener socket options and per-address overrides (present, absent, empty).
Ports are 0, so each proxy binds its own; they are replaced by their order of appearance.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.oracle.test_admin_oracle import _normalise_dump
from tests.support.client import exchange, parse_responses
from tests.support.proxies import (
    REPO,
    ProxyProcess,
    bootstrap,
    cluster,
    find_envoy,
    hcm,
)

pytestmark = pytest.mark.oracle

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ORIGINAL_DST = {"name": "envoy.filters.listener.original_dst", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}
SO_RCVBUF = 8


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _sa(ip, port=0, **extra):
    return {"socket_address": {"address": ip, "port_value": port, **extra}}


def _tcp(cluster_name, match=None):
    fc = {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": cluster_name, "cluster": cluster_name}}]}
    if match:
        fc["filter_chain_match"] = match
    return fc


def _rcvbuf(value):
    return {"level": 1, "name": SO_RCVBUF, "int_value": value}


def _bootstrap(echo_port, v4_port, v6_port, http_port):
    listeners = [
        {"name": "dual", "address": _sa("127.0.0.1"),
         "additional_addresses": [{"address": _sa("::1")}, {"address": _sa("127.0.0.1")}],
         "filter_chains": [_tcp("echo")]},
        {"name": "compat", "address": _sa("::", ipv4_compat=True),
         "filter_chains": [
             _tcp("v4", {"prefix_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}],
                         "source_prefix_ranges": [{"address_prefix": "127.0.0.1",
                                                   "prefix_len": 32}]}),
             _tcp("v6", {"prefix_ranges": [{"address_prefix": "::1", "prefix_len": 128}]})]},
        {"name": "compat_http", "address": _sa("::", ipv4_compat=True),
         "stat_prefix": "compat_http",
         "filter_chains": [{"filters": [{
             "name": "envoy.filters.network.http_connection_manager",
             "typed_config": hcm([{"match": {"prefix": "/"}, "route": {"cluster": "http"}}],
                                 stat_prefix="compat_http", use_remote_address=True)}]}]},
        {"name": "outbound", "address": _sa("127.0.0.2"), "use_original_dst": True,
         "traffic_direction": "OUTBOUND", "listener_filters": [ORIGINAL_DST],
         "additional_addresses": [{"address": _sa("::1")}],
         "filter_chains": [_tcp("echo")]},
        {"name": "0.0.0.0_9080", "address": _sa("0.0.0.0", 9080), "bind_to_port": False,
         "traffic_direction": "OUTBOUND", "additional_addresses": [{"address": _sa("::", 9080)}],
         "filter_chains": [{"filters": [{
             "name": "envoy.filters.network.http_connection_manager",
             "typed_config": hcm([{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}],
                                 stat_prefix="outbound_0.0.0.0_9080")}]}]},
        {"name": "opts", "address": _sa("127.0.0.3"), "socket_options": [_rcvbuf(70000)],
         "additional_addresses": [
             {"address": _sa("::1"), "socket_options": {"socket_options": [_rcvbuf(40000)]}},
             {"address": _sa("::1")},
             {"address": _sa("127.0.0.3"), "socket_options": {}}],
         "filter_chains": [_tcp("echo")]},
    ]
    return bootstrap(listeners, [cluster("echo", [("127.0.0.1", echo_port)]),
                                 cluster("v4", [("127.0.0.1", v4_port)]),
                                 cluster("v6", [("127.0.0.1", v6_port)]),
                                 cluster("http", [("127.0.0.1", http_port)])])


class Run:
    """One proxy and the addresses it bound, in /listeners order."""

    def __init__(self, proxy):
        self.p = proxy
        listing = json.loads(proxy.get_admin("/listeners?format=json")[1])
        self.addresses: dict[str, list] = {}
        self.roles: dict[int, str] = {}
        for ls in listing["listener_statuses"]:
            addrs = []
            for a in [ls["local_address"], *ls.get("additional_local_addresses", [])]:
                sa = a["socket_address"]
                addrs.append((sa["address"], sa.get("port_value", 0)))
                port = sa.get("port_value", 0)
                if port not in (0, 9080):
                    self.roles.setdefault(port, f"P{len(self.roles)}")
            self.addresses[ls["name"]] = addrs

    def normalise(self, text: str) -> str:
        for port, role in self.roles.items():
            text = re.sub(rf"(?<=[_:]){port}\b", role, text)
            text = re.sub(rf'("port_value": ?){port}\b', rf'\g<1>"{role}"', text)
        return text

    def admin(self, path: str) -> str:
        status, body = self.p.get_admin(path)
        assert status == 200, (path, body)
        return self.normalise(body)


@pytest.fixture(scope="module")
def pair():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    if not _has_ipv6():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    from tests.support.tcp import TcpEcho
    from tests.support.upstream import Upstream
    with TcpEcho(reply=b"<echo>") as echo, TcpEcho(reply=b"<v4>") as v4, \
            TcpEcho(reply=b"<v6>") as v6, Upstream() as http:
        runs = {}
        try:
            for kind in ("envoy", "meshproxy"):
                p = ProxyProcess(kind, _bootstrap(echo.port, v4.port, v6.port, http.port))
                runs[kind] = Run(p.start())
            runs["http"] = http
            yield runs
        finally:
            for k in ("envoy", "meshproxy"):
                if k in runs:
                    runs[k].p.stop()


def _talk(addr, payload=b"ping") -> bytes:
    """Connect, send, half-close, and read until the proxy closes: the proxy has closed its
    side when this returns."""
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while True:
                d = s.recv(4096)
                if not d:
                    break
                out += d
        except ConnectionResetError:
            pass
        return out


def _listener_stats(run) -> dict:
    out = {}
    for line in run.admin("/stats?filter=^listener\\.").splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("listener.admin.") or not value.isdigit():
            continue
        out[name] = int(value)
    return out


def _settled_stats(pair) -> tuple[dict, dict]:
    """Both proxies' listener stats once no connection is active any more (each notices the
    closes in its own time; this polls the admin API with a deadline, there is no event to
    wait on in another process)."""
    deadline = time.monotonic() + 5
    while True:
        got = [_listener_stats(pair[k]) for k in ("envoy", "meshproxy")]
        idle = all(v == 0 for st in got for k, v in st.items() if k.endswith("cx_active"))
        if idle or time.monotonic() > deadline:
            return got[0], got[1]
        time.sleep(0.02)


def test_listeners_page_lists_every_address(pair):
    e, m = pair["envoy"].admin("/listeners"), pair["meshproxy"].admin("/listeners")
    assert m == e
    lines = m.splitlines()
    assert [ln for ln in lines if ln.startswith("dual::")] == [
        "dual::127.0.0.1:P0", "dual::[::1]:P1", "dual::127.0.0.1:P2"]
    assert "0.0.0.0_9080::0.0.0.0:9080" in lines and "0.0.0.0_9080::[::]:9080" in lines
    ej = json.loads(pair["envoy"].admin("/listeners?format=json"))
    mj = json.loads(pair["meshproxy"].admin("/listeners?format=json"))
    assert mj == ej
    dual = next(ls for ls in mj["listener_statuses"] if ls["name"] == "dual")
    assert [a["socket_address"]["address"] for a in dual["additional_local_addresses"]] == \
        ["::1", "127.0.0.1"]


@pytest.mark.parametrize("query", ["?resource=static_listeners",
                                   "?resource=static_listeners&name_regex=^(dual|opts)$"])
def test_config_dump_keeps_additional_addresses(pair, query):
    e = json.loads(pair["envoy"].admin("/config_dump" + query))
    m = json.loads(pair["meshproxy"].admin("/config_dump" + query))
    assert _normalise_dump(m, ports=False) == _normalise_dump(e, ports=False)
    dumped = {c["listener"]["name"]: c["listener"] for c in m["configs"]}
    assert dumped["dual"]["additional_addresses"][0]["address"]["socket_address"] == \
        {"address": "::1", "port_value": 0}


def test_connections_to_every_address_are_the_listeners_own(pair):
    for kind, run in ((k, pair[k]) for k in ("envoy", "meshproxy")):
        for addr in run.addresses["dual"] + run.addresses["outbound"]:
            assert _talk(addr) == b"<echo><EOF>", (kind, addr)
    e, m = _settled_stats(pair)
    assert m == e
    # one listener's counters whatever address a connection came in on
    assert m["listener.127.0.0.1_0.downstream_cx_total"] == 3
    assert m["listener.127.0.0.2_0.downstream_cx_total"] == 2
    assert m["listener.127.0.0.1_0.downstream_cx_destroy"] == 3
    assert not any(k.startswith("listener.[__1]_0") for k in m)


def test_ipv4_on_a_dual_stack_socket_is_matched_as_ipv4(pair):
    """[::] with ipv4_compat takes IPv4 connections; both proxies see them as 127.0.0.1 ->
    127.0.0.1 (not ::ffff:127.0.0.1), so the IPv4 chain's prefix and source prefix match."""
    for kind, run in ((k, pair[k]) for k in ("envoy", "meshproxy")):
        port = run.addresses["compat"][0][1]
        assert _talk(("127.0.0.1", port)) == b"<v4><EOF>", kind
        assert _talk(("::1", port)) == b"<v6><EOF>", kind
    e, m = _settled_stats(pair)
    assert m == e
    assert m["listener.[__]_0.downstream_cx_total"] == 2
    assert m["listener.[__]_0.no_filter_chain_match"] == 0


def test_ipv4_client_of_a_dual_stack_socket_is_an_ipv4_remote_address(pair):
    """The HTTP connection manager (use_remote_address) treats an IPv4 client of [::] with
    ipv4_compat as 127.0.0.1, a loopback client, not as ::ffff:127.0.0.1: for a loopback
    client Envoy appends the host's own address to x-forwarded-for, and so must meshproxy."""
    http = pair["http"]
    seen = {}
    for kind in ("envoy", "meshproxy"):
        port = pair[kind].addresses["compat_http"][0][1]
        for host in ("127.0.0.1", "::1"):
            before = len(http.requests)
            data, _ = exchange(port, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", host=host, expect=1)
            assert parse_responses(data)[0].status == 200, (kind, host, data)
            req = http.wait_requests(before + 1)[-1]
            seen[kind, host] = (req.header("x-forwarded-for"),
                                req.header("x-envoy-external-address"))
    assert seen["meshproxy", "127.0.0.1"] == seen["envoy", "127.0.0.1"]
    assert seen["meshproxy", "::1"] == seen["envoy", "::1"]
    assert "ffff" not in str(seen["meshproxy", "127.0.0.1"])


def _rcvbufs(run) -> list:
    """SO_RCVBUF of each listen socket of ``opts``, as ``ss`` reports it (rb, twice the
    requested value)."""
    out = []
    for ip, port in run.addresses["opts"]:
        text = subprocess.run(["ss", "-ltnmH", f"sport = :{port}"], capture_output=True,
                              text=True, timeout=10).stdout
        m = re.search(r"\brb(\d+)", text)
        assert m, (ip, port, text)
        out.append(int(m.group(1)))
    return out


def test_socket_options_per_address(pair):
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to read listen-socket buffer sizes")
    e, m = _rcvbufs(pair["envoy"]), _rcvbufs(pair["meshproxy"])
    assert m == e
    # the listener's options, an override, the listener's again, an empty override (none)
    assert m[0] == m[2] == 140000 and m[1] == 80000 and m[3] not in (80000, 140000)


# ---------------------------------------------------------------------- validation

def _lst(name, ip, port, additional=(), **extra):
    lst = {"name": name, "address": _sa(ip, port), "filter_chains": [_tcp("c")]}
    if additional:
        lst["additional_addresses"] = list(additional)
    lst.update(extra)
    return lst


def _add(ip, port, **extra):
    return {"address": _sa(ip, port, **extra)}


# name: (listeners, Envoy's words that meshproxy must say too, or None to compare only the
# verdict)
CASES = {
    "additional_v6": ([_lst("a", "127.0.0.1", 20001, [_add("::1", 20001)])], ""),
    "same_as_main_in_one_listener": ([_lst("a", "127.0.0.1", 20001,
                                           [_add("127.0.0.1", 20001)])], ""),
    "twice_in_one_listener": ([_lst("a", "127.0.0.1", 20001,
                                    [_add("::1", 20001), _add("::1", 20001)])], ""),
    "additional_is_other_listeners_main": (
        [_lst("a", "127.0.0.1", 20001), _lst("b", "::1", 20001, [_add("127.0.0.1", 20001)])],
        "error adding listener: 'b' has duplicate address '[::1]:20001,127.0.0.1:20001' as "
        "existing listener"),
    "main_is_other_listeners_additional": (
        [_lst("a", "127.0.0.1", 20001, [_add("::1", 20002)]), _lst("b", "::1", 20002)],
        "error adding listener: 'b' has duplicate address '[::1]:20002' as existing listener"),
    "virtual_listeners_share_an_address": (
        [_lst("0.0.0.0_80", "0.0.0.0", 80, [_add("::", 80)], bind_to_port=False),
         _lst("[::]_80", "::", 80, bind_to_port=False)],
        "error adding listener: '[::]_80' has duplicate address '[::]:80' as existing "
        "listener"),
    "port_zero_of_a_bound_listener_is_exempt": (
        [_lst("a", "127.0.0.1", 0), _lst("b", "::1", 0, [_add("127.0.0.1", 0)])], ""),
    "port_zero_of_a_virtual_listener_is_not": (
        [_lst("a", "127.0.0.1", 0, bind_to_port=False),
         _lst("b", "::1", 0, [_add("127.0.0.1", 0)])],
        "error adding listener: 'b' has duplicate address '[::1]:0,127.0.0.1:0'"),
    "udp_additional": ([_lst("a", "127.0.0.1", 20001, [_add("::1", 20001, protocol="UDP")])],
                       "has different socket type. The listener only support same socket type "
                       "for all the addresses."),
    "ipv4_compat_checked_against_the_main_address": (
        [_lst("a", "0.0.0.0", 20001, [_add("::", 20001, ipv4_compat=True)])],
        "Only IPv6 address '::' or valid IPv4-mapped IPv6 address can set ipv4_compat: "
        "0.0.0.0:20001"),
    "ipv4_compat_on_ipv4_additional_with_v6_main": (
        [_lst("a", "::", 20001, [_add("127.0.0.1", 20002, ipv4_compat=True)])], ""),
    "ipv4_compat_on_ipv4_main": (
        [{**_lst("a", "127.0.0.1", 20001),
          "address": _sa("127.0.0.1", 20001, ipv4_compat=True)}],
        "Only IPv6 address '::' or valid IPv4-mapped IPv6 address can set ipv4_compat: "
        "127.0.0.1:20001"),
    "ipv4_compat_with_v6only_mapped_main": (
        [_lst("a", "::ffff:127.0.0.1", 20001, [_add("::1", 20001, ipv4_compat=True)])],
        "can set ipv4_compat: [::ffff:127.0.0.1]:20001"),
    "malformed_additional_ip": ([_lst("a", "127.0.0.1", 20001, [_add("not-an-ip", 1)])],
                                "malformed IP address: not-an-ip"),
    "malformed_main_ip": ([_lst("a", "not-an-ip", 20001)], "malformed IP address: not-an-ip"),
    "internal_additional": (
        [_lst("a", "127.0.0.1", 20001,
              [{"address": {"envoy_internal_address": {"server_listener_name": "x"}}}])],
        "use internal_listener field instead of address for internal listeners"),
    "additional_without_address_kind": ([_lst("a", "127.0.0.1", 20001, [{"address": {}}])],
                                        None),
    "pipe_additional": ([_lst("a", "127.0.0.1", 20001,
                              [{"address": {"pipe": {"path": "/tmp/mp-never-bound.sock"}}}])],
                        ""),
    "socket_option_without_value": (
        [_lst("a", "127.0.0.1", 20001, socket_options=[{"level": 1, "name": SO_RCVBUF}])],
        None),
}


def _validate(cmd, path):
    p = subprocess.run([*cmd, "--mode", "validate", "-c", str(path), "-l", "critical"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    text = p.stdout + p.stderr
    m = re.search(r"error initializing configuration '[^']*': (.*)", text)
    return p.returncode, (m.group(1) if m else text)


@pytest.mark.parametrize("name", sorted(CASES))
def test_validate_as_envoy(tmp_path, name):
    envoy = find_envoy()
    if envoy is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    listeners, words = CASES[name]
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap(listeners, [cluster("c", [("127.0.0.1", 1)])])))
    e_rc, e_msg = _validate([envoy], path)
    m_rc, m_msg = _validate([sys.executable, "-m", "meshproxy"], path)
    assert (m_rc == 0) == (e_rc == 0), (e_msg, m_msg)
    if words:
        assert words in e_msg, e_msg
        assert words in m_msg, m_msg
        assert re.match(r"static_resources\.listeners\[\d\]\.", m_msg), m_msg


# ---------------------------------------------------------------------- Istio's bootstrap


def test_istio_dual_stack_bootstrap_listeners(tmp_path):
    """Istio's rendered bootstrap as its template renders it for a dual-stack pod: the
    Prometheus (15090) and readiness (15021) listeners get an ``additionalAddresses`` entry on
    the IPv6 side (here 127.0.0.1 and ::1, port 0). Both proxies list the same addresses and
    answer the same on each."""
    import os

    from tests.oracle.test_admin_oracle import ISTIO_BOOTSTRAP, _istio_boot
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    if not os.path.exists(ISTIO_BOOTSTRAP):
        pytest.skip(f"real configs not found at {ISTIO_BOOTSTRAP} (../shared is absent)")
    if not _has_ipv6():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    boot = _istio_boot(ISTIO_BOOTSTRAP)
    for lst in boot["static_resources"]["listeners"]:
        lst["additionalAddresses"] = [{"address": {"socket_address": {
            "protocol": "TCP", "address": "::1", "port_value": 0}}}]
    runs = {}
    try:
        for kind in ("envoy", "meshproxy"):
            runs[kind] = Run(ProxyProcess(kind, boot).start())
        e, m = (runs[k].admin("/listeners") for k in ("envoy", "meshproxy"))
        assert m == e
        assert len(m.splitlines()) == 2 * len(boot["static_resources"]["listeners"])
        answers = {}
        for kind, run in runs.items():
            for name, addrs in run.addresses.items():
                for host, port in addrs:
                    path = "/stats/prometheus" if "15090" in name or "prometheus" in name \
                        else "/healthz/ready"
                    data, _ = exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
                                       host=host, expect=1)
                    answers.setdefault(kind, []).append(
                        (name, host, parse_responses(data)[0].status))
        assert answers["meshproxy"] == answers["envoy"], answers
    finally:
        for r in runs.values():
            r.p.stop()
