"""Admin renderings of the stats, as Envoy 1.40 prints them.

- text (``source/server/admin/stats_render.cc`` ``StatsTextRender``): ``name: value`` lines;
  counters and gauges together, sorted by the whole name as bytes (``StatsRequest`` keeps them
  in a map keyed by name);
- JSON (``StatsJsonRender``): one compact object ``{"stats":[{"name":..,"value":..},...]}``;
- Prometheus (``prometheus_stats.cc``): families of the tag-extracted name, counters first then
  gauges; families sorted and, inside a family, metrics sorted by their names compared token by
  token (``StatNameLessThan`` / ``MetricLessThan`` on symbolised names, which differs from a
  byte sort when a token contains ``-``); labels in tag-extraction order; every sample carries
  braces, even empty ones (``envoy_server_live{} 1``).

Histograms are not implemented yet: no histogram appears in any format (Envoy would print
``No recorded values`` or buckets), rather than invented values.
"""

from __future__ import annotations

import json
import re

from meshproxy.stats.store import COUNTER, GAUGE, TEXT_READOUT

_SANITIZE = re.compile(r"[^a-zA-Z0-9_]")


def select(stats, *, used_only=False, regex=None, invert=False, kind=None):
    """Envoy's ``StatsParams`` filtering: ``usedonly``, then the filter on the full name
    (``invert_filter`` keeps the non-matching ones), then the stat type."""
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


def _texts_first(stats) -> list:
    """Envoy renders the text readouts before the counters and gauges (each part sorted)."""
    return [st for st in stats if st.kind == TEXT_READOUT] + \
        [st for st in stats if st.kind != TEXT_READOUT]


def text(stats) -> str:
    # text readouts print quoted (StatsTextRender::generate(TextReadout))
    return "".join(f'{st.name}: "{st.value}"\n' if st.kind == TEXT_READOUT else
                   f"{st.name}: {st.value}\n" for st in _texts_first(stats))


def as_json(stats) -> str:
    items = ",".join('{"name":%s,"value":%s}' % (
        json.dumps(st.name, ensure_ascii=False),
        json.dumps(st.value, ensure_ascii=False) if st.kind == TEXT_READOUT else
        "%d" % st.value) for st in _texts_first(stats))
    return '{"stats":[' + items + "]}"


def html(stats) -> str:
    """``format=html``: the text rendering inside a page (Envoy's page also carries its
    interactive controls)."""
    body = text(stats).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return ("<!DOCTYPE html>\n<html lang='en'>\n<head>\n  <title>Envoy Admin</title>\n</head>\n"
            f"<body>\n<pre>\n{body}</pre>\n</body>\n</html>\n")


def _label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _token_key(name: str):
    return name.split(".")


def metric_name(extracted: str) -> str:
    """``PrometheusStatsFormatter::metricName`` without custom namespaces."""
    return "envoy_" + _SANITIZE.sub("_", extracted)


def prometheus(stats, config) -> str:
    """Prometheus text exposition format 0.0.4 of ``stats`` (already filtered)."""
    lines = []
    for kind in (COUNTER, GAUGE):
        groups: dict[str, list] = {}
        for st in stats:
            if st.kind != kind:
                continue
            extracted, tags = config.tags(st.name)
            groups.setdefault(extracted, []).append((st, tags))
        for extracted in sorted(groups, key=_token_key):
            metric = metric_name(extracted)
            lines.append(f"# TYPE {metric} {kind}")
            for st, tags in sorted(groups[extracted], key=lambda e: _token_key(e[0].name)):
                labels = ",".join(f'{_SANITIZE.sub("_", n)}="{_label_value(v)}"'
                                  for n, v in tags)
                lines.append(f"{metric}{{{labels}}} {st.value}")
    return "\n".join(lines) + ("\n" if lines else "")
