"""Redirect locations, path and host rewrites, without sockets. Expected values are what
Envoy 1.40 answered / sent upstream for the same route and request."""

from __future__ import annotations

import pytest

from meshproxy.router.matchers import compile_regex, compile_rewrite, replace_all
from meshproxy.router.redirect import direct_response_location, redirect_location
from meshproxy.router.rewrite import finalize_request_headers
from tests.unit.route_helpers import FakeStream, req, table

REDIRECTS = {
    "a": {"https_redirect": True},
    "b": {"scheme_redirect": "HTTPS"},
    "c": {"scheme_redirect": "ws"},
    "d": {"host_redirect": "new.com"},
    "e": {"host_redirect": "new.com:9000"},
    "f": {"port_redirect": 8443},
    "g": {"host_redirect": "new.com:9000", "port_redirect": 8443},
    "h": {"https_redirect": True, "port_redirect": 443},
    "i": {"path_redirect": "/new"},
    "j": {"path_redirect": "/new?x=1"},
    "k": {"path_redirect": "/new", "strip_query": True},
    "l": {"path_redirect": "/new?x=1", "strip_query": True},
    "m": {"prefix_rewrite": "/pre"},
    "nn": {"prefix_rewrite": "/pre", "strip_query": True},
    "o": {"regex_rewrite": {"pattern": {"regex": "^/o/(.*)/x$"}, "substitution": "/r/\\1"}},
    "t": {"scheme_redirect": "http"},
    "v": {"host_redirect": "[::1]:8000", "port_redirect": 9000},
    "w": {"prefix_rewrite": ""},
    "x": {"prefix_rewrite": "noslash"},
    "z": {"path_redirect": "rel"},
    "ab": {"scheme_redirect": "http", "port_redirect": 80},
    "ac": {"https_redirect": False},
    "ad": {"regex_rewrite": {"pattern": {"regex": "^/ad"}, "substitution": "\\0\\0"}},
    "p": {"response_code": "FOUND"},
}


def redirect_table():
    routes = [{"name": k, "match": {"prefix": f"/{k}/"}, "redirect": v}
              for k, v in REDIRECTS.items()]
    routes += [
        {"name": "sep", "match": {"path_separated_prefix": "/sep"},
         "redirect": {"prefix_rewrite": "/new"}},
        {"name": "pth", "match": {"path": "/pth"}, "redirect": {"prefix_rewrite": "/new"}},
        {"name": "rx", "match": {"safe_regex": {"regex": "/rx.*"}},
         "redirect": {"prefix_rewrite": "/new"}},
        {"name": "ci", "match": {"prefix": "/CI/", "case_sensitive": False},
         "redirect": {"prefix_rewrite": "/new/"}},
    ]
    return table(routes)


# (path, host, x-forwarded-proto, expected status, expected location) -- Envoy 1.40
CASES = [
    ("/a/p?q=1", "example.com", "http", 301, "https://example.com/a/p?q=1"),
    ("/a/p?q=1", "example.com:80", "http", 301, "https://example.com/a/p?q=1"),
    ("/a/p?q=1", "example.com:80", "https", 301, "https://example.com:80/a/p?q=1"),
    ("/a/p?q=1", "example.com:443", "http", 301, "https://example.com:443/a/p?q=1"),
    ("/a/p?q=1", "[::1]:80", "http", 301, "https://[::1]/a/p?q=1"),
    ("/a/p?q=1", "[::1]:80", "https", 301, "https://[::1]:80/a/p?q=1"),
    ("/b/p?q=1", "example.com:443", "https", 301, "HTTPS://example.com/b/p?q=1"),
    ("/b/p?q=1", "example.com:443", "http", 301, "HTTPS://example.com:443/b/p?q=1"),
    ("/c/p?q=1", "example.com:443", "https", 301, "ws://example.com/c/p?q=1"),
    ("/c/p?q=1", "example.com:80", "https", 301, "ws://example.com:80/c/p?q=1"),
    ("/d/p?q=1", "example.com:80", "https", 301, "https://new.com/d/p?q=1"),
    ("/e/p?q=1", "example.com", "http", 301, "http://new.com:9000/e/p?q=1"),
    ("/f/p?q=1", "example.com:8080", "https", 301, "https://example.com:8443/f/p?q=1"),
    ("/g/p?q=1", "example.com", "http", 301, "http://new.com:9000:8443/g/p?q=1"),
    ("/h/p?q=1", "example.com:8080", "http", 301, "https://example.com:443/h/p?q=1"),
    ("/i/p?q=1", "example.com:80", "http", 301, "http://example.com:80/new?q=1"),
    ("/j/p?q=1", "example.com", "http", 301, "http://example.com/new?x=1"),
    ("/k/p?q=1", "example.com", "http", 301, "http://example.com/new"),
    ("/l/p?q=1", "example.com", "http", 301, "http://example.com/new?x=1"),
    ("/m/p?q=1", "example.com", "http", 301, "http://example.com/prep?q=1"),
    ("/nn/p?q=1", "example.com", "http", 301, "http://example.com/prep"),
    ("/o/p?q=1", "example.com", "http", 301, "http://example.com/o/p?q=1"),
    ("/o/a/b/x?q=1", "example.com", "http", 301, "http://example.com/r/a/b?q=1"),
    ("/t/p?q=1", "example.com:80", "http", 301, "http://example.com:80/t/p?q=1"),
    ("/v/p?q=1", "example.com", "https", 301, "https://[::1]:8000:9000/v/p?q=1"),
    ("/w/p?q=1", "example.com", "http", 301, "http://example.com/w/p?q=1"),
    ("/x/p?q=1", "example.com", "http", 301, "http://example.com/noslashp?q=1"),
    ("/z/p?q=1", "example.com", "http", 301, "http://example.com/rel?q=1"),
    ("/ab/p", "[::1]", "http", 301, "http://[::1]:80/ab/p"),
    ("/ac/p?q=1", "example.com:443", "https", 301, "https://example.com:443/ac/p?q=1"),
    ("/ad/p?q=1", "example.com", "http", 301, "http://example.com/ad/ad/p?q=1"),
    ("/p/", "example.com", "http", 302, "http://example.com/p/"),
    ("/sep/a?x", "example.com", "http", 301, "http://example.com/new/a?x"),
    ("/pth?x=1", "example.com", "http", 301, "http://example.com/new?x=1"),
    ("/rxyz?a", "example.com", "http", 301, "http://example.com/new?a"),
    ("/CI/a", "example.com", "http", 301, "http://example.com/new/a"),
]


@pytest.mark.parametrize("path,host,xfp,status,location", CASES)
def test_redirect_location(path, host, xfp, status, location):
    t = redirect_table()
    r = req(path, host=host, xfp=xfp.encode())
    route = t.route(r)
    assert route.action.status == status
    assert redirect_location(r, route.action, route) == location.encode()


def test_direct_response_location():
    r = req("/dr?x", host="example.com:80", xfp=b"https")
    assert direct_response_location(r, 301) == b"https://example.com:80/dr?x"
    assert direct_response_location(r, 201) == b"https://example.com:80/dr?x"
    assert direct_response_location(r, 200) is None
    assert direct_response_location(r, 404) is None


# ---------------------------------------------------------------------- rewrites

def RT(name, match, **action):
    a = {"cluster": "up"}
    a.update(action)
    return {"name": name, "match": match, "route": a}


REWRITE_ROUTES = [
    RT("pr", {"prefix": "/pr/"}, prefix_rewrite="/new/"),
    RT("same", {"prefix": "/same/"}, prefix_rewrite="/same/"),
    RT("pe", {"prefix": "/pe/"}, prefix_rewrite=""),
    RT("ps", {"prefix": "/ps"}, prefix_rewrite="/"),
    RT("path", {"path": "/path"}, prefix_rewrite="/np"),
    RT("rx", {"safe_regex": {"regex": "/rx/.*"}}, prefix_rewrite="/nr"),
    RT("sep", {"path_separated_prefix": "/sep"}, prefix_rewrite="/ns"),
    RT("ci", {"prefix": "/CI/", "case_sensitive": False}, prefix_rewrite="/nc/"),
    RT("rr", {"prefix": "/rr/"}, regex_rewrite={"pattern": {"regex": "/(a+)"},
                                                 "substitution": "/<\\1>"}),
    RT("r0", {"prefix": "/r0/"}, regex_rewrite={"pattern": {"regex": "x*"},
                                                 "substitution": "-"}),
    RT("rn", {"prefix": "/rn/"}, regex_rewrite={"pattern": {"regex": "zzz"},
                                                 "substitution": "q"}),
    RT("hl", {"prefix": "/hl/"}, host_rewrite_literal="lit.com"),
    RT("hlx", {"prefix": "/hlx/"}, host_rewrite_literal="lit.com", append_x_forwarded_host=True),
    RT("hh", {"prefix": "/hh/"}, host_rewrite_header="x-host"),
    RT("hp", {"prefix": "/hp/"}, host_rewrite_path_regex={
        "pattern": {"regex": "^/hp/([^/]+)/.*$"}, "substitution": "\\1"}),
    RT("hpr", {"prefix": "/hpr/"}, prefix_rewrite="/zz/", host_rewrite_path_regex={
        "pattern": {"regex": "^/hpr/([^/]+)/.*$"}, "substitution": "\\1"}),
    RT("hhp", {"prefix": "/hhp/"}, host_rewrite_header=":path"),
]

# (path, request headers, upstream path, host, extra headers Envoy 1.40 added)
REWRITE_CASES = [
    ("/pr/a?x=1", [], "/new/a?x=1", "example.com", [("x-envoy-original-path", "/pr/a?x=1")]),
    ("/same/a", [], "/same/a", "example.com", [("x-envoy-original-path", "/same/a")]),
    ("/pe/a", [], "/pe/a", "example.com", []),
    ("/psa", [], "/a", "example.com", [("x-envoy-original-path", "/psa")]),
    ("/ps/a", [], "//a", "example.com", [("x-envoy-original-path", "/ps/a")]),
    ("/path?q", [], "/np?q", "example.com", [("x-envoy-original-path", "/path?q")]),
    ("/rx/a?q", [], "/nr?q", "example.com", [("x-envoy-original-path", "/rx/a?q")]),
    ("/sep/a?q", [], "/ns/a?q", "example.com", [("x-envoy-original-path", "/sep/a?q")]),
    ("/CI/a", [], "/nc/a", "example.com", [("x-envoy-original-path", "/CI/a")]),
    ("/rr/aa/b/a?a=a", [], "/rr/<aa>/b/<a>?a=a", "example.com",
     [("x-envoy-original-path", "/rr/aa/b/a?a=a")]),
    ("/r0/xab", [], "-/-r-0-/-a-b-", "example.com", [("x-envoy-original-path", "/r0/xab")]),
    ("/rn/a", [], "/rn/a", "example.com", [("x-envoy-original-path", "/rn/a")]),
    ("/hl/a", [], "/hl/a", "lit.com", [("x-envoy-original-host", "example.com")]),
    ("/hlx/a", [("x-forwarded-host", "prev")], "/hlx/a", "lit.com",
     [("x-envoy-original-host", "example.com")]),
    ("/hh/a", [("x-host", "h1"), ("x-host", "h2")], "/hh/a", "h1",
     [("x-envoy-original-host", "example.com")]),
    ("/hh/a", [("x-host", "")], "/hh/a", "example.com", []),
    ("/hp/foo.com/x?y=z", [], "/hp/foo.com/x?y=z", "foo.com",
     [("x-envoy-original-host", "example.com")]),
    ("/hp/nomatch", [], "/hp/nomatch", "/hp/nomatch", [("x-envoy-original-host", "example.com")]),
    ("/hpr/bar.com/x", [], "/zz/bar.com/x", "bar.com",
     [("x-envoy-original-host", "example.com"), ("x-envoy-original-path", "/hpr/bar.com/x")]),
    ("/hhp/a", [], "/hhp/a", "/hhp/a", [("x-envoy-original-host", "example.com")]),
]


@pytest.mark.parametrize("path,headers,new_path,host,added", REWRITE_CASES)
def test_rewrites(path, headers, new_path, host, added):
    t = table(REWRITE_ROUTES)
    r = req(path, headers=headers)
    before = list(r.headers)
    finalize_request_headers(r, t.route(r), None, FakeStream(r), True)
    assert r.path == new_path.encode()
    assert r.authority == host.encode()
    new = [(n.decode(), v.decode()) for n, v in r.headers if (n, v) not in before]
    assert [h for h in new if h[0] != "x-forwarded-host"] == added


def test_append_x_forwarded_host():
    t = table(REWRITE_ROUTES)
    r = req("/hlx/a", headers=[("x-forwarded-host", "prev")])
    finalize_request_headers(r, t.route(r), None, FakeStream(r), True)
    assert r.get(b"x-forwarded-host") == b"prev,example.com"
    r = req("/hlx/a")
    finalize_request_headers(r, t.route(r), None, FakeStream(r), True)
    assert r.headers[-1] == (b"x-forwarded-host", b"example.com")


def test_suppress_envoy_headers_keeps_no_originals():
    t = table(REWRITE_ROUTES)
    r = req("/hpr/bar.com/x")
    finalize_request_headers(r, t.route(r), None, FakeStream(r), False)
    assert r.get(b"x-envoy-original-path") is None
    assert r.get(b"x-envoy-original-host") is None
    assert (r.path, r.authority) == (b"/zz/bar.com/x", b"bar.com")


@pytest.mark.parametrize("pattern,rewrite,s,expected", [
    ("x*", "-", b"/r0/xab", b"-/-r-0-/-a-b-"),
    ("x*", "-", b"abc", b"-a-b-c-"),
    ("a", "\\0\\0", b"bab", b"baab"),
    ("(a)(b)?", "[\\2\\1]", b"aab", b"[a][ba]"),
    ("q", "\\\\", b"aqa", b"a\\a"),
    ("zzz", "q", b"abc", b"abc"),
])
def test_re2_global_replace(pattern, rewrite, s, expected):
    assert replace_all(compile_regex(pattern, "p"), compile_rewrite(rewrite), s) == expected
