"""Admin renderings of the stats: Envoy's text and JSON formats and Prometheus exposition.

Prometheus names come from Envoy's tag extraction (``meshproxy.stats.tags``): the tag values
are cut out of the flat name and become labels, the rest becomes the metric name with an
``envoy_`` prefix and non-alphanumerics as ``_`` (Envoy's ``PrometheusStatsFormatter``).
"""

from __future__ import annotations

import json
import re

from meshproxy.stats.tags import extract_tags

_SANITIZE = re.compile(r"[^a-zA-Z0-9_]")


def select(stats, *, used_only=False, regex=None, invert=False, kind=None):
    out = []
    for st in stats:
        if used_only and not st.used:
            continue
        if kind is not None and st.kind != kind:
            continue
        if regex is not None and (regex.search(st.name) is None) != invert:
            continue
        out.append(st)
    return out


def text(stats) -> str:
    return "".join(f"{st.name}: {st.value}\n" for st in stats)


def as_json(stats) -> str:
    return json.dumps({"stats": [{"name": st.name, "value": st.value} for st in stats]},
                      indent=1)


def _label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus(stats) -> str:
    """Group by extracted metric name; one ``# TYPE`` line per family, counters and gauges
    as Envoy orders them (counters first, then gauges, each sorted by family name)."""
    families: dict[tuple[str, str], list] = {}
    for st in stats:
        name, tags = extract_tags(st.name)
        metric = "envoy_" + _SANITIZE.sub("_", name)
        families.setdefault((st.kind, metric), []).append((tags, st.value))
    lines = []
    for kind in ("counter", "gauge"):
        for (k, metric) in sorted(key for key in families if key[0] == kind):
            lines.append(f"# TYPE {metric} {kind}")
            for tags, value in families[(k, metric)]:
                if tags:
                    labels = ",".join(f'{_SANITIZE.sub("_", t)}="{_label_value(v)}"'
                                      for t, v in tags)
                    lines.append(f"{metric}{{{labels}}} {value}")
                else:
                    lines.append(f"{metric}{{}} {value}")
    return "\n".join(lines) + ("\n" if lines else "")
