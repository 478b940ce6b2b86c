"""What Envoy 1.40's ``http_inspector`` decides about the first bytes of a connection.

Envoy (``source/extensions/filters/listener/http_inspector/http_inspector.cc``) first compares
the bytes with the HTTP/2 connection preface (a prefix of it waits, all 24 bytes are "h2c"),
then feeds the request line, up to the first ``\\n``, to the Balsa HTTP/1 parser with custom
methods allowed (``source/common/http/http1/balsa_parser.cc``). The rules, each checked against
Envoy 1.40 (tests/oracle/test_listener_bad_input_oracle.py):

- a first byte at or below ``' '`` (CR, LF, space, tab, NUL, any control byte): not HTTP at
  once, even before the line ends;
- without a ``\\n`` yet: wait; 64 KiB read without one is ``read_error`` and Envoy closes;
- the line splits at bytes <= ``' '`` into method, URI and "the rest" (Balsa's three islands,
  trailing whitespace trimmed). The method must be RFC 9110 token characters, the URI non-empty
  and valid as http-parser saw URLs (``isUrlValid``), the rest empty (HTTP/0.9) or exactly
  ``HTTP/<digit>.<digit>``. Any failure: not HTTP.
- a valid line is "http/1.1" if it ends in ``HTTP/1.1``, else "http/1.0" (HTTP/0.9, 1.2, 2.0
  and 3.0 request lines all count as ``http10_found``).

``inspect_http(data)`` returns "http/1.1", "http/1.0", "h2c", None (not HTTP), ``NEED_MORE``,
or ``READ_ERROR``.
"""

from __future__ import annotations

from meshproxy.listener.tls_inspect import NEED_MORE

READ_ERROR = object()
MAX_INSPECT = 64 * 1024
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_TOKEN = frozenset(b"!#$%&'*+-.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`"
                   b"abcdefghijklmnopqrstuvwxyz|~")
_PATH = frozenset([9, 12]) | frozenset(range(0x21, 0x7F))
_HOST = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                  b"!$%&'()*+,-.:;=@[]_~")
_ALPHA = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_SCHEME = _ALPHA | frozenset(b"0123456789+-.")


def inspect_http(data: bytes):
    data = data[:MAX_INSPECT]
    n = min(len(data), len(H2_PREFACE))
    if data[:n] == H2_PREFACE[:n]:
        return "h2c" if n == len(H2_PREFACE) else NEED_MORE
    # A first byte CR or LF is Envoy's own check; any other byte <= ' ' is Balsa's
    # NO_REQUEST_LINE_IN_REQUEST (Balsa would skip CR/LF, Envoy never lets it).
    if data[0] <= 0x20:
        return None
    end = data.find(b"\n")
    if end < 0:
        return READ_ERROR if len(data) >= MAX_INSPECT else NEED_MORE
    method, uri, rest = _islands(data[:end])
    if not method or not all(c in _TOKEN for c in method):
        return None
    if not _url_valid(uri, method == b"CONNECT"):
        return None
    if rest and not (len(rest) == 8 and rest.startswith(b"HTTP/") and rest[5:6].isdigit()
                     and rest[6] == 0x2E and rest[7:8].isdigit()):
        return None
    return "http/1.1" if rest == b"HTTP/1.1" else "http/1.0"


def _islands(line: bytes):
    """Balsa's ``ParseHTTPFirstLine``: token, token, and the rest of the line, split at bytes
    <= ' ' (so tabs, vertical tabs and NULs separate too)."""
    line = line.rstrip(b"\r\n")
    parts = []
    p = 0
    for _ in range(2):
        while p < len(line) and line[p] <= 0x20:
            p += 1
        s = p
        while p < len(line) and line[p] > 0x20:
            p += 1
        parts.append(line[s:p])
    while p < len(line) and line[p] <= 0x20:
        p += 1
    rest = line[p:]
    e = len(rest)
    while e > 0 and rest[e - 1] <= 0x20:
        e -= 1
    parts.append(rest[:e])
    return parts


def _url_valid(url: bytes, is_connect: bool) -> bool:
    """Envoy's ``isUrlValid`` (balsa_parser.cc), which follows http-parser."""
    if not url:
        return False
    if url[0] in b"/*":
        return all(c in _PATH for c in url[1:])
    if not is_connect:
        if url[0] not in _ALPHA:
            return False
        i = 1
        while i < len(url) and url[i] in _SCHEME:
            i += 1
        if url[i:i + 3] != b"://":
            return False
        url = url[i + 3:]
    q = len(url)
    for j, c in enumerate(url):
        if c in b"/?":
            q = j
            break
    host, path = url[:q], url[q:]
    return all(c in _HOST for c in host) and b"@@" not in host and all(c in _PATH for c in path)
