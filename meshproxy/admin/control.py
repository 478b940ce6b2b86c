"""Admin handlers that change the server: ``/logging``, ``/quitquitquit``,
``/healthcheck/fail|ok``, ``/drain_listeners``, and the profiler / runtime endpoints meshproxy
answers the way an Envoy build without those features does.

``/logging`` follows Envoy 1.40's ``logs_handler.cc``: one parameter per request
(``level=``, ``paths=``, ``<logger>=<level>``), errors as ``error: ...`` followed by the usage
and the logger list, 400; the listing names every Envoy logger in Envoy's order, so scripts
that parse it (or set e.g. ``dubbo``) see what they see with Envoy. Loggers meshproxy does not
log under still keep the level they are given.
"""

from __future__ import annotations

import logging

from meshproxy import log as mplog
from meshproxy.admin.handlers import Response

log = logging.getLogger("meshproxy.admin")

ENVOY_LOGGERS = mplog.COMPONENTS
# spdlog's names; unlike the -l flag, /logging does not take "warn" (Envoy answers 400).
_LEVELS = {"trace": mplog.TRACE, "debug": logging.DEBUG, "info": logging.INFO,
           "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL, "off": mplog.LEVELS["off"]}
_NAMES = {mplog.TRACE: "trace", logging.DEBUG: "debug", logging.INFO: "info",
          logging.WARNING: "warning", logging.ERROR: "error", logging.CRITICAL: "critical"}
_USAGE = ("usage: /logging?<name>=<level> (change single level)\n"
          "usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n"
          "usage: /logging?level=<level> (change all levels)\n"
          "usage: /logging?group=<group_name>:<level> (change group of loggers)\n"
          "levels: trace debug info warning error critical off \n")


def _loggers() -> tuple:
    return ENVOY_LOGGERS


def _listing() -> str:
    lines = ["active loggers:"]
    for name in _loggers():
        lvl = mplog.component_logger(name).getEffectiveLevel()
        lines.append(f"  {name}: {_NAMES.get(lvl, 'off')}")
    return "\n".join(lines) + "\n\n"


def _error(msg: str) -> Response:
    return Response(400, f"error: {msg}\n\n{_USAGE}{_listing()}")


def _set(name: str, level: int) -> None:
    mplog.component_logger(name).setLevel(level)


def h_logging(ctx, q):
    if len(q) == 0:
        return Response(200, _listing())
    if len(q) != 1:
        return _error("invalid number of parameters")
    key, value = q.items[0]
    if key == "level":
        if value:
            if value not in _LEVELS:
                return _error("unknown logger level")
            mplog.set_all_levels(_LEVELS[value])
            for name in _loggers():
                mplog.component_logger(name).setLevel(logging.NOTSET)
    elif key == "paths":
        changes = []
        for item in value.split(","):
            if not item:
                continue  # Envoy skips empty entries ("a:debug,,b:info", "paths=")
            name, _, lvl = item.partition(":")
            if not name or not lvl:
                return _error("empty logger name or empty logger level")
            if lvl not in _LEVELS:
                return _error("unknown logger level")
            if name not in _loggers():
                return _error("unknown logger name")
            changes.append((name, _LEVELS[lvl]))
        for name, lvl in changes:
            _set(name, lvl)
    elif key == "group":
        return _error("group parameter requires fine-grain logging to be enabled")
    else:
        if value not in _LEVELS:
            return _error("unknown logger level")
        if key not in _loggers():
            return _error("unknown logger name")
        _set(key, _LEVELS[value])
    return Response(200, _listing())


def h_quit(ctx, q):
    log.info("shutting down from admin handle")
    return Response(200, "OK\n", after=ctx.shutdown_event.set)


def h_healthcheck_fail(ctx, q):
    ctx.healthcheck_failed = True
    return Response(200, "OK\n")


def h_healthcheck_ok(ctx, q):
    ctx.healthcheck_failed = False
    return Response(200, "OK\n")


def h_drain_listeners(ctx, q):
    """``graceful``: drain first and stop the listeners after the drain time;
    ``skip_exit``: drain and never stop; otherwise stop at once (admin docs)."""
    lm = ctx.listener_manager
    inbound_only = "inboundonly" in q
    if "skip_exit" in q:
        lm.drain(inbound_only)
    elif "graceful" in q:
        lm.drain(inbound_only)
        ctx.loop.call_later(ctx.options.drain_time_s, lambda: lm.stop_accepting(inbound_only))
    else:
        lm.stop_accepting(inbound_only)
        lm.drain(inbound_only)
    return Response(200, "OK\n")


def _profiler(q, what: str) -> Response:
    enable = q.get("enable")
    if enable not in ("y", "n"):
        return Response(400, "?enable=<y|n>\n")
    if enable == "n":
        return Response(200, "OK\n")
    return Response(501, f"The current build does not support {what} profiler")


def h_cpuprofiler(ctx, q):
    return _profiler(q, "cpu")


def h_heapprofiler(ctx, q):
    return _profiler(q, "heap")


def h_allocprofiler(ctx, q):
    return _profiler(q, "alloc")


def h_reopen_logs(ctx, q):
    return Response(200, "OK\n")


def h_runtime_modify(ctx, q):
    if len(q) == 0:
        return Response(400, "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
                             "       or send the parameters as form values\n"
                             "use an empty value to remove a previously added override")
    # Envoy without an admin layer in layered_runtime answers this.
    return Response(503, "No admin layer specified")
