"""Regexes with Envoy's dialects, on Python's ``re``.

Envoy compiles admin filters (``/stats?filter=``, ``/clusters?filter=``) with Google RE2 and
custom ``stats_config.stats_tags`` regexes with ``std::regex`` (ECMAScript). Python's ``re``
differs from both in ways users hit: RE2 has no lookaround or back-references (a 400 in Envoy,
a match here), treats ``{,3}`` as a literal, allows ``(?i)`` mid-pattern, spells end-of-text
``\\z``; both know POSIX classes ``[[:digit:]]`` that Python reads as a set of characters.

RE2 patterns compile with RE2 itself when Google's bindings (``google-re2``, a dependency) are
importable. Otherwise, and always for ECMAScript, ``translate`` rewrites a pattern into Python
syntax with the same meaning, or raises ``Re2Error`` carrying RE2's own message
(``missing ): (``), which Envoy prints after ``Invalid re2 regex: `` (re2/regexp.cc
``RegexpErrorCode`` texts).
"""

from __future__ import annotations

import re

_POSIX = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z",
    "print": " -~", "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z",
    "word": "0-9A-Za-z_", "xdigit": "0-9A-Fa-f",
}
_MAX_REPEAT = 1000  # RE2's kMaxRepeat
_REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")
_FLAGS = re.compile(r"\(\?([imsU]*(?:-[imsU]+)?)(:|\))")
# Escapes RE2 accepts outside a class (re2/parse.cc): the rest of the ASCII letters are errors.
_RE2_LETTER_ESCAPES = set("abfnrtvdDsSwWbBApPxzQEC")


try:  # the engine Envoy uses for admin filters and safe_regex
    import re2 as _google_re2
    _OPTIONS = _google_re2.Options()
    _OPTIONS.log_errors = False
except ImportError:  # pragma: no cover - google-re2 is a dependency; the translator remains
    _google_re2 = None


class Re2Error(ValueError):
    pass


def translate(pattern: str, dialect: str = "re2") -> str:
    """``pattern`` in RE2 (``dialect="re2"``) or ECMAScript (``"ecma"``) syntax -> Python."""
    return _Translator(pattern, dialect).run()


def compile_re2(pattern: str):
    """``pattern`` compiled by RE2 itself when Google's bindings (``google-re2``) are
    installed, else by Python's ``re`` after translation; either way an object with
    ``search`` and ``fullmatch`` on str, or Re2Error with RE2's message."""
    if _google_re2 is None:
        return compile_re2_fallback(pattern)
    try:
        return _google_re2.compile(pattern, _OPTIONS)
    except _google_re2.error as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise Re2Error(msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg) \
            from None


def compile_re2_fallback(pattern: str):
    """A compiled Python regex meaning what RE2 means by ``pattern``; Re2Error if RE2 would
    refuse it."""
    try:
        return re.compile(translate(pattern, "re2"))
    except re.error as exc:
        raise Re2Error(_python_error_text(exc, pattern)) from None


def compile_ecma(pattern: str):
    """A compiled Python regex for a ``std::regex`` (ECMAScript) pattern; Re2Error if invalid."""
    try:
        return re.compile(translate(pattern, "ecma"))
    except re.error as exc:
        raise Re2Error(str(exc)) from None


def _python_error_text(exc: re.error, pattern: str) -> str:
    msg = exc.msg
    if "missing )" in msg:
        return f"missing ): {pattern}"
    if "unbalanced parenthesis" in msg:
        return f"unexpected ): {pattern}"
    if "nothing to repeat" in msg:
        return "no argument for repetition operator: *"
    return msg


class _Translator:
    def __init__(self, pattern: str, dialect: str):
        self.p = pattern
        self.re2 = dialect == "re2"
        self.out: list[str] = []
        self.i = 0
        # one entry per open group: how many ")" to add when it closes (scoped flag groups)
        self.groups: list[int] = [0]
        self.can_repeat = False      # is there an atom a repetition operator could apply to
        self.last_repeat = ""        # text of the repetition just emitted, if any

    def run(self) -> str:
        p = self.p
        n = len(p)
        while self.i < n:
            c = p[self.i]
            if c == "\\":
                self._escape()
            elif c == "[":
                self._char_class()
            elif c == "(":
                self._open_group()
            elif c == ")":
                if len(self.groups) == 1:
                    raise Re2Error(f"unexpected ): {p}")
                self.out.append(")" * (self.groups.pop() + 1))
                self.i += 1
                self._atom()
            elif c in "*+?":
                self._repeat(c, 1)
            elif c == "{" and self.re2:
                m = _REPEAT.match(p, self.i)
                if m is None:  # RE2: a "{" that does not start a repetition is a literal
                    self.out.append("\\{")
                    self.i += 1
                    self._atom()
                else:
                    lo, hi = int(m.group(1)), m.group(3)
                    if lo > _MAX_REPEAT or (hi and (int(hi) > _MAX_REPEAT or int(hi) < lo)):
                        raise Re2Error(f"invalid repetition size: {m.group(0)}")
                    self._repeat(m.group(0), len(m.group(0)))
            elif c == "|":
                self.out.append(c)
                self.i += 1
                self.can_repeat = False
                self.last_repeat = ""
            elif c in "^$":
                self.out.append(c)
                self.i += 1
                self.can_repeat = not self.re2
                self.last_repeat = ""
            else:
                self.out.append(c)
                self.i += 1
                self._atom()
        if len(self.groups) > 1:
            raise Re2Error(f"missing ): {p}")
        self.out.append(")" * self.groups[0])
        return "".join(self.out)

    def _atom(self):
        self.can_repeat = True
        self.last_repeat = ""

    def _repeat(self, op: str, width: int):
        p = self.p
        if self.last_repeat and self.re2:
            if op == "?" and not self.last_repeat.endswith("?"):  # non-greedy suffix
                self.out.append("?")
                self.last_repeat += "?"
                self.i += 1
                return
            raise Re2Error(f"bad repetition operator: {self.last_repeat}{p[self.i:self.i + width]}")
        if not self.can_repeat:
            raise Re2Error(f"no argument for repetition operator: {op}")
        self.out.append(op)
        self.i += width
        self.last_repeat = op

    def _escape(self):
        p = self.p
        if self.i + 1 >= len(p):
            raise Re2Error("trailing \\")
        c = p[self.i + 1]
        if self.re2 and c.isdigit() and c != "0":
            raise Re2Error(f"invalid escape sequence: \\{c}")
        if self.re2 and c.isascii() and c.isalpha() and c not in _RE2_LETTER_ESCAPES:
            raise Re2Error(f"invalid escape sequence: \\{c}")
        self.i += 2
        if c == "z" and self.re2:
            self.out.append("\\Z")
        elif c == "Q" and self.re2:  # \Q...\E quotes literally
            end = p.find("\\E", self.i)
            end = len(p) if end < 0 else end
            self.out.append(re.escape(p[self.i:end]))
            self.i = min(len(p), end + 2)
        elif c == "C" and self.re2:
            self.out.append("(?s:.)")
        elif c in "pP" and self.re2:
            self.out.append(self._unicode_class(c == "P"))
        elif c in "bBAZ":
            self.out.append("\\" + c)
            self.can_repeat = not self.re2
            self.last_repeat = ""
            return
        else:
            self.out.append("\\" + c)
        self._atom()

    def _unicode_class(self, negate: bool) -> str:
        p = self.p
        if self.i < len(p) and p[self.i] == "{":
            end = p.find("}", self.i)
            if end < 0:
                raise Re2Error(f"invalid character class range: {p[self.i - 2:]}")
            name, self.i = p[self.i + 1:end], end + 1
        elif self.i < len(p):
            name, self.i = p[self.i], self.i + 1
        else:
            raise Re2Error("invalid character class range: \\p")
        cls = {"L": "[^\\W\\d_]", "N": "\\d", "Nd": "\\d", "Z": "\\s", "Zs": "\\s"}.get(name)
        if cls is None:
            raise Re2Error(f"invalid character class range: \\p{{{name}}}")
        if negate:
            cls = {"[^\\W\\d_]": "[\\W\\d_]", "\\d": "\\D", "\\s": "\\S"}[cls]
        return cls

    def _open_group(self):
        p = self.p
        i = self.i
        if not p.startswith("(?", i):
            self.out.append("(")
            self.groups.append(0)
            self.i += 1
            self.can_repeat = False
            self.last_repeat = ""
            return
        rest = p[i + 2:i + 4]
        if rest[:1] in ("=", "!") or rest in ("<=", "<!"):
            end = i + 3 + (rest[:1] == "<")   # just past "(?=" / "(?<="
            if self.re2:  # RE2 has no lookaround
                raise Re2Error(f"invalid perl operator: {p[i:end]}")
            self.out.append(p[i:end])
            self.i = end
        elif rest[:1] == "<" and self.re2:   # RE2's (?<name>re) is Python's (?P<name>re)
            self.out.append("(?P<")
            self.i = i + 3
        elif rest[:2] == "P<":
            self.out.append("(?P<")
            self.i = i + 4
        elif rest[:1] == ":":
            self.out.append("(?:")
            self.i = i + 3
        else:
            m = _FLAGS.match(p, i)
            if m is None or (self.re2 is False):
                raise Re2Error(f"invalid perl operator: {p[i:i + 3]}")
            flags = m.group(1).replace("U", "")
            if "U" in m.group(1):
                raise Re2Error(f"invalid perl operator: {m.group(0)}")
            if m.group(2) == ":":
                self.out.append(f"(?{flags}:" if flags else "(?:")
            else:
                # RE2 applies (?i) to the rest of the enclosing group; Python only allows
                # global flags at the start, so open a scoped group closed with the parent.
                self.i = m.end()
                if flags:
                    self.out.append(f"(?{flags}:")
                    self.groups[-1] += 1
                return
            self.i = m.end()
        self.groups.append(0)
        self.can_repeat = False
        self.last_repeat = ""

    def _char_class(self):
        p = self.p
        start = self.i
        i = start + 1
        out = ["["]
        if i < len(p) and p[i] == "^":
            out.append("^")
            i += 1
        first = True
        while True:
            if i >= len(p):
                raise Re2Error(f"missing ]: {p[start:]}")
            c = p[i]
            if c == "]" and not first:
                i += 1
                break
            first = False
            if c == "[" and p.startswith("[:", i):
                end = p.find(":]", i + 2)
                if end >= 0:
                    name = p[i + 2:end]
                    neg = name.startswith("^")
                    cls = _POSIX.get(name.lstrip("^"))
                    if cls is None or neg:
                        raise Re2Error(f"invalid character class range: {p[i:end + 2]}")
                    out.append(cls)
                    i = end + 2
                    continue
            if c == "\\":
                if i + 1 >= len(p):
                    raise Re2Error("trailing \\")
                out.append(p[i:i + 2])
                lo = p[i + 1]
                i += 2
            else:
                out.append("\\" + c if c in "[]&~|-" else c)
                lo = c
                i += 1
            # a range lo-hi
            if i + 1 < len(p) and p[i] == "-" and p[i + 1] != "]":
                hi = p[i + 1]
                if hi == "\\" and i + 2 < len(p):
                    hi_text, hi = p[i + 1:i + 3], p[i + 2]
                    step = 3
                else:
                    hi_text, step = ("\\" + hi if hi in "[]&~|-" else hi), 2
                if self.re2 and hi < lo:
                    raise Re2Error(f"invalid character class range: {lo}-{hi}")
                out.append("-" + hi_text)
                i += step
        out.append("]")
        self.out.append("".join(out))
        self.i = i
        self._atom()
