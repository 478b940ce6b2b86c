"""Admin API handlers (Envoy's ``source/server/admin``): the endpoints pilot-agent and
operators use, with Envoy's paths, parameters, status codes and content types."""

from __future__ import annotations

import json
import logging
import re
import time
from urllib.parse import parse_qsl

from meshproxy import __version__, log as mplog
from meshproxy.http.headers import ResponseHeaders

log = logging.getLogger("meshproxy.admin")

TEXT = b"text/plain; charset=UTF-8"
JSON = b"application/json"
HTML = b"text/html; charset=UTF-8"
PROM = b"text/plain; version=0.0.4; charset=UTF-8"


class Response:
    __slots__ = ("status", "body", "content_type", "after")

    def __init__(self, status: int, body, content_type: bytes = TEXT, after=None):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.after = after  # called once the response is written (e.g. shutdown)


class Handler:
    __slots__ = ("path", "fn", "help", "post_only", "params")

    def __init__(self, path, fn, help_text, post_only=False, params=()):
        self.path = path
        self.fn = fn
        self.help = help_text
        self.post_only = post_only
        self.params = params


# ------------------------------------------------------------------------------ handlers


def h_ready(ctx, q):
    from meshproxy.server import LIVE, STATE_NAMES
    name = STATE_NAMES[ctx.state]
    return Response(200 if ctx.state == LIVE else 503, name + "\n")


def h_server_info(ctx, q):
    from meshproxy.server import STATE_NAMES
    o = ctx.options
    up = int(time.time() - ctx.start_time)
    boot = ctx.config.bootstrap
    info = {
        "version": f"meshproxy/{__version__}/1.40.0-compatible/Clean/RELEASE/Python",
        "state": STATE_NAMES[ctx.state],
        "uptime_current_epoch": f"{up}s",
        "uptime_all_epochs": f"{up}s",
        "hot_restart_version": "disabled",
        "command_line_options": {
            "base_id": str(o.base_id), "concurrency": o.concurrency,
            "config_path": o.config_path, "config_yaml": o.config_yaml,
            "allow_unknown_static_fields": o.allow_unknown_static_fields,
            "admin_address_path": o.admin_address_path,
            "local_address_ip_version": o.local_address_ip_version,
            "log_level": o.log_level, "component_log_level": "",
            "log_format": o.log_format, "log_path": o.log_path,
            "service_cluster": o.service_cluster, "service_node": o.service_node,
            "service_zone": o.service_zone,
            "file_flush_interval": f"{o.file_flush_interval_msec / 1000:g}s",
            "drain_time": f"{o.drain_time_s}s",
            "parent_shutdown_time": f"{o.parent_shutdown_time_s}s",
            "mode": o.mode.capitalize(), "disable_hot_restart": o.disable_hot_restart,
            "restart_epoch": o.restart_epoch,
            "drain_strategy": o.drain_strategy.capitalize(),
            "stats_tag": o.stats_tags,
        },
        "node": {"id": boot.node.id, "cluster": boot.node.cluster,
                 "user_agent_name": "meshproxy"},
    }
    return Response(200, json.dumps(info, indent=1), JSON)


def _stats_query(ctx, q):
    from meshproxy.stats import render
    regex = None
    if "filter" in q and q["filter"]:
        try:
            regex = re.compile(q["filter"])
        except re.error as exc:
            return None, Response(400, f"Invalid re2 regex: {exc}")
    kind = {"Counters": "counter", "Gauges": "gauge"}.get(q.get("type", "All"))
    if q.get("type") in ("Histograms", "TextReadouts"):
        return [], None
    stats = render.select(ctx.store.snapshot(), used_only="usedonly" in q, regex=regex,
                          invert="invert_filter" in q, kind=kind)
    return stats, None


def h_stats(ctx, q):
    from meshproxy.stats import render
    stats, err = _stats_query(ctx, q)
    if err is not None:
        return err
    fmt = q.get("format", "text")
    if fmt == "json":
        return Response(200, render.as_json(stats), JSON)
    if fmt == "prometheus":
        return Response(200, render.prometheus(stats), PROM)
    if fmt not in ("text", "html", "active-html"):
        return Response(400, f"usage: /stats?format=(html|active-html|text|json)\n")
    return Response(200, render.text(stats))


def h_prometheus(ctx, q):
    from meshproxy.stats import render
    stats, err = _stats_query(ctx, q)
    if err is not None:
        return err
    return Response(200, render.prometheus(stats), PROM)


def h_clusters(ctx, q):
    cm = ctx.cluster_manager
    rx = re.compile(q["filter"]) if q.get("filter") else None
    clusters = [c for name, c in sorted(cm.clusters.items()) if rx is None or rx.search(name)]
    if q.get("format") == "json":
        return Response(200, json.dumps({"cluster_statuses": [_cluster_json(c) for c in clusters]},
                                        indent=1), JSON)
    lines = []
    for c in clusters:
        n = c.name
        lines.append(f"{n}::observability_name::{c.config.stat_name}")
        for prio, th in (("default_priority", c.config.thresholds),
                         ("high_priority", c.config.high_thresholds)):
            lines.append(f"{n}::{prio}::max_connections::{th.max_connections}")
            lines.append(f"{n}::{prio}::max_pending_requests::{th.max_pending_requests}")
            lines.append(f"{n}::{prio}::max_requests::{th.max_requests}")
            lines.append(f"{n}::{prio}::max_retries::{th.max_retries}")
        lines.append(f"{n}::added_via_api::{'true' if c.added_via_api else 'false'}")
        for h in c.hosts:
            a = h.address_str
            s = h.stats
            for k in ("cx_active", "cx_connect_fail", "cx_total", "rq_active", "rq_error",
                      "rq_pending_active", "rq_success", "rq_timeout", "rq_total"):
                lines.append(f"{n}::{a}::{k}::{getattr(s, k)}")
            lines.append(f"{n}::{a}::hostname::{h.hostname}")
            lines.append(f"{n}::{a}::health_flags::{h.health_flags()}")
            lines.append(f"{n}::{a}::weight::{h.weight}")
            region, zone, sub = h.locality or ("", "", "")
            lines.append(f"{n}::{a}::region::{region}")
            lines.append(f"{n}::{a}::zone::{zone}")
            lines.append(f"{n}::{a}::sub_zone::{sub}")
            lines.append(f"{n}::{a}::canary::false")
            lines.append(f"{n}::{a}::priority::{h.priority}")
            lines.append(f"{n}::{a}::success_rate::-1")
            lines.append(f"{n}::{a}::local_origin_success_rate::-1")
    return Response(200, "\n".join(lines) + ("\n" if lines else ""))


def _cluster_json(c):
    hosts = []
    for h in c.hosts:
        if h.unix:
            addr = {"pipe": {"path": h.address}}
        else:
            addr = {"socket_address": {"address": h.address[0], "port_value": h.address[1]}}
        s = h.stats
        hosts.append({
            "address": addr,
            "stats": [{"name": k, "value": str(getattr(s, k)), **({"type": "GAUGE"} if k in
                       ("cx_active", "rq_active", "rq_pending_active") else {})}
                      for k in ("cx_connect_fail", "cx_total", "rq_error", "rq_success",
                                "rq_timeout", "rq_total", "cx_active", "rq_active")],
            "health_status": {"eds_health_status": "HEALTHY" if h.healthy else "UNHEALTHY"},
            "weight": h.weight,
            "hostname": h.hostname,
            "locality": {},
        })
    th = c.config.thresholds
    return {
        "name": c.name,
        "observability_name": c.config.stat_name,
        "added_via_api": c.added_via_api,
        "circuit_breakers": {"thresholds": [
            {"max_connections": th.max_connections, "max_pending_requests": th.max_pending_requests,
             "max_requests": th.max_requests, "max_retries": th.max_retries}]},
        "host_statuses": hosts,
    }


def h_listeners(ctx, q):
    lm = ctx.listener_manager
    items = []
    for name, al in lm.listeners.items():
        a = al.bound_address or al.config.address
        if al.config.unix:
            addr_text, addr_json = str(a), {"pipe": {"path": str(a)}}
        else:
            h, p = a[0], a[1]
            addr_text = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
            addr_json = {"socket_address": {"address": h, "port_value": p}}
        items.append((name, addr_text, addr_json))
    if q.get("format") == "json":
        return Response(200, json.dumps({"listener_statuses": [
            {"name": n, "local_address": j} for n, _, j in items]}, indent=1), JSON)
    return Response(200, "".join(f"{n}::{t}\n" for n, t, _ in items))


def h_config_dump(ctx, q):
    from meshproxy.admin import config_dump
    try:
        body = config_dump.build(ctx, q.get("resource"), q.get("name_regex"),
                                 "include_eds" in q)
    except KeyError:
        return Response(404, f"{q.get('resource')} not found in config dump")
    return Response(200, json.dumps(body, indent=1), JSON)


def h_logging(ctx, q):
    if not q:
        lines = ["active loggers:"]
        lines += [f"  {n}: {lvl}" for n, lvl in mplog.component_levels().items()]
        return Response(200, "\n".join(lines) + "\n")
    if "level" in q:
        lvl = q["level"]
        if lvl not in mplog.LEVELS:
            return Response(400, "error: unknown logger level\n")
        mplog.set_all_levels(mplog.LEVELS[lvl])
    elif "paths" in q:
        try:
            levels = mplog.parse_component_levels(q["paths"])
        except ValueError as exc:
            return Response(400, f"{exc}\n")
        for name, lvl in levels.items():
            mplog.component_logger(name).setLevel(lvl)
    else:
        for name, lvl in q.items():
            if name not in mplog.COMPONENTS or lvl not in mplog.LEVELS:
                return Response(400, "error: unknown logger name or level\n")
            mplog.component_logger(name).setLevel(mplog.LEVELS[lvl])
    lines = ["active loggers:"]
    lines += [f"  {n}: {lvl}" for n, lvl in mplog.component_levels().items()]
    return Response(200, "\n".join(lines) + "\n")


def h_quit(ctx, q):
    log.info("shutting down from admin handle")
    return Response(200, "OK\n", after=lambda: _shutdown(ctx))


def _shutdown(ctx):
    ctx.shutdown_event.set()


def h_healthcheck_fail(ctx, q):
    ctx.healthcheck_failed = True
    return Response(200, "OK\n")


def h_healthcheck_ok(ctx, q):
    ctx.healthcheck_failed = False
    return Response(200, "OK\n")


def h_drain_listeners(ctx, q):
    lm = ctx.listener_manager
    inbound_only = "inboundonly" in q
    if "graceful" in q:
        lm.drain(inbound_only)
        if "skip_exit" not in q:
            ctx.loop.call_later(ctx.options.drain_time_s,
                                lambda: lm.stop_accepting(inbound_only))
    else:
        lm.stop_accepting(inbound_only)
        lm.drain(inbound_only)
    return Response(200, "OK\n")


def h_reset_counters(ctx, q):
    ctx.store.reset_counters()
    return Response(200, "OK\n")


def h_runtime(ctx, q):
    return Response(200, json.dumps({"entries": {}, "layers": []}, indent=1), JSON)


def h_memory(ctx, q):
    from meshproxy.server import _rss_bytes
    rss = str(_rss_bytes())
    return Response(200, json.dumps({"allocated": rss, "heap_size": rss,
                                     "pageheap_unmapped": "0", "pageheap_free": "0",
                                     "total_thread_cache": "0", "total_physical_bytes": rss},
                                    indent=1), JSON)


def h_certs(ctx, q):
    return Response(200, json.dumps({"certificates": []}, indent=1), JSON)


def h_hot_restart_version(ctx, q):
    return Response(200, "disabled\n")


def h_help(ctx, q):
    return Response(200, _help_text())


def h_index(ctx, q):
    rows = "".join(f"<tr><td><a href='{h.path}'>{h.path}</a></td><td>{h.help}</td></tr>\n"
                   for h in HANDLERS.values())
    return Response(200, f"<html><head><title>meshproxy admin</title></head><body>"
                         f"<table>{rows}</table></body></html>\n", HTML)


HANDLERS = {h.path: h for h in (
    Handler("/", h_index, "Admin home page"),
    Handler("/certs", h_certs, "print certs on machine"),
    Handler("/clusters", h_clusters, "upstream cluster status", params=("filter", "format")),
    Handler("/config_dump", h_config_dump, "dump current Envoy configs",
            params=("resource", "mask", "name_regex", "include_eds")),
    Handler("/drain_listeners", h_drain_listeners, "drain listeners", post_only=True,
            params=("graceful", "skip_exit", "inboundonly")),
    Handler("/healthcheck/fail", h_healthcheck_fail, "cause the server to fail health checks",
            post_only=True),
    Handler("/healthcheck/ok", h_healthcheck_ok, "cause the server to pass health checks",
            post_only=True),
    Handler("/help", h_help, "print out list of admin commands"),
    Handler("/hot_restart_version", h_hot_restart_version,
            "print the hot restart compatibility version"),
    Handler("/listeners", h_listeners, "print listener info", params=("format",)),
    Handler("/logging", h_logging, "query/change logging levels", post_only=True,
            params=("paths", "level")),
    Handler("/memory", h_memory, "print current allocation/heap usage"),
    Handler("/quitquitquit", h_quit, "exit the server", post_only=True),
    Handler("/ready", h_ready, "print server state, return 200 if LIVE, otherwise return 503"),
    Handler("/reset_counters", h_reset_counters, "reset all counters to zero", post_only=True),
    Handler("/runtime", h_runtime, "print runtime values"),
    Handler("/server_info", h_server_info, "print server version/status information"),
    Handler("/stats", h_stats, "print server stats",
            params=("usedonly", "filter", "invert_filter", "format", "type")),
    Handler("/stats/prometheus", h_prometheus, "print server stats in prometheus format",
            params=("usedonly", "filter", "invert_filter")),
)}


def _help_text() -> str:
    lines = ["admin commands are:"]
    for h in HANDLERS.values():
        lines.append(f"  {h.path}{' (POST)' if h.post_only else ''}: {h.help}")
    return "\n".join(lines) + "\n"


def dispatch(ctx, method: bytes, path: bytes) -> Response:
    p, _, query = path.decode("latin-1").partition("?")
    q = dict(parse_qsl(query, keep_blank_values=True))
    h = HANDLERS.get(p)
    if h is None:
        return Response(404, "invalid path. " + _help_text())
    if h.post_only and method != b"POST":
        # /logging with no parameters is a GET-able listing in Envoy's docs, but 1.40
        # requires POST for it too.
        return Response(405, f"Method {method.decode()} not allowed, POST required.")
    try:
        return h.fn(ctx, q)
    except Exception as exc:  # an admin bug must not take the server down
        log.exception("admin handler %s failed", p)
        return Response(500, f"internal error: {exc}\n")


class AdminFilter:
    """Terminal filter of the admin listener's streams."""

    __slots__ = ("stream", "ctx", "method", "path")

    def __init__(self, stream, ctx):
        self.stream = stream
        self.ctx = ctx

    def decode_headers(self, req, end_stream: bool) -> None:
        self.method = req.method
        self.path = req.path
        if end_stream:
            self._respond()

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream and not self.stream.response_started:
            self._respond()

    def _respond(self) -> None:
        r = dispatch(self.ctx, self.method, self.path)
        headers = [(b"content-type", r.content_type),
                   (b"cache-control", b"no-cache, max-age=0"),
                   (b"x-content-type-options", b"nosniff"),
                   (b"content-length", b"%d" % len(r.body))]
        resp = ResponseHeaders(r.status, headers)
        resp.content_length = len(r.body)
        s = self.stream
        if r.body:
            s.encode_headers(resp, False)
            s.encode_data(r.body, True)
        else:
            s.encode_headers(resp, True)
        if r.after is not None:
            self.ctx.loop.call_soon(r.after)

    # the stream's terminal-filter interface
    def on_downstream_reset(self):
        pass

    def release_flow_control(self):
        pass

    def on_downstream_write_paused(self, paused):
        pass

    def abort_upstream(self):
        pass
