"""Logging with Envoy's levels, component names and spdlog-style ``--log-format`` patterns.

Envoy's default pattern is ``[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v`` and Istio passes its own
(``%Y-%m-%dT%T.%fZ\\t%l\\tenvoy %n %g:%#\\t%v\\tthread=%t``). Each component (``-l`` for all,
``--component-log-level upstream:debug,config:trace`` for some) is a Python logger
``meshproxy.<component>``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

TRACE = 5
logging.addLevelName(TRACE, "trace")

# Envoy level names -> Python levels. "warn" is accepted as an alias, as Envoy does.
LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
_LEVEL_NAMES = {TRACE: "trace", logging.DEBUG: "debug", logging.INFO: "info",
                logging.WARNING: "warning", logging.ERROR: "error", logging.CRITICAL: "critical"}

# Envoy 1.40's logger ids, in the order its /logging lists them (source/common/common/logger.h).
# meshproxy logs under the ones it has code for; --component-log-level accepts exactly these,
# as Envoy does ("invalid component specified" otherwise).
COMPONENTS = (
    "a2a", "admin", "ai_protocol_manager", "alternate_protocols_cache", "aws", "assert",
    "backtrace", "basic_auth", "cache_filter", "client", "config", "connection", "conn_handler",
    "compression", "credential_injector", "decompression", "dns", "dubbo", "envoy_bug",
    "ext_authz", "ext_proc", "rocketmq", "file", "filter", "forward_proxy", "geolocation",
    "grpc", "happy_eyeballs", "hc", "health_checker", "http", "http2", "hystrix", "init", "io",
    "jwt", "json_rpc", "kafka", "key_value_store", "lua", "local_rate_limit", "main", "matcher",
    "mcp", "misc", "mongo", "multi_connection", "notification", "oauth2", "quic",
    "quic_stream", "pool", "rate_limit_quota", "rbac", "rds", "redis", "router", "runtime",
    "stats", "secret", "sse", "tap", "testing", "thrift", "tracing", "upstream", "udp", "wasm",
    "websocket", "golang", "stats_sinks", "dynamic_modules", "ip_tagging",
)

DEFAULT_FORMAT = "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v"


def component_logger(component: str) -> logging.Logger:
    return logging.getLogger(f"meshproxy.{component}")


class SpdlogFormatter(logging.Formatter):
    """Renders records with a spdlog pattern (the subset Envoy and Istio use)."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = pattern

    def format(self, record: logging.LogRecord) -> str:
        ct = record.created
        lt = time.gmtime(ct) if "Z" in self.pattern else time.localtime(ct)
        frac = ct - int(ct)
        out = []
        p = self.pattern
        i = 0
        n = len(p)
        while i < n:
            c = p[i]
            if c != "%" or i + 1 == n:
                out.append(c)
                i += 1
                continue
            f = p[i + 1]
            i += 2
            if f == "Y":
                out.append(f"{lt.tm_year:04d}")
            elif f == "m":
                out.append(f"{lt.tm_mon:02d}")
            elif f == "d":
                out.append(f"{lt.tm_mday:02d}")
            elif f == "H":
                out.append(f"{lt.tm_hour:02d}")
            elif f == "M":
                out.append(f"{lt.tm_min:02d}")
            elif f == "S":
                out.append(f"{lt.tm_sec:02d}")
            elif f == "T":
                out.append(f"{lt.tm_hour:02d}:{lt.tm_min:02d}:{lt.tm_sec:02d}")
            elif f == "e":
                out.append(f"{int(frac * 1e3):03d}")
            elif f == "f":
                out.append(f"{int(frac * 1e6):06d}")
            elif f == "F":
                out.append(f"{int(frac * 1e9):09d}")
            elif f == "t":
                out.append(str(threading.get_native_id()))
            elif f == "P":
                out.append(str(os.getpid()))
            elif f == "l":
                out.append(_LEVEL_NAMES.get(record.levelno, record.levelname.lower()))
            elif f == "L":
                out.append(_LEVEL_NAMES.get(record.levelno, "?")[0].upper())
            elif f == "n":
                out.append(record.name.rsplit(".", 1)[-1])
            elif f in ("g", "s"):
                out.append(record.pathname if f == "g" else os.path.basename(record.pathname))
            elif f == "#":
                out.append(str(record.lineno))
            elif f in ("v", "j", "_"):
                msg = record.getMessage()
                if record.exc_info:
                    msg = msg + "\n" + self.formatException(record.exc_info)
                out.append(msg)
            elif f == "%":
                out.append("%")
            else:
                out.append("%" + f)
        return "".join(out)


def parse_component_levels(spec: str) -> dict[str, int]:
    """``upstream:debug,config:trace`` -> {"upstream": DEBUG, "config": TRACE}; ValueError with
    Envoy's wording on a bad entry."""
    result = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, level = item.partition(":")
        if not sep or level not in LEVELS:
            raise ValueError(f"error: invalid log level specified '{level or item}'")
        if name not in COMPONENTS:
            raise ValueError(f"error: invalid component specified '{name}'")
        result[name] = LEVELS[level]
    return result


def setup(level: str = "info", component_levels: dict[str, int] | None = None,
          fmt: str = DEFAULT_FORMAT, path: str | None = None) -> None:
    root = logging.getLogger("meshproxy")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(SpdlogFormatter(fmt))
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    root.propagate = False
    for name, lvl in (component_levels or {}).items():
        component_logger(name).setLevel(lvl)


def set_all_levels(level: int) -> None:
    """Admin ``/logging?level=X``: every component to one level."""
    logging.getLogger("meshproxy").setLevel(level)
    for name in COMPONENTS:
        component_logger(name).setLevel(logging.NOTSET)


def component_levels() -> dict[str, str]:
    """Effective level of every component, for the admin ``/logging`` page."""
    return {name: _LEVEL_NAMES.get(component_logger(name).getEffectiveLevel(), "off")
            for name in COMPONENTS}
