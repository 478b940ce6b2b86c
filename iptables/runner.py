"""The only module that runs iptables: picks the binaries and answers a program's commands.

Binary selection follows istio/istio tools/istio-iptables/pkg/dependencies/implementation.go
``DetectIptablesVersion`` and implementation_linux.go ``shouldUseBinaryForCurrentContext`` at
86c9f01: prefer iptables-legacy if rules already exist there, else iptables-nft, else plain
iptables; a candidate must have a working ``-save`` (with a parsable ``--version``) and must be able
to add (and then delete) a no-op rule, proving kernel support in this network namespace.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from .program import IPTABLES, RESTORE, SAVE, Command, Result

log = logging.getLogger("meshproxy-iptables")

# Protocol 255 is IANA-reserved, so this rule never matches anything.
_PROBE_RULE = ("-t", "nat", "-A", "INPUT", "-p", "255", "-j", "RETURN")
_RESTORE_LOCKING = (1, 6, 2)  # legacy iptables(-restore) learned -w in 1.6.2
_LOCKFILE_ENV = (1, 8, 6)  # ... and XTABLES_LOCKFILE in 1.8.6


class ToolMissing(RuntimeError):
    """No usable iptables: the message says which binary and why."""


@dataclass(frozen=True)
class Binaries:
    iptables: str
    save: str
    restore: str
    version: tuple[int, ...]
    legacy: bool
    existing_rules: bool = False

    def name(self, kind: str) -> str:
        return {IPTABLES: self.iptables, SAVE: self.save, RESTORE: self.restore}[kind]

    @property
    def needs_lock(self) -> bool:
        # nf_tables needs no lock; legacy has had one (and -w) since 1.6.2.
        return self.legacy and self.version >= _RESTORE_LOCKING


def _run(argv: list[str], stdin: str | None = None, env: dict | None = None):
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env)


def probe(binary: str, only_if_rules: bool = False) -> Binaries:
    """shouldUseBinaryForCurrentContext for one binary name (e.g. ``iptables-nft``).

    ``only_if_rules``: give up, before the probe rule, when this variant holds no rules.  Istio
    probes iptables-legacy unconditionally and counts any 3-line dump as "existing rules"; but
    the probe itself makes the legacy nat table appear (an empty 3+-line dump), so Istio's next
    run would switch to legacy and install a second set of rules.  Only ``-A`` lines count here.
    """
    save, restore = f"{binary}-save", f"{binary}-restore"
    for b in (binary, save, restore):
        if shutil.which(b) is None:
            raise ToolMissing(f"{b} not found in PATH")
    dump = _run([save])
    if dump.returncode != 0:
        raise ToolMissing(f"failed to execute {save}: {_one_line(dump.stderr or dump.stdout)}")
    ver = _run([save, "--version"])
    m = re.search(r"v([0-9]+(\.[0-9]+)+)", ver.stdout)
    if ver.returncode == 0 and "unrecognized option" not in ver.stderr and m:
        version = tuple(int(x) for x in m.group(1).split("."))
        legacy = "nf_tables" not in ver.stdout
    else:
        # Very old legacy -save (1.6.1) takes no arguments at all.
        version, legacy = (0, 0, 0), True
    existing = any(line.startswith("-A ") for line in dump.stdout.splitlines())
    if only_if_rules and not existing:
        raise ToolMissing(f"{binary} holds no rules in this network namespace")
    bins = Binaries(binary, save, restore, version, legacy, existing_rules=existing)
    lock = ["--wait=30"] if bins.needs_lock else []
    test = _run([binary, *_PROBE_RULE, *lock])
    if test.returncode != 0 or "does not exist" in test.stderr:
        raise ToolMissing(f"iptables binary {binary} has no loaded kernel support and cannot be "
                          f"used: {_one_line(test.stderr)}")
    _run([binary, *_PROBE_RULE[:2], "-D", *_PROBE_RULE[3:], *lock])
    return bins


def detect(ipv6: bool, force: str = "") -> Binaries:
    """DetectIptablesVersion: which iptables set to use for one family."""
    plain = "ip6tables" if ipv6 else "iptables"
    if force:
        return probe(f"{plain}-{force}")
    errors = []
    try:
        return probe(f"{plain}-legacy", only_if_rules=True)
    except ToolMissing as e:
        errors.append(str(e))
    for candidate in (f"{plain}-nft", plain):
        try:
            return probe(candidate)
        except ToolMissing as e:
            errors.append(str(e))
    raise ToolMissing(errors[-1])


def _one_line(text: str) -> str:
    # Errors are reported on one line; iptables' "Try `iptables -h'" advice is dropped.
    lines = [line.strip() for line in text.strip().splitlines()
             if line.strip() and not line.strip().startswith("Try `")]
    return "; ".join(lines) or "no output"


@dataclass
class Executor:
    """Answers a program's commands by running the detected binaries."""
    binaries: dict  # family (4/6) -> Binaries
    lockfile: str = ""  # --cni-mode: the netns path replaces the node-wide xtables lock

    def __call__(self, cmd: Command) -> Result:
        bins = self.binaries.get(cmd.family)
        if bins is None:
            return Result(False, error=f"no ip{'6' if cmd.family == 6 else ''}tables binary")
        argv = [bins.name(cmd.kind), *cmd.args]
        env = None
        if cmd.kind != SAVE and bins.needs_lock:
            argv.append("--wait=30")
            if self.lockfile and bins.version >= _LOCKFILE_ENV:
                env = dict(os.environ, XTABLES_LOCKFILE=self.lockfile)
        log.debug("Running command: %s", " ".join(argv))
        try:
            p = _run(argv, stdin=cmd.stdin, env=env)
        except OSError as e:
            return Result(False, error=f"{argv[0]}: {e.strerror}")
        if p.returncode != 0:
            why = f"{' '.join(argv)} failed (exit {p.returncode}): {_one_line(p.stderr)}"
            (log.debug if cmd.quiet else log.error)("Command error: %s", why)
            return Result(False, stdout=p.stdout, error=why)
        return Result(True, stdout=p.stdout)
