"""Envoy-compatible command line (Envoy's ``source/server/options_impl.cc``).

pilot-agent starts the proxy as ``envoy -c envoy-rev.json --drain-time-s 45 --drain-strategy
immediate --local-address-ip-version v4 --file-flush-interval-msec 1000 --disable-hot-restart
--allow-unknown-static-fields ...``; every flag Envoy 1.40 accepts is accepted here, and an
unknown flag is an error (exit 1), as in Envoy.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from meshproxy import __version__, log

MODES = ("serve", "validate", "init_only")


@dataclasses.dataclass
class Options:
    config_path: str = ""
    config_yaml: str = ""
    mode: str = "serve"
    concurrency: int = 1
    log_level: str = "info"
    component_log_level: dict = dataclasses.field(default_factory=dict)
    log_format: str = log.DEFAULT_FORMAT
    log_format_set: bool = False
    log_path: str = ""
    base_id: int = 0
    restart_epoch: int = 0
    disable_hot_restart: bool = False
    drain_time_s: int = 600
    drain_strategy: str = "gradual"
    parent_shutdown_time_s: int = 900
    local_address_ip_version: str = "v4"
    file_flush_interval_msec: int = 10000
    allow_unknown_static_fields: bool = False
    reject_unknown_dynamic_fields: bool = False
    ignore_unknown_dynamic_fields: bool = False
    service_cluster: str = ""
    service_node: str = ""
    service_zone: str = ""
    admin_address_path: str = ""
    stats_tags: list = dataclasses.field(default_factory=list)


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # Envoy (TCLAP) exits 1 on a bad command line, argparse 2
        raise UsageError(f"PARSE ERROR: {message}")


def _uint(text: str) -> int:
    try:
        v = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"Couldn't read argument value from string '{text}'")
    if v < 0:
        raise argparse.ArgumentTypeError(f"Couldn't read argument value from string '{text}'")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="meshproxy", add_help=True, allow_abbrev=False,
                description="Sidecar proxy configured with Envoy's v3 API.")
    a = p.add_argument
    a("-c", "--config-path", default="", help="Path to the bootstrap (YAML or JSON)")
    a("--config-yaml", default="", help="Bootstrap YAML merged over --config-path")
    a("--mode", default="serve", help="serve (default), validate or init_only")
    a("--concurrency", type=_uint, default=None, help="Worker count (one event loop for now)")
    a("-l", "--log-level", default="info", help="trace, debug, info, warning|warn, error, critical, off")
    a("--component-log-level", default="", help="e.g. upstream:debug,config:trace")
    a("--log-format", default=None, help="spdlog pattern")
    a("--log-format-escaped", action="store_true")
    a("--log-path", default="")
    a("--enable-fine-grain-logging", action="store_true")
    a("--log-stacktrace-single-entry", action="store_true")
    a("--skip-deprecated-logs", action="store_true")
    a("--base-id", type=_uint, default=0)
    a("--use-dynamic-base-id", action="store_true")
    a("--base-id-path", default="")
    a("--restart-epoch", type=_uint, default=0)
    a("--hot-restart-version", action="store_true")
    a("--disable-hot-restart", action="store_true")
    a("--skip-hot-restart-on-no-parent", action="store_true")
    a("--skip-hot-restart-parent-stats", action="store_true")
    a("--drain-time-s", type=_uint, default=600)
    a("--drain-strategy", default="gradual", help="gradual (default) or immediate")
    a("--parent-shutdown-time-s", type=_uint, default=900)
    a("--local-address-ip-version", default="v4", help="v4 or v6")
    a("--file-flush-interval-msec", type=_uint, default=10000)
    a("--file-flush-min-size-kb", type=_uint, default=64)
    a("--allow-unknown-static-fields", action="store_true")
    a("--allow-unknown-fields", action="store_true", help="deprecated alias")
    a("--reject-unknown-dynamic-fields", action="store_true")
    a("--ignore-unknown-dynamic-fields", action="store_true")
    a("--service-cluster", default="")
    a("--service-node", default="")
    a("--service-zone", default="")
    a("--admin-address-path", default="")
    a("--disable-extensions", default="")
    a("--cpuset-threads", action="store_true")
    a("--enable-mutex-tracing", action="store_true")
    a("--enable-core-dump", action="store_true")
    a("--socket-path", default="")
    a("--socket-mode", default="")
    a("--stats-tag", action="append", default=[])
    a("--version", action="store_true")
    return p


def parse_args(argv: list[str]) -> Options:
    ns = build_parser().parse_args(argv)
    if ns.mode not in MODES:
        raise UsageError(f"error: unknown mode '{ns.mode}'")
    if ns.log_level not in log.LEVELS:
        raise UsageError(f"error: invalid log level specified '{ns.log_level}'")
    if ns.drain_strategy not in ("gradual", "immediate"):
        raise UsageError(f"error: unknown drain-strategy '{ns.drain_strategy}'")
    if ns.local_address_ip_version not in ("v4", "v6"):
        raise UsageError(f"error: unknown IP address version '{ns.local_address_ip_version}'")
    try:
        components = log.parse_component_levels(ns.component_log_level)
    except ValueError as exc:
        raise UsageError(str(exc))
    for tag in ns.stats_tag:
        name, sep, value = tag.partition(":")
        if not sep or not name.isalnum() or "." in value:
            raise UsageError(f"error: misformatted stats-tag '{tag}'")
    return Options(
        config_path=ns.config_path,
        config_yaml=ns.config_yaml,
        mode=ns.mode,
        concurrency=ns.concurrency if ns.concurrency is not None else 1,
        log_level=ns.log_level,
        component_log_level=components,
        log_format=ns.log_format if ns.log_format is not None else log.DEFAULT_FORMAT,
        log_format_set=ns.log_format is not None,
        log_path=ns.log_path,
        base_id=ns.base_id,
        restart_epoch=ns.restart_epoch,
        disable_hot_restart=ns.disable_hot_restart,
        drain_time_s=ns.drain_time_s,
        drain_strategy=ns.drain_strategy,
        parent_shutdown_time_s=ns.parent_shutdown_time_s,
        local_address_ip_version=ns.local_address_ip_version,
        file_flush_interval_msec=ns.file_flush_interval_msec,
        allow_unknown_static_fields=ns.allow_unknown_static_fields or ns.allow_unknown_fields,
        reject_unknown_dynamic_fields=ns.reject_unknown_dynamic_fields,
        ignore_unknown_dynamic_fields=ns.ignore_unknown_dynamic_fields,
        service_cluster=ns.service_cluster,
        service_node=ns.service_node,
        service_zone=ns.service_zone,
        admin_address_path=ns.admin_address_path,
        stats_tags=list(ns.stats_tag),
    ), ns.version


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts, want_version = parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 1
    if want_version:
        print(f"\nmeshproxy  version: {__version__}/1.40.0-compatible/Clean/RELEASE/Python\n")
        return 0
    log.setup(opts.log_level, opts.component_log_level, opts.log_format, opts.log_path or None)
    from meshproxy.server import run  # imported late: --version and usage errors stay fast

    return run(opts)
