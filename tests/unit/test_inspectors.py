"""TLS ClientHello and HTTP request-line detection on bytes, as Envoy 1.40's tls_inspector
(BoringSSL) and http_inspector (Balsa) decide. Every expectation here was observed on Envoy
1.40; tests/oracle/test_listener_bad_input_oracle.py checks the same bytes against it live.
ClientHellos come from Python's ssl module, or from ``hello()`` for malformed ones."""

from __future__ import annotations

import ssl
import struct

import pytest

from meshproxy.listener.inspectors import (MAX_INSPECT, NEED_MORE, READ_ERROR, inspect_http,
                                           inspect_tls)


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


# ---------------------------------------------------------------------- hand-made ClientHellos

def ext_sni(name, name_type=0) -> tuple:
    n = name.encode() if isinstance(name, str) else name
    entry = bytes([name_type]) + struct.pack("!H", len(n)) + n
    return 0, struct.pack("!H", len(entry)) + entry


def ext_alpn(protocols) -> tuple:
    body = b"".join(bytes([len(p)]) + p.encode() for p in protocols)
    return 16, struct.pack("!H", len(body)) + body


def hello_body(version=0x0303, session_id=b"", ciphers=(0x1301, 0xC02F), compression=b"\x00",
               exts=None, raw_exts=None, trailing=b"") -> bytes:
    b = struct.pack("!H", version) + b"\x11" * 32 + bytes([len(session_id)]) + session_id
    cs = b"".join(struct.pack("!H", c) for c in ciphers)
    b += struct.pack("!H", len(cs)) + cs + bytes([len(compression)]) + compression
    if raw_exts is not None:
        b += raw_exts
    elif exts is not None:
        e = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in exts)
        b += struct.pack("!H", len(e)) + e
    return b + trailing


def handshake(body: bytes, msg_type=1) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def records(payload: bytes, record_type=0x16, version=0x0301, split=None) -> bytes:
    chunks = [payload] if not split else [payload[:split], payload[split:]]
    return b"".join(bytes([record_type]) + struct.pack("!HH", version, len(c)) + c
                    for c in chunks)


def hello(split=None, record_version=0x0301, **kw) -> bytes:
    """A ClientHello in TLS records; keyword arguments go to ``hello_body``."""
    return records(handshake(hello_body(**kw)), version=record_version, split=split)


def v2_hello(version=0x0301, specs=bytes.fromhex("00c02f000035"), challenge=b"\x22" * 16,
             extra=b"") -> bytes:
    body = b"\x01" + struct.pack("!HHHH", version, len(specs), 0, len(challenge)) + specs + \
        challenge + extra
    return bytes([0x80 | (len(body) >> 8), len(body) & 0xFF]) + body


# ---------------------------------------------------------------------- TLS


def test_sni_and_alpn_found_as_sent():
    r = inspect_tls(client_hello("Svc.NS.svc.cluster.local", ["istio-http/1.1", "h2"]))
    # Envoy keeps the name as sent; filter-chain matching ignores case.
    assert r.is_tls and r.sni_seen and r.server_name == "Svc.NS.svc.cluster.local"
    assert r.alpn == ("istio-http/1.1", "h2")


def test_tls_without_sni_or_alpn():
    r = inspect_tls(client_hello())
    assert r.is_tls and r.sni_seen and r.server_name == "" and r.alpn == ()


def test_every_prefix_needs_more_then_decides():
    data = client_hello("a.example", ["h2"])
    for i in range(1, len(data)):
        assert inspect_tls(data[:i]) is NEED_MORE, i
    assert inspect_tls(data).server_name == "a.example"


@pytest.mark.parametrize("data", [b"h", b"hi", b"GET ", b"\x16\x03\x01\x00"])
def test_fewer_than_five_bytes_wait(data):
    """BoringSSL reads a whole record header before it judges anything."""
    assert inspect_tls(data) is NEED_MORE


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n", b"POST /", b"hello world\n", b"\x16garbage-after",
    b"\x16\x07\x01\x00\x01\x00",                       # record major version 7
    b"\x16\x03\x01\x00\x02garbage!!",                  # handshake record, bogus message
    b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",       # a complete ServerHello-type message
    b"\x17\x03\x03\x00\x02ab",                         # application data record
    b"\x14\x03\x01\x00\x01\x01",                       # change_cipher_spec
    b"\x15\x03\x01\x00\x02\x02\x28",                   # fatal alert
    b"\x15\x03\x01\x00\x03\x01\x5a\x00",               # malformed alert
    b"\x15\x03\x01\x00\x02\x01\x5a" * 5,               # a fifth warning alert
    b"\x16\x03\x01\x00\x00" * 33 + hello(),            # a 33rd empty record
    b"\x16\x03\x01\x41\x41",                           # record longer than 16704
    b"\x16\x03\x01\x00\x08\x01\x00\x40\x01\x00\x00\x00\x00",  # message declared > 16384
    b"\x00\x03\x00\x00\x02zz",                         # record of type 0
    b"\x80\x10\x02\x03\x01",                           # high bit, but not an SSLv2 hello
])
def test_not_tls(data):
    r = inspect_tls(data)
    assert r is not NEED_MORE and not r.is_tls and not r.close and not r.sni_seen


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x00\x08\x02\x00\x00\x10\x00",        # non-ClientHello, not complete yet
    b"\x16\x03\x01\x00\x08\x01\x00\x40\x00\x00\x00\x00\x00",  # declared exactly 16384
    b"\x16\x03\x01\x41\x40",                            # record of 16704: allowed, incomplete
    b"\x16\x03\x01\x00\x00",                            # an empty handshake record
    b"\x15\x03\x01\x00\x02\x01\x5a",                    # a warning alert is skipped
    b"\x00\x03\x00\x00\x10zz",                          # record header, body incomplete
    v2_hello()[:7],
])
def test_waits_for_more(data):
    assert inspect_tls(data) is NEED_MORE


@pytest.mark.parametrize("kw", [
    {"session_id": b"x" * 33}, {"ciphers": ()}, {"compression": b""},
    {"exts": [], "trailing": b"\x00"}, {"raw_exts": b"\x00\x10\x00\x00"},
    {"exts": [ext_sni("a.example.com"), ext_sni("b.example.com")]},      # duplicate extension
    {"exts": [ext_sni("")]}, {"exts": [ext_sni("a\x00b")]}, {"exts": [ext_sni("a" * 256)]},
    {"exts": [ext_sni("a.example.com", name_type=1)]},
    {"exts": [(0, b"\x00\x0a\x00\x00\x02ab\x00\x00\x02cd")]},          # two names
])
def test_malformed_client_hello_is_not_tls(kw):
    r = inspect_tls(hello(**kw))
    assert not r.is_tls and not r.sni_seen and not r.close


def test_bytes_after_the_client_hello_in_its_record_are_not_tls():
    data = records(handshake(hello_body(exts=[ext_sni("a.example.com")])) + b"\x02")
    assert not inspect_tls(data).is_tls
    # ... but a record after it is never read
    assert inspect_tls(hello(exts=[ext_sni("a.example.com")]) + b"\x16\x03\x01\x00\x01\x02"
                       ).is_tls


@pytest.mark.parametrize("kw,sni,alpn", [
    ({}, "", ()),
    ({"exts": []}, "", ()),
    ({"split": 10, "exts": [ext_sni("a.example.com")]}, "a.example.com", ()),
    ({"version": 0x0301}, "", ()),
    ({"version": 0x0304}, "", ()),
    ({"compression": b"\x01"}, "", ()),                    # checked after the SNI callback
    ({"exts": [(43, b"\x02\x02\x00")]}, "", ()),            # supported_versions: SSLv2 only
    ({"exts": [ext_sni("a" * 255)]}, "a" * 255, ()),
    ({"exts": [ext_alpn(["h2", ""])]}, "", ()),            # malformed ALPN is ignored
    ({"exts": [(16, b"\x00")]}, "", ()),
    ({"exts": [(0xABCD, b"zz")]}, "", ()),
    ({"record_version": 0x0300}, "", ()),
    ({"exts": [ext_sni("x.example"), ext_alpn(["h2", "http/1.1"])]}, "x.example",
     ("h2", "http/1.1")),
])
def test_tls_found(kw, sni, alpn):
    r = inspect_tls(hello(**kw))
    assert r.is_tls and r.sni_seen and r.server_name == sni and r.alpn == alpn


@pytest.mark.parametrize("version", [0x0300, 0x0200, 0x0305, 0x03FF, 0x0000])
def test_legacy_version_outside_tls1_to_tls13_closes_after_sni(version):
    r = inspect_tls(hello(version=version, exts=[ext_sni("a.example.com")]))
    assert not r.is_tls and r.close and r.sni_seen and r.not_found_counted
    assert r.server_name == "a.example.com"


def test_close_notify_closes_quietly():
    r = inspect_tls(b"\x15\x03\x01\x00\x02\x01\x00")
    assert r.close and not r.not_found_counted and not r.sni_seen


def test_warning_alerts_then_hello():
    assert inspect_tls(b"\x15\x03\x01\x00\x02\x01\x5a" * 4 + hello()).is_tls


def test_v2_client_hello():
    r = inspect_tls(v2_hello())
    assert r.is_tls and r.server_name == "" and r.alpn == ()
    assert inspect_tls(v2_hello(challenge=b"\x22" * 40)).is_tls
    assert not inspect_tls(v2_hello(specs=bytes.fromhex("010080"))).is_tls  # SSLv2 ciphers
    assert not inspect_tls(v2_hello(extra=b"\x00")).is_tls
    assert inspect_tls(v2_hello(version=0x0300)).close
    assert not inspect_tls(b"\x90\x01\x01\x03\x01\x00\x06").is_tls          # over 4096


def test_client_hello_too_large():
    """Envoy never peeks past max_client_hello_size: still waiting then is too large."""
    data = client_hello("a.example.com", ["h2"])
    assert inspect_tls(data, max_size=len(data)).is_tls
    r = inspect_tls(data, max_size=len(data) - 1)
    assert r.too_large and r.close
    big = b"\x16\x03\x01\x40\x00\x01\x01\x11\x70" + b"\x00" * 20000
    assert inspect_tls(big).too_large
    # a decision reached within the limit stands, whatever follows
    assert not inspect_tls(b"hello world" * 3000).too_large


# ---------------------------------------------------------------------- HTTP


@pytest.mark.parametrize("data,expected", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "http/1.1"),
    (b"GET / HTTP/1.1\n", "http/1.1"),
    (b"GET / HTTP/1.1  \r\n", "http/1.1"),
    (b"GET  /  HTTP/1.1\r\n", "http/1.1"),
    (b"GET\t/\tHTTP/1.1\r\n", "http/1.1"),
    (b"GET\x0b/\x0bHTTP/1.1\r\n", "http/1.1"),        # any byte <= ' ' separates
    (b"GET / HTTP/1.1\r\r\n", "http/1.1"),
    (b"get / HTTP/1.1\r\n", "http/1.1"),              # custom methods are allowed
    (b"HELLO / HTTP/1.1\r\n", "http/1.1"),
    (b"GET * HTTP/1.1\r\n", "http/1.1"),
    (b"GET http://x/ HTTP/1.1\r\n", "http/1.1"),
    (b"GET a1+.-://h@o@st/p HTTP/1.1\r\n", "http/1.1"),
    (b"CONNECT host:443 HTTP/1.1\r\n", "http/1.1"),
    (b"CONNECT /x HTTP/1.1\r\n", "http/1.1"),
    (b"POST /a?b HTTP/1.0\r\n", "http/1.0"),
    (b"GET / HTTP/3.0\r\n", "http/1.0"),               # any other valid version
    (b"GET / HTTP/2.0\r\n", "http/1.0"),
    (b"GET / HTTP/1.2\r\n", "http/1.0"),
    (b"GET /\r\n", "http/1.0"),                        # HTTP/0.9
    (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", "http/1.0"),  # not the preface after all
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "h2c"),
    (b"PRI * HTTP/2.0\r\n", NEED_MORE),
    (b"GE", NEED_MORE),
    (b"GET /abc", NEED_MORE),
    (b"GET / HTTP/1.1", NEED_MORE),
    (b"GET / HTTP/1.1\r", NEED_MORE),
    (b"SSH-2.0-OpenSSH_9.2", NEED_MORE),
    (b"SSH-2.0-OpenSSH_9.2\r\n", None),
    (b"GET\r\n", None),
    (b"HELLO world\r\n", None),
    (b"G@T / HTTP/1.1\r\n", None),
    (b"GET / http/1.1\r\n", None),
    (b"GET / HTTP/11.1\r\n", None),
    (b"GET / XTTP/1.1\r\n", None),
    (b"GET / HTTP/1.1 extra\r\n", None),
    (b"GET /a b HTTP/1.1\r\n", None),
    (b"GET / HTTP/1.1\rX\n", None),
    (b"GET /\x7f HTTP/1.1\r\n", None),
    (b"GET /\xff HTTP/1.1\r\n", None),
    (b"GET x HTTP/1.1\r\n", None),
    (b"GET a://h@@ost/ HTTP/1.1\r\n", None),
    (b'GET a://h"ost/ HTTP/1.1\r\n', None),
    (b'CONNECT h"ost:1 HTTP/1.1\r\n', None),
    (b"\x7fGET / HTTP/1.1\r\n", None),
    (b"\xffGET / HTTP/1.1\r\n", None),
    (b"\r\nGET / HTTP/1.1\r\n", None),
    (b" GET / HTTP/1.1\r\n", None),
    (b"\x00\x01\x02", None),                           # decided before any newline
    (b"\x00", None),
])
def test_http_inspector(data, expected):
    assert inspect_http(data) is expected or inspect_http(data) == expected


def test_http_inspector_gives_up_at_64k_without_a_newline():
    assert inspect_http(b"GET /" + b"a" * (MAX_INSPECT - 6)) is NEED_MORE
    assert inspect_http(b"GET /" + b"a" * 70000) is READ_ERROR
    # the newline must fall within the 64 KiB Envoy peeks
    assert inspect_http(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n") is READ_ERROR
    assert inspect_http(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n") == "http/1.1"
