"""RE2 semantics on Python's ``re`` for admin filters, and ECMAScript for custom tag regexes.
Error texts are what Envoy 1.40 prints after ``Invalid re2 regex: `` (checked against the
binary in tests/oracle/test_admin_oracle.py)."""

from __future__ import annotations

import pytest

from meshproxy.stats import re2 as re2_mod
from meshproxy.stats.re2 import Re2Error, compile_ecma, compile_re2, compile_re2_fallback

# RE2 itself (google-re2) and the translation onto Python's re must agree.
ENGINES = [pytest.param(compile_re2_fallback, id="translated")]
if re2_mod._google_re2 is not None:
    ENGINES.append(pytest.param(compile_re2, id="re2"))

ERRORS = [
    ("(", "missing ): ("), ("ab(cd", "missing ): ab(cd"), ("a)", "unexpected ): a)"),
    ("a[", "missing ]: ["), ("ab[cd", "missing ]: [cd"),
    ("*a", "no argument for repetition operator: *"), ("ab**", "bad repetition operator: **"),
    ("a*+", "bad repetition operator: *+"), ("a{2,1}", "invalid repetition size: {2,1}"),
    ("a{1001}", "invalid repetition size: {1001}"), ("\\8", "invalid escape sequence: \\8"),
    ("\\1", "invalid escape sequence: \\1"), ("\\Z", "invalid escape sequence: \\Z"),
    ("(?=a)", "invalid perl operator: (?="), ("x(?!a)", "invalid perl operator: (?!"),
    ("x(?<=a)", "invalid perl operator: (?<="), ("(?P=n)", "invalid perl operator: (?P"),
    ("[z-a]", "invalid character class range: z-a"),
    ("[[:foo:]]", "invalid character class range: [:foo:]"), ("x\\", "trailing \\"),
    ("(?#c)", "invalid perl operator: (?#"),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("pattern,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_re2_rejects_like_re2(engine, pattern, message):
    with pytest.raises(Re2Error) as e:
        engine(pattern)
    assert str(e.value) == message


MATCHES = [
    ("^(server\\.state|listener_manager\\.workers_started)", "server.state", True),
    ("^(cluster_manager\\.cds|listener_manager\\.lds)\\.(update_success|update_rejected)$",
     "listener_manager.lds.update_rejected", True),
    ("[[:digit:]]+_rq", "upstream_200_rq", True),
    ("[[:digit:]]", "abc", False),
    ("a{,3}", "a", False),            # RE2: "{,3}" is literal text
    ("a{,3}", "xa{,3}", True),
    ("a+b", "aab", True),             # "+" is an operator, never a space
    ("(?i)SERVER\\.STATE", "server.state", True),
    ("x(?i)Y", "xy", True),           # flags mid-pattern apply to the rest of the group
    ("(a(?i)B)c", "abC", False),
    ("\\Qa.b\\E", "a.b", True), ("\\Qa.b\\E", "axb", False),
    ("state\\z", "server.state", True),
    ("(?<n>st)ate", "state", True),
    ("\\pL+", "123", False), ("\\pL+", "abc", True),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("pattern,text,hit", MATCHES, ids=[f"{m[0]}~{m[1]}" for m in MATCHES])
def test_re2_matches_like_re2(engine, pattern, text, hit):
    rx = engine(pattern)
    assert (rx.search(text) is not None) is hit
    assert (rx.fullmatch(text) is not None) is (hit and rx.search(text).group(0) == text)


def test_ecma_for_custom_tags():
    # Istio's tag regexes: POSIX classes, escaped brackets in classes, lookahead
    rx = compile_ecma(r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|"
                      r"[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)")
    m = rx.search("listener.0.0.0.0_15006.http.10.0.0.1_80.downstream_rq_2xx")
    assert m.group(2) == "10.0.0.1_80"
    with pytest.raises(Re2Error):
        compile_ecma("((")
