"""Bad input at the listener-filter stage, through Envoy 1.40 and meshproxy alike (issue 3).

One bootstrap, several listeners that differ only in their listener filters; each chain is a
tcp_proxy to an upstream that answers with the chain's name, so the reply says which chain a
connection reached. For each case the same bytes go to both proxies, and both must give the
expected outcome: the reply (which chain, or none), how the connection ended (FIN, RST, or
still open), and the change in the listener's and the inspectors' counters. The expectations
are what Envoy 1.40 does; the Envoy run of every case checks them.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.support.proxies import ProxyProcess, bootstrap, cluster, find_envoy
from tests.support.tcp import TcpEcho
from tests.unit.test_inspectors import (client_hello, ext_alpn, ext_sni, handshake, hello,
                                        hello_body, records)

pytestmark = pytest.mark.oracle

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3."
             "TlsInspector"}}
HTTP_INSPECTOR = {"name": "envoy.filters.listener.http_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3."
             "HttpInspector"}}
CHAINS = ("tls", "h11", "h10", "h2c", "raw")
TIMEOUT = 0.3


def _chain(match, name):
    return {"name": name, "filter_chain_match": match, "filters": [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY, "stat_prefix": name, "cluster": name}}]}


def _listener(name, filters, timeout=f"{TIMEOUT}s", cont=False, tls_options=None,
              chains=None):
    fs = []
    for f in filters:
        f = {"name": f["name"], "typed_config": dict(f["typed_config"])}
        if tls_options and f["name"].endswith("tls_inspector"):
            f["typed_config"].update(tls_options)
        fs.append(f)
    lst = {"name": name, "stat_prefix": name,
           "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
           "listener_filters": fs, "listener_filters_timeout": timeout,
           "filter_chains": chains or [
               _chain({"transport_protocol": "tls"}, "tls"),
               _chain({"application_protocols": ["http/1.1"]}, "h11"),
               _chain({"application_protocols": ["http/1.0"]}, "h10"),
               _chain({"application_protocols": ["h2c"]}, "h2c"),
               _chain({}, "raw")]}
    if cont:
        lst["continue_on_listener_filters_timeout"] = True
    return lst


def _bootstrap(echo_ports):
    sni_chains = [_chain({"server_names": ["a.example.com"]}, "tls"),
                  _chain({"server_names": ["*.wild.com"]}, "h11"), _chain({}, "raw")]
    listeners = [
        _listener("tls", [TLS_INSPECTOR]),
        _listener("http", [HTTP_INSPECTOR]),
        _listener("both", [TLS_INSPECTOR, HTTP_INSPECTOR]),
        _listener("cont", [TLS_INSPECTOR, HTTP_INSPECTOR], cont=True),
        _listener("small", [TLS_INSPECTOR], tls_options={"max_client_hello_size": 300}),
        _listener("strict", [TLS_INSPECTOR], tls_options={
            "max_client_hello_size": 300, "close_connection_on_client_hello_parsing_errors": True}),
        _listener("sni", [TLS_INSPECTOR], chains=sni_chains),
        _listener("untimed", [TLS_INSPECTOR], timeout="0s"),
    ]
    return bootstrap(listeners, [cluster(c, [("127.0.0.1", echo_ports[c])]) for c in CHAINS])


_STATS = "^(listener\\.[a-z]+\\.|tls_inspector\\.|http_inspector\\.|tcp\\.)"
_COUNTED = ("downstream_cx_total", "downstream_pre_cx_timeout", "no_filter_chain_match",
            "downstream_listener_filter_remote_close", "downstream_listener_filter_error")


class Side:
    """One running proxy with its upstreams."""

    def __init__(self, kind, proxy, echos):
        self.kind = kind
        self.p = proxy
        self.echos = echos

    def counters(self) -> dict:
        out = {}
        for name, v in self.p.stats(_STATS).items():
            if name.startswith(("tls_inspector.", "http_inspector.")):
                out[name] = v
            elif name.startswith("tcp.") and name.endswith(".downstream_cx_total"):
                out[name] = v
            elif name.startswith("listener.") and not name.startswith("listener.admin.") and \
                    name.split(".", 2)[2] in _COUNTED:
                out[name] = v
        return out

    def gauge(self, name: str) -> int:
        return self.p.stat(name)


@pytest.fixture(scope="module", params=["envoy", "meshproxy"])
def side(request):
    if request.param == "envoy" and find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    echos = {c: TcpEcho(reply=f"<{c}>".encode()) for c in CHAINS}
    for e in echos.values():
        e.__enter__()
    p = ProxyProcess(request.param, _bootstrap({c: e.port for c, e in echos.items()})).start()
    try:
        yield Side(request.param, p, echos)
    finally:
        p.stop()
        for e in echos.values():
            e.__exit__(None, None, None)


# ---------------------------------------------------------------------- the client side


def _read(s, until: bytes | None, timeout: float = 3.0):
    """Read until ``until`` arrives (-> "open"), or the peer ends the connection ("fin",
    "rst"), or ``timeout`` passes ("open")."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return out, "rst"
        if not d:
            return out, "fin"
        out += d
        if until is not None and until in out:
            return out, "open"
    return out, "open"


def _wait_counters(side, before, expected, timeout=3.0):
    """The counters' change since ``before`` once it equals ``expected`` (or at the deadline:
    the assertion then shows the difference)."""
    deadline = time.monotonic() + timeout
    while True:
        after = side.counters()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
        delta = {k: v for k, v in delta.items() if v}
        if delta == expected or time.monotonic() > deadline:
            return delta
        time.sleep(0.02)


def run_case(side, listener, send, action="wait", reply=b"", end="open", stats=None,
             chunk_gap=0.05):
    """Connect to ``listener``, send ``send`` (bytes, or chunks sent ``chunk_gap`` apart: a
    slow client), then ``action``: "wait" (read), "shut_wr" (half-close, then read),
    "close", "rst" (SO_LINGER 0), "fin_with_data" (the FIN in the bytes' segment). Checks
    the reply, the end and the counters."""
    expected = {k.replace("L.", f"listener.{listener}.", 1): v for k, v in (stats or {}).items()}
    before = side.counters()
    s = socket.create_connection(("127.0.0.1", side.p.port(listener)), timeout=3)
    try:
        if action == "fin_with_data":
            # TCP_CORK holds the bytes back; the FIN then rides on the same segment, so the
            # proxy cannot read the bytes before the FIN has arrived.
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            action = "shut_wr"
        chunks = send if isinstance(send, list) else [send]
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(chunk_gap)   # the gap is the stimulus here, not a synchronisation
            s.sendall(chunk)
        if action == "shut_wr":
            s.shutdown(socket.SHUT_WR)
        if action == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if action in ("close", "rst"):
            s.close()
        else:
            got, how = _read(s, reply or None)
            assert (got, how) == (reply, end), side.kind
        delta = _wait_counters(side, before, expected)
        assert delta == expected, side.kind
    finally:
        s.close()
    # nothing is left behind in the listener-filter stage
    deadline = time.monotonic() + 3
    while side.gauge(f"listener.{listener}.downstream_pre_cx_active") and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    assert side.gauge(f"listener.{listener}.downstream_pre_cx_active") == 0, side.kind


def _to(chain, **more):
    """The counters of a connection that reached ``chain``."""
    return {"L.downstream_cx_total": 1, f"tcp.{chain}.downstream_cx_total": 1, **more}


TLS_FOUND = {"tls_inspector.tls_found": 1}
NOT_TLS = {"tls_inspector.tls_not_found": 1}
PARTIAL_HELLO = client_hello("a.example.com", ["h2"])[:20]


# ---------------------------------------------------------------------- 1: silent clients


@pytest.mark.parametrize("listener", ["tls", "http", "both"])
def test_silent_client_times_out(side, listener):
    run_case(side, listener, b"", end="fin", stats={"L.downstream_pre_cx_timeout": 1})


def test_silent_client_continues_on_timeout_to_the_raw_chain(side):
    """continue_on_listener_filters_timeout: the chain matching sees no transport protocol
    and no ALPN, so the catch-all chain gets the connection; it then carries bytes."""
    before = side.counters()
    s = socket.create_connection(("127.0.0.1", side.p.port("cont")), timeout=3)
    try:
        delta = _wait_counters(side, before, _to("raw", **{
            "listener.cont.downstream_pre_cx_timeout": 1, "listener.cont.downstream_cx_total": 1}))
        assert delta == {"listener.cont.downstream_pre_cx_timeout": 1,
                         "listener.cont.downstream_cx_total": 1,
                         "tcp.raw.downstream_cx_total": 1}, side.kind
        s.sendall(b"late bytes")
        assert _read(s, b"<raw>") == (b"<raw>", "open"), side.kind
    finally:
        s.close()


def test_timeout_zero_disables_it(side):
    """listener_filters_timeout: 0s means no timeout: a partial ClientHello keeps waiting."""
    before = side.counters()
    s = socket.create_connection(("127.0.0.1", side.p.port("untimed")), timeout=3)
    try:
        s.sendall(PARTIAL_HELLO)
        assert _read(s, None, timeout=1.0) == (b"", "open"), side.kind
        assert side.gauge("listener.untimed.downstream_pre_cx_active") == 1, side.kind
    finally:
        s.close()
    # the client's FIN ends it
    delta = _wait_counters(side, before, {"listener.untimed.downstream_listener_filter_remote_close": 1})
    assert delta == {"listener.untimed.downstream_listener_filter_remote_close": 1}, side.kind


# ---------------------------------------------------------------------- 2: truncated hellos


@pytest.mark.parametrize("listener", ["tls", "both"])
def test_truncated_client_hello_then_silence_times_out_with_a_reset(side, listener):
    # The bytes were never consumed, so closing the socket resets it.
    run_case(side, listener, PARTIAL_HELLO, end="rst", stats={"L.downstream_pre_cx_timeout": 1})


def test_truncated_client_hello_continues_on_timeout_without_tls(side):
    run_case(side, "cont", PARTIAL_HELLO, reply=b"<raw>",
             stats=_to("raw", **{"L.downstream_pre_cx_timeout": 1}))


@pytest.mark.parametrize("send", [b"", PARTIAL_HELLO, b"hi"], ids=["nothing", "hello", "hi"])
@pytest.mark.parametrize("action", ["shut_wr", "close"])
def test_client_fin_during_inspection_is_a_remote_close(side, send, action):
    run_case(side, "tls", send, action, end="rst" if send else "fin",
             stats={"L.downstream_listener_filter_remote_close": 1})


def test_client_rst_before_any_byte_is_a_listener_filter_error(side):
    run_case(side, "tls", b"", "rst", stats={"L.downstream_listener_filter_error": 1})


def test_client_rst_after_bytes_goes_unnoticed_until_the_timeout(side):
    """Envoy only peeks: the reset is not seen while the bytes sit in the socket."""
    run_case(side, "tls", PARTIAL_HELLO, "rst", stats={"L.downstream_pre_cx_timeout": 1})


def test_client_rst_after_bytes_with_continue_still_creates_the_connection(side):
    run_case(side, "cont", b"hi", "rst", stats=_to("raw", **{"L.downstream_pre_cx_timeout": 1}))


def test_fin_with_a_complete_request_line_still_wins(side):
    """Envoy's listener filter buffer looks for the close before it peeks."""
    run_case(side, "both", b"GET / HTTP/1.1\r\n", "fin_with_data", end="rst",
             stats={"L.downstream_listener_filter_remote_close": 1})


def test_fin_after_the_inspection_reaches_the_upstream(side):
    """A FIN after the filter chain was chosen is the network filter's: tcp_proxy passes the
    half-close on (the upstream answers "<EOF>")."""
    before = side.counters()
    s = socket.create_connection(("127.0.0.1", side.p.port("both")), timeout=3)
    try:
        s.sendall(b"GET / HTTP/1.1\r\n")
        assert _read(s, b"<h11>") == (b"<h11>", "open"), side.kind
        s.shutdown(socket.SHUT_WR)
        assert _read(s, None) == (b"<EOF>", "fin"), side.kind
        expected = {"listener.both.downstream_cx_total": 1, "tcp.h11.downstream_cx_total": 1,
                    **NOT_TLS, "http_inspector.http11_found": 1}
        assert _wait_counters(side, before, expected) == expected, side.kind
    finally:
        s.close()


# ---------------------------------------------------------------------- 3: TLS garbage


TLS_CASES = {
    "sni+alpn": (hello(exts=[ext_sni("a.example.com"), ext_alpn(["h2"])]), b"<tls>",
                 {**TLS_FOUND, "tls_inspector.sni_found": 1, "tls_inspector.alpn_found": 1}),
    "ssl-module": (client_hello("svc.example.com", ["h2", "http/1.1"]), b"<tls>",
                   {**TLS_FOUND, "tls_inspector.sni_found": 1, "tls_inspector.alpn_found": 1}),
    "no-extensions": (hello(), b"<tls>", {**TLS_FOUND, "tls_inspector.sni_not_found": 1,
                                          "tls_inspector.alpn_not_found": 1}),
    "split-records": (hello(split=10, exts=[ext_sni("a.example.com")]), b"<tls>",
                      {**TLS_FOUND, "tls_inspector.sni_found": 1,
                       "tls_inspector.alpn_not_found": 1}),
    "bad-alpn-ignored": (hello(exts=[ext_alpn(["h2", ""])]), b"<tls>",
                         {**TLS_FOUND, "tls_inspector.sni_not_found": 1,
                          "tls_inspector.alpn_not_found": 1}),
    "plain-text": (b"hello world\n", b"<raw>", NOT_TLS),
    "http-request": (b"GET / HTTP/1.1\r\n\r\n", b"<raw>", NOT_TLS),
    "garbage-after-0x16": (b"\x16garbage-after", b"<raw>", NOT_TLS),
    "bad-record-version": (b"\x16\x07\x01\x00\x01\x00", b"<raw>", NOT_TLS),
    "garbage-handshake": (b"\x16\x03\x01\x00\x02garbage!!", b"<raw>", NOT_TLS),
    "server-hello": (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", b"<raw>", NOT_TLS),
    "application-data": (b"\x17\x03\x03\x00\x02ab", b"<raw>", NOT_TLS),
    "fatal-alert": (b"\x15\x03\x01\x00\x02\x02\x28", b"<raw>", NOT_TLS),
    "record-too-long": (b"\x16\x03\x01\x41\x41", b"<raw>", NOT_TLS),
    "message-over-16k": (b"\x16\x03\x01\x00\x08\x01\x00\x50\x00" + b"\x00" * 4, b"<raw>",
                         NOT_TLS),
    "session-id-33": (hello(session_id=b"x" * 33), b"<raw>", NOT_TLS),
    "no-ciphers": (hello(ciphers=()), b"<raw>", NOT_TLS),
    "trailing-byte": (hello(exts=[], trailing=b"\x00"), b"<raw>", NOT_TLS),
    "duplicate-sni": (hello(exts=[ext_sni("a.example.com"), ext_sni("b.example.com")]), b"<raw>",
                      NOT_TLS),
    "empty-sni": (hello(exts=[ext_sni("")]), b"<raw>", NOT_TLS),
    "extra-in-record": (records(handshake(hello_body(exts=[ext_sni("a.example.com")])) + b"\x02"),
                        b"<raw>", NOT_TLS),
}


@pytest.mark.parametrize("case", list(TLS_CASES))
def test_tls_inspector_verdict(side, case):
    data, reply, stats = TLS_CASES[case]
    run_case(side, "tls", data, reply=reply,
             stats=_to(reply.strip(b"<>").decode(), **stats))


@pytest.mark.parametrize("data", [
    b"hi",                                            # under a record header
    b"\x16\x03\x01\x00\x08\x02\x00\x00\x10\x00",      # a non-ClientHello, not complete
    b"\x16\x03\x01\x00\x08\x01\x00\x40\x00" + b"\x00" * 4,  # 16384 declared, 4 sent
    b"\x15\x03\x01\x00\x02\x01\x5a",                  # a warning alert is skipped
    b"\x16\x03\x01\x00\x00",                          # an empty record
], ids=["hi", "server-hello-part", "16k-part", "warning-alert", "empty-record"])
def test_tls_inspector_keeps_waiting(side, data):
    run_case(side, "tls", data, end="rst", stats={"L.downstream_pre_cx_timeout": 1})


@pytest.mark.parametrize("data,stats", [
    (hello(version=0x0300, exts=[ext_sni("a.example.com")]),
     {"tls_inspector.sni_found": 1, "tls_inspector.tls_not_found": 1}),   # SSLv3 hello
    (hello(version=0x0305), {"tls_inspector.sni_not_found": 1, "tls_inspector.tls_not_found": 1}),
    (b"\x15\x03\x01\x00\x02\x01\x00", {}),                                # close_notify
    (b"\x16\x03\x01\x40\x00\x01\x01\x11\x70" + b"\x00" * 20000,
     {"tls_inspector.client_hello_too_large": 1}),                        # past 16 KiB
], ids=["sslv3", "version-0x0305", "close-notify", "too-large"])
def test_tls_inspector_closes(side, data, stats):
    run_case(side, "tls", data, end="rst", stats=stats)


def test_client_hello_over_max_client_hello_size(side):
    run_case(side, "small", client_hello("a.example.com", ["h2"]), end="rst",
             stats={"tls_inspector.client_hello_too_large": 1})
    run_case(side, "small", hello(exts=[ext_sni("a.example.com")]), reply=b"<tls>",
             stats=_to("tls", **TLS_FOUND, **{"tls_inspector.sni_found": 1,
                                               "tls_inspector.alpn_not_found": 1}))


@pytest.mark.parametrize("data,stats", [
    (b"hello world\n", NOT_TLS),
    (b"x" * 400, {"tls_inspector.client_hello_too_large": 1}),
], ids=["short", "full-buffer"])
def test_close_connection_on_client_hello_parsing_errors(side, data, stats):
    run_case(side, "strict", data, end="rst", stats=stats)


@pytest.mark.parametrize("sni,chain", [("a.example.com", "tls"), ("A.Example.COM", "tls"),
                                       ("a.example.com.", "raw"), ("X.WILD.com", "h11")])
def test_server_name_matching(side, sni, chain):
    run_case(side, "sni", hello(exts=[ext_sni(sni)]), reply=f"<{chain}>".encode(),
             stats=_to(chain, **TLS_FOUND, **{"tls_inspector.sni_found": 1,
                                              "tls_inspector.alpn_not_found": 1}))


# ---------------------------------------------------------------------- 4: http_inspector


HTTP_CASES = {
    "http/1.1": (b"GET / HTTP/1.1\r\n", "h11", "http11_found"),
    "http/1.0": (b"GET / HTTP/1.0\r\n", "h10", "http10_found"),
    "http/3.0-is-1.0": (b"GET / HTTP/3.0\r\n", "h10", "http10_found"),
    "http/0.9": (b"GET /\r\n", "h10", "http10_found"),
    "custom-method": (b"HELLO / HTTP/1.1\r\n", "h11", "http11_found"),
    "tabs": (b"GET\t/\tHTTP/1.1\r\n", "h11", "http11_found"),
    "h2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "h2c", "http2_found"),
    "not-the-preface": (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", "h10", "http10_found"),
    "ssh": (b"SSH-2.0-OpenSSH_9.2\r\n", "raw", "http_not_found"),
    "binary": (b"\x00\x01\x02", "raw", "http_not_found"),
    "leading-space": (b" GET / HTTP/1.1\r\n", "raw", "http_not_found"),
    "leading-crlf": (b"\r\nGET / HTTP/1.1\r\n", "raw", "http_not_found"),
    "lowercase-version": (b"GET / http/1.1\r\n", "raw", "http_not_found"),
    "extra-token": (b"GET / HTTP/1.1 extra\r\n", "raw", "http_not_found"),
    "bad-url-byte": (b"GET /\xff HTTP/1.1\r\n", "raw", "http_not_found"),
    "bad-method": (b"G@T / HTTP/1.1\r\n", "raw", "http_not_found"),
    "no-uri": (b"GET\r\n", "raw", "http_not_found"),
}


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_http_inspector_verdict(side, case):
    data, chain, counter = HTTP_CASES[case]
    run_case(side, "http", data, reply=f"<{chain}>".encode(),
             stats=_to(chain, **{f"http_inspector.{counter}": 1}))


@pytest.mark.parametrize("data", [b"G", b"GET /abc", b"GET / HTTP/1.1", b"GET / HTTP/1.1\r",
                                  b"PRI * HTTP/2.0\r\n", b"SSH-2.0-OpenSSH_9.2"])
def test_partial_request_line_times_out(side, data):
    run_case(side, "http", data, end="rst", stats={"L.downstream_pre_cx_timeout": 1})


def test_slow_client_is_inspected_as_it_arrives(side):
    run_case(side, "http", [b"GE", b"T / HT", b"TP/1.1\r\n"], reply=b"<h11>",
             stats=_to("h11", **{"http_inspector.http11_found": 1}))


def test_request_line_over_64k_is_a_read_error(side):
    run_case(side, "http", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n", end="rst",
             stats={"http_inspector.read_error": 1})


def test_both_inspectors(side):
    """tls_inspector needs five bytes before it can say "not TLS"; http_inspector then runs."""
    run_case(side, "both", b"GET / HTTP/1.1\r\n", reply=b"<h11>",
             stats=_to("h11", **NOT_TLS, **{"http_inspector.http11_found": 1}))
    run_case(side, "both", b"GE", end="rst", stats={"L.downstream_pre_cx_timeout": 1})
    run_case(side, "both", b"GET /abc", end="rst",
             stats={**NOT_TLS, "L.downstream_pre_cx_timeout": 1})
    # http_inspector leaves TLS alone
    run_case(side, "both", hello(exts=[ext_alpn(["http/1.1"])]), reply=b"<tls>",
             stats=_to("tls", **TLS_FOUND, **{"tls_inspector.sni_not_found": 1,
                                              "tls_inspector.alpn_found": 1}))


def test_partial_request_line_continues_with_what_tls_inspector_found(side):
    run_case(side, "cont", b"GET /abc", reply=b"<raw>",
             stats=_to("raw", **NOT_TLS, **{"L.downstream_pre_cx_timeout": 1}))
