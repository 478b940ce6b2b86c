"""Runtime matchers for routes: regexes, string, header and query-parameter matchers.

Built once from ``envoy.type.matcher.v3.StringMatcher`` / ``envoy.config.route.v3.HeaderMatcher``
/ ``QueryParameterMatcher`` and used on every request, so each is a small object with one
``match`` method on bytes.

Regexes are Envoy's RE2 (``safe_regex``). With Google's RE2 bindings (PyPI ``google-re2``)
installed, patterns compile with the same engine Envoy uses, so syntax errors, RE2's program-size
limit and match semantics are Envoy's; without them Python's ``re`` is used after rejecting the
constructs RE2 refuses (lookaround, back-references, ``\\Z``, possessive repeats).
"""

from __future__ import annotations

import re

from meshproxy.config.errors import ConfigError, join

try:  # the engine Envoy uses (source/common/common/regex.cc)
    import re2 as _re2
    _RE2_OPTIONS = _re2.Options()
    _RE2_OPTIONS.log_errors = False
except ImportError:  # pragma: no cover - exercised only where google-re2 is absent
    _re2 = None

HAVE_RE2 = _re2 is not None

# Envoy rejects a regex whose RE2 program is bigger than the runtime value
# re2.max_program_size.error_level (default 100; source/common/common/regex.cc).
MAX_PROGRAM_SIZE = 100

# Constructs Python's re accepts and RE2 refuses (re2/parse.cc error texts).
_NOT_RE2 = (
    (re.compile(r"\(\?(?:=|!|<=|<!)"), "invalid perl operator: (?="),
    (re.compile(r"\(\?P="), "invalid named capture group"),
    (re.compile(r"\(\?>"), "invalid perl operator: (?>"),
    (re.compile(r"(?<!\\)(?:\\\\)*\\([1-9]|Z)"), "invalid escape sequence"),
    (re.compile(r"[*+?}][+]"), "bad repetition operator"),
)


def compile_regex(regex: str, path: str):
    """A compiled RE2 (or Python fallback) pattern on bytes, or ConfigError naming ``path``
    with Envoy's message (RE2's own error text, or the program-size rejection)."""
    if _re2 is not None:
        try:
            rx = _re2.compile(regex.encode(), _RE2_OPTIONS)
        except _re2.error as exc:
            msg = exc.args[0] if exc.args else str(exc)
            if isinstance(msg, bytes):
                msg = msg.decode("utf-8", "replace")
            raise ConfigError(path, msg) from None
        size = rx.programsize
        # Unicode classes (\pL) compile much larger in newer RE2 than in Envoy 1.40's copy,
        # which accepts them; only size patterns without them.
        if size > MAX_PROGRAM_SIZE and "\\p" not in regex and "\\P" not in regex:
            raise ConfigError(path, f"regex '{regex}' RE2 program size of {size} > max program "
                                    f"size of {MAX_PROGRAM_SIZE} set for the error level "
                                    f"threshold. Increase configured max program size if "
                                    f"necessary.")
        return rx
    for bad, msg in _NOT_RE2:
        if bad.search(regex):
            raise ConfigError(path, f"{msg}: {regex}")
    try:
        return re.compile(regex.replace(r"\z", r"\Z").encode())
    except re.error as exc:
        raise ConfigError(path, f"invalid regex '{regex}': {exc}") from None


def compile_rewrite(substitution: str) -> tuple:
    """An RE2 rewrite string (``\\0``..``\\9`` name groups, ``\\\\`` a backslash) as a tuple of
    literal bytes and group numbers, expanded by ``replace_all``."""
    parts: list = []
    lit = bytearray()
    s = substitution.encode()
    i = 0
    while i < len(s):
        c = s[i]
        if c == 0x5C and i + 1 < len(s):  # backslash
            n = s[i + 1]
            if 0x30 <= n <= 0x39:
                if lit:
                    parts.append(bytes(lit))
                    lit = bytearray()
                parts.append(n - 0x30)
                i += 2
                continue
            if n == 0x5C:
                lit.append(0x5C)
                i += 2
                continue
        lit.append(c)
        i += 1
    if lit:
        parts.append(bytes(lit))
    return tuple(parts)


def replace_all(rx, rewrite: tuple, s: bytes) -> bytes:
    """``RE2::GlobalReplace``: every non-overlapping match replaced; an empty match right at the
    end of the previous match is skipped (re2/re2.cc), unlike Python's ``re.sub``."""
    out = []
    p = 0
    ep = len(s)
    lastend = -1
    count = 0
    while p <= ep:
        m = rx.search(s, p)
        if m is None:
            break
        st, en = m.span()
        if p < st:
            out.append(s[p:st])
        if st == en and st == lastend:
            if p < ep:
                out.append(s[p:p + 1])
            p += 1
            continue
        for part in rewrite:
            if isinstance(part, int):
                g = m.group(part) if part <= rx.groups else None
                if g:
                    out.append(g)
            else:
                out.append(part)
        p = en
        lastend = p
        count += 1
    if count == 0:
        return s
    if p < ep:
        out.append(s[p:])
    return b"".join(out)


class StringMatcher:
    """``envoy.type.matcher.v3.StringMatcher`` on bytes. ``ignore_case`` is ASCII-only, as
    Envoy's ``absl::EqualsIgnoreCase``."""

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
        return k == "any"

    def __repr__(self):
        return f"<StringMatcher {self.kind} {self.value or self.regex!r}>"


def build_string_matcher(m, path: str) -> StringMatcher:
    which = m.WhichOneof("match_pattern")
    if which in ("prefix", "suffix", "contains") and not getattr(m, which):
        raise ConfigError(join(path, which), "value length must be at least 1 characters")
    if which in ("exact", "prefix", "suffix", "contains"):
        return StringMatcher(which, getattr(m, which).encode(), None, m.ignore_case)
    if which == "safe_regex":
        if m.ignore_case:
            # StringMatcherImpl: "ignore_case has no effect for safe_regex."
            raise ConfigError(join(path, "ignore_case"), "ignore_case has no effect for "
                                                         "safe_regex.")
        return StringMatcher("safe_regex", b"", regex_field(m.safe_regex,
                                                            join(path, "safe_regex")))
    if which is None:
        raise ConfigError(path, "value is required (one of exact, prefix, suffix, contains, "
                                "safe_regex)")
    raise ConfigError(join(path, which), "string matcher not supported by meshproxy")


def regex_field(rm, path: str):
    """``envoy.type.matcher.v3.RegexMatcher``: ``regex`` must be non-empty (PGV)."""
    if not rm.regex:
        raise ConfigError(join(path, "regex"), "value length must be at least 1 characters")
    return compile_regex(rm.regex, join(path, "regex"))


# Request headers Envoy keeps as one "inline" entry: a repeated header is folded into one value
# joined by "," as it is parsed (HeaderMapImpl::insertByKey; the static table in
# envoy/http/header_map.h plus the custom inline headers registered by compiled-in extensions).
# Measured against Envoy 1.40: these arrive upstream folded; others stay separate entries.
INLINE_REQUEST_HEADERS = frozenset((
    b"accept", b"accept-encoding", b"access-control-request-method",
    b"access-control-request-headers", b"authorization", b"cache-control", b"connection",
    b"content-encoding", b"content-length", b"content-type", b"expect", b"grpc-accept-encoding",
    b"grpc-timeout", b"if-match", b"if-modified-since", b"if-none-match", b"if-range",
    b"if-unmodified-since", b"keep-alive", b"origin", b"pragma", b"proxy-connection",
    b"proxy-status", b"referer", b"te", b"transfer-encoding", b"upgrade", b"user-agent", b"via",
    b"x-client-trace-id", b"x-envoy-attempt-count", b"x-envoy-decorator-operation",
    b"x-envoy-downstream-service-cluster", b"x-envoy-downstream-service-node",
    b"x-envoy-expected-rq-timeout-ms", b"x-envoy-external-address", b"x-envoy-force-trace",
    b"x-envoy-hedge-on-per-try-timeout", b"x-envoy-internal", b"x-envoy-ip-tags",
    b"x-envoy-is-timeout-retry", b"x-envoy-max-retries", b"x-envoy-original-host",
    b"x-envoy-original-path", b"x-envoy-original-url", b"x-envoy-retriable-header-names",
    b"x-envoy-retriable-status-codes", b"x-envoy-retry-grpc-on", b"x-envoy-retry-on",
    b"x-envoy-upstream-alt-stat-name", b"x-envoy-upstream-rq-per-try-timeout-ms",
    b"x-envoy-upstream-rq-timeout-alt-response", b"x-envoy-upstream-rq-timeout-ms",
    b"x-forwarded-client-cert", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-port",
    b"x-forwarded-proto", b"x-request-id",
))

_INT64 = re.compile(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*\Z")


def simple_atoi(value: bytes):
    """``absl::SimpleAtoi`` into int64: optional surrounding ASCII whitespace and sign, digits
    only (Python's ``int`` would also take ``1_000``), None on overflow."""
    m = _INT64.match(value)
    if m is None:
        return None
    n = int(m.group(1))
    if -(1 << 63) <= n < (1 << 63):
        return n
    return None


# Matcher kinds
PRESENT, STRING, RANGE = 0, 1, 2


class HeaderMatcher:
    """``envoy.config.route.v3.HeaderMatcher`` (Envoy's ``HeaderUtility::HeaderData``).

    A header with several entries matches when any one entry does; headers Envoy folds into
    one inline entry are matched as their ``,``-joined value. A missing header never matches a
    value matcher, inverted or not, unless ``treat_missing_header_as_empty`` (then it is the
    present value ``""``); ``present_match: P`` is ``present == P``, then ``invert_match``."""

    __slots__ = ("name", "kind", "matcher", "lo", "hi", "present", "invert", "missing_as_empty",
                 "pseudo", "fold")

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
        self.pseudo = name[:1] == b":" or name == b"host"
        self.fold = name in INLINE_REQUEST_HEADERS

    def _value_matches(self, value: bytes) -> bool:
        k = self.kind
        if k == STRING:
            return self.matcher.match(value)
        if k == RANGE:
            n = simple_atoi(value)
            return n is not None and self.lo <= n < self.hi
        return True  # PRESENT: any value

    def match(self, req) -> bool:
        name = self.name
        if self.pseudo:
            v = req.get_pseudo_or_header(name)
            values = () if v is None else (v,)
        else:
            values = [v for n, v in req.headers if n == name]
            if self.fold and len(values) > 1:
                values = (b",".join(values),)
        if not values:
            if not self.missing_as_empty:
                if self.kind == PRESENT:
                    return (not self.present) != self.invert
                return False
            values = (b"",)
        if self.kind == PRESENT:
            return self.present != self.invert
        for v in values:
            if self._value_matches(v):
                return not self.invert
        return self.invert

    def __repr__(self):
        return f"<HeaderMatcher {self.name!r} kind={self.kind} invert={self.invert}>"


def build_header_matcher(h, path: str) -> HeaderMatcher:
    if not h.name:
        raise ConfigError(join(path, "name"), "value length must be at least 1 characters")
    check_header_chars(h.name, join(path, "name"))
    name = h.name.lower().encode()
    which = h.WhichOneof("header_match_specifier")
    common = dict(invert=h.invert_match, missing_as_empty=h.treat_missing_header_as_empty)
    if which is None:
        # No specifier: presence match (HeaderUtility::createHeaderData default).
        return HeaderMatcher(name, PRESENT, present=True, **common)
    if which == "present_match":
        return HeaderMatcher(name, PRESENT, present=h.present_match, **common)
    if which == "range_match":
        return HeaderMatcher(name, RANGE, lo=h.range_match.start, hi=h.range_match.end, **common)
    if which == "string_match":
        if not h.HasField("string_match"):
            raise ConfigError(join(path, "string_match"), "value is required")
        return HeaderMatcher(name, STRING, build_string_matcher(h.string_match,
                                                                join(path, "string_match")),
                             **common)
    if which == "exact_match":
        # The deprecated exact_match with an empty value matches any value
        # (HeaderDataExactMatch: "expected_value_.empty() || ..."), measured on Envoy 1.40.
        if not h.exact_match:
            return HeaderMatcher(name, PRESENT, present=True, **common)
        return HeaderMatcher(name, STRING, StringMatcher("exact", h.exact_match.encode()),
                             **common)
    if which == "safe_regex_match":
        return HeaderMatcher(name, STRING, StringMatcher(
            "safe_regex", b"", regex_field(h.safe_regex_match, join(path, "safe_regex_match"))),
            **common)
    if which in ("prefix_match", "suffix_match", "contains_match"):
        v = getattr(h, which)
        if not v:
            raise ConfigError(join(path, which), "value length must be at least 1 characters")
        return HeaderMatcher(name, STRING, StringMatcher(which.split("_")[0], v.encode()),
                             **common)
    raise ConfigError(join(path, which), "header matcher not supported by meshproxy")


def check_header_chars(value: str, path: str) -> None:
    """PGV ``well_known_regex: HTTP_HEADER_NAME/VALUE, strict: false``: no NUL, CR or LF."""
    if "\x00" in value or "\n" in value or "\r" in value:
        raise ConfigError(path, 'value does not match regex pattern "^[^\\x00\\n\\r]*$"')


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
    if not q.name:
        raise ConfigError(join(path, "name"), "value length must be at least 1 characters")
    if len(q.name.encode()) > 1024:
        raise ConfigError(join(path, "name"), "value length must be at most 1024 bytes")
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
