"""Runtime matchers for routes: string, header and query-parameter matchers.

Built once from ``envoy.type.matcher.v3.StringMatcher`` / ``envoy.config.route.v3.HeaderMatcher``
/ ``QueryParameterMatcher`` and used on every request, so each is a small object with one
``match`` method on bytes. Regexes are Envoy's RE2 (``safe_regex``); Python's ``re`` accepts the
RE2 syntax Envoy configs use (RE2 is a subset, minus a few escapes), compiled on bytes.
"""

from __future__ import annotations

import re

from meshproxy.config.errors import ConfigError, join


def compile_regex(regex: str, path: str) -> re.Pattern:
    try:
        return re.compile(regex.encode())
    except re.error as exc:
        raise ConfigError(path, f"invalid regex '{regex}': {exc}") from None


class StringMatcher:
    """``envoy.type.matcher.v3.StringMatcher`` on bytes."""

    __slots__ = ("kind", "value", "regex", "ignore_case")

    def __init__(self, kind: str, value: bytes = b"", regex=None, ignore_case: bool = False):
        self.kind = kind
        self.ignore_case = ignore_case and kind != "safe_regex"
        self.value = value.lower() if self.ignore_case else value
        self.regex = regex

    def match(self, s: bytes) -> bool:
        if self.ignore_case:
            s = s.lower()
        k = self.kind
        if k == "exact":
            return s == self.value
        if k == "prefix":
            return s.startswith(self.value)
        if k == "suffix":
            return s.endswith(self.value)
        if k == "contains":
            return self.value in s
        if k == "safe_regex":
            return self.regex.fullmatch(s) is not None
        return False

    def __repr__(self):
        return f"<StringMatcher {self.kind} {self.value or self.regex!r}>"


def build_string_matcher(m, path: str) -> StringMatcher:
    which = m.WhichOneof("match_pattern")
    if which in ("exact", "prefix", "suffix", "contains"):
        return StringMatcher(which, getattr(m, which).encode(), None, m.ignore_case)
    if which == "safe_regex":
        return StringMatcher("safe_regex", b"",
                             compile_regex(m.safe_regex.regex, join(path, "safe_regex.regex")))
    raise ConfigError(path, f"unsupported string matcher '{which}'")


class HeaderMatcher:
    """``envoy.config.route.v3.HeaderMatcher``. Several values of one header are matched
    joined by ``,`` as Envoy does (``HeaderUtility::getAllOfHeaderAsString``)."""

    __slots__ = ("name", "kind", "matcher", "lo", "hi", "present", "invert", "missing_as_empty")

    def __init__(self, name, kind, matcher=None, lo=0, hi=0, present=True, invert=False,
                 missing_as_empty=False):
        self.name = name
        self.kind = kind
        self.matcher = matcher
        self.lo = lo
        self.hi = hi
        self.present = present
        self.invert = invert
        self.missing_as_empty = missing_as_empty

    def match(self, req) -> bool:
        name = self.name
        if name[:1] == b":" or name == b"host":
            value = req.get_pseudo_or_header(name)
        else:
            vals = [v for n, v in req.headers if n == name]
            value = None if not vals else vals[0] if len(vals) == 1 else b",".join(vals)
        if value is None:
            if self.kind == "present":
                return (not self.present) != self.invert
            if not self.missing_as_empty:
                # A missing header never matches, even inverted (Envoy's HeaderUtility).
                return False
            value = b""
        k = self.kind
        if k == "present":
            result = self.present
        elif k == "string":
            result = self.matcher.match(value)
        elif k == "range":
            try:
                n = int(value)
                result = self.lo <= n < self.hi
            except ValueError:
                result = False
        else:
            result = False
        return result != self.invert

    def __repr__(self):
        return f"<HeaderMatcher {self.name!r} {self.kind} invert={self.invert}>"


def build_header_matcher(h, path: str) -> HeaderMatcher:
    name = h.name.lower().encode()
    which = h.WhichOneof("header_match_specifier")
    common = dict(invert=h.invert_match, missing_as_empty=h.treat_missing_header_as_empty)
    if which is None:
        # No specifier: presence match (the deprecated default).
        return HeaderMatcher(name, "present", present=True, **common)
    if which == "present_match":
        return HeaderMatcher(name, "present", present=h.present_match, **common)
    if which == "range_match":
        return HeaderMatcher(name, "range", lo=h.range_match.start, hi=h.range_match.end, **common)
    if which == "string_match":
        return HeaderMatcher(name, "string", build_string_matcher(h.string_match,
                                                                  join(path, "string_match")),
                             **common)
    if which == "exact_match":
        return HeaderMatcher(name, "string", StringMatcher("exact", h.exact_match.encode()), **common)
    if which == "safe_regex_match":
        return HeaderMatcher(name, "string", StringMatcher(
            "safe_regex", b"", compile_regex(h.safe_regex_match.regex,
                                             join(path, "safe_regex_match.regex"))), **common)
    if which in ("prefix_match", "suffix_match", "contains_match"):
        kind = which.split("_")[0]
        return HeaderMatcher(name, "string", StringMatcher(kind, getattr(h, which).encode()),
                             **common)
    raise ConfigError(join(path, which), "unsupported header matcher")


class QueryParameterMatcher:
    __slots__ = ("name", "matcher", "present")

    def __init__(self, name: bytes, matcher, present: bool):
        self.name = name
        self.matcher = matcher
        self.present = present

    def match(self, params: dict) -> bool:
        value = params.get(self.name)
        if self.matcher is None:
            return (value is not None) == self.present
        if value is None:
            return False
        return self.matcher.match(value)


def build_query_matcher(q, path: str) -> QueryParameterMatcher:
    which = q.WhichOneof("query_parameter_match_specifier")
    name = q.name.encode()
    if which == "string_match":
        return QueryParameterMatcher(name, build_string_matcher(q.string_match,
                                                                join(path, "string_match")), True)
    if which == "present_match":
        return QueryParameterMatcher(name, None, q.present_match)
    # Neither set: Envoy treats it as "present".
    return QueryParameterMatcher(name, None, True)


def parse_query(path: bytes) -> dict:
    """Query parameters of a path; the first value of a repeated key wins (Envoy's
    ``Utility::QueryParamsMulti::getFirstValue``). Values stay percent-encoded as Envoy matches."""
    q = path.find(b"?")
    if q < 0:
        return {}
    out: dict = {}
    qs = path[q + 1:]
    h = qs.find(b"#")
    if h >= 0:
        qs = qs[:h]
    for part in qs.split(b"&"):
        if not part:
            continue
        k, _, v = part.partition(b"=")
        if k not in out:
            out[k] = v
    return out
