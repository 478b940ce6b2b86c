"""The command line of istio-iptables, parsed the way Go's pflag/cobra parse it.

istio-iptables binds each option with istio/istio pkg/flag: ``Bind`` (flag only) or ``BindEnv``
(flag, plus the environment variable named by upper-casing the flag and turning ``-`` into
``_``), sometimes with ``AdditionalEnv`` aliases.  Environment values are applied when the flag
is registered, before the command line is parsed, so the command line wins; an alias is applied
after the canonical variable, so the alias wins over it; an environment value that does not parse
(``REDIRECT_DNS=maybe``) is silently ignored (``_ = fs.Set(...)``).  The table below is
tools/istio-iptables/pkg/cmd/root.go ``bindCmdlineFlags`` at 86c9f01, plus Istio's logging flags
(pkg/log/options.go) because the sidecar injection template passes ``--log_output_level``.

Parsing follows spf13/pflag: ``--name=value``, ``--name value``, ``-x value``, ``-xvalue``,
``-x=value``; boolean flags take no separate argument (``--dry-run`` or ``--dry-run=false``);
``--`` ends the flags; other words are positional (cobra's root command accepts them, which is
why pilot-agent's ``istio-iptables`` first argument is harmless).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STRING, BOOL, UINT16, DURATION, STRING_ARRAY = "string", "bool", "uint16", "duration", "stringArray"


class FlagError(ValueError):
    """The command line is wrong (cobra prints ``Error: ...`` and exits 1)."""


@dataclass(frozen=True)
class Flag:
    name: str
    short: str | None
    kind: str
    default: object
    env: bool = True  # BindEnv (True) or Bind (False)
    aliases: tuple[str, ...] = ()  # AdditionalEnv names
    help: str = ""

    @property
    def env_name(self) -> str | None:
        return self.name.upper().replace("-", "_") if self.env else None


# Order matters only for --help.
FLAGS: tuple[Flag, ...] = (
    Flag("envoy-port", "p", STRING, "15001", env=False,
         help="Specify the envoy port to which redirect all TCP traffic."),
    Flag("inbound-capture-port", "z", STRING, "15006",
         help="Port to which all inbound TCP traffic to the pod/VM should be redirected to."),
    Flag("inbound-tunnel-port", "e", STRING, "15008",
         help="Specify the istio tunnel port for inbound tcp traffic."),
    Flag("proxy-uid", "u", STRING, "",
         help="UID(s) of the proxy, whose traffic is not redirected (default: uid of $ENVOY_USER, "
              "else 1337)."),
    Flag("proxy-gid", "g", STRING, "", help="GID(s) of the proxy (default: same as -u)."),
    Flag("istio-inbound-interception-mode", "m", STRING, "",
         help='The mode used to redirect inbound connections to Envoy, either "REDIRECT" or "TPROXY".'),
    Flag("istio-inbound-ports", "b", STRING, "",
         help='Comma separated inbound ports to redirect to Envoy; "*" for all, empty disables.'),
    Flag("istio-local-exclude-ports", "d", STRING, "",
         help='Comma separated inbound ports to exclude; only applies with -b "*".'),
    Flag("istio-exclude-interfaces", "c", STRING, "",
         help="Comma separated NICs whose traffic is never captured."),
    Flag("istio-service-cidr", "i", STRING, "",
         help='Comma separated CIDRs to redirect to Envoy; "*" for all, empty disables outbound.'),
    Flag("istio-service-exclude-cidr", "x", STRING, "",
         help="Comma separated CIDRs excluded from redirection."),
    Flag("istio-outbound-ports", "q", STRING, "",
         help="Comma separated outbound ports explicitly included for redirection."),
    Flag("istio-local-outbound-ports-exclude", "o", STRING, "",
         help="Comma separated outbound ports excluded from redirection."),
    Flag("kube-virt-interfaces", "k", STRING, "",
         help="Comma separated virtual interfaces whose inbound traffic is treated as outbound."),
    Flag("istio-inbound-tproxy-mark", "t", STRING, "1337"),
    Flag("istio-inbound-tproxy-route-table", "r", STRING, "133"),
    Flag("dry-run", "n", BOOL, False, help="Do not call any external dependencies like iptables; "
         "print what would be run."),
    Flag("iptables-probe-port", None, UINT16, 15002, help="Set listen port for failure detection."),
    Flag("probe-timeout", None, DURATION, 5.0, help="Failure detection timeout."),
    Flag("skip-rule-apply", None, BOOL, False, help="Skip iptables apply."),
    Flag("run-validation", None, BOOL, False, help="Validate iptables."),
    Flag("redirect-dns", None, BOOL, False, aliases=("ISTIO_META_DNS_CAPTURE",),
         help="Enable capture of dns traffic by istio-agent."),
    Flag("drop-invalid", None, BOOL, False, aliases=("INVALID_DROP",),
         help="Enable invalid drop in the iptables rules."),
    Flag("dual-stack", None, BOOL, False, aliases=("ISTIO_DUAL_STACK",),
         help="Enable ipv4/ipv6 redirects for dual-stack."),
    Flag("capture-all-dns", None, BOOL, False,
         help="Capture all DNS traffic at port 53, not only to the resolv.conf servers."),
    Flag("network-namespace", None, STRING, "",
         help="The network namespace that iptables rules should be applied to."),
    Flag("cni-mode", None, BOOL, False, help="Whether to run as CNI plugin."),
    Flag("reconcile", None, BOOL, False,
         help="Reconcile pre-existing and incompatible iptables rules instead of failing."),
    Flag("cleanup-only", None, BOOL, False,
         help="Perform a forced cleanup without creating new iptables chains or rules."),
    Flag("force-apply", None, BOOL, False,
         help="Apply iptables changes even if they appear to already be in place."),
    Flag("native-nftables", None, BOOL, False, help="Use native nftables (not supported)."),
    Flag("force-iptables-binary", None, STRING, "",
         help="Break glass option to choose which iptables binary to use (legacy|nft)."),
    # meshproxy extensions: Istio derives these from the host (the first non-loopback address
    # and /etc/resolv.conf); a flag lets a caller (and the golden tests) state them.
    Flag("enable-inbound-ipv6", None, BOOL, None,
         help="meshproxy: force IPv6 rules on (or =false: off) instead of detecting them from "
              "the pod's first non-loopback address, as Istio does."),
    Flag("dns-servers", None, STRING, None,
         help="meshproxy: comma separated DNS servers to capture instead of /etc/resolv.conf's "
              "(empty: none)."),
    # Istio's logging flags (pkg/log/options.go AttachCobraFlags), all Bind-only.
    Flag("log_output_level", None, STRING, "default:info", env=False),
    Flag("log_stacktrace_level", None, STRING, "default:none", env=False),
    Flag("log_caller", None, STRING, "", env=False),
    Flag("log_as_json", None, BOOL, False, env=False),
    Flag("log_target", None, STRING_ARRAY, ("stdout",), env=False),
)

_BY_NAME = {f.name: f for f in FLAGS}
_BY_SHORT = {f.short: f for f in FLAGS if f.short}

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f'strconv.ParseBool: parsing "{text}": invalid syntax')


def parse_duration(text: str) -> float:
    """Go's time.ParseDuration (``5s``, ``1m30s``, ``250ms``), in seconds."""
    if text in ("0", "+0", "-0"):
        return 0.0
    m = re.fullmatch(r"([-+]?)((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|ms|s|m|h))+)", text)
    if not m:
        raise ValueError(f'time: invalid duration "{text}"')
    total = sum(float(n) * _DURATION_UNITS[u]
                for n, u in re.findall(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)", m.group(2)))
    return -total if m.group(1) == "-" else total


def _convert(flag: Flag, text: str):
    if flag.kind == BOOL:
        return parse_bool(text)
    if flag.kind == UINT16:
        if not re.fullmatch(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text):
            raise ValueError(f'strconv.ParseUint: parsing "{text}": invalid syntax')
        value = int(text, 0) if not re.fullmatch(r"0[0-7]+", text) else int(text, 8)
        if value > 0xFFFF:
            raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
        return value
    if flag.kind == DURATION:
        return parse_duration(text)
    return text


@dataclass(frozen=True)
class Parsed:
    values: dict  # flag name -> value
    positional: tuple[str, ...]
    help: bool = False


def parse(argv: list[str], environ: dict[str, str]) -> Parsed:
    values = {f.name: (list(f.default) if f.kind == STRING_ARRAY else f.default) for f in FLAGS}
    array_from_cli: set[str] = set()

    # Environment first (flag.BindEnv), then aliases (flag.AdditionalEnv); bad values ignored.
    for f in FLAGS:
        for name in ((f.env_name,) if f.env_name else ()) + f.aliases:
            if name in environ:
                try:
                    values[f.name] = _convert(f, environ[name])
                except ValueError:
                    pass

    def set_flag(flag: Flag, text: str, shown: str) -> None:
        try:
            value = _convert(flag, text)
        except ValueError as e:
            raise FlagError(f'invalid argument "{text}" for "{shown}" flag: {e}') from None
        if flag.kind == STRING_ARRAY:
            # pflag StringArray: the first Set replaces the default, later ones append.
            if flag.name not in array_from_cli:
                values[flag.name] = []
                array_from_cli.add(flag.name)
            values[flag.name].append(value)
        else:
            values[flag.name] = value

    positional: list[str] = []
    want_help = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            if name == "help":
                want_help = True
                continue
            flag = _BY_NAME.get(name)
            if flag is None:
                raise FlagError(f"unknown flag: --{name}")
            if not eq:
                if flag.kind == BOOL:
                    value = "true"
                elif i < len(argv):
                    value = argv[i]
                    i += 1
                else:
                    raise FlagError(f"flag needs an argument: --{name}")
            set_flag(flag, value, f"--{name}")
        elif arg.startswith("-") and len(arg) > 1:
            # A run of shorthands: booleans may be grouped (-n), the last may take a value.
            rest = arg[1:]
            while rest:
                c, rest = rest[0], rest[1:]
                if c == "h":
                    want_help = True
                    continue
                flag = _BY_SHORT.get(c)
                if flag is None:
                    raise FlagError(f"unknown shorthand flag: '{c}' in -{arg[1:]}")
                shown = f"-{c}, --{flag.name}"
                if rest.startswith("="):
                    set_flag(flag, rest[1:], shown)
                    rest = ""
                elif flag.kind == BOOL:
                    set_flag(flag, "true", shown)
                elif rest:
                    set_flag(flag, rest, shown)
                    rest = ""
                elif i < len(argv):
                    set_flag(flag, argv[i], shown)
                    i += 1
                else:
                    raise FlagError(f"flag needs an argument: '{c}' in -{c}")
        else:
            positional.append(arg)
    return Parsed(values, tuple(positional), want_help)


def usage(prog: str) -> str:
    lines = [f"Usage:\n  {prog} [cleanup] [flags]\n",
             "Set up iptables rules for a sidecar proxy, as Istio's istio-iptables does.\n"
             "'cleanup' (or --cleanup-only) removes what the same flags installed.\n", "Flags:"]
    for f in FLAGS:
        head = (f"  -{f.short}, --{f.name}" if f.short else f"      --{f.name}")
        if f.kind != BOOL:
            head += f" {f.kind}"
        env = f" (env {', '.join(filter(None, (f.env_name, *f.aliases)))})" if f.env or f.aliases else ""
        lines.append(f"{head:<52} {f.help}{env}")
    lines.append("  -h, --help")
    lines.append("\nEnvironment only: ISTIO_OUTBOUND_OWNER_GROUPS, ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE, "
                 "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR, ENVOY_USER, DRY_RUN_FILE_PATH.")
    return "\n".join(lines) + "\n"
