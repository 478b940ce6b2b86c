"""HPACK for the HTTP/2 server codec: a stateless encoder in place of ``hpack.Encoder``, and a
decoder that remembers blocks that cannot change its table (``CachingDecoder``).

It never adds to the dynamic table (RFC 7541 §6.1 indexed fields for whole static-table
matches, §6.2.2 "literal without indexing" otherwise, with the static name index when there is
one), so the encoding of a field does not depend on what was sent before and is cached per
``(name, value)``: a proxied response repeats ``server``, ``content-type`` and the second's
``date`` on every stream. Values are Huffman-coded when that is shorter (§5.2), once per cache
entry. When the peer changes SETTINGS_HEADER_TABLE_SIZE, the next block starts with a dynamic
table size update to 0 (§4.2, §6.3), which is within any limit it may set.

Profiling showed ``hpack.Encoder.encode`` at ~10 % of the HTTP/2 request cost; with the cache a
header block is a dict lookup and a join per field.
"""

from __future__ import annotations

from hpack import huffman_constants
from hpack.hpack import Decoder, encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.table import HeaderTable

_HUFFMAN = HuffmanEncoder(huffman_constants.REQUEST_CODES, huffman_constants.REQUEST_CODES_LENGTH)
_FULL = {}
_NAME = {}
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _FULL.setdefault((_n, _v), _i)
    _NAME.setdefault(_n, _i)
_CACHE_MAX = 4096


def _string(s: bytes) -> bytes:
    h = _HUFFMAN.encode(s)
    if len(h) < len(s):
        n = encode_integer(len(h), 7)
        n[0] |= 0x80
        return bytes(n) + h
    return bytes(encode_integer(len(s), 7)) + s


def encode_field(name: bytes, value: bytes) -> bytes:
    i = _FULL.get((name, value))
    if i is not None:
        b = encode_integer(i, 7)
        b[0] |= 0x80
        return bytes(b)
    i = _NAME.get(name)
    if i is not None:
        return bytes(encode_integer(i, 4)) + _string(value)
    return b"\x00" + _string(name) + _string(value)


class StatelessEncoder:
    __slots__ = ("_cache", "_table_size", "_size_update")

    def __init__(self):
        self._cache: dict = {}
        self._table_size = 4096
        self._size_update = False

    @property
    def header_table_size(self) -> int:
        return self._table_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        if value != self._table_size:
            self._table_size = value
            self._size_update = True

    def encode(self, headers, huffman: bool = True) -> bytes:
        cache = self._cache
        out = []
        if self._size_update:
            self._size_update = False
            out.append(b"\x20")         # dynamic table size update: 0
        for h in headers:
            key = (h[0], h[1])
            b = cache.get(key)
            if b is None:
                b = encode_field(key[0], key[1])
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                cache[key] = b
            out.append(b)
        return b"".join(out)


def all_indexed(block: bytes) -> bool:
    """True if every field of ``block`` is an indexed field (RFC 7541 §6.1: first bit set),
    i.e. decoding it reads the tables without changing them."""
    i, n = 0, len(block)
    while i < n:
        c = block[i]
        if not c & 0x80:
            return False
        i += 1
        if c & 0x7F == 0x7F:            # the index continues in more octets (§5.1)
            while i < n and block[i] & 0x80:
                i += 1
            i += 1
    return True


class CachingDecoder(Decoder):
    """``hpack.Decoder`` that remembers blocks made only of indexed fields. Such a block
    leaves the dynamic table as it was, so while no other block changes the table it decodes
    to the same list; any other block may change it and empties the memory. A client's
    requests on one connection repeat most of their block (the second onwards indexes what the
    first added), so most blocks are decoded once."""

    def __init__(self, max_header_list_size: int):
        super().__init__(max_header_list_size)
        self._seen: dict = {}

    def decode(self, data, raw: bool = False):
        key = bytes(data)
        r = self._seen.get(key)
        if r is not None:
            return r
        r = super().decode(key, raw)
        if all_indexed(key):
            if len(self._seen) >= 64:
                self._seen.clear()
            self._seen[key] = r
        else:
            self._seen.clear()
        return r


def _integer(block: bytes, i: int, prefix: int) -> tuple:
    """RFC 7541 §5.1 integer at ``block[i]`` with a ``prefix``-bit prefix: (value, next i)."""
    mask = (1 << prefix) - 1
    v = block[i] & mask
    i += 1
    if v < mask:
        return v, i
    shift = 0
    while i < len(block):
        b = block[i]
        i += 1
        v += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return v, i


def longest_string(block: bytes) -> int:
    """The longest string literal (as sent, §5.2) in a header block: nghttp2 refuses a field
    over 64 KiB on the wire (NGHTTP2_HD_MAX_NV) as a compression error."""
    i, n, longest = 0, len(block), 0
    while i < n:
        c = block[i]
        if c & 0x80:                            # indexed field (§6.1)
            _, i = _integer(block, i, 7)
            continue
        if c & 0xE0 == 0x20:                    # dynamic table size update (§6.3)
            _, i = _integer(block, i, 5)
            continue
        idx, i = _integer(block, i, 6 if c & 0x40 else 4)   # literal field (§6.2)
        for _ in range(1 if idx else 2):        # [name,] value
            if i >= n:
                return longest
            length, i = _integer(block, i, 7)
            longest = max(longest, length)
            i += length
    return longest
