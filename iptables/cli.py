"""meshproxy-iptables: Istio's istio-iptables (the istio-init container), flag for flag.

    meshproxy-iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020
    meshproxy-iptables cleanup <same flags>      # or --cleanup-only, as in Istio
    meshproxy-iptables --dry-run <flags>         # print what would run, in Istio's golden form

Flow of istio/istio tools/istio-iptables/pkg/cmd/root.go at 86c9f01: flags + environment ->
config (FillConfigFromEnvironment, Validate) -> rules -> iptables-restore (or the dry-run
recording) -> policy routing -> optional validation.  Failures print one line and exit 1
(126 for a failed validation, like Istio).
"""

from __future__ import annotations

import logging
import os
import pwd
import sys
import time
from dataclasses import replace

from . import capture, flags, program, routes, runner, validation
from . import config as config_mod
from .config import ConfigError, HostFacts

PROG = "meshproxy-iptables"
CAP_NET_ADMIN = 12  # linux/capability.h
log = logging.getLogger(PROG)


class Failure(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class _IstioFormatter(logging.Formatter):
    # Istio's console log layout: 2006-01-02T15:04:05.000000Z<TAB>level<TAB>message
    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.created % 1 * 1e6):06d}Z"
        level = {"WARNING": "warn", "CRITICAL": "fatal"}.get(record.levelname, record.levelname.lower())
        return f"{stamp}\t{level}\t{record.getMessage()}"


def _log_level(spec: str) -> int:
    levels = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
              "error": logging.ERROR, "fatal": logging.CRITICAL, "none": logging.CRITICAL + 10}
    level = logging.INFO
    for item in spec.split(","):
        scope, _, name = item.rpartition(":")
        if scope in ("", "default", "all") and name in levels:
            level = levels[name]
    return level


def _setup_logging(spec: str, stream) -> None:
    log.handlers.clear()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_IstioFormatter())
    log.addHandler(handler)
    log.setLevel(_log_level(spec))
    log.propagate = False


def gather_host_facts(parsed: flags.Parsed, environ: dict) -> HostFacts:
    """Read only what config.build will use (Istio reads these in FillConfigFromEnvironment)."""
    v = parsed.values
    addresses: tuple[str, ...] = ()
    if v["enable-inbound-ipv6"] is None:
        try:
            addresses = tuple(routes.local_addresses())
        except Exception as e:  # noqa: BLE001 - netlink unavailable: same as no address
            log.warning("cannot list local addresses: %s", e)
    resolv = None
    if v["redirect-dns"] and not v["capture-all-dns"] and v["dns-servers"] is None:
        try:
            with open("/etc/resolv.conf", encoding="utf-8", errors="replace") as f:
                resolv = f.read()
        except OSError:
            resolv = None
    uid = None
    if not v["proxy-uid"]:
        try:
            uid = str(pwd.getpwnam(environ.get("ENVOY_USER", "istio-proxy")).pw_uid)
        except KeyError:
            uid = None
    return HostFacts(addresses, resolv, uid)


def has_net_admin() -> bool:
    """Effective CAP_NET_ADMIN (what iptables and netlink need); istio-init runs as uid 0 with
    only NET_ADMIN and NET_RAW, so the capability, not the uid, is the test."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def load(argv: list[str], environ: dict, facts: HostFacts | None = None) -> list[config_mod.Config]:
    """Command line + environment (+ host facts, gathered if not given) -> validated Configs.

    One config, except for the ``cleanup`` command: Istio's cleanup (--cleanup-only) only
    removes what the given flags describe, so rules installed in the other interception mode
    (TPROXY's mangle rules, its policy routing) would survive a cleanup that forgot ``-m``.
    ``cleanup`` therefore also removes the other mode's rules for the same ports and mark.
    """
    try:
        parsed = flags.parse(argv, environ)
    except flags.FlagError as e:
        raise Failure(f"{e} (see {PROG} --help)") from None
    if parsed.help:
        raise Failure(flags.usage(PROG), code=0)
    cleanup = False
    for word in parsed.positional:
        if word == "cleanup":
            cleanup = True
        elif word != "istio-iptables":  # pilot-agent style: `... istio-iptables -p 15001 ...`
            raise Failure(f'unknown command "{word}" (expected "cleanup" or flags only)')
    if facts is None:
        facts = gather_host_facts(parsed, environ)
    try:
        cfg = config_mod.build(parsed, environ, facts)
        config_mod.validate(cfg)
    except ConfigError as e:
        raise Failure(str(e)) from None
    if not cleanup:
        return [cfg]
    cfg = replace(cfg, cleanup_only=True)
    other = replace(cfg, inbound_interception_mode="REDIRECT" if cfg.tproxy else "TPROXY",
                    inbound_ports_include=cfg.inbound_ports_include or "*")
    return [cfg, other]


def dry_run_text(cfgs: list[config_mod.Config]) -> str:
    """The --dry-run output: Istio's golden form, one command or restore line per line."""
    lines: list[str] = []
    for cfg in cfgs:
        try:
            rules = capture.build_rules(cfg)
        except ConfigError as e:
            raise Failure(str(e)) from None
        lines += program.dry_run(program.program(cfg, rules, have_v6=True))
    return "".join(line + "\n" for line in lines)


def execute(cfgs: list[config_mod.Config]) -> None:
    """Install (or, with cleanup_only, remove) rules and routing for real."""
    first = cfgs[0]
    if first.native_nftables:
        raise Failure("--native-nftables is not supported by meshproxy-iptables; use iptables")
    try:
        plans = [(cfg, capture.build_rules(cfg), routes.plan(cfg)) for cfg in cfgs]
    except (ConfigError, routes.RoutingError) as e:
        raise Failure(str(e)) from None
    if not has_net_admin():
        raise Failure(f"must run as root with CAP_NET_ADMIN to change iptables rules (uid "
                      f"{os.geteuid()} lacks it); use --dry-run to only print the rules")
    try:
        binaries = {4: runner.detect(False, first.force_iptables_binary)}
    except runner.ToolMissing as e:
        raise Failure(f"iptables is missing or unusable: {e} (install the iptables package)") from None
    try:
        binaries[6] = runner.detect(True, first.force_iptables_binary)
    except runner.ToolMissing as e:
        if first.enable_ipv6:
            raise Failure(f"ip6tables is missing or unusable: {e}") from None
        log.warning("Failed to detect a working ip6tables binary; continuing because IPv6 "
                    "support is disabled (ENABLE_INBOUND_IPV6=false): %s", e)
    executor = runner.Executor(binaries, first.network_namespace if first.cni_mode else "")
    for cfg, rules, route_plan in plans:
        try:
            program.drive(program.program(cfg, rules, have_v6=6 in binaries), executor)
            (routes.remove if cfg.cleanup_only else routes.apply)(route_plan)
        except program.IptablesFailed as e:
            raise Failure(str(e)) from None
        except routes.RoutingError as e:
            raise Failure(f"failed to configure routes: {e}") from None


def main(argv: list[str] | None = None, environ: dict | None = None, stdout=None, stderr=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = dict(os.environ) if environ is None else environ
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    _setup_logging("default:info", stderr)
    try:
        parsed_level = flags.parse(argv, environ).values["log_output_level"]
        _setup_logging(parsed_level, stderr)
    except flags.FlagError:
        pass
    try:
        cfgs = load(argv, environ)
        cfg = cfgs[0]
        if cfg.dry_run:
            log.info("running iptables in dry-run mode, no rule changes will be made")
            text = dry_run_text(cfgs)
            stdout.write(text)
            stdout.flush()
            path = environ.get("DRY_RUN_FILE_PATH", "")
            if path:  # Istio's DependenciesStub writes the same lines to this file
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
        elif not cfg.skip_rule_apply:
            execute(cfgs)
        if cfg.run_validation:
            try:
                validation.run(cfg)
            except validation.ValidationFailed as e:
                raise Failure(f"iptables validation failed; workload is not ready for Istio: {e}",
                              code=126) from None
    except Failure as e:
        if e.code == 0:
            stdout.write(str(e))
            return 0
        stderr.write(f"{PROG}: error: {e}\n")
        return e.code
    except OSError as e:  # e.g. DRY_RUN_FILE_PATH unwritable, netlink refused
        stderr.write(f"{PROG}: error: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
