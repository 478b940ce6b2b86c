"""The downstream HTTP/1 codec without sockets, on both parser backends: bytes in, the calls a
connection manager receives out (``new_stream``, ``decode_headers`` / ``decode_data``,
``read_disable``, ``codec_error``), and the response bytes it writes."""

from __future__ import annotations

import pytest

from meshproxy.http.codec import CodecError, CodecLimits
from meshproxy.http.h1_server import FloodError, H1ServerCodec
from meshproxy.http.h1_server_h11 import H11ServerCodec
from meshproxy.http.headers import ResponseHeaders

BACKENDS = {"httptools": H1ServerCodec, "h11": H11ServerCodec}


class Stream:
    def __init__(self, cb):
        self.cb = cb
        self.req = None
        self.end = None
        self.body = []
        self.done_request = False
        self.request_headers_end_stream = False

    def decode_headers(self, req, end_stream):
        self.req = req
        self.end = end_stream
        self.done_request = end_stream
        self.cb.events.append(("headers", req.method, req.path))
        if self.cb.answer_inline:
            self.respond(sync=True)

    def decode_data(self, data, end_stream):
        self.body.append(data)
        if end_stream:
            self.done_request = True
        self.cb.events.append(("data", data, end_stream))

    def respond(self, status=200, sync=False):
        codec = self.cb.codec
        codec.encode_headers(self, ResponseHeaders(status, [(b"content-length", b"2")]), False)
        codec.encode_data(self, b"ok", True)
        # As the connection manager counts for flood protection: responses completed while
        # reading add up; one completed later (an upstream's answer) starts the count again.
        self.cb.queued_responses = self.cb.queued_responses + 1 if sync else 1
        codec.stream_complete(self)


class Callbacks:
    """What the connection manager gives the codec."""

    def __init__(self, answer_inline=False):
        self.streams = []
        self.events = []
        self.read_disabled = 0
        self.errors = []
        self.queued_responses = 0
        self.answer_inline = answer_inline
        self.out = []

    def new_stream(self):
        s = Stream(self)
        self.streams.append(s)
        self.events.append(("begin",))
        return s

    def read_disable(self, disable):
        self.read_disabled += 1 if disable else -1

    def codec_error(self, exc):
        self.errors.append(exc)


@pytest.fixture(params=list(BACKENDS))
def make(request):
    def make(answer_inline=False, **limits):
        cb = Callbacks(answer_inline)
        cb.codec = BACKENDS[request.param](cb, cb.out.append, CodecLimits(**limits))
        return cb
    make.backend = request.param
    return make


def feed(cb, data, step=None):
    if step is None:
        cb.codec.dispatch(data)
    else:
        for i in range(0, len(data), step):
            cb.codec.dispatch(data[i:i + step])


def error_of(cb, data, step=None) -> CodecError:
    with pytest.raises(CodecError) as e:
        feed(cb, data, step)
    return e.value


REQ = b"GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n"


def test_simple_request(make):
    cb = make()
    feed(cb, REQ)
    (s,) = cb.streams
    assert s.req.method == b"GET" and s.req.path == b"/a" and s.req.authority == b"h"
    assert s.req.headers == [(b"user-agent", b"t")]
    assert s.end is True and s.req.keep_alive


@pytest.mark.parametrize("step", [1, 7])
def test_request_split_over_reads(make, step):
    cb = make()
    feed(cb, b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello", step)
    (s,) = cb.streams
    assert b"".join(s.body) == b"hello" and s.done_request


@pytest.mark.parametrize("step", [None, 1, 5])
def test_lf_only_and_obs_fold_heads_read_as_envoy(make, step):
    cb = make()
    feed(cb, b"GET /a HTTP/1.1\nHost: h\nX-A: b\n  c\n\nGET /b  HTTP/1.1 \r\nHost: h\r\n\r\n",
         step)
    s1, = cb.streams
    assert s1.req.get(b"x-a") == b"b  c"
    # the second request waits for the first response (pipelining)
    assert cb.read_disabled == 1
    s1.respond()
    s2 = cb.streams[1]
    assert s2.req.path == b"/b" and cb.read_disabled == 0


def test_body_is_streamed_not_buffered(make):
    cb = make()
    feed(cb, b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    (s,) = cb.streams
    assert s.end is False and b"".join(s.body) == b"abc" and not s.done_request
    feed(cb, b"2\r\nde\r\n")
    assert b"".join(s.body) == b"abcde" and not s.done_request
    feed(cb, b"0\r\nX-Trailer: 1\r\n\r\n")
    assert s.done_request
    # request trailers are dropped (Envoy's enable_trailers is off)
    assert s.req.get(b"x-trailer") is None


def test_pipelined_requests_wait_for_the_response(make):
    cb = make()
    feed(cb, REQ + b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nxy" + REQ)
    assert len(cb.streams) == 1 and cb.read_disabled == 1
    cb.streams[0].respond()
    assert len(cb.streams) == 2 and b"".join(cb.streams[1].body) == b"xy"
    cb.streams[1].respond()
    assert len(cb.streams) == 3 and cb.read_disabled == 0


def test_error_after_a_pipelined_request_is_answered_in_turn(make):
    cb = make()
    feed(cb, REQ + b"GARBAGE\r\n\r\n")          # no exception yet: GET /a is in progress
    assert len(cb.streams) == 1 and not cb.errors
    cb.streams[0].respond()
    assert len(cb.errors) == 1 and cb.errors[0].status == 400


def test_flood_protection(make):
    cb = make(answer_inline=True)
    with pytest.raises(FloodError):
        feed(cb, REQ * 3)
    assert len(cb.out) == 4      # two responses (head + body each), none for the third


def test_data_after_connection_close_is_ignored(make):
    cb = make()
    feed(cb, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGARBAGE\r\n\r\n")
    (s,) = cb.streams
    assert s.req.keep_alive is False
    s.respond()
    feed(cb, REQ)
    assert len(cb.streams) == 1 and not cb.errors


@pytest.mark.parametrize("head,status", [
    (b"GET /x HTTP/1.0\r\n\r\n", 426),
    (b"GET /x HTTP/1.2\r\nHost: h\r\n\r\n", 426),
    (b"FOO /x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501),
    (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
     400),
    (b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    (b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: x-forwarded-for\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: a,b,c,d,e,f,g,h,i,j\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
])
def test_codec_errors_carry_envoys_status(make, head, status):
    assert error_of(make(), head).status == status


def test_header_limits_are_configurable(make):
    assert error_of(make(max_headers_count=2),
                    b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n").status == 431
    assert error_of(make(max_request_headers_kb=1),
                    b"GET / HTTP/1.1\r\nHost: h\r\nA: " + b"v" * 1100 + b"\r\n\r\n").status == 431


def test_underscore_actions(make):
    assert error_of(make(headers_with_underscores="REJECT_REQUEST"),
                    b"GET / HTTP/1.1\r\nHost: h\r\nX_Y: 1\r\n\r\n").status == 400
    cb = make(headers_with_underscores="DROP_HEADER")
    feed(cb, b"GET / HTTP/1.1\r\nHost: h\r\nX_Y: 1\r\nX-Z: 2\r\n\r\n")
    assert cb.streams[0].req.headers == [(b"x-z", b"2")]


def test_hop_by_hop_and_nominated_headers(make):
    cb = make()
    feed(cb, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Drop, te\r\n"
             b"X-Drop: 1\r\nTE: trailers, deflate\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\n"
             b"Upgrade: websocket\r\nX-Keep: 2\r\n\r\n")
    req = cb.streams[0].req
    assert req.headers == [(b"te", b"trailers"), (b"x-keep", b"2")]
    assert req.upgrade is None      # no "upgrade" token: not an upgrade


def test_h2c_upgrade_offer_is_dropped(make):
    cb = make()
    feed(cb, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
             b"Upgrade: h2c\r\nHTTP2-Settings: AAMA\r\n\r\n")
    req = cb.streams[0].req
    assert req.upgrade is None and req.headers == [] and cb.streams[0].end is True


def test_repeated_inline_headers_fold(make):
    cb = make()
    feed(cb, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nAccept: x\r\nCookie: c1\r\n"
             b"Accept: y\r\nCookie: c2\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n")
    req = cb.streams[0].req
    assert req.authority == b"a,b"
    assert req.headers == [(b"accept", b"x,y"), (b"cookie", b"c1"), (b"cookie", b"c2"),
                           (b"x-forwarded-for", b"1.1.1.1,2.2.2.2")]


def test_http10_keep_alive_rules(make):
    cb = make(accept_http_10=True, default_host_for_http_10=b"dflt")
    feed(cb, b"GET / HTTP/1.0\r\n\r\n")
    req = cb.streams[0].req
    assert req.version == b"1.0" and req.authority == b"dflt" and req.keep_alive is False
    cb = make(accept_http_10=True)
    feed(cb, b"GET / HTTP/1.0\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n")
    assert cb.streams[0].req.keep_alive is True


def test_connect_and_upgrade_requests_never_end(make):
    for head in (b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: ws\r\n\r\n"):
        cb = make()
        feed(cb, head + b"tunnel bytes GARBAGE\r\n\r\n")
        (s,) = cb.streams
        assert s.end is False and not s.done_request and s.body == [] and not cb.errors


def test_absolute_form_target(make):
    cb = make()
    feed(cb, b"GET http://abs.com:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n")
    req = cb.streams[0].req
    assert (req.authority, req.path) == (b"abs.com:81", b"/p?q")


def test_expect_100_continue_is_consumed(make):
    cb = make()
    feed(cb, b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
    req = cb.streams[0].req
    assert req.expect_continue and req.get(b"expect") is None


# ---------------------------------------------------------------------- responses


def _response(make, request, resp, end_stream, body=None):
    cb = make()
    feed(cb, request)
    s = cb.streams[0]
    cb.codec.encode_headers(s, resp, end_stream)
    if body is not None:
        cb.codec.encode_data(s, body, True)
    return b"".join(cb.out)


def test_unknown_length_is_chunked(make):
    out = _response(make, REQ, ResponseHeaders(200, [(b"x", b"1")]), False, b"abc")
    assert out == b"HTTP/1.1 200 OK\r\nx: 1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"


def test_header_only_response_gets_content_length_zero(make):
    assert _response(make, REQ, ResponseHeaders(200, []), True) == \
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    assert _response(make, REQ, ResponseHeaders(204, []), True) == b"HTTP/1.1 204 No Content\r\n\r\n"


def test_http10_response_is_not_chunked(make):
    cb = make(accept_http_10=True)
    feed(cb, b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
    s = cb.streams[0]
    cb.codec.encode_headers(s, ResponseHeaders(200, []), False)
    cb.codec.encode_data(s, b"abc", True)
    assert b"".join(cb.out) == b"HTTP/1.0 200 OK\r\n\r\nabc"


def test_head_response_keeps_chunked_as_information(make):
    resp = ResponseHeaders(200, [])
    resp.chunked = True
    out = _response(make, b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n", resp, True)
    assert out == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
