"""Envoy's (Balsa's) HTTP/1 request grammar, sans-IO: ``meshproxy.http.h1_rules``.

The expectations are Envoy 1.40's answers to the same bytes (see
tests/integration/test_http1_cases.py and the oracle that replays them through Envoy)."""

from __future__ import annotations

import pytest

from meshproxy.http import h1_rules
from meshproxy.http.codec import CodecError

LIMIT = 60 * 1024


def canon(raw: bytes):
    r = h1_rules.parse_head(raw, LIMIT)
    assert r is not None
    return r


def status_of(raw: bytes) -> int:
    with pytest.raises(CodecError) as e:
        h1_rules.parse_head(raw, LIMIT)
    return e.value.status


def test_lf_only_lines_become_crlf():
    head, n = canon(b"GET /x HTTP/1.1\nHost: a\n\nBODY")
    assert head == b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n"
    assert n == len(b"GET /x HTTP/1.1\nHost: a\n\n")


def test_request_line_whitespace_is_collapsed():
    assert canon(b"GET \t /x\tHTTP/1.1 \r\nHost: a\r\n\r\n")[0].startswith(
        b"GET /x HTTP/1.1\r\n")


def test_leading_empty_lines_are_skipped():
    head, n = canon(b"\r\n\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert head.startswith(b"GET / HTTP/1.1")
    assert n == len(b"\r\n\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_obs_fold_keeps_the_continuation_whitespace():
    # Balsa removes the CRLF only: "b" + "  c"
    head, _ = canon(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\n\tdd\r\nX-B: e\r\n\r\n")
    assert b"X-A: b  c\tdd\r\n" in head and b"X-B: e\r\n" in head


def test_obs_fold_on_the_first_header_is_refused():
    assert status_of(b"GET / HTTP/1.1\r\n X-A: b\r\nHost: a\r\n\r\n") == 400


def test_value_whitespace_trimmed_and_bare_cr_dropped():
    head, _ = canon(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: \t a\rb  c \t\r\n\r\n")
    assert b"X-A: ab  c\r\n" in head


def test_several_host_lines_fold_into_one():
    head, _ = canon(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nHost: b\r\n\r\n")
    assert head == b"GET / HTTP/1.1\r\nhost: a,b\r\nX: 1\r\n\r\n"
    assert h1_rules.has_host(head)
    assert not h1_rules.has_host(canon(b"GET / HTTP/1.1\r\nX: 1\r\n\r\n")[0])


@pytest.mark.parametrize("line,status", [
    (b"GET /", 426),                 # HTTP/0.9
    (b"GET", 400),
    (b"GET /x HTTP/1.1 extra", 400),
    (b"GET /x http/1.1", 400),
    (b"GET /x HTTP/1.10", 400),
    (b"get /x HTTP/1.1", 400),
    (b"FOO /x HTTP/1.1", 400),
    (b"M-SEARCH /x HTTP/1.1", 400),
    (b"GET /a\x01b HTTP/1.1", 400),
    (b"GET ftp:/x HTTP/1.1", 400),
])
def test_request_line_errors(line, status):
    assert status_of(line + b"\r\nHost: a\r\n\r\n") == status


@pytest.mark.parametrize("hdr", [b"X-A : b", b"X-A b", b": b", b"X(a): b", b"X\x7f: b",
                                 b"X\xe9: b", b"X-A: a\x00b", b"X-A: a\x01b", b"X-A: a\x7fb"])
def test_bad_header_lines(hdr):
    assert status_of(b"GET / HTTP/1.1\r\nHost: a\r\n" + hdr + b"\r\n\r\n") == 400


def test_methods_envoy_knows():
    assert b"MSEARCH" in h1_rules.VALID_METHODS
    assert b"PROPFIND" in h1_rules.VALID_METHODS
    assert b"M-SEARCH" not in h1_rules.VALID_METHODS
    assert b"get" not in h1_rules.VALID_METHODS


def test_incomplete_head_and_size_limit():
    assert h1_rules.parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n", LIMIT) is None
    # A bare CR never ends a line for Balsa: the head stays incomplete.
    assert h1_rules.parse_head(b"GET / HTTP/1.1\rHost: a\r\r", LIMIT) is None
    with pytest.raises(CodecError) as e:
        h1_rules.parse_head(b"GET / HTTP/1.1\r\nX: " + b"v" * 2000, 1024)
    assert e.value.status == 431


@pytest.mark.parametrize("url,connect,ok", [
    (b"/a?b=c#d", False, True), (b"*", False, True), (b"/a\tb", False, True),
    (b"/a b", False, False), (b"/a\x7f", False, False), (b"/\xff", False, False),
    (b"http://h:1/p?q", False, True), (b"HTTP://H/p", False, True), (b"http://u@h/", False, True),
    (b"http://u@@h/", False, False), (b"http:/h", False, False), (b"h.com:80", False, False),
    (b"h.com:443", True, True), (b"", False, False), (b"1http://h/", False, False),
])
def test_url_validity(url, connect, ok):
    assert h1_rules.url_valid(url, connect) is ok


def test_skip_messages_finds_the_next_request():
    a = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    b = b"POST /b HTTP/1.1\nHost: a\nTransfer-Encoding: chunked\n\n2\r\nxy\r\n0\r\nT: 1\r\n\r\n"
    c = b"GET /c HTTP/1.1\r\n"
    assert h1_rules.skip_messages(a + b + c, 1) == len(a)
    assert h1_rules.skip_messages(a + b + c, 2) == len(a + b)
    assert h1_rules.skip_messages(a[:-1], 1) == -1
    assert h1_rules.skip_messages(b"GARBAGE\r\n\r\n", 1) == -1


def test_head_end():
    assert h1_rules.head_end(b"a\r\nb\r\n\r\nrest") == 8
    assert h1_rules.head_end(b"a\nb\n\nrest") == 5
    assert h1_rules.head_end(b"a\r\nb\r\n") == -1
