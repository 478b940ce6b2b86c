"""A route's ``hash_policy`` (``RouteAction.HashPolicy``), compiled once; Envoy's
``source/common/http/hash_policy.cc``.

Policies are evaluated in order; each that yields a hash is folded in as
``hash = rotl(hash, 1) ^ new`` (rotating keeps duplicate rules from cancelling out), and a
``terminal`` policy that has produced a hash stops the walk. Hashes are xxHash64 (seed 0):

* header: all values of the header (after ``regex_rewrite``), sorted, each hashed with the
  previous value's hash as seed;
* cookie: the first ``name=value`` in the Cookie headers (value unquoted). Without the cookie
  and with a ``ttl``, Envoy generates one from the connection's addresses and hashes that; the
  same hash is used here, but no ``Set-Cookie`` is added to the response (not implemented);
* connection_properties.source_ip: the downstream address as the connection manager sees it
  (the trusted X-Forwarded-For hop unless ``use_remote_address``), without the port;
* query_parameter: the first value of the parameter in the path's query string, as written;
* filter_state: nothing in meshproxy sets hashable filter state, so it never yields a hash.

The hash is computed only when a hashing load balancer asks for it (``HashLoadBalancer``), so
routes without a hash policy, and clusters without a hashing LB, pay nothing.
"""

from __future__ import annotations

import xxhash

from meshproxy.config.errors import ConfigError, join
from meshproxy.router.matchers import check_header_chars, compile_rewrite, regex_field
from meshproxy.router.rewrite import substitute

_xxh64 = xxhash.xxh64_intdigest
_MASK = (1 << 64) - 1

HEADER, COOKIE, SOURCE_IP, QUERY, FILTER_STATE = range(5)


def _header(req, name: bytes, rewrite):
    vals = req.get_all(name) if name[:1] != b":" else \
        [v for v in (req.get_pseudo_or_header(name),) if v is not None]
    if not vals:
        return None
    if rewrite is not None:
        rx, sub = rewrite
        vals = [substitute(rx, sub, v) for v in vals]
    if len(vals) == 1:
        return _xxh64(vals[0])
    # HashUtil::xxHash64(Span): each value hashed with the previous hash as the seed (found
    # against Envoy 1.40: not the hash of the concatenation).
    vals.sort()
    h = 0
    for v in vals:
        h = _xxh64(v, h)
    return h


def cookie_value(req, name: bytes) -> bytes:
    """``Http::Utility::parseCookieValue``: the first cookie called ``name``, quotes removed."""
    for v in req.get_all(b"cookie"):
        for part in v.split(b";"):
            if not part:
                continue
            eq = part.find(b"=")
            if eq < 0:
                continue
            if part[:eq].lstrip(b" ") == name:
                val = part[eq + 1:]
                if len(val) >= 2 and val[:1] == b'"' and val[-1:] == b'"':
                    val = val[1:-1]
                return val
    return b""


def _addr_str(addr) -> str:
    if not isinstance(addr, tuple):
        return str(addr)
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _source_ip(stream) -> str | None:
    conn = stream.hcm.conn
    remote = conn.remote_address
    cfg = stream.config
    if not cfg.use_remote_address:
        from meshproxy.http.sanitize import _last_xff
        addr, _ = _last_xff(stream.request, cfg.xff_num_trusted_hops)
        if addr is not None:
            return str(addr)
    if isinstance(remote, tuple):
        return remote[0]
    return None


def _query(path: bytes, name: bytes):
    q = path.find(b"?")
    if q < 0:
        return None
    query = path[q + 1:]
    f = query.find(b"#")
    if f >= 0:
        query = query[:f]
    for param in query.split(b"&"):
        if not param:
            continue
        eq = param.find(b"=")
        key = param if eq < 0 else param[:eq]
        if key == name:
            return b"" if eq < 0 else param[eq + 1:]
    return None


class HashPolicy:
    """The compiled list of ``(kind, terminal, arg...)`` rules."""

    __slots__ = ("rules",)

    def __init__(self, rules: tuple):
        self.rules = rules

    def generate(self, stream) -> int | None:
        h = None
        req = stream.request
        for kind, terminal, a, b in self.rules:
            new = None
            if kind == HEADER:
                new = _header(req, a, b)
            elif kind == COOKIE:
                v = cookie_value(req, a)
                if v:
                    new = _xxh64(v)
                elif b is not None:
                    new = _xxh64(_generated_cookie(stream))
            elif kind == SOURCE_IP:
                ip = _source_ip(stream)
                if ip:
                    new = _xxh64(ip.encode())
            elif kind == QUERY:
                v = _query(req.path, a)
                if v is not None:
                    new = _xxh64(v)
            if new is not None:
                h = new if h is None else (((h << 1) | (h >> 63)) & _MASK) ^ new
            if terminal and h is not None:
                break
        return h

    def __repr__(self):
        return f"<HashPolicy {len(self.rules)} rules>"


def _generated_cookie(stream) -> bytes:
    """``generateCookie``'s value: hex xxHash64 of the remote then local address strings."""
    conn = stream.hcm.conn
    value = _addr_str(conn.remote_address) + _addr_str(conn.local_address)
    return b"%016x" % _xxh64(value.encode())


def build_hash_policy(policies, path: str) -> HashPolicy | None:
    """``RouteAction.hash_policy`` (repeated) -> HashPolicy, or None when there is none."""
    rules = []
    for i, hp in enumerate(policies):
        p = f"{join(path, 'hash_policy')}[{i}]"
        which = hp.WhichOneof("policy_specifier")
        if which is None:
            raise ConfigError(p, "value is required")
        if which == "header":
            name = hp.header.header_name
            if not name:
                raise ConfigError(join(p, "header.header_name"),
                                  "value length must be at least 1 characters")
            check_header_chars(name, join(p, "header.header_name"))
            rewrite = None
            if hp.header.HasField("regex_rewrite"):
                rr = hp.header.regex_rewrite
                rp = join(p, "header.regex_rewrite")
                if not rr.HasField("pattern"):
                    raise ConfigError(join(rp, "pattern"), "value is required")
                rewrite = (regex_field(rr.pattern, join(rp, "pattern")),
                           compile_rewrite(rr.substitution))
            rules.append((HEADER, hp.terminal, name.lower().encode(), rewrite))
        elif which == "cookie":
            if not hp.cookie.name:
                raise ConfigError(join(p, "cookie.name"),
                                  "value length must be at least 1 characters")
            ttl = hp.cookie.ttl.seconds if hp.cookie.HasField("ttl") else None
            rules.append((COOKIE, hp.terminal, hp.cookie.name.encode(), ttl))
        elif which == "connection_properties":
            if hp.connection_properties.source_ip:
                rules.append((SOURCE_IP, hp.terminal, None, None))
        elif which == "query_parameter":
            if not hp.query_parameter.name:
                raise ConfigError(join(p, "query_parameter.name"),
                                  "value length must be at least 1 characters")
            rules.append((QUERY, hp.terminal, hp.query_parameter.name.encode(), None))
        elif which == "filter_state":
            if not hp.filter_state.key:
                raise ConfigError(join(p, "filter_state.key"),
                                  "value length must be at least 1 characters")
            rules.append((FILTER_STATE, hp.terminal, None, None))
    return HashPolicy(tuple(rules)) if rules else None
