"""The sequence of iptables commands that applies (or removes) the rules, as a sans-IO generator.

``program()`` yields ``Command``s and is sent back a ``Result`` for each; it decides what to run
next from the answers (is there residue? does it match?), never running anything itself.  Two
drivers answer it: ``dry_run()`` answers every command with an empty success and records what
was asked, which is exactly what Istio's DependenciesStub records, so ``--dry-run`` output *is*
Istio's golden format; runner.py answers by running the real binaries.

Ported from istio/istio tools/istio-iptables/pkg/capture/run.go (``Run``'s deferred final
iptables-save, ``executeCommands``) and capture/helper.go (``VerifyIptablesState``) at 86c9f01.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Generator

from . import builder as B
from .builder import RuleBuilder
from .config import Config

log = logging.getLogger("meshproxy-iptables")

IPTABLES, SAVE, RESTORE = "iptables", "save", "restore"


@dataclass(frozen=True)
class Command:
    family: int  # 4 or 6
    kind: str  # IPTABLES, SAVE or RESTORE
    args: tuple[str, ...] = ()
    stdin: str | None = None
    quiet: bool = False  # a failure is expected and tolerated


@dataclass(frozen=True)
class Result:
    ok: bool
    stdout: str = ""
    error: str = ""  # one line saying why, when not ok


class IptablesFailed(RuntimeError):
    pass


Program = Generator[Command, Result, None]


def program(cfg: Config, rules: RuleBuilder, have_v6: bool = True) -> Program:
    """Run.go's Run from executeCommands on, then the final iptables-save (Run's defer).

    ``have_v6``: a working ip6tables was found.  Without it IPv6 state is not inspected (Istio
    gets an error from the missing binary and treats the state as clean, the same outcome).
    """
    failure: IptablesFailed | None = None
    try:
        yield from _execute(cfg, rules, have_v6)
    except IptablesFailed as e:
        failure = e
    # "Best effort since we don't know if the commands exist"
    final = yield Command(4, SAVE, quiet=True)
    if final.ok:
        log.info("Final iptables state (IPv4):\n%s", final.stdout)
    if cfg.enable_ipv6:
        final = yield Command(6, SAVE, quiet=True)
        if final.ok:
            log.info("Final iptables state (IPv6):\n%s", final.stdout)
    if failure is not None:
        raise failure


def _must(result: Result) -> None:
    if not result.ok:
        raise IptablesFailed(result.error)


def _execute(cfg: Config, rules: RuleBuilder, have_v6: bool) -> Program:
    families = [4, 6] if cfg.enable_ipv6 else [4]
    # Checks (iptables -C per rule) cannot change what --cleanup-only does; skip them there.
    residue, delta, before = yield from verify_state(rules, have_v6, checks=not cfg.cleanup_only)
    if residue and delta and not cfg.reconcile:
        log.info("reconcile is recommended but no-reconcile flag is set. Unexpected behavior may "
                 "occur due to preexisting iptables rules")

    guardrails = False
    try:
        if (residue and delta and cfg.reconcile) or cfg.cleanup_only:
            if not cfg.cleanup_only:
                log.info("Setting up guardrails")
                for fam in families:
                    for args in B.cleanup_guardrails():
                        yield Command(fam, IPTABLES, tuple(args), quiet=True)
                    for args in B.guardrails():
                        _must((yield Command(fam, IPTABLES, tuple(args))))
                    guardrails = True
            log.info("Performing cleanup of existing iptables")
            for fam, cmds in ((4, rules.cleanup_v4()), (6, rules.cleanup_v6())):
                if fam in families:
                    for args in cmds:
                        yield Command(fam, IPTABLES, tuple(args), quiet=True)
            # meshproxy: also remove ISTIO_ chains and jumps the flags above did not describe
            # (installed with other flags), as istio-cni does with BuildCleanupFromState.
            for fam, state in before.items():
                if fam in families:
                    for args in B.cleanup_from_state(B.istio_leftovers(state)):
                        yield Command(fam, IPTABLES, tuple(args), quiet=True)

        if (delta or cfg.force_apply) and not cfg.cleanup_only:
            log.info("Applying iptables chains and rules")
            # --noflush: other tables' and chains' contents are left as they are.
            _must((yield Command(4, RESTORE, ("--noflush",), rules.restore_v4())))
            if cfg.enable_ipv6:
                _must((yield Command(6, RESTORE, ("--noflush",), rules.restore_v6())))
        if not delta and cfg.force_apply:
            log.warning("The forced apply of iptables changes succeeded despite the presence of "
                        "conflicting rules or chains.")
    finally:
        if guardrails:
            log.info("Removing guardrails")
            for fam in families:
                for args in B.cleanup_guardrails():
                    if not (yield Command(fam, IPTABLES, tuple(args))).ok:
                        break


def verify_state(rules: RuleBuilder, have_v6: bool, checks: bool = True):
    """capture/helper.go VerifyIptablesState -> (residue exists, delta exists, states seen).

    Residue: ISTIO chains or rules already present where rules are planned.  Delta: the present
    state differs from the planned one (chains, per-chain rule counts, then ``iptables -C`` of
    every planned rule).  Order of rules is deliberately not compared, as in Istio.
    """
    results = []
    seen: dict[int, B.State] = {}
    for fam, restore, check_cmds in ((4, rules.restore_v4(), rules.check_v4()),
                                     (6, rules.restore_v6(), rules.check_v6())):
        if fam == 6 and not have_v6:
            results.append((False, False, False))
            continue
        out = yield Command(fam, SAVE, quiet=True)
        expected = B.state_from_save(restore)
        empty_expected = B.is_empty(expected)
        if not out.ok:
            log.warning("[IPv%d] iptables-save failed. Assuming clean state.", fam)
            results.append((False, not empty_expected, not empty_expected))
            continue
        current = B.state_from_save(out.stdout)
        seen[fam] = current
        residue = not B.is_empty(current)
        delta = False
        if not residue and not empty_expected:
            delta = True
        elif residue:
            delta = _differs(expected, current)
            if not delta and checks:
                for args in check_cmds:
                    if not (yield Command(fam, IPTABLES, tuple(args), quiet=True)).ok:
                        delta = True
                        break
        results.append((residue, delta, not empty_expected))

    any_delta = any(d for _, d, _ in results)
    any_residue = any(r and planned for r, _, planned in results)
    if not any_residue:
        log.info("Clean-state detected, new iptables are needed")
        return False, True, seen
    log.info("Found residues of old iptables rules/chains, reconciliation is recommended" if any_delta
             else "Found compatible residues of old iptables rules/chains, reconciliation not needed")
    return True, any_delta, seen


def _differs(expected: B.State, current: B.State) -> bool:
    for table, chains in expected.items():
        if table not in current:
            return True
        for chain, planned in chains.items():
            present = current[table].get(chain)
            if present is None or (chain.startswith("ISTIO_") and len(planned) != len(present)):
                return True
    for table, chains in current.items():
        for chain in chains:
            if chain.startswith("ISTIO_") and chain not in expected.get(table, {}):
                return True
    return False


def drive(prog: Program, execute: Callable[[Command], Result]) -> None:
    """Run a program to completion, answering each command with ``execute``."""
    result = None
    while True:
        try:
            cmd = prog.send(result)
        except StopIteration:
            return
        result = execute(cmd)


DRY_RUN_BINARIES = {
    4: {IPTABLES: "iptables", SAVE: "iptables-save", RESTORE: "iptables-restore"},
    6: {IPTABLES: "ip6tables", SAVE: "ip6tables-save", RESTORE: "ip6tables-restore"},
}


def dry_run(prog: Program) -> list[str]:
    """What Istio's DependenciesStub records: restore input line by line, other commands as
    their command line.  Every command "succeeds" with empty output, so the state looks clean."""
    lines: list[str] = []

    def record(cmd: Command) -> Result:
        if cmd.stdin is not None:
            # bufio.Scanner lines: split on \n, drop a trailing \r, no empty last line.
            parts = cmd.stdin.split("\n")
            if parts and parts[-1] == "":
                parts.pop()
            lines.extend(p[:-1] if p.endswith("\r") else p for p in parts)
        else:
            lines.append(" ".join((DRY_RUN_BINARIES[cmd.family][cmd.kind], *cmd.args)))
        return Result(ok=True)

    drive(prog, record)
    return lines
