"""Rule lists for IPv4 and IPv6 and what can be derived from them, as pure data.

A port of istio/istio tools/istio-iptables/pkg/builder/iptables_builder_impl.go and helper.go.
The text produced here is byte-for-byte what Istio produces, because the dry-run output is
compared with Istio's goldens and because Istio's reconciliation (and ours) compares
iptables-save output against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import constants as C


@dataclass(frozen=True)
class Rule:
    chain: str
    table: str
    params: tuple[str, ...]  # starts with "-A CHAIN" or "-I CHAIN POS"


def _is_builtin(name: str) -> bool:
    return name in C.BUILTIN_CHAINS_AND_TARGETS


@dataclass
class RuleBuilder:
    """Collects rules in the order they are added; IPv6 rules only when IPv6 is enabled."""
    enable_ipv6: bool = False
    v4: list[Rule] = field(default_factory=list)
    v6: list[Rule] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<RuleBuilder v4={len(self.v4)} rules v6={len(self.v6)} rules>"

    # -- adding rules --------------------------------------------------------------------------
    def append_v4(self, chain: str, table: str, *params: str) -> None:
        self.v4.append(Rule(chain, table, ("-A", chain, *params)))

    def append_v6(self, chain: str, table: str, *params: str) -> None:
        if self.enable_ipv6:
            self.v6.append(Rule(chain, table, ("-A", chain, *params)))

    def append(self, chain: str, table: str, *params: str) -> None:
        self.append_v4(chain, table, *params)
        self.append_v6(chain, table, *params)

    def insert_v4(self, chain: str, table: str, position: int, *params: str) -> None:
        self.v4.append(Rule(chain, table, ("-I", chain, str(position), *params)))

    def insert_v6(self, chain: str, table: str, position: int, *params: str) -> None:
        if self.enable_ipv6:
            self.v6.append(Rule(chain, table, ("-I", chain, str(position), *params)))

    def insert(self, chain: str, table: str, position: int, *params: str) -> None:
        self.insert_v4(chain, table, position, *params)
        self.insert_v6(chain, table, position, *params)

    def append_versioned(self, ipv4: str, ipv6: str, chain: str, table: str, *params: str) -> None:
        """AppendVersionedRule: one rule, with IP_VERSION_SPECIFIC replaced per family."""
        sub = lambda value: tuple(value if p == C.IP_VERSION_SPECIFIC else p for p in params)  # noqa: E731
        self.append_v4(chain, table, *sub(ipv4))
        self.append_v6(chain, table, *sub(ipv6))

    # -- outputs -------------------------------------------------------------------------------
    def restore_v4(self) -> str:
        return build_restore(self.v4)

    def restore_v6(self) -> str:
        return build_restore(self.v6)

    def cleanup_v4(self) -> list[list[str]]:
        return build_cleanup(self.v4)

    def cleanup_v6(self) -> list[list[str]]:
        return build_cleanup(self.v6)

    def check_v4(self) -> list[list[str]]:
        return [["-t", r.table, *r.params] for r in check_rules(self.v4)]

    def check_v6(self) -> list[list[str]]:
        return [["-t", r.table, *r.params] for r in check_rules(self.v6)]


def build_restore(rules: list[Rule]) -> str:
    """iptables-restore input (builder buildRestore): per table, sorted by name, the -N lines
    for chains that get rules, then for chains only jumped to, then the rules in order."""
    tables: dict[str, list[str]] = {"filter": [], "nat": [], "mangle": []}
    seen: set[tuple[str, str]] = set()
    for r in rules:
        if (r.chain, r.table) not in seen:
            seen.add((r.chain, r.table))
            if not _is_builtin(r.chain):
                tables.setdefault(r.table, []).append(f"-N {r.chain}")
    # "Also look for chains we jump to, even if we have no rules in them"
    for r in rules:
        if len(r.params) >= 2 and r.params[-2] == "-j":
            target = r.params[-1]
            if (target, r.table) not in seen:
                seen.add((target, r.table))
                if not _is_builtin(target):
                    tables.setdefault(r.table, []).append(f"-N {target}")
    for r in rules:
        tables.setdefault(r.table, []).append(" ".join(r.params))
    out = []
    for table in sorted(tables):
        if tables[table]:
            out.append(f"* {table}")
            out.extend(tables[table])
            out.append("COMMIT")
    return "".join(line + "\n" for line in out)


def _rewrite(rules: list[Rule], verb: str, skip_istio_non_jumps: bool) -> list[Rule]:
    """helper.go CheckRules (-C) and UndoRules (-D): -A/-I become verb, an insert position is
    dropped; UndoRules also skips non-jump rules inside ISTIO_* chains, which get flushed."""
    out = []
    for r in rules:
        params: list[str] = []
        skip = False
        insert_at = -1
        p = r.params
        for i, element in enumerate(p):
            if insert_at >= 0 and i == insert_at + 2:
                continue
            if element in ("-A", "--append"):
                params.append(verb)
            elif element in ("-I", "--insert"):
                insert_at = i
                params.append(verb)
            else:
                params.append(element)
            if skip_istio_non_jumps:
                nxt = p[i + 1] if i < len(p) - 1 else ""
                if element in ("-A", "--append", "-I", "--insert") and nxt.startswith("ISTIO_"):
                    skip = True
                elif element in ("-j", "--jump") and nxt.startswith("ISTIO_"):
                    skip = False
        if not skip:
            out.append(Rule(r.chain, r.table, tuple(params)))
    return out


def check_rules(rules: list[Rule]) -> list[Rule]:
    return _rewrite(rules, "-C", skip_istio_non_jumps=False)


def undo_rules(rules: list[Rule]) -> list[Rule]:
    return _rewrite(rules, "-D", skip_istio_non_jumps=True)


def build_cleanup(rules: list[Rule]) -> list[list[str]]:
    """builder buildCleanupRules: undo in reverse order, then flush and delete each ISTIO chain
    (first appearance in reverse order)."""
    reversed_rules = list(reversed(rules))
    out = [["-t", r.table, *r.params] for r in undo_rules(reversed_rules)]
    seen: set[tuple[str, str]] = set()
    for r in reversed_rules:
        if (r.chain, r.table) not in seen:
            seen.add((r.chain, r.table))
            if not _is_builtin(r.chain):
                out.append(["-t", r.table, "-F", r.chain])
                out.append(["-t", r.table, "-X", r.chain])
    return out


def _guardrails() -> list[Rule]:
    # Drop all TCP/UDP while rules are being replaced, so nothing slips through uncaptured
    # (builder buildGuardrails).
    return [Rule(chain, "filter", ("-I", chain, "1", "-p", proto, "-j", "DROP"))
            for chain in ("INPUT", "FORWARD", "OUTPUT") for proto in ("tcp", "udp")]


def guardrails() -> list[list[str]]:
    return [["-t", r.table, *r.params] for r in _guardrails()]


def cleanup_guardrails() -> list[list[str]]:
    return [["-t", r.table, *r.params] for r in undo_rules(_guardrails())]


State = dict[str, dict[str, list[str]]]  # table -> chain -> rule lines


def state_from_save(data: str) -> State:
    """builder GetStateFromSave: ISTIO chains (even empty) and every chain that has rules."""
    result: State = {t: {} for t in C.DEFAULT_TABLES}
    table = ""
    for line in data.split("\n"):
        if not line.strip() or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        if table not in result:
            continue
        if line.startswith(":"):
            if line.startswith(":ISTIO"):
                result[table].setdefault(line.split(" ")[0][1:], [])
            continue
        words = line.split(" ")
        chain, add = "", False
        for i, item in enumerate(words):
            if item in ("--append", "-A", "--insert", "-I") and i + 1 < len(words):
                add, chain = True, words[i + 1].strip("'\"")
            elif item in ("--new", "-N") and i + 1 < len(words):
                target = words[i + 1].strip("'\"")
                if target.startswith("ISTIO"):
                    chain = target
        if not chain:
            continue
        result[table].setdefault(chain, [])
        if add:
            result[table][chain].append(line)
    return result


def is_empty(state: State) -> bool:
    return all(not chains for chains in state.values())


def _is_istio_jump(rule: str) -> bool:
    fields = rule.split()
    for i, f in enumerate(fields):
        if f in ("--jump", "-j"):
            return i + 1 < len(fields) and fields[i + 1].strip("'\"").startswith("ISTIO_")
    return False


def istio_leftovers(state: State) -> dict[str, tuple[list[str], list[str]]]:
    """capture/helper.go HasIstioLeftovers: per table, (ISTIO_ chains, rules jumping to one)."""
    out = {}
    for table in sorted(state):
        chains = sorted(c for c in state[table] if c.startswith("ISTIO_"))
        jumps = [r for c in state[table] for r in state[table][c] if _is_istio_jump(r)]
        if chains or jumps:
            out[table] = (chains, jumps)
    return out


def cleanup_from_state(leftovers: dict[str, tuple[list[str], list[str]]]) -> list[list[str]]:
    """builder/helper.go BuildCleanupFromState: delete the jumps, then flush+delete chains."""
    rules = []
    for table, (_, jumps) in leftovers.items():
        for line in jumps:
            params = tuple(line.split())
            chain = next((params[i + 1] for i, w in enumerate(params[:-1])
                          if w in ("--append", "-A", "--insert", "-I")), "")
            rules.append(Rule(chain, table, params))
    out = [["-t", r.table, *r.params] for r in undo_rules(rules)]
    for table, (chains, _) in leftovers.items():
        for chain in chains:
            out.append(["-t", table, "-F", chain])
            out.append(["-t", table, "-X", chain])
    return out
