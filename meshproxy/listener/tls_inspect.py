"""What Envoy 1.40's ``tls_inspector`` decides about the first bytes of a connection.

Envoy feeds the peeked bytes to BoringSSL as a TLS server and stops at the ClientHello
(``source/extensions/filters/listener/tls_inspector/tls_inspector.cc``), so "is this TLS" is
BoringSSL's record and handshake layer, not a loose sniff. This module replays that layer on
bytes (sans-IO) closely enough that every outcome below was checked against Envoy 1.40
(tests/oracle/test_listener_bad_input_oracle.py):

- fewer than 5 bytes: wait (BoringSSL reads a whole record header before judging anything,
  ``tls_open_handshake``), so ``"hi"`` waits for the listener-filter timeout;
- a first byte with the high bit set and ``in[2] == 1, in[3] == 3``: an SSLv2-compatible
  ClientHello (``read_v2_client_hello``, at most 4096 bytes);
- records: major version 3 (``tls_open_record``), length at most 16704, plaintext at most 16384;
  warning alerts are skipped (at most 4), ``close_notify`` ends the handshake (Envoy closes the
  connection), other alerts and non-handshake records are "not TLS"; at most 32 empty records;
- the handshake message: a declared length over 16384 is "not TLS" as soon as the record that
  carries its header is complete (``tls_can_accept_handshake_data``); otherwise wait for the
  whole message; a type other than ClientHello, or bytes after it in the same record, are
  "not TLS";
- the ClientHello (``ssl_client_hello_init``, ``extract_sni``): session id at most 32 bytes,
  cipher suites even and non-empty, compression methods non-empty, extensions exactly framed
  and unique, no trailing bytes, a server_name extension with exactly one non-empty host_name
  of at most 255 bytes without NUL. Any failure: "not TLS", no SNI counted.
- past that the SNI callback has run (``sni_found``/``sni_not_found``); a legacy_version outside
  TLS 1.0-1.3 (0x0301-0x0304) then makes Envoy close the connection after counting
  ``tls_not_found``; otherwise it is TLS. ALPN comes from Envoy's ``onALPN`` (a malformed list
  is ignored, not an error).

``inspect_tls(data, max_size)`` returns ``NEED_MORE`` or a ``TlsResult``. Waiting with
``max_size`` bytes already read is ``client_hello_too_large`` (Envoy never peeks further).
"""

from __future__ import annotations

NEED_MORE = object()

# max_client_hello_size: Envoy 1.40 accepts (255, 16384], default 16384.
MAX_CLIENT_HELLO = 16384

_HANDSHAKE, _ALERT = 0x16, 0x15
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME, _EXT_ALPN, _EXT_SUPPORTED_VERSIONS = 0x0000, 0x0010, 0x002B
_MAX_RECORD = 16384 + 320        # SSL3_RT_MAX_ENCRYPTED_LENGTH
_MAX_PLAINTEXT = 16384           # SSL3_RT_MAX_PLAIN_LENGTH
_MAX_MESSAGE = 16384             # ssl_max_handshake_message_len for a server
_MAX_WARNING_ALERTS = 4
_MAX_EMPTY_RECORDS = 32
_MAX_V2_HELLO = 4096
_MIN_VERSION, _MAX_VERSION = 0x0301, 0x0304


class TlsResult:
    """``is_tls``: Envoy sets transport protocol "tls". ``sni_seen``: the SNI callback ran
    (count ``sni_found``/``sni_not_found``). ``close``: Envoy closes the connection
    (``too_large`` says whether ``client_hello_too_large`` is counted; ``counted`` whether
    ``tls_not_found`` is)."""

    __slots__ = ("is_tls", "server_name", "alpn", "sni_seen", "close", "too_large",
                 "not_found_counted")

    def __init__(self, is_tls=False, server_name="", alpn=(), sni_seen=False, close=False,
                 too_large=False, not_found_counted=True):
        self.is_tls = is_tls
        self.server_name = server_name
        self.alpn = alpn
        self.sni_seen = sni_seen
        self.close = close
        self.too_large = too_large
        self.not_found_counted = not_found_counted

    def __repr__(self):
        flags = "".join(f" {n}" for n in ("sni_seen", "close", "too_large") if getattr(self, n))
        return (f"<TlsResult tls={self.is_tls} sni={self.server_name!r} "
                f"alpn={list(self.alpn)}{flags}>")


NOT_TLS = TlsResult()
# close_notify during the handshake: SSL_ERROR_ZERO_RETURN, Envoy closes without a counter.
CLOSE_QUIETLY = TlsResult(close=True, not_found_counted=False)
TOO_LARGE = TlsResult(close=True, too_large=True, not_found_counted=False)


def inspect_tls(data: bytes, max_size: int = MAX_CLIENT_HELLO):
    """Envoy's verdict on ``data`` (everything read so far), or NEED_MORE."""
    seen = data[:max_size]
    r = _records(seen)
    if r is NEED_MORE and len(seen) >= max_size:
        return TOO_LARGE
    return r


def _records(data: bytes):
    if len(data) < 5:
        return NEED_MORE
    if data[0] & 0x80 and data[2] == 1 and data[3] == 3:
        return _v2_client_hello(data)
    hs = bytearray()
    pos = warnings = empties = 0
    while True:
        if len(data) < pos + 5:
            return NEED_MORE
        rtype, major = data[pos], data[pos + 1]
        length = int.from_bytes(data[pos + 3:pos + 5], "big")
        if major != 3 or length > _MAX_RECORD:
            return NOT_TLS
        end = pos + 5 + length
        if len(data) < end:
            return NEED_MORE
        body = data[pos + 5:end]
        pos = end
        if length > _MAX_PLAINTEXT:
            return NOT_TLS
        if rtype == _ALERT:
            if length != 2 or body[0] != 1:
                return NOT_TLS                   # fatal or unknown level, or malformed
            if body[1] == 0:
                return CLOSE_QUIETLY             # close_notify
            warnings += 1
            if warnings > _MAX_WARNING_ALERTS:
                return NOT_TLS
            continue
        if rtype != _HANDSHAKE:
            return NOT_TLS
        if not length:
            empties += 1
            if empties > _MAX_EMPTY_RECORDS:
                return NOT_TLS
            continue
        empties = 0
        hs += body
        if len(hs) < 4:
            continue
        need = 4 + int.from_bytes(hs[1:4], "big")
        if len(hs) < need:
            if need > 4 + _MAX_MESSAGE:
                return NOT_TLS
            continue
        if hs[0] != _CLIENT_HELLO or len(hs) > need:
            return NOT_TLS
        return client_hello(bytes(hs[4:need]))


def _v2_client_hello(data: bytes):
    """An SSLv2-compatible ClientHello, as BoringSSL's ``read_v2_client_hello`` accepts it:
    no extensions, so no SNI and no ALPN."""
    length = ((data[0] & 0x7F) << 8) | data[1]
    if length > _MAX_V2_HELLO or length < 3:
        return NOT_TLS
    if len(data) < 2 + length:
        return NEED_MORE
    m = data[2:2 + length]
    if len(m) < 9:
        return NOT_TLS
    version = int.from_bytes(m[1:3], "big")
    spec_len = int.from_bytes(m[3:5], "big")
    sid_len = int.from_bytes(m[5:7], "big")
    chal_len = int.from_bytes(m[7:9], "big")
    if 9 + spec_len + sid_len + chal_len != len(m) or spec_len % 3:
        return NOT_TLS
    specs = m[9:9 + spec_len]
    # SSLv2-only cipher specs (first byte non-zero) are dropped; none left is a bad hello.
    if not any(specs[i] == 0 for i in range(0, spec_len, 3)):
        return NOT_TLS
    return _after_sni_callback(version, "", ())


def client_hello(h: bytes):
    """The ClientHello body (after the 4-byte handshake header)."""
    p = 34                                             # legacy_version, random
    if len(h) < p + 1:
        return NOT_TLS
    version = int.from_bytes(h[0:2], "big")
    sid_len = h[p]
    p += 1 + sid_len
    if sid_len > 32 or len(h) < p + 2:
        return NOT_TLS
    n = int.from_bytes(h[p:p + 2], "big")
    p += 2 + n
    if n < 2 or n % 2 or len(h) < p + 1:
        return NOT_TLS
    n = h[p]
    p += 1 + n
    if n < 1 or len(h) < p:
        return NOT_TLS
    exts = {}
    if p < len(h):
        if len(h) < p + 2:
            return NOT_TLS
        end = p + 2 + int.from_bytes(h[p:p + 2], "big")
        if end != len(h):
            return NOT_TLS
        p += 2
        while p < end:
            if end < p + 4:
                return NOT_TLS
            etype = int.from_bytes(h[p:p + 2], "big")
            elen = int.from_bytes(h[p + 2:p + 4], "big")
            p += 4 + elen
            if p > end or etype in exts:
                return NOT_TLS
            exts[etype] = h[p - elen:p]
    sni = _server_name(exts.get(_EXT_SERVER_NAME))
    if sni is None:
        return NOT_TLS
    return _after_sni_callback(version, sni, _alpn(exts.get(_EXT_ALPN)))


def _server_name(ext):
    """BoringSSL's ``extract_sni``: "" without the extension, None when it is malformed."""
    if ext is None:
        return ""
    if len(ext) < 5 or int.from_bytes(ext[0:2], "big") != len(ext) - 2:
        return None
    ntype = ext[2]
    nlen = int.from_bytes(ext[3:5], "big")
    name = ext[5:]
    if len(name) != nlen or ntype != 0 or not 0 < nlen <= 255 or b"\x00" in name:
        return None
    return name.decode("latin-1")


def _alpn(ext) -> tuple:
    """Envoy's ``Filter::onALPN``: the protocol list, or () if it is malformed."""
    if ext is None or len(ext) < 4 or int.from_bytes(ext[0:2], "big") != len(ext) - 2:
        return ()
    out = []
    q = 2
    while q < len(ext):
        n = ext[q]
        if n == 0 or q + 1 + n > len(ext):
            return ()
        out.append(ext[q + 1:q + 1 + n].decode("latin-1"))
        q += 1 + n
    return tuple(out)


def _after_sni_callback(version: int, sni: str, alpn: tuple) -> TlsResult:
    if not _MIN_VERSION <= version <= _MAX_VERSION:
        # Envoy 1.40 counts the SNI and tls_not_found, then closes the connection.
        return TlsResult(False, sni, alpn, sni_seen=True, close=True)
    return TlsResult(True, sni, alpn, sni_seen=True)
