"""``request_headers_to_add/remove`` and ``response_headers_to_add/remove`` (Envoy's
``HeaderParser``, source/common/router/header_parser.cc).

One level (route, virtual host, route configuration, weighted cluster) applies as Envoy does:
removals first; then every value is formatted and every ``ADD_IF_ABSENT`` /
``OVERWRITE_IF_EXISTS`` condition is decided against the headers as they are after the removals;
then all overwrites are done (a set removes the header and appends it at the end, as
``HeaderMapImpl::setReferenceKey``), then all appends. An append onto an existing "inline"
header (``user-agent``, ``content-type``, ...) joins the value with ``,`` in place, because Envoy
keeps those as one entry. Measured against Envoy 1.40 (tests/oracle/test_routing_oracle.py).

Values may hold command operators (``%DOWNSTREAM_REMOTE_ADDRESS%``, ``%REQ(x-foo)%`` ...); a
value without ``%`` is kept as literal bytes so the common case costs nothing to evaluate.
Operators Envoy knows but meshproxy does not compute yet evaluate to nothing, so the header is
left out (unless ``keep_empty_value``), as Envoy does for a value it cannot produce.
"""

from __future__ import annotations

import os
import re
import socket
import time

from meshproxy.config.errors import ConfigError, join
from meshproxy.router.matchers import INLINE_REQUEST_HEADERS

APPEND_IF_EXISTS_OR_ADD = 0
ADD_IF_ABSENT = 1
OVERWRITE_IF_EXISTS_OR_ADD = 2
OVERWRITE_IF_EXISTS = 3

# Response headers Envoy keeps as one inline entry (measured against Envoy 1.40: an appended
# value is joined to the existing one with ",").
INLINE_RESPONSE_HEADERS = frozenset((
    b"access-control-allow-credentials", b"access-control-allow-headers",
    b"access-control-allow-methods", b"access-control-allow-origin",
    b"access-control-expose-headers", b"access-control-max-age", b"age", b"cache-control",
    b"connection", b"content-encoding", b"content-length", b"content-type", b"date", b"etag",
    b"expires", b"grpc-message", b"grpc-status", b"keep-alive", b"last-modified", b"location",
    b"proxy-status", b"server", b"transfer-encoding", b"upgrade", b"vary", b"via",
    b"x-envoy-decorator-operation", b"x-envoy-degraded", b"x-envoy-immediate-health-check-fail",
    b"x-envoy-ratelimited", b"x-envoy-upstream-service-time", b"x-request-id",
))

_OP_RE = re.compile(r"%([A-Z][A-Z_0-9]*)(?:\(((?:[^)]|\)(?!%|:))*)\))?(?::(\d+))?%")

# Substitution-formatter commands Envoy 1.40 accepts that meshproxy does not compute yet; they
# evaluate to nothing rather than failing a config Envoy loads.
_KNOWN_EMPTY = frozenset((
    "RESP", "TRAILER", "REQ_WITHOUT_QUERY", "START_TIME_LOCAL", "EMIT_TIME", "DYNAMIC_METADATA",
    "CLUSTER_METADATA", "UPSTREAM_METADATA", "FILTER_STATE", "UPSTREAM_FILTER_STATE",
    "METADATA", "CEL", "PER_REQUEST_STATE", "REQUEST_HEADERS_BYTES", "UPSTREAM_PROTOCOL",
    "RESPONSE_CODE", "RESPONSE_CODE_DETAILS", "CONNECTION_TERMINATION_DETAILS",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT", "BYTES_RECEIVED", "BYTES_SENT", "DURATION",
    "REQUEST_DURATION", "RESPONSE_DURATION", "RESPONSE_TX_DURATION", "RESPONSE_FLAGS",
    "RESPONSE_FLAGS_LONG", "ROUTE_NAME", "VIRTUAL_CLUSTER_NAME", "UPSTREAM_HOST",
    "UPSTREAM_HOST_NAME", "UPSTREAM_CLUSTER_RAW", "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", "UPSTREAM_LOCAL_PORT",
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "UPSTREAM_REMOTE_PORT",
    "UPSTREAM_TRANSPORT_FAILURE_REASON", "UPSTREAM_CONNECTION_ID", "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_PORT", "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_DIRECT_LOCAL_PORT",
    "CONNECTION_ID", "REQUESTED_SERVER_NAME", "DOWNSTREAM_PEER_URI_SAN",
    "DOWNSTREAM_LOCAL_URI_SAN", "DOWNSTREAM_PEER_SUBJECT", "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER", "DOWNSTREAM_TLS_SESSION_ID", "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_VERSION", "DOWNSTREAM_PEER_FINGERPRINT_256", "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_SERIAL", "DOWNSTREAM_PEER_CERT", "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_CERT_V_END", "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "DOWNSTREAM_LOCAL_DNS_SAN", "DOWNSTREAM_PEER_DNS_SAN", "DOWNSTREAM_LOCAL_IP_SAN",
    "DOWNSTREAM_PEER_IP_SAN", "UPSTREAM_PEER_URI_SAN", "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PEER_ISSUER", "UPSTREAM_TLS_SESSION_ID", "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_TLS_VERSION", "UPSTREAM_PEER_CERT", "UPSTREAM_LOCAL_URI_SAN",
    "UPSTREAM_LOCAL_SUBJECT", "LOCAL_REPLY_BODY", "FILTER_CHAIN_NAME", "TRACE_ID", "UNIQUE_ID",
    "STREAM_ID", "ACCESS_LOG_TYPE", "UPSTREAM_WIRE_BYTES_SENT", "UPSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_SENT", "DOWNSTREAM_WIRE_BYTES_RECEIVED", "ATTEMPT_COUNT",
    "UPSTREAM_HEADER_BYTES_SENT", "UPSTREAM_HEADER_BYTES_RECEIVED", "QUERY_PARAM", "PATH",
    "VIRTUAL_CLUSTER_NAME", "COMMON_DURATION", "CUSTOM_FLAGS", "DOWNSTREAM_HANDSHAKE_DURATION",
))
_NEEDS_ARG = frozenset(("REQ", "RESP", "TRAILER", "ENVIRONMENT", "DYNAMIC_METADATA",
                        "FILTER_STATE", "UPSTREAM_METADATA", "CLUSTER_METADATA"))


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


def _req_header(name: bytes):
    def get(s):
        req = getattr(s, "request", None)
        return (req.get_pseudo_or_header(name) or b"") if req is not None else b""
    return get


def _operator(op: str, arg: str | None, path: str):
    """A callable(stream) -> bytes for one command operator."""
    if op in _NEEDS_ARG and not arg:
        raise ConfigError(path, f"{op} requires parameters")
    if op in ("DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS"):
        return lambda s: _addr(s.conn.remote_address)
    if op in ("DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
              "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT"):
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
        v = os.environ.get(arg.split(":")[0], "").encode()
        return lambda s: v
    if op == "REQ":
        # %REQ(a?b)%: header a, else header b.
        names = [n.lower().encode() for n in arg.split("?", 1)]
        getters = [_req_header(n) for n in names]
        if len(getters) == 1:
            return getters[0]
        return lambda s: getters[0](s) or getters[1](s)
    if op == "START_TIME":
        return lambda s: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s.start_time)).encode()
    if op == "UPSTREAM_CLUSTER":
        return lambda s: s.upstream_cluster_name.encode() if s.upstream_cluster_name else b""
    if op in _KNOWN_EMPTY:
        return lambda s: b""
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
            # Formatter::SubstitutionFormatParser's message
            raise ConfigError(path, f"Incorrect configuration: {value}. Couldn't find valid "
                                    f"command at position {i}")
        parts.append(value[pos:i].encode())
        op = _operator(m.group(1), m.group(2), path)
        if m.group(3):
            n = int(m.group(3))
            op = (lambda f, n: lambda s: f(s)[:n])(op, n)
        parts.append(op)
        pos = m.end()
    parts = [p for p in parts if p != b""]
    if all(isinstance(p, bytes) for p in parts):
        return b"".join(parts)

    def evaluate(stream, parts=tuple(parts)):
        return b"".join(p if isinstance(p, bytes) else p(stream) for p in parts)
    return evaluate


class HeaderMutation:
    """One level's removals and additions. ``adds`` holds ``(name, value, action,
    keep_empty)`` where value is bytes or a callable(stream); ``inline`` is the set of names
    Envoy folds into one entry for this direction."""

    __slots__ = ("removes", "adds", "inline")

    def __init__(self, removes, adds: tuple, inline=INLINE_REQUEST_HEADERS):
        self.removes = frozenset(removes)
        self.adds = adds
        self.inline = inline

    def apply(self, headers, stream) -> None:
        h = headers.headers
        if self.removes:
            rm = self.removes
            h = [p for p in h if p[0] not in rm]
            headers.headers = h
        if not self.adds:
            return
        overwrite = []
        append = []
        for name, value, action, keep_empty in self.adds:
            if not isinstance(value, bytes):
                value = value(stream)
            if not value and not keep_empty:
                continue
            if action == APPEND_IF_EXISTS_OR_ADD:
                append.append((name, value))
            elif action == OVERWRITE_IF_EXISTS_OR_ADD:
                overwrite.append((name, value))
            elif action == ADD_IF_ABSENT:
                if not _has(h, name):
                    append.append((name, value))
            elif _has(h, name):  # OVERWRITE_IF_EXISTS
                overwrite.append((name, value))
        for name, value in overwrite:
            h = [p for p in h if p[0] != name]
            h.append((name, value))
        inline = self.inline
        for name, value in append:
            if name in inline:
                for i, (n, v) in enumerate(h):
                    if n == name:
                        h[i] = (n, v + b"," + value)
                        break
                else:
                    h.append((name, value))
            else:
                h.append((name, value))
        headers.headers = h

    def __repr__(self):
        return f"<HeaderMutation -{len(self.removes)} +{len(self.adds)}>"


def _has(h, name) -> bool:
    for n, _ in h:
        if n == name:
            return True
    return False


def _check_chars(value: str, path: str) -> None:
    # PGV well_known_regex HTTP_HEADER_NAME / HTTP_HEADER_VALUE with strict: false
    if "\x00" in value or "\n" in value or "\r" in value:
        raise ConfigError(path, 'value does not match regex pattern "^[^\\x00\\n\\r]*$"')


def _modifiable(name: str) -> bool:
    """``HeaderUtility::isModifiableHeader`` / ``isRemovableHeader``: not ``:``-prefixed and not
    ``host``."""
    return not name.startswith(":") and name.lower() != "host"


def build_mutation(adds, removes, path: str, adds_field: str, removes_field: str,
                   response: bool = False):
    """HeaderMutation from repeated HeaderValueOption + repeated string, or None when empty.
    Rejects what ``HeaderParser::configure`` and the PGV rules reject."""
    rm = []
    for i, name in enumerate(removes):
        p = f"{join(path, removes_field)}[{i}]"
        if not name:
            raise ConfigError(p, "value length must be at least 1 characters")
        _check_chars(name, p)
        if not _modifiable(name):
            raise ConfigError(p, ":-prefixed or host headers may not be removed")
        rm.append(name.lower().encode())
    if len(adds) > 1000:
        raise ConfigError(join(path, adds_field), "value must contain no more than 1000 item(s)")
    out = []
    for i, opt in enumerate(adds):
        p = f"{join(path, adds_field)}[{i}]"
        if not opt.HasField("header"):
            raise ConfigError(join(p, "header"), "value is required")
        key = opt.header.key
        if not key:
            raise ConfigError(join(p, "header.key"), "value length must be at least 1 characters")
        if len(key.encode()) > 16384:
            raise ConfigError(join(p, "header.key"), "value length must be at most 16384 bytes")
        _check_chars(key, join(p, "header.key"))
        if opt.header.raw_value and not opt.header.value:
            raw = opt.header.raw_value.decode("latin-1")
            vpath = join(p, "header.raw_value")
        else:
            raw = opt.header.value
            vpath = join(p, "header.value")
        if len(raw.encode("utf-8", "surrogateescape")) > 16384:
            raise ConfigError(vpath, "value length must be at most 16384 bytes")
        _check_chars(raw, vpath)
        if not _modifiable(key):
            raise ConfigError(join(p, "header.key"), ":-prefixed or host headers may not be "
                                                     "modified")
        if opt.append_action not in (0, 1, 2, 3):
            raise ConfigError(join(p, "append_action"), "value must be one of the defined "
                                                        "enum values")
        if opt.HasField("append"):
            if opt.append_action != APPEND_IF_EXISTS_OR_ADD:
                raise ConfigError(p, "Both append and append_action are set and it's not "
                                     "allowed")
            action = APPEND_IF_EXISTS_OR_ADD if opt.append.value else OVERWRITE_IF_EXISTS_OR_ADD
        else:
            action = opt.append_action
        value = compile_value(raw, vpath)
        out.append((key.lower().encode(), value, action, opt.keep_empty_value))
    if not rm and not out:
        return None
    return HeaderMutation(rm, tuple(out),
                          INLINE_RESPONSE_HEADERS if response else INLINE_REQUEST_HEADERS)
