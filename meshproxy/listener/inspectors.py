"""Sans-IO listener-filter inspections: peek at the first bytes of a connection, decide.

``inspect_tls(data)`` reads a TLS ClientHello without terminating TLS (RFC 8446 §4.1.2,
RFC 6066 §3 server_name, RFC 7301 ALPN), as Envoy's ``tls_inspector`` does, and
``inspect_http(data)`` recognises an HTTP/1.x request line or the HTTP/2 connection preface,
as Envoy's ``http_inspector`` does. Each returns ``NEED_MORE`` until it can decide.
"""

from __future__ import annotations

NEED_MORE = object()

# Envoy's tls_inspector refuses ClientHellos above max_client_hello_size (default 64 KiB)
MAX_CLIENT_HELLO = 65536
_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0x0000
_EXT_ALPN = 0x0010


class TlsResult:
    __slots__ = ("is_tls", "server_name", "alpn", "too_large", "error")

    def __init__(self, is_tls, server_name="", alpn=(), too_large=False, error=False):
        self.is_tls = is_tls
        self.server_name = server_name
        self.alpn = alpn
        self.too_large = too_large
        self.error = error

    def __repr__(self):
        return (f"<TlsResult tls={self.is_tls} sni={self.server_name!r} alpn={list(self.alpn)}"
                f"{' too_large' if self.too_large else ''}{' error' if self.error else ''}>")


def inspect_tls(data: bytes, max_size: int = MAX_CLIENT_HELLO):
    """TlsResult, or NEED_MORE. A non-handshake first byte is "not TLS" at once."""
    if not data:
        return NEED_MORE
    if data[0] != _HANDSHAKE:
        return TlsResult(False)
    if len(data) < 5:
        return NEED_MORE
    # The ClientHello may span several records; gather handshake bytes across records.
    body = bytearray()
    pos = 0
    need = None
    while True:
        if len(data) < pos + 5:
            return NEED_MORE
        if data[pos] != _HANDSHAKE or data[pos + 1] != 3:
            return TlsResult(False, error=True)
        rec_len = int.from_bytes(data[pos + 3:pos + 5], "big")
        chunk = data[pos + 5:pos + 5 + rec_len]
        body += chunk
        if need is None and len(body) >= 4:
            if body[0] != _CLIENT_HELLO:
                return TlsResult(False, error=True)
            need = 4 + int.from_bytes(body[1:4], "big")
            if need > max_size:
                return TlsResult(False, too_large=True)
        if need is not None and len(body) >= need:
            return _parse_client_hello(bytes(body[4:need]))
        if len(chunk) < rec_len:
            return NEED_MORE
        pos += 5 + rec_len


def _parse_client_hello(h: bytes):
    try:
        p = 2 + 32                                  # legacy_version, random
        p += 1 + h[p]                               # legacy_session_id
        p += 2 + int.from_bytes(h[p:p + 2], "big")  # cipher_suites
        p += 1 + h[p]                               # legacy_compression_methods
        if p == len(h):
            return TlsResult(True)
        ext_end = p + 2 + int.from_bytes(h[p:p + 2], "big")
        if ext_end > len(h):
            return TlsResult(False, error=True)
        p += 2
        sni = ""
        alpn: list = []
        while p + 4 <= ext_end:
            etype = int.from_bytes(h[p:p + 2], "big")
            elen = int.from_bytes(h[p + 2:p + 4], "big")
            ext = h[p + 4:p + 4 + elen]
            if len(ext) != elen:
                return TlsResult(False, error=True)
            if etype == _EXT_SERVER_NAME and len(ext) >= 2:
                q = 2
                while q + 3 <= len(ext):
                    ntype = ext[q]
                    nlen = int.from_bytes(ext[q + 1:q + 3], "big")
                    if ntype == 0:  # host_name
                        sni = ext[q + 3:q + 3 + nlen].decode("ascii", "replace").lower()
                        break
                    q += 3 + nlen
            elif etype == _EXT_ALPN and len(ext) >= 2:
                q = 2
                while q < len(ext):
                    n = ext[q]
                    alpn.append(ext[q + 1:q + 1 + n].decode("ascii", "replace"))
                    q += 1 + n
            p += 4 + elen
        return TlsResult(True, sni, tuple(alpn))
    except IndexError:
        return TlsResult(False, error=True)


# --------------------------------------------------------------------------- HTTP

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Methods llhttp knows (Envoy's http_inspector parses with the HTTP/1 parser).
_METHODS = frozenset((
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
    b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"SEARCH",
    b"REPORT", b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"MSEARCH", b"M-SEARCH", b"NOTIFY",
    b"SUBSCRIBE", b"UNSUBSCRIBE", b"PURGE", b"MKCALENDAR", b"LINK", b"UNLINK", b"SOURCE",
    b"BIND", b"REBIND", b"UNBIND", b"ACL", b"QUERY"))
MAX_INSPECT = 64 * 1024


def inspect_http(data: bytes):
    """"http/1.1", "http/1.0", "h2c", None (not HTTP), or NEED_MORE."""
    n = min(len(data), len(H2_PREFACE))
    if data[:n] == H2_PREFACE[:n]:
        return "h2c" if n == len(H2_PREFACE) else NEED_MORE
    end = data.find(b"\r\n")
    if end < 0:
        end = data.find(b"\n")
    line = data if end < 0 else data[:end]
    sp = line.find(b" ")
    if sp < 0:
        if end >= 0 or len(data) >= MAX_INSPECT:
            return None
        # still reading the method: is it a prefix of one we know?
        return NEED_MORE if any(m.startswith(line) for m in _METHODS) and line else \
            (NEED_MORE if not line else None)
    if line[:sp] not in _METHODS:
        return None
    if end < 0:
        return NEED_MORE if len(data) < MAX_INSPECT else None
    parts = line.rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not parts[1]:
        return None
    version = parts[2]
    if version == b"HTTP/1.1":
        return "http/1.1"
    if version == b"HTTP/1.0":
        return "http/1.0"
    return None
