"""The HTTP/2 codec's pure parts against real counterparts: the stateless HPACK encoder decoded by
the ``hpack`` library's decoder (as a client would), and the request-head rules of nghttp2
(RFC 9113 §8.2, §8.3) that Envoy applies before its connection manager sees a request."""

from __future__ import annotations

import hpack
import pytest

from meshproxy.http.h2_hpack import StatelessEncoder
from meshproxy.http.h2_request import Malformed, TooLarge, request_from_headers, \
    trailers_from_headers

H = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/p"), (b":authority", b"a.b")]


def test_encoder_round_trips_and_keeps_decoder_table_empty():
    enc, dec = StatelessEncoder(), hpack.Decoder()
    blocks = [[(b":status", b"200"), (b"server", b"envoy"), (b"content-length", b"2")],
              [(b":status", b"404"), (b"x-custom", b"v" * 300), (b"date", b"Sun, 22 Nov")],
              [(b":status", b"200"), (b"server", b"envoy"), (b"content-length", b"2")]]
    for hs in blocks:
        assert dec.decode(enc.encode(hs), raw=True) == hs
    assert len(dec.header_table.dynamic_entries) == 0      # nothing indexed: stateless
    # whole static-table matches are one byte (RFC 7541 §6.1): :status 200 is index 8
    assert enc.encode([(b":status", b"200")]) == b"\x88"


def test_encoder_signals_table_size_change():
    enc, dec = StatelessEncoder(), hpack.Decoder()
    enc.header_table_size = 0          # the peer's SETTINGS_HEADER_TABLE_SIZE
    block = enc.encode([(b"server", b"envoy")])
    assert block[0] == 0x20            # dynamic table size update to 0 first (§4.2)
    assert dec.decode(block, raw=True) == [(b"server", b"envoy")]
    assert enc.encode([(b"server", b"envoy")])[0] != 0x20   # only once


def test_request_from_pseudo_headers():
    req = request_from_headers(H + [(b"cookie", b"a=1"), (b"x-a", b"1"), (b"cookie", b"b=2"),
                                    (b"content-length", b"4"), (b"te", b"trailers")], 100, 61440)
    assert (req.method, req.scheme, req.path, req.authority, req.version) == \
        (b"GET", b"http", b"/p", b"a.b", b"2")
    assert req.content_length == 4
    # cookie crumbs joined (RFC 9113 §8.2.3), last
    assert req.headers == [(b"x-a", b"1"), (b"content-length", b"4"), (b"te", b"trailers"),
                           (b"cookie", b"a=1; b=2")]


def test_host_stands_in_for_missing_authority():
    req = request_from_headers(H[:3] + [(b"host", b"h.example")], 100, 61440)
    assert req.authority == b"h.example" and req.headers == []
    req = request_from_headers(H + [(b"host", b"other")], 100, 61440)
    assert req.authority == b"a.b" and req.headers == []


@pytest.mark.parametrize("headers", [
    H[1:], H[:1] + H[2:], H[:2] + H[3:], H[:3],
    H + [(b":foo", b"1")], H + [(b":path", b"/again")], [H[0], (b"x", b"1")] + H[1:],
    H + [(b"X-Up", b"1")], H + [(b"x-a", b"a\r\nb")], H + [(b"x-a", b"a\x00")],
    H + [(b"connection", b"close")], H + [(b"upgrade", b"h2c")], H + [(b"te", b"gzip")],
    H + [(b"transfer-encoding", b"chunked")], H + [(b"content-length", b"x")],
    H[:2] + [(b":path", b"")] + H[3:], H[:2] + [(b":path", b"rel")] + H[3:],
    H[:3] + [(b":authority", b"a b")], H[:3] + [(b"host", b"a/b")],
])
def test_malformed(headers):
    with pytest.raises(Malformed):
        request_from_headers(headers, 100, 61440)


def test_expect_100_continue_is_taken_out():
    req = request_from_headers(H + [(b"expect", b"100-Continue")], 100, 61440)
    assert req.expect_continue and req.headers == []
    req = request_from_headers(H + [(b"expect", b"other")], 100, 61440)
    assert not req.expect_continue and req.headers == [(b"expect", b"other")]


def test_connect_names_only_authority():
    req = request_from_headers([(b":method", b"CONNECT"), (b":authority", b"h:443")], 100, 61440)
    assert (req.method, req.authority, req.path) == (b"CONNECT", b"h:443", b"")
    with pytest.raises(Malformed):
        request_from_headers([(b":method", b"CONNECT"), (b":path", b"/"),
                              (b":authority", b"h:443")], 100, 61440)


def test_options_star_path_is_allowed():
    req = request_from_headers([(b":method", b"OPTIONS"), (b":scheme", b"http"),
                                (b":path", b"*"), (b":authority", b"a")], 100, 61440)
    assert req.path == b"*"


def test_limits():
    with pytest.raises(TooLarge):
        request_from_headers(H + [(b"x-%d" % i, b"v") for i in range(97)], 100, 61440)
    with pytest.raises(TooLarge):
        request_from_headers(H + [(b"x-big", b"v" * 61440)], 100, 61440)
    request_from_headers(H + [(b"x-%d" % i, b"v") for i in range(96)], 100, 61440)


def test_trailers():
    assert trailers_from_headers([(b"grpc-status", b"0")]) == [(b"grpc-status", b"0")]
    for bad in ([(b":status", b"200")], [(b"Grpc-Status", b"0")], [(b"connection", b"x")]):
        with pytest.raises(Malformed):
            trailers_from_headers(bad)


def test_http2_protocol_options_defaults_and_ranges():
    from envoy.config.core.v3 import protocol_pb2

    from meshproxy.config.errors import ConfigError
    from meshproxy.http.h2_options import build_h2_options

    o = build_h2_options(protocol_pb2.Http2ProtocolOptions(), "p")
    # what Envoy 1.40 advertises unconfigured (its SETTINGS frame), and its flood limits
    assert (o.max_concurrent_streams, o.initial_stream_window_size,
            o.initial_connection_window_size, o.hpack_table_size) == (1024, 16 << 20, 24 << 20,
                                                                      4096)
    assert (o.max_outbound_frames, o.max_inbound_priority_frames_per_stream) == (10000, 100)
    m = protocol_pb2.Http2ProtocolOptions()
    m.max_concurrent_streams.value = 7
    m.initial_stream_window_size.value = 70000
    o = build_h2_options(m, "p")
    assert (o.max_concurrent_streams, o.initial_stream_window_size) == (7, 70000)
    m.initial_stream_window_size.value = 1000
    with pytest.raises(ConfigError, match="p.initial_stream_window_size"):
        build_h2_options(m, "p")


def test_caching_decoder_agrees_with_hpack_as_the_table_changes():
    from meshproxy.http.h2_hpack import CachingDecoder, all_indexed

    client = hpack.Encoder()
    plain, caching = hpack.Decoder(), CachingDecoder(1 << 20)
    a = [(b":method", b"GET"), (b":path", b"/a"), (b"x-one", b"1")]
    b = [(b":method", b"GET"), (b":path", b"/a"), (b"x-two", b"2")]
    blocks = [client.encode(a), client.encode(a), client.encode(a), client.encode(b),
              client.encode(a)]
    assert not all_indexed(blocks[0]) and all_indexed(blocks[1])
    for blk in blocks:
        assert caching.decode(blk, raw=True) == plain.decode(blk, raw=True)
    # the same all-indexed bytes mean another header once the table has shifted
    same = bytes([0x80 | 62])
    plain2, caching2 = hpack.Decoder(), CachingDecoder(1 << 20)
    enc = hpack.Encoder()
    first = enc.encode([(b"x-a", b"1")])
    second = enc.encode([(b"x-b", b"2")])
    for d in (plain2, caching2):
        d.decode(first, raw=True)
    assert caching2.decode(same, raw=True) == [(b"x-a", b"1")]
    for d in (plain2, caching2):
        d.decode(second, raw=True)
    assert caching2.decode(same, raw=True) == plain2.decode(same, raw=True) == [(b"x-b", b"2")]


def test_headers_with_underscores():
    from meshproxy.http.h2_options import H2Stats
    from meshproxy.http.h2_request import UnderscoreRejected

    hs = H + [(b"x_a", b"1"), (b"x-b", b"2")]
    assert request_from_headers(hs, 100, 61440).headers == [(b"x_a", b"1"), (b"x-b", b"2")]
    st = H2Stats()
    assert request_from_headers(hs, 100, 61440, "DROP_HEADER", st).headers == [(b"x-b", b"2")]
    assert st.dropped_headers_with_underscores == 1
    with pytest.raises(UnderscoreRejected):
        request_from_headers(hs, 100, 61440, "REJECT_REQUEST")


def test_longest_string_reads_hpack_representations():
    from meshproxy.http.h2_hpack import longest_string

    enc = hpack.Encoder()
    block = enc.encode([(b":method", b"GET"), (b"x-a", b"v" * 70000), (b"x-b", b"w")],
                       huffman=False)
    assert longest_string(block) == 70000
    # an indexed field and a name taken from the static table: only the value literal counts
    block = hpack.Encoder().encode([(b":method", b"GET"), (b"user-agent", b"u" * 9)],
                                   huffman=False)
    assert longest_string(block) == 9
