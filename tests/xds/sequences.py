"""Request sequences as the test control plane recorded them, in a form two clients' sequences
can be compared in (and read in a failure message)."""

from __future__ import annotations

from meshproxy.xds import types as T


def step(r) -> str:
    """``ACK CDS v=c1 n=3 [a,b]``; delta: ``+[a] -[b]`` and ``init{a=1}``; ``NACK(13)`` for an
    error; ``*node`` when the request carries the node."""
    kind = f"NACK({r.error[0]})" if r.error else ("ACK" if r.nonce else "REQ")
    parts = [kind, T.short(r.type_url)]
    if not r.delta:
        parts.append(f"v={r.version_info}")
    parts.append(f"n={r.nonce}")
    if r.delta:
        if r.subscribe:
            parts.append("+[" + ",".join(r.subscribe) + "]")
        if r.unsubscribe:
            parts.append("-[" + ",".join(r.unsubscribe) + "]")
        if r.initial_versions:
            parts.append("init{" + ",".join(f"{n}={v}" for n, v in r.initial_versions) + "}")
    else:
        parts.append("[" + ",".join(r.names) + "]")
    if r.has_node:
        parts.append("*node")
    if r.stale:
        parts.append("(stale)")
    return " ".join(parts)


def steps(records, stream: int | None = None) -> list[str]:
    return [step(r) for r in records if stream is None or r.stream == stream]


def acked(type_url: str, version: str | None = None, nonce: str | None = None):
    """A wait_for predicate: an ACK of ``type_url`` (at SotW ``version`` / with ``nonce``)."""
    def pred(reqs):
        return any(r.type_url == type_url and r.nonce and not r.error and not r.stale
                   and (version is None or r.version_info == version)
                   and (nonce is None or r.nonce == nonce) for r in reqs)
    return pred


def nacked(type_url: str):
    def pred(reqs):
        return any(r.type_url == type_url and r.error for r in reqs)
    return pred
