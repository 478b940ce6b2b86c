"""``request_headers_to_add/remove`` and ``response_headers_to_add/remove`` (Envoy's
``HeaderParser``): removals first, then additions with their ``append_action``.

Values may hold command operators (``%DOWNSTREAM_REMOTE_ADDRESS%``, ``%REQ(x-foo)%`` ...); a
value without ``%`` is kept as literal bytes so the common case costs nothing to evaluate.
"""

from __future__ import annotations

import os
import re
import socket

from meshproxy.config.errors import ConfigError, join

APPEND_IF_EXISTS_OR_ADD = 0
ADD_IF_ABSENT = 1
OVERWRITE_IF_EXISTS_OR_ADD = 2
OVERWRITE_IF_EXISTS = 3

_OP_RE = re.compile(r"%([A-Z_0-9]+)(?:\(([^)]*)\))?(?::(\d+))?%")


def _addr(a, with_port=True) -> bytes:
    if a is None:
        return b""
    if not isinstance(a, tuple):
        return str(a).encode()
    host, port = a[0], a[1]
    if not with_port:
        return host.encode()
    if ":" in host:
        return f"[{host}]:{port}".encode()
    return f"{host}:{port}".encode()


def _operator(op: str, arg: str | None, path: str):
    """A callable(stream) -> bytes for one command operator."""
    if op == "DOWNSTREAM_REMOTE_ADDRESS":
        return lambda s: _addr(s.conn.remote_address)
    if op == "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT":
        return lambda s: _addr(s.conn.remote_address, False)
    if op == "DOWNSTREAM_DIRECT_REMOTE_ADDRESS":
        return lambda s: _addr(s.conn.remote_address)
    if op == "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT":
        return lambda s: _addr(s.conn.remote_address, False)
    if op == "DOWNSTREAM_LOCAL_ADDRESS":
        return lambda s: _addr(s.conn.local_address)
    if op == "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
        return lambda s: _addr(s.conn.local_address, False)
    if op == "DOWNSTREAM_LOCAL_PORT":
        return lambda s: str(s.conn.local_address[1]).encode() if s.conn.local_address else b""
    if op == "UPSTREAM_REMOTE_ADDRESS":
        return lambda s: s.upstream_host.address_bytes if s.upstream_host is not None else b""
    if op == "PROTOCOL":
        return lambda s: b"HTTP/" + s.request.version if s.request is not None else b""
    if op == "HOSTNAME":
        h = socket.gethostname().encode()
        return lambda s: h
    if op == "ENVIRONMENT":
        if not arg:
            raise ConfigError(path, "ENVIRONMENT needs a variable name")
        v = os.environ.get(arg, "").encode()
        return lambda s: v
    if op == "REQ":
        if not arg:
            raise ConfigError(path, "REQ needs a header name")
        name = arg.split("?")[0].lower().encode()
        return lambda s: (s.request.get_pseudo_or_header(name) or b"") if s.request else b""
    if op == "START_TIME":
        import time
        return lambda s: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s.start_time)).encode()
    if op == "UPSTREAM_CLUSTER":
        return lambda s: s.upstream_cluster_name or b""
    raise ConfigError(path, f"Not supported field in StreamInfo: {op}")


def compile_value(value: str, path: str):
    """Literal bytes, or a callable(stream) -> bytes when ``value`` has command operators."""
    if "%" not in value:
        return value.encode()
    parts = []
    pos = 0
    while True:
        i = value.find("%", pos)
        if i < 0:
            parts.append(value[pos:].encode())
            break
        if value.startswith("%%", i):
            parts.append(value[pos:i].encode() + b"%")
            pos = i + 2
            continue
        m = _OP_RE.match(value, i)
        if not m:
            raise ConfigError(path, f"Invalid header configuration. Un-terminated variable "
                                    f"expression '{value[i:]}'")
        parts.append(value[pos:i].encode())
        parts.append(_operator(m.group(1), m.group(2), path))
        pos = m.end()
    parts = [p for p in parts if p != b""]
    if all(isinstance(p, bytes) for p in parts):
        return b"".join(parts)

    def evaluate(stream, parts=tuple(parts)):
        return b"".join(p if isinstance(p, bytes) else p(stream) for p in parts)
    return evaluate


class HeaderMutation:
    """Removals then additions, applied to a header map. ``adds`` holds
    ``(name, value, action, keep_empty)`` where value is bytes or a callable(stream)."""

    __slots__ = ("removes", "adds")

    def __init__(self, removes: tuple, adds: tuple):
        self.removes = removes
        self.adds = adds

    def apply(self, headers, stream) -> None:
        if self.removes:
            rm = self.removes
            headers.headers = [p for p in headers.headers if p[0] not in rm]
        for name, value, action, keep_empty in self.adds:
            if not isinstance(value, bytes):
                value = value(stream)
            if not value and not keep_empty:
                continue
            if name[:1] == b":":
                _set_pseudo(headers, name, value, action)
            elif action == APPEND_IF_EXISTS_OR_ADD:
                headers.headers.append((name, value))
            elif action == OVERWRITE_IF_EXISTS_OR_ADD:
                headers.set(name, value)
            elif action == ADD_IF_ABSENT:
                headers.set_if_absent(name, value)
            elif headers.get(name) is not None:  # OVERWRITE_IF_EXISTS
                headers.set(name, value)

    def __repr__(self):
        return f"<HeaderMutation -{len(self.removes)} +{len(self.adds)}>"


def _set_pseudo(headers, name, value, action):
    if name == b":authority" and hasattr(headers, "authority"):
        if action != ADD_IF_ABSENT or headers.authority is None:
            headers.authority = value


# Headers a route may never remove or modify (Envoy: HeaderParser::configure rejects
# pseudo-headers and Host in *_to_remove).
_PROTECTED = frozenset((b"host", b":authority", b":path", b":method", b":scheme", b":status"))


def build_mutation(adds, removes, path: str, adds_field: str, removes_field: str):
    """HeaderMutation from repeated HeaderValueOption + repeated string, or None when empty."""
    rm = []
    for i, name in enumerate(removes):
        n = name.lower().encode()
        if n in _PROTECTED or n[:1] == b":":
            raise ConfigError(f"{join(path, removes_field)}[{i}]",
                              f"invalid header '{name}' in headers to remove")
        rm.append(n)
    out = []
    for i, opt in enumerate(adds):
        p = f"{join(path, adds_field)}[{i}]"
        key = opt.header.key
        if not key:
            raise ConfigError(join(p, "header.key"), "header name must not be empty")
        if opt.header.raw_value and not opt.header.value:
            value = compile_value(opt.header.raw_value.decode("latin-1"), join(p, "header.raw_value"))
        else:
            value = compile_value(opt.header.value, join(p, "header.value"))
        if opt.HasField("append"):
            action = APPEND_IF_EXISTS_OR_ADD if opt.append.value else OVERWRITE_IF_EXISTS_OR_ADD
        else:
            action = opt.append_action
        out.append((key.lower().encode(), value, action, opt.keep_empty_value))
    if not rm and not out:
        return None
    return HeaderMutation(frozenset(rm), tuple(out))
