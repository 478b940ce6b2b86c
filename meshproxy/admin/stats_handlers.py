"""``/stats``, ``/stats/prometheus``, ``/reset_counters`` and ``/stats/recentlookups``.

Parameters and their errors follow Envoy 1.40's ``StatsParams::parse`` and
``PrometheusStatsFormatter::validateParams`` (``source/server/admin/stats_params.cc``,
``prometheus_stats.cc``): ``filter`` is an RE2 partial match on the full stat name,
``usedonly`` and ``invert_filter`` count by presence (``usedonly=0`` still means used only).

pilot-agent's readiness probe is
``/stats?usedonly&filter=^(server\\.state|listener_manager\\.workers_started)`` and
``/stats?usedonly&filter=^(cluster_manager\\.cds|listener_manager\\.lds)\\.(update_success|
update_rejected)$``; both are ordinary queries here.

Histograms are not implemented: ``type=Histograms`` lists nothing.
"""

from __future__ import annotations

from meshproxy.admin.handlers import HTML, JSON, TEXT, Response
from meshproxy.stats import render
from meshproxy.stats.re2 import Re2Error, compile_re2

_TYPES = {"All": None, "Counters": "counter", "Gauges": "gauge", "Histograms": "histogram",
          "TextReadouts": "text_readout"}
_HISTOGRAM_MODES = ("cumulative", "disjoint", "detailed", "summary", "prometheusnative")
_FORMATS = ("html", "active-html", "json", "prometheus", "text")


class _Params:
    __slots__ = ("used_only", "regex", "invert", "kind", "format", "histogram_buckets",
                 "hidden")


def _parse(q):
    """(params, None) or (None, the 400 response), checking in Envoy's order."""
    p = _Params()
    p.used_only = "usedonly" in q
    p.invert = "invert_filter" in q
    p.regex = None
    flt = q.get("filter")
    if flt:
        try:
            p.regex = compile_re2(flt)
        except Re2Error as exc:
            return None, Response(400, f"Invalid re2 regex: {exc}")
    p.histogram_buckets = q.get("histogram_buckets") or None
    if p.histogram_buckets is not None and p.histogram_buckets not in _HISTOGRAM_MODES:
        return None, Response(400, "usage: /stats?histogram_buckets=(cumulative|disjoint|"
                                   "detailed|summary|prometheusnative)\n")
    t = q.get("type")
    if t and t not in _TYPES:
        return None, Response(400, "invalid &type= param")
    p.kind = _TYPES.get(t) if t else None
    p.hidden = q.get("hidden") or None
    if p.hidden is not None and p.hidden not in ("include", "only", "exclude"):
        return None, Response(400, "usage: /stats?hidden=(include|only|exclude)\n\n")
    p.format = q.get("format") or "text"
    if p.format not in _FORMATS:
        return None, Response(400, "usage: /stats?format=(html|active-html|json|prometheus|"
                                   "text)\n\n")
    return p, None


def _select(ctx, p):
    if p.kind == "histogram" or p.hidden == "only":
        return []  # meshproxy has no histograms or hidden stats yet
    return render.select(ctx.store.snapshot(), used_only=p.used_only, regex=p.regex,
                         invert=p.invert, kind=p.kind)


def _prometheus(ctx, p):
    if p.histogram_buckets in ("detailed", "disjoint"):
        return Response(400, "unsupported prometheus histogram bucket mode")
    if p.histogram_buckets == "prometheusnative":
        return Response(400, "unsupported prometheusnative histogram type when not using "
                             "protobuf exposition format")
    p.kind = None  # Envoy's Prometheus output ignores type=
    return Response(200, render.prometheus(_select(ctx, p), ctx.store.config), TEXT)


def h_stats(ctx, q):
    p, err = _parse(q)
    if err is not None:
        return err
    if p.format == "prometheus":
        return _prometheus(ctx, p)
    stats = _select(ctx, p)
    if p.format == "json":
        return Response(200, render.as_json(stats), JSON)
    if p.format in ("html", "active-html"):
        return Response(200, render.html(stats), HTML)
    return Response(200, render.text(stats))


def h_prometheus(ctx, q):
    p, err = _parse(q)
    if err is not None:
        return err
    return _prometheus(ctx, p)


def h_reset_counters(ctx, q):
    ctx.store.reset_counters()
    return Response(200, "OK\n")


def h_recentlookups(ctx, q):
    return Response(200, "Lookup tracking is not enabled. Use /stats/recentlookups/enable to "
                         "enable.\n\ntotal: 0\n")


def h_ok(ctx, q):
    return Response(200, "OK\n")
