"""Read-only admin pages: ``/ready``, ``/server_info``, ``/clusters``, ``/listeners``,
``/config_dump`` and the small diagnostic ones, in Envoy 1.40's shapes
(``source/server/admin/server_info_handler.cc``, ``clusters_handler.cc``,
``listeners_handler.cc``). JSON pages are the ``envoy.admin.v3`` messages printed with
one-space indentation and a final newline, as Envoy prints them.
"""

from __future__ import annotations

import json
import time

from google.protobuf import json_format

from meshproxy import __version__
from meshproxy.admin.handlers import HTML, JSON, PLAIN, TEXT, Response, index_html
from meshproxy.config.protos import message_class
from meshproxy.listener.addresses import address_text
from meshproxy.stats.re2 import Re2Error, compile_re2

# The Envoy release whose behaviour meshproxy reproduces; reported as the node's user agent
# (server_info, config_dump) so tools that key on the Envoy version treat meshproxy alike.
ENVOY_VERSION = (1, 40, 0)
BUILD_METADATA = {"revision.sha": f"meshproxy-{__version__}", "revision.status": "Clean",
                  "build.type": "RELEASE", "ssl.version": "OpenSSL"}
VERSION = (f"meshproxy-{__version__}/{'.'.join(map(str, ENVOY_VERSION))}/Clean/RELEASE/"
           f"OpenSSL")

_LIVE, _DRAINING = 0, 1
_STATE_NAMES = {0: "LIVE", 1: "DRAINING", 2: "PRE_INITIALIZING", 3: "INITIALIZING"}


def set_user_agent(node) -> None:
    """Fill ``node.user_agent_*`` as Envoy does for its own node."""
    node.user_agent_name = "envoy"
    bv = node.user_agent_build_version
    bv.version.major_number, bv.version.minor_number, bv.version.patch = ENVOY_VERSION
    bv.metadata.update(BUILD_METADATA)


def server_state(ctx) -> int:
    """``envoy.admin.v3.ServerInfo.State``: a failed health check reads as DRAINING once
    initialised (Envoy's ``Utility::serverState``)."""
    st = ctx.state
    if st == _LIVE and getattr(ctx, "healthcheck_failed", False):
        return _DRAINING
    return st


def pretty(msg) -> str:
    return json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=1) + "\n"


def _duration(seconds: float) -> str:
    """google.protobuf.Duration JSON: ``1s``, ``1.500s``."""
    ns = int(round(seconds * 1e9))
    s, frac = divmod(ns, 1_000_000_000)
    if frac == 0:
        return f"{s}s"
    if frac % 1_000_000 == 0:
        return f"{s}.{frac // 1_000_000:03d}s"
    if frac % 1000 == 0:
        return f"{s}.{frac // 1000:06d}s"
    return f"{s}.{frac:09d}s"


# ------------------------------------------------------------------------------ pages


def h_index(ctx, q):
    return Response(200, index_html(), HTML)


def h_ready(ctx, q):
    st = server_state(ctx)
    return Response(200 if st == _LIVE else 503, _STATE_NAMES[st] + "\n")


def _command_line_options(o) -> dict:
    """``envoy.admin.v3.CommandLineOptions`` with every field, in Envoy 1.40's order."""
    g = getattr
    comp = g(o, "component_log_level", "")
    if isinstance(comp, dict):
        from meshproxy import log as mplog
        names = {v: k for k, v in mplog.LEVELS.items() if k != "warn"}
        comp = ",".join(f"{n}:{names.get(lvl, lvl)}" for n, lvl in comp.items())
    level = g(o, "log_level", "info")
    return {
        "base_id": str(g(o, "base_id", 0)),
        "concurrency": g(o, "concurrency", 1),
        "config_path": g(o, "config_path", ""),
        "config_yaml": g(o, "config_yaml", ""),
        "allow_unknown_static_fields": g(o, "allow_unknown_static_fields", False),
        "admin_address_path": g(o, "admin_address_path", ""),
        "local_address_ip_version": g(o, "local_address_ip_version", "v4"),
        "log_level": "warning" if level == "warn" else level,
        "component_log_level": comp,
        "log_format": g(o, "log_format", ""),
        "log_path": g(o, "log_path", ""),
        "service_cluster": g(o, "service_cluster", ""),
        "service_node": g(o, "service_node", ""),
        "service_zone": g(o, "service_zone", ""),
        "file_flush_interval": _duration(g(o, "file_flush_interval_msec", 10000) / 1000),
        "drain_time": _duration(g(o, "drain_time_s", 600)),
        "parent_shutdown_time": _duration(g(o, "parent_shutdown_time_s", 900)),
        "mode": {"serve": "Serve", "validate": "Validate",
                 "init_only": "InitOnly"}.get(g(o, "mode", "serve"), "Serve"),
        "disable_hot_restart": g(o, "disable_hot_restart", False),
        "enable_mutex_tracing": g(o, "enable_mutex_tracing", False),
        "restart_epoch": g(o, "restart_epoch", 0),
        "cpuset_threads": g(o, "cpuset_threads", False),
        "reject_unknown_dynamic_fields": g(o, "reject_unknown_dynamic_fields", False),
        "log_format_escaped": g(o, "log_format_escaped", False),
        "disabled_extensions": list(g(o, "disabled_extensions", [])),
        "ignore_unknown_dynamic_fields": g(o, "ignore_unknown_dynamic_fields", False),
        "use_dynamic_base_id": g(o, "use_dynamic_base_id", False),
        "base_id_path": g(o, "base_id_path", ""),
        "drain_strategy": g(o, "drain_strategy", "gradual").capitalize(),
        "enable_fine_grain_logging": g(o, "enable_fine_grain_logging", False),
        "socket_path": g(o, "socket_path", "") or "@envoy_domain_socket",
        "socket_mode": g(o, "socket_mode", 0) or 0,
        "enable_core_dump": g(o, "enable_core_dump", False),
        "stats_tag": list(g(o, "stats_tags", [])),
        "skip_hot_restart_on_no_parent": g(o, "skip_hot_restart_on_no_parent", False),
        "skip_hot_restart_parent_stats": g(o, "skip_hot_restart_parent_stats", False),
        "skip_deprecated_logs": g(o, "skip_deprecated_logs", False),
        "file_flush_min_size": g(o, "file_flush_min_size", 0),
        "log_stacktrace_single_entry": g(o, "log_stacktrace_single_entry", False),
    }


def h_server_info(ctx, q):
    up = time.time() - ctx.start_time
    node = message_class("envoy.config.core.v3.Node")()
    node.CopyFrom(ctx.config.bootstrap.node)
    set_user_agent(node)
    info = {
        "version": VERSION,
        "state": _STATE_NAMES[server_state(ctx)],
        "uptime_current_epoch": f"{int(up)}s",
        "uptime_all_epochs": f"{int(up)}s",
        # meshproxy never hot-restarts: as Envoy run with --disable-hot-restart
        "hot_restart_version": "disabled",
        "command_line_options": _command_line_options(ctx.options),
        "node": json_format.MessageToDict(node, preserving_proto_field_name=True,
                                          always_print_fields_with_no_presence=True),
        "hot_restart_initializing": False,
    }
    return Response(200, json.dumps(info, indent=1) + "\n", JSON)


def h_config_dump(ctx, q):
    from meshproxy.admin import config_dump
    try:
        body = config_dump.build(ctx, q.get("resource"), q.get("name_regex"),
                                 "include_eds" in q, q.get("mask"))
    except config_dump.DumpError as exc:
        return Response(exc.status, exc.text, PLAIN)
    return Response(200, json.dumps(body, indent=1) + "\n", JSON)


# ------------------------------------------------------------------------------ clusters


def h_clusters(ctx, q):
    rx = None
    if q.get("filter"):
        try:
            rx = compile_re2(q.get("filter"))
        except Re2Error:
            return Response(400, "Invalid re2 regex")
    cm = ctx.cluster_manager
    clusters = [c for name, c in sorted(cm.clusters.items()) if rx is None or rx.search(name)]
    if q.get("format") == "json":
        msg = message_class("envoy.admin.v3.Clusters")()
        for c in clusters:
            _cluster_status(msg.cluster_statuses.add(), c)
        return Response(200, pretty(msg), JSON)
    return Response(200, "".join(_cluster_text(c) for c in clusters))


def _cluster_text(c) -> str:
    n = c.name
    lines = [f"{n}::observability_name::{c.config.stat_name}"]
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
    return "\n".join(lines) + "\n"


_HOST_COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout",
                  "rq_total")
_HOST_GAUGES = ("cx_active", "rq_active", "rq_pending_active")


def _cluster_status(cs, c) -> None:
    """``envoy.admin.v3.ClusterStatus`` of a runtime cluster."""
    cs.name = c.name
    cs.added_via_api = c.added_via_api
    for h in c.hosts:
        hs = cs.host_statuses.add()
        if h.unix:
            hs.address.pipe.path = str(h.address)
        else:
            hs.address.socket_address.address = h.address[0]
            hs.address.socket_address.port_value = h.address[1]
        for k in _HOST_COUNTERS:
            hs.stats.add(name=k, value=getattr(h.stats, k))
        for k in _HOST_GAUGES:
            hs.stats.add(name=k, value=getattr(h.stats, k), type=1)
        hs.health_status.eds_health_status = {0: 1}.get(h.health_status, h.health_status)
        hs.health_status.failed_outlier_check = bool(h.outlier_ejected)
        hs.weight = h.weight
        hs.hostname = h.hostname or ""
        hs.priority = h.priority
        hs.locality.SetInParent()
        region, zone, sub = h.locality or ("", "", "")
        hs.locality.region, hs.locality.zone, hs.locality.sub_zone = region, zone, sub
    for prio, th in ((0, c.config.thresholds), (1, c.config.high_thresholds)):
        t = cs.circuit_breakers.thresholds.add(priority=prio)
        t.max_connections.value = th.max_connections
        t.max_pending_requests.value = th.max_pending_requests
        t.max_requests.value = th.max_requests
        t.max_retries.value = th.max_retries
    cs.observability_name = c.config.stat_name


# ------------------------------------------------------------------------------ listeners


def h_listeners(ctx, q):
    """Envoy's ``ListenersHandler``: one text line per address (``name::address``); in JSON
    the main address is ``local_address`` and the rest ``additional_local_addresses``."""
    lm = ctx.listener_manager
    msg = message_class("envoy.admin.v3.Listeners")()
    lines = []
    for name, al in lm.listeners.items():
        ls = msg.listener_statuses.add(name=name)
        for i, (a, unix) in enumerate(al.local_addresses()):
            pa = ls.local_address if i == 0 else ls.additional_local_addresses.add()
            if unix:
                pa.pipe.path = str(a)
            else:
                pa.socket_address.address = a[0]
                pa.socket_address.port_value = a[1]
            lines.append(f"{name}::{address_text(a, unix)}\n")
    if q.get("format") == "json":
        return Response(200, pretty(msg), JSON)
    return Response(200, "".join(lines))


# ------------------------------------------------------------------------------ small pages


def h_memory(ctx, q):
    from meshproxy.server import _rss_bytes
    rss = str(_rss_bytes())
    return Response(200, json.dumps({"allocated": rss, "heap_size": rss,
                                     "pageheap_unmapped": "0", "pageheap_free": "0",
                                     "total_thread_cache": "0", "total_physical_bytes": rss},
                                    indent=1) + "\n", JSON)


def h_tcmalloc(ctx, q):
    return Response(200, "meshproxy runs on CPython's allocator; there are no TCMalloc "
                         "stats.\n", PLAIN)


def h_certs(ctx, q):
    return Response(200, json.dumps({"certificates": []}, indent=1) + "\n", JSON)


def h_runtime(ctx, q):
    return Response(200, json.dumps({"entries": {}, "layers": []}, indent=1) + "\n", JSON)


def h_hot_restart_version(ctx, q):
    return Response(200, "disabled")


def h_init_dump(ctx, q):
    return Response(200, "{}\n", JSON)


def h_contention(ctx, q):
    return Response(200, "Mutex contention tracing is not enabled. To enable, run Envoy with "
                         "flag --enable-mutex-tracing.")


def h_heap_dump(ctx, q):
    return Response(501, "The current build does not support heap profiler", TEXT)
