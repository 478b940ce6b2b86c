"""Envoy's tag extraction: a flat stat name such as ``cluster.up.upstream_rq_200`` becomes the
tag-extracted name ``cluster.upstream_rq`` with tags ``envoy.response_code="200"`` and
``envoy.cluster_name="up"``, which is what ``/stats/prometheus`` prints.

This follows Envoy 1.40 ``source/common/config/well_known_names.cc`` (the default extractors),
``source/common/stats/tag_extractor_impl.cc`` (regex, token and fixed extractors) and
``tag_producer_impl.cc`` (which extractors run, in which order):

- every extractor looks at the *original* name; the characters each one removes are collected
  and cut out together at the end;
- extractors whose pattern starts with a literal first token (``^cluster\\.``, ``cluster.$.**``)
  run only for names with that first token, after the extractors without such a prefix;
- when several extractors share a tag name, only the first that matches adds a tag;
- tags come out in the order their extractors ran, which is the label order in Prometheus.
"""

from __future__ import annotations

import re

from meshproxy.stats.re2 import compile_ecma

_TAG_VALUE = r"[^\.]+"
_ADDRESS = r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)"
_CIPHER = r"[\w-]+"
_TLS_VERSION = r"TLSv\d\.\d"
_ROUTE_CONFIG_NAME = r"[\w\-.]+"
_LISTENER_OR_CLUSTER = r"(?:listener|cluster)\..*?"


def _expand(rx: str) -> str:
    return (rx.replace("<ADDRESS>", _ADDRESS).replace("<CIPHER>", _CIPHER)
            .replace("<TLS_VERSION>", _TLS_VERSION).replace("<TAG_VALUE>", _TAG_VALUE)
            .replace("<ROUTE_CONFIG_NAME>", _ROUTE_CONFIG_NAME)
            .replace("<LISTENER_OR_CLUSTER_WITH_NAME>", _LISTENER_OR_CLUSTER))


# (tag name, RE2 regex, substring the name must contain, value that does not count as a match)
DEFAULT_REGEXES = [
    ("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_", ""),
    ("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_", ""),
    ("envoy.dynamo_partition_id", r"^http\.<TAG_VALUE>\.dynamodb\.table\.<TAG_VALUE>\.capacity"
                                  r"\.<TAG_VALUE>(\.__partition_id=(\w{7}))$",
     ".dynamodb.table.", ""),
    ("envoy.dynamo_operation", r"^http\.<TAG_VALUE>\.dynamodb.(?:operation|table\.<TAG_VALUE>"
                               r"\.capacity)(\.(<TAG_VALUE>))(?:\.|$)", ".dynamodb.", ""),
    ("envoy.dyanmo_table", r"^http\.<TAG_VALUE>\.dynamodb.(?:table|error)\.((<TAG_VALUE>)\.)",
     ".dynamodb.", ""),
    ("envoy.ssl_cipher", r"^listener\..*?\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
    ("envoy.ssl_curve", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.curves(\.(<CIPHER>))$",
     ".ssl.curves.", ""),
    ("envoy.ssl_sigalg", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.sigalgs(\.(<CIPHER>))$",
     ".ssl.sigalgs.", ""),
    ("envoy.ssl_version", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.versions(\.(<TLS_VERSION>))$",
     ".ssl.versions.", ""),
    ("cipher_suite", r"^cluster\.<TAG_VALUE>\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
    ("envoy.http_conn_manager_prefix", r"^listener\..*?\.http\.((<TAG_VALUE>)\.)", ".http.", ""),
    # Envoy 1.40 also tags thread_local_cluster_manager.worker_N (seen in its /stats/prometheus)
    ("envoy.worker_id", r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)\.|server\.|listener_manager\."
                        r"|thread_local_cluster_manager\.)worker_((\d+)\.)", "", ""),
    ("envoy.listener_address", r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)", "", "admin"),
    ("envoy.rds_route_config", r"^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$",
     ".rds.", ""),
]

# (tag name, token pattern): "$" is the value, "*" one token, "**" any number of tokens.
DEFAULT_TOKENS = [
    ("envoy.mongo_callsite", "mongo.*.collection.*.callsite.$.query.**"),
    ("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
    ("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
    ("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
    ("envoy.http_user_agent", "http.*.user_agent.$.**"),
    ("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    ("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    ("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
    ("envoy.tcp_prefix", "tcp.$.**"),
    ("envoy.udp_prefix", "udp.$.**"),
    ("envoy.clientssl_prefix", "auth.clientssl.$.**"),
    ("envoy.ratelimit_prefix", "ratelimit.$.**"),
    ("envoy.cluster_name", "cluster.$.**"),
    ("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
    ("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
    ("envoy.http_conn_manager_prefix", "http.$.**"),
    ("envoy.virtual_host", "vhost.$.**"),
    ("envoy.mongo_prefix", "mongo.$.**"),
    ("envoy.route", "vhost.*.route.$.**"),
    ("envoy.thrift_prefix", "thrift.$.**"),
    ("envoy.redis_prefix", "redis.$.**"),
    ("envoy.local_http_ratelimit_prefix", "$.http_local_rate_limit.**"),
    ("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
    ("envoy.local_listener_ratelimit_prefix", "listener_local_ratelimit.$.**"),
    ("envoy.dns_filter_prefix", "dns_filter.$.**"),
]

DEFAULT_TAG_NAMES = frozenset(n for n, *_ in DEFAULT_REGEXES) | \
    frozenset(n for n, _ in DEFAULT_TOKENS)


def regex_prefix(regex: str) -> str:
    """The literal first token a regex requires (``^cluster\\.`` -> ``cluster``), or "".
    Envoy's ``TagExtractorImplBase::extractRegexPrefix``."""
    if not regex.startswith("^"):
        return ""
    for i in range(1, len(regex)):
        c = regex[i]
        if not (c.isascii() and (c.isalnum() or c == "_")):
            if i > 1:
                last = i == len(regex) - 1
                rest = regex[i:]
                if (not last and (rest.startswith("\\.") or rest.startswith("(?=\\."))) or \
                        (last and c == "$"):
                    return regex[1:i]
            return ""
    return ""


class RegexExtractor:
    """Group 1 is cut from the name; group 2 (or group 1) is the value."""

    __slots__ = ("name", "prefix", "substr", "negative", "rx", "std")

    def __init__(self, name, rx, prefix, substr="", negative="", std=False):
        self.name = name
        self.rx = rx
        self.prefix = prefix
        self.substr = substr
        self.negative = negative
        self.std = std   # std::regex semantics (custom stats_tags) rather than RE2

    def extract(self, stat: str, tokens):
        if self.substr and self.substr not in stat:
            return None
        m = self.rx.search(stat)
        if m is None or m.re.groups < 1:
            return None
        if self.std:
            # std::regex: an unmatched group is empty and sits at the end of the name.
            start, end = m.span(1) if m.group(1) is not None else (len(stat), len(stat))
            value = m.group(2) if m.re.groups >= 2 else m.group(1)
            return (value or "", start, end)
        remove = m.group(1)
        if not remove:  # RE2 PartialMatch: an empty remove group is no match
            return None
        value = m.group(2) if m.re.groups >= 2 and m.group(2) else remove
        if self.negative and value == self.negative:
            return None
        start, end = m.span(1)
        return (value, start, end)


class TokenExtractor:
    """Envoy's ``TagExtractorTokensImpl``: matches dot-separated tokens against a pattern."""

    __slots__ = ("name", "prefix", "tokens", "match_index")

    def __init__(self, name: str, pattern: str):
        self.name = name
        self.tokens = pattern.split(".")
        self.match_index = self.tokens.index("$")
        first = self.tokens[0]
        self.prefix = "" if first in ("$", "*", "**") else first

    def extract(self, stat: str, tokens):
        hit = [0, -1]   # start character, token index of the value (Envoy's out-params)
        if not self._search(tokens, 0, 0, 0, hit) or hit[1] < 0:
            return None
        start, idx = hit
        value = tokens[idx]
        end = start + len(value)
        if idx < len(tokens) - 1:
            end += 1          # remove the dot leading to the next token
        elif start > 0:
            start -= 1        # remove the dot before the last token
        return (value, start, end)

    def _search(self, inp, ii, pi, ci, hit) -> bool:
        pat = self.tokens
        while ii < len(inp) and pi < len(pat):
            if pi == self.match_index:
                hit[0] = ci
                hit[1] = ii
            else:
                expected = pat[pi]
                if expected == "**":
                    if pi == len(pat) - 1:
                        return True
                    # "**" inside the pattern: the rest must match from some later token
                    pi += 1
                    while ii < len(inp):
                        if self._search(inp, ii, pi, ci, hit):
                            return True
                        ci += len(inp[ii]) + 1
                        ii += 1
                    return False
                if expected != "*" and expected != inp[ii]:
                    return False
                ci += len(inp[ii]) + 1
            ii += 1
            pi += 1
        return pi == len(pat) and ii == len(inp)


class FixedTag:
    """A tag with a fixed value on every stat (``--stats-tag`` or ``fixed_value``)."""

    __slots__ = ("name", "prefix", "value")

    def __init__(self, name: str, value: str):
        self.name = name
        self.value = value
        self.prefix = regex_prefix(value)

    def extract(self, stat, tokens):
        return (self.value, 0, 0)


def default_extractors(only: str | None = None) -> list:
    """Envoy's default extractors (all regexes, then all token patterns), or only those for
    tag name ``only``."""
    out = []
    for name, rx, substr, negative in DEFAULT_REGEXES:
        if only is None or name == only:
            expanded = _expand(rx)
            out.append(RegexExtractor(name, re.compile(expanded), regex_prefix(expanded),
                                      substr, negative))
    for name, pattern in DEFAULT_TOKENS:
        if only is None or name == only:
            out.append(TokenExtractor(name, pattern))
    return out


def custom_extractor(name: str, regex: str) -> RegexExtractor:
    """A ``stats_tags`` entry with its own regex: a ``std::regex`` (ECMAScript) in Envoy."""
    return RegexExtractor(name, compile_ecma(regex), regex_prefix(regex), std=True)


class TagProducer:
    """Turns stat names into (tag-extracted name, [(tag name, value)]), cached per name."""

    def __init__(self, extractors=None):
        if extractors is None:
            extractors = default_extractors()
        self.without_prefix = [e for e in extractors if not e.prefix]
        self.by_prefix: dict[str, list] = {}
        for e in extractors:
            if e.prefix:
                self.by_prefix.setdefault(e.prefix, []).append(e)
        counts: dict[str, int] = {}
        for e in extractors:
            counts[e.name] = counts.get(e.name, 0) + 1
        self.shared_names = frozenset(n for n, c in counts.items() if c > 1)
        self._cache: dict[str, tuple] = {}

    def produce(self, stat: str) -> tuple[str, list]:
        hit = self._cache.get(stat)
        if hit is not None:
            return hit
        tokens = stat.split(".")
        tags = []
        cuts = []
        seen = set()
        dot = stat.find(".")
        extractors = self.without_prefix
        if dot >= 0:
            extractors = extractors + self.by_prefix.get(stat[:dot], [])
        for e in extractors:
            if e.name in seen:
                continue
            r = e.extract(stat, tokens)
            if r is None:
                continue
            value, start, end = r
            tags.append((e.name, value))
            if end > start:
                cuts.append((start, end))
            if e.name in self.shared_names:
                seen.add(e.name)
        result = (_cut(stat, cuts), tags)
        self._cache[stat] = result
        return result


def _cut(stat: str, cuts) -> str:
    if not cuts:
        return stat
    cuts.sort()
    out = []
    pos = 0
    for start, end in cuts:
        if start > pos:
            out.append(stat[pos:start])
        pos = max(pos, end)
    out.append(stat[pos:])
    return "".join(out)


_DEFAULT = None


def extract_tags(stat: str) -> tuple[str, list]:
    """Envoy's default tag extraction (no ``stats_config``) of one name."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = TagProducer()
    return _DEFAULT.produce(stat)
