"""Request header mutation by the connection manager (Envoy's
``ConnectionManagerUtility::mutateRequestHeaders``; docs: "HTTP header sanitizing"):
internal/external classification, x-envoy-* sanitising, X-Forwarded-For/-Proto, x-request-id,
X-Forwarded-Client-Cert and Via.

A request is internal only when, after XFF handling, there is a single XFF address and it lies
in ``internal_address_config`` (Envoy 1.40 trusts no address by default). External requests lose
the ``x-envoy-*`` control headers (retry policy, timeouts, force-trace ...) so a client cannot
steer the proxy; ``x-envoy-internal`` is always replaced by the proxy's own verdict.
"""

from __future__ import annotations

import ipaddress

from meshproxy.http.request_id import new_request_id

EXTERNAL_STRIP = frozenset((
    b"x-envoy-retry-on", b"x-envoy-retry-grpc-on", b"x-envoy-max-retries",
    b"x-envoy-upstream-alt-stat-name", b"x-envoy-upstream-rq-timeout-ms",
    b"x-envoy-upstream-rq-per-try-timeout-ms", b"x-envoy-upstream-rq-timeout-alt-response",
    b"x-envoy-expected-rq-timeout-ms", b"x-envoy-force-trace", b"x-envoy-ip-tags",
    b"x-envoy-hedge-on-per-try-timeout", b"x-envoy-internal",
    b"x-envoy-retriable-status-codes", b"x-envoy-retriable-header-names",
    b"x-envoy-original-url",
))
# forward_client_cert_details SANITIZE (the default): a client's XFCC never travels on.
XFCC = b"x-forwarded-client-cert"
EDGE_STRIP = frozenset((b"x-envoy-decorator-operation", b"x-envoy-downstream-service-cluster",
                        b"x-envoy-downstream-service-node"))
_INTERNAL = b"x-envoy-internal"
_XFP = b"x-forwarded-proto"
_XFF = b"x-forwarded-for"
_XRID = b"x-request-id"
_EXT_ADDR = b"x-envoy-external-address"


def build_internal_ranges(iac) -> tuple:
    nets = []
    for r in iac.cidr_ranges:
        prefix = r.prefix_len.value if r.HasField("prefix_len") else \
            (32 if ":" not in r.address_prefix else 128)
        nets.append(ipaddress.ip_network(f"{r.address_prefix}/{prefix}", strict=False))
    return tuple(nets)


def _last_xff(req, trusted_hops: int):
    """(address, single) from X-Forwarded-For, skipping ``trusted_hops`` from the right."""
    vals = req.get_all(b"x-forwarded-for")
    if not vals:
        return None, False
    parts = [p.strip() for p in b",".join(vals).split(b",") if p.strip()]
    if len(parts) <= trusted_hops:
        return None, False
    try:
        addr = ipaddress.ip_address(parts[-1 - trusted_hops].decode())
    except ValueError:
        return None, False
    return addr, len(parts) == 1


def is_internal(req, conn, cfg) -> bool:
    ranges = cfg.internal_address_config
    if not ranges:
        return False
    if cfg.use_remote_address:
        ra = conn.remote_address
        if not isinstance(ra, tuple):
            return False
        if req.get(b"x-forwarded-for") not in (None, ra[0].encode()):
            return False
        addr = ipaddress.ip_address(ra[0])
    else:
        addr, single = _last_xff(req, cfg.xff_num_trusted_hops)
        if addr is None or not single:
            return False
    return any(addr in n for n in ranges)


def sanitize(req, conn, cfg) -> bool:
    """Strip or set the internal-only headers; returns whether the request is internal."""
    internal = is_internal(req, conn, cfg)
    if internal:
        # Set again after x-forwarded-proto (mutate_request_headers), where Envoy puts it.
        req.remove(_INTERNAL)
        return True
    strip = EXTERNAL_STRIP
    if cfg.use_remote_address:
        strip = strip | EDGE_STRIP
    req.headers = [p for p in req.headers if p[0] not in strip]
    return False


def mutate_request_headers(req, conn, cfg):
    """Apply the connection manager's request header rules; returns the x-request-id."""
    xfp = None
    rid = None
    xfcc = False
    for n, v in req.headers:
        if n[0] == 120 and n[:2] == b"x-":      # 120 = "x": no slice for most names
            if n == _XFP:
                xfp = v
            elif n == _XRID:
                rid = v
            elif n[:8] == b"x-envoy-":
                req.envoy_headers = True
            elif n == XFCC:
                xfcc = True
    if xfcc and cfg.forward_client_cert != "ALWAYS_FORWARD_ONLY":
        # A plaintext client presented no certificate: every mode but ALWAYS_FORWARD_ONLY
        # drops its X-Forwarded-Client-Cert (ConnectionManagerUtility::mutateXfccRequestHeader).
        req.remove(XFCC)
    internal = False
    if req.envoy_headers or cfg.internal_address_config:
        internal = sanitize(req, conn, cfg)
    if cfg.use_remote_address:
        # Edge proxy: this hop's own scheme and client address are authoritative.
        _append_xff(req, conn, cfg)
        req.set(_XFP, req.scheme)
        if not internal:
            ra = conn.remote_address
            if isinstance(ra, tuple):
                req.set(_EXT_ADDR, ra[0].encode())
            if rid is not None and not cfg.preserve_external_request_id \
                    and cfg.generate_request_id:
                # An edge request's id comes from this proxy (UUIDRequestIdExtension::set).
                rid = new_request_id()
                req.set(_XRID, rid)
    elif xfp is None:
        req.headers.append((_XFP, req.scheme))
    if internal:
        req.headers.append((_INTERNAL, b"true"))
    if rid is None and cfg.generate_request_id:
        rid = new_request_id()
        req.headers.append((_XRID, rid))
    if cfg.via is not None:
        old = req.get(b"via")
        req.set(b"via", old + b", " + cfg.via if old else cfg.via)
    return rid


def _append_xff(req, conn, cfg) -> None:
    if cfg.skip_xff_append:
        return
    ra = conn.remote_address
    if not isinstance(ra, tuple):
        return
    ip = ra[0]
    if ip.startswith("127.") or ip == "::1":
        # Envoy appends its own address for a loopback peer (mutateRequestHeaders).
        ip = cfg.local_address or ip
    ip = ip.encode()
    old = req.get(_XFF)
    req.set(_XFF, old + b"," + ip if old else ip)
