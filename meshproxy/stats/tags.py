"""Envoy's default tag extraction (``source/common/config/well_known_names.cc``): turns a flat
stat name such as ``cluster.up.upstream_rq_200`` into ``cluster.upstream_rq`` with tags
``envoy_response_code="200"`` and ``envoy_cluster_name="up"``, for Prometheus output.

Each extractor's regex has an outer group (removed from the name) and an inner group (the tag
value), as in Envoy.
"""

from __future__ import annotations

import re

# (tag name, regex) in Envoy's order; the first group is cut, the second is the value.
_EXTRACTORS = [
    ("envoy.cluster_name", r"^cluster\.((.+?)\.)"),
    ("envoy.listener_address", r"^listener\.(((?:[_.\d]*|[_\[\]aAbBcCdDeEfF\d]*))\.)"),
    ("envoy.http_conn_manager_prefix", r"^http\.((.*?)\.)"),
    ("envoy.tcp_prefix", r"^tcp\.((.*?)\.)\w+?$"),
    ("envoy.response_code", r"_rq(_(\d{3}))$"),
    ("envoy.response_code_class", r"_rq(_(\d)xx)$"),
]
_COMPILED = [(name, re.compile(rx)) for name, rx in _EXTRACTORS]
_CACHE: dict[str, tuple] = {}


def extract_tags(name: str) -> tuple[str, list]:
    hit = _CACHE.get(name)
    if hit is not None:
        return hit
    tags = []
    out = name
    for tag, rx in _COMPILED:
        m = rx.search(out)
        if m is None:
            continue
        value = m.group(2)
        start, end = m.span(1)
        out = out[:start] + out[end:]
        if tag == "envoy.response_code_class":
            out = out + "_xx" if not out.endswith("_xx") else out
        tags.append((tag.replace(".", "_"), value))
    result = (out, tags[::-1])
    if len(_CACHE) < 100000:
        _CACHE[name] = result
    return result
