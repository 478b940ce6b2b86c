"""Listeners on IPv4, IPv6 and Unix sockets; listener stat names as Envoy spells them."""

from __future__ import annotations

import socket

import pytest

from tests.support.client import exchange, parse_responses, request
from tests.support.proxies import bootstrap, hcm, listener

DIRECT = [{"match": {"prefix": "/"}, "direct_response": {"status": 200,
                                                          "body": {"inline_string": "hi"}}}]


def _has_ipv6() -> bool:
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def test_ipv4_and_ipv6_listeners(start_meshproxy):
    if not _has_ipv6():
        pytest.skip("no IPv6 loopback on this machine")
    p = start_meshproxy(bootstrap([listener("v4", hcm(DIRECT, stat_prefix="v4")),
                                   listener("v6", hcm(DIRECT, stat_prefix="v6"), address="::1")]))
    assert request(p.port("v4")).body == b"hi"
    data, _ = exchange(p.port("v6"), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", host="::1", expect=1)
    assert parse_responses(data)[0].body == b"hi"
    stats = p.stats()
    # Envoy names listener stats after the configured address (port 0 here), not the bound one.
    assert stats["listener.127.0.0.1_0.downstream_cx_total"] == 1
    assert stats["listener.[__1]_0.downstream_cx_total"] == 1
    assert stats["http.v6.downstream_rq_2xx"] == 1


def test_stat_prefix_names_listener_stats(start_meshproxy):
    p = start_meshproxy(bootstrap([listener("l", hcm(DIRECT), stat_prefix="front")]))
    request(p.port("l"))
    assert p.stat("listener.front.downstream_cx_total") == 1


def test_unix_socket_listener(start_meshproxy, tmp_path):
    path = str(tmp_path / "l.sock")
    lst = {"name": "pipe", "address": {"pipe": {"path": path}},
           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                           "typed_config": hcm(DIRECT)}]}]}
    start_meshproxy(bootstrap([lst]))
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"hi" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    assert parse_responses(data)[0].status == 200
