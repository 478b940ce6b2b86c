"""Header maps for requests and responses.

Names are lower-case ``bytes`` and values ``bytes``, kept in arrival order as a list of
``(name, value)`` tuples: a request has about ten headers, where a list scan beats a dict and
serialising is one join. Envoy's pseudo-headers are attributes: ``:method``, ``:path``,
``:authority`` (HTTP/1 ``Host``), ``:scheme`` on requests and ``:status`` on responses, so the
HTTP/2 codec can fill the same objects later.
"""

from __future__ import annotations


class HeaderList:
    """Operations shared by request, response and trailer maps."""

    __slots__ = ("headers",)

    def __init__(self, headers: list | None = None):
        self.headers = headers if headers is not None else []

    def get(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]

    def remove(self, name: bytes) -> bool:
        h = self.headers
        kept = [p for p in h if p[0] != name]
        if len(kept) == len(h):
            return False
        self.headers = kept
        return True

    def remove_if(self, pred) -> None:
        self.headers = [p for p in self.headers if not pred(p[0])]

    def add(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every ``name`` header by one with ``value`` (at the first one's position)."""
        h = self.headers
        at = -1
        i = 0
        for n, _ in h:
            if n == name:
                if at >= 0:
                    # A repeated header (rare): keep the first position, drop the others.
                    h[at] = (name, value)
                    h[at + 1:] = [p for p in h[at + 1:] if p[0] != name]
                    return
                at = i
            i += 1
        if at >= 0:
            h[at] = (name, value)
        else:
            h.append((name, value))

    def set_if_absent(self, name: bytes, value: bytes) -> None:
        for n, _ in self.headers:
            if n == name:
                return
        self.headers.append((name, value))

    def __len__(self):
        return len(self.headers)

    def __iter__(self):
        return iter(self.headers)


class RequestHeaders(HeaderList):
    """A request head. ``version`` is ``b"1.0"``, ``b"1.1"`` or ``b"2"``."""

    __slots__ = ("method", "path", "authority", "scheme", "version", "keep_alive", "chunked",
                 "content_length", "expect_continue", "upgrade", "envoy_headers")

    def __init__(self, method: bytes = b"GET", path: bytes = b"/", authority: bytes | None = None,
                 headers: list | None = None, scheme: bytes = b"http", version: bytes = b"1.1"):
        self.headers = headers if headers is not None else []
        self.method = method
        self.path = path
        self.authority = authority
        self.scheme = scheme
        self.version = version
        self.keep_alive = True
        self.chunked = False
        self.content_length = -1
        self.expect_continue = False
        self.upgrade = None
        self.envoy_headers = False  # any x-envoy-* header present (set by the HCM)

    def get_pseudo_or_header(self, name: bytes) -> bytes | None:
        """Header lookup that also answers Envoy's pseudo-header names (route matchers may
        match ``:authority``, ``:path``, ``:method``, ``:scheme``, and ``host``)."""
        if name[:1] == b":" or name == b"host":
            if name == b":authority" or name == b"host":
                return self.authority
            if name == b":path":
                return self.path
            if name == b":method":
                return self.method
            if name == b":scheme":
                return self.scheme
            return None
        return self.get(name)

    def __repr__(self):
        return (f"<RequestHeaders {self.method.decode('latin-1')} {self.path.decode('latin-1')} "
                f"authority={self.authority!r} {len(self.headers)} headers>")


class ResponseHeaders(HeaderList):
    __slots__ = ("status", "version", "keep_alive", "chunked", "content_length", "reason",
                 "upgrade")

    def __init__(self, status: int = 200, headers: list | None = None):
        self.headers = headers if headers is not None else []
        self.status = status
        self.version = b"1.1"
        self.keep_alive = True
        self.chunked = False
        self.content_length = -1
        self.reason = b""
        self.upgrade = None

    def __repr__(self):
        return f"<ResponseHeaders {self.status} {len(self.headers)} headers>"
