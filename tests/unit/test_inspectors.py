"""TLS ClientHello and HTTP detection on real bytes (ClientHellos made by Python's ssl)."""

from __future__ import annotations

import ssl

import pytest

from meshproxy.listener.inspectors import NEED_MORE, inspect_http, inspect_tls


def client_hello(sni=None, alpn=None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_sni_and_alpn_found():
    r = inspect_tls(client_hello("Svc.NS.svc.cluster.local", ["istio-http/1.1", "h2"]))
    assert r.is_tls and r.server_name == "svc.ns.svc.cluster.local"
    assert r.alpn == ("istio-http/1.1", "h2")


def test_tls_without_sni_or_alpn():
    r = inspect_tls(client_hello())
    assert r.is_tls and r.server_name == "" and r.alpn == ()


def test_every_prefix_needs_more_then_decides():
    hello = client_hello("a.example", ["h2"])
    for i in range(1, len(hello)):
        assert inspect_tls(hello[:i]) is NEED_MORE, i
    assert inspect_tls(hello).server_name == "a.example"


def test_plaintext_is_not_tls_at_once():
    r = inspect_tls(b"GET / HTTP/1.1\r\n")
    assert r is not NEED_MORE and not r.is_tls and not r.error


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",       # handshake record, but not a ClientHello
    b"\x16\x07\x01\x00\x01\x00",                       # bad record version
])
def test_garbage_after_handshake_byte_is_an_error(data):
    r = inspect_tls(data)
    assert r is not NEED_MORE and not r.is_tls and r.error


def test_oversized_client_hello():
    hdr = b"\x16\x03\x01\x40\x00" + b"\x01" + (70000).to_bytes(3, "big")
    r = inspect_tls(hdr + b"\x00" * 100)
    assert r is not NEED_MORE and r.too_large


@pytest.mark.parametrize("data,expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "http/1.1"),
    (b"POST /a?b HTTP/1.0\r\n", "http/1.0"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "h2c"),
    (b"PRI * HTTP/2.0\r\n", NEED_MORE),
    (b"GE", NEED_MORE),
    (b"GET /abc", NEED_MORE),
    (b"SSH-2.0-OpenSSH_9.2\r\n", None),
    (b"\x00\x01\x02", None),
    (b"GET / HTTP/3.0\r\n", None),
    (b"HELLO world\r\n", None),
])
def test_http_inspector(data, expected):
    assert inspect_http(data) is expected or inspect_http(data) == expected
