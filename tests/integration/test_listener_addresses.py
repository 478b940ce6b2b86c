"""A listener with ``additional_addresses`` on real loopback sockets (meshproxy alone; the
Envoy comparison is tests/oracle/test_additional_addresses_oracle.py): it accepts on every
address, counts every connection under the main address, lists every address in /listeners,
and fails start-up naming the address it could not bind."""

from __future__ import annotations

import json
import socket

import pytest

from tests.support.client import exchange, parse_responses
from tests.support.proxies import ProxyProcess, bootstrap, hcm, listener

DIRECT = [{"match": {"prefix": "/"}, "direct_response": {"status": 200,
                                                          "body": {"inline_string": "hi"}}}]
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback (::1) here")


def _sa(ip, port=0, **extra):
    return {"address": {"socket_address": {"address": ip, "port_value": port, **extra}}}


def _addresses(p, name):
    listing = json.loads(p.get_admin("/listeners?format=json")[1])
    ls = next(x for x in listing["listener_statuses"] if x["name"] == name)
    out = []
    for a in [ls["local_address"], *ls.get("additional_local_addresses", [])]:
        if "pipe" in a:
            out.append(a["pipe"]["path"])
        else:
            out.append((a["socket_address"]["address"], a["socket_address"]["port_value"]))
    return out


def _get(addr) -> bytes:
    if isinstance(addr, str):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(addr)
            s.sendall(GET)
            data = b""
            while b"hi" not in data:
                d = s.recv(4096)
                if not d:
                    break
                data += d
            return data
    data, _ = exchange(addr[1], GET, host=addr[0], expect=1)
    return data


@needs_ipv6
def test_accepts_on_main_and_additional_addresses(start_meshproxy_default, tmp_path):
    pipe = str(tmp_path / "l.sock")
    lst = listener("l", hcm(DIRECT, stat_prefix="dual"),
                   additional_addresses=[_sa("::1"), {"address": {"pipe": {"path": pipe}}}])
    p = start_meshproxy_default(bootstrap([lst]))
    addrs = _addresses(p, "l")
    assert [a if isinstance(a, str) else a[0] for a in addrs] == ["127.0.0.1", "::1", pipe]
    assert addrs[0][1] != 0 and addrs[1][1] != 0 and addrs[0][1] != addrs[1][1]
    for a in addrs:
        assert parse_responses(_get(a))[0].body == b"hi", a
    text = p.get_admin("/listeners")[1]
    assert text == (f"l::127.0.0.1:{addrs[0][1]}\nl::[::1]:{addrs[1][1]}\nl::{pipe}\n")
    stats = p.stats()
    assert stats["listener.127.0.0.1_0.downstream_cx_total"] == 3
    assert stats["listener.127.0.0.1_0.http.dual.downstream_rq_2xx"] == 3
    assert stats["http.dual.downstream_rq_2xx"] == 3
    assert not any(k.startswith("listener.[__1]") for k in stats)


@needs_ipv6
def test_ipv4_compat_socket_takes_both_families(start_meshproxy_default):
    lst = listener("l", hcm(DIRECT), address="::")
    lst["address"]["socket_address"]["ipv4_compat"] = True
    p = start_meshproxy_default(bootstrap([lst]))
    port = p.port("l")
    for host in ("127.0.0.1", "::1"):
        data, _ = exchange(port, GET, host=host, expect=1)
        assert parse_responses(data)[0].body == b"hi", host
    assert p.stat("listener.[__]_0.downstream_cx_total") == 2


@needs_ipv6
def test_an_address_that_cannot_be_bound_stops_startup_naming_it():
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        lst = listener("l", hcm(DIRECT), additional_addresses=[_sa("::1", port)])
        with pytest.raises(RuntimeError) as ei:
            ProxyProcess("meshproxy", bootstrap([lst])).start()
    assert f"cannot bind '[::1]:{port}': Address already in use" in str(ei.value)


def test_post_listen_socket_option_failure_removes_only_that_listener(start_meshproxy_default):
    """As Envoy's ``doFinalPreWorkerInit``: the listener whose STATE_LISTENING option fails is
    dropped (listener_create_failure, listener_removed); the others serve."""
    bad = listener("bad", hcm(DIRECT), additional_addresses=[
        {**_sa("127.0.0.1"), "socket_options": {"socket_options": [
            {"level": 1, "name": 99999, "int_value": 1, "state": "STATE_LISTENING"}]}}])
    p = start_meshproxy_default(bootstrap([bad, listener("good", hcm(DIRECT))]))
    assert p.get_admin("/listeners")[1] == f"good::127.0.0.1:{p.port('good')}\n"
    assert p.stat("listener_manager.listener_create_failure") == 1
    assert p.stat("listener_manager.listener_removed") == 1
    assert parse_responses(exchange(p.port("good"), GET, expect=1)[0])[0].body == b"hi"
    assert "cannot set post-listen socket option on socket: 127.0.0.1:" in p.log()
