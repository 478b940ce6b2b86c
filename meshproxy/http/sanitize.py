"""Internal/external request classification and header sanitising (Envoy's
``ConnectionManagerUtility::mutateRequestHeaders``; docs: "HTTP header sanitizing").

A request is internal only when, after XFF handling, there is a single XFF address and it lies
in ``internal_address_config`` (Envoy 1.40 trusts no address by default). External requests lose
the ``x-envoy-*`` control headers (retry policy, timeouts, force-trace ...) so a client cannot
steer the proxy; ``x-envoy-internal`` is always replaced by the proxy's own verdict.
"""

from __future__ import annotations

import ipaddress

EXTERNAL_STRIP = frozenset((
    b"x-envoy-retry-on", b"x-envoy-retry-grpc-on", b"x-envoy-max-retries",
    b"x-envoy-upstream-alt-stat-name", b"x-envoy-upstream-rq-timeout-ms",
    b"x-envoy-upstream-rq-per-try-timeout-ms", b"x-envoy-upstream-rq-timeout-alt-response",
    b"x-envoy-expected-rq-timeout-ms", b"x-envoy-force-trace", b"x-envoy-ip-tags",
    b"x-envoy-hedge-on-per-try-timeout", b"x-envoy-internal",
))
EDGE_STRIP = frozenset((b"x-envoy-decorator-operation", b"x-envoy-downstream-service-cluster",
                        b"x-envoy-downstream-service-node"))
_INTERNAL = b"x-envoy-internal"


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
        req.set(_INTERNAL, b"true")
        return True
    strip = EXTERNAL_STRIP
    if cfg.use_remote_address:
        strip = strip | EDGE_STRIP
    req.headers = [p for p in req.headers if p[0] not in strip]
    return False
