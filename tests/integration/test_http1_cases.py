"""The raw HTTP/1 request table: exact bytes in, Envoy 1.40's answer expected.

Each case is sent on its own connection to a meshproxy listener (both parser backends) and must
give the statuses Envoy gives, close the connection where Envoy closes it, and let exactly as
many requests reach the upstream as Envoy does (none for a rejected request). The expectations
were read off the real Envoy 1.40; tests/oracle/test_http1_oracle.py replays the same table
through Envoy and compares every response byte and every upstream-observed request.

Connections are checked for closure in one batch after all cases, with Envoy's delayed close
shortened to 0.1 s, so the table runs in about a second per proxy.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.support.client import parse_responses
from tests.support.proxies import ProxyProcess, bootstrap, cluster, hcm, listener
from tests.support.upstream import Reply, Upstream

H = b"Host: a\r\n"


def g(line=b"GET /x HTTP/1.1", hdrs=H, body=b""):
    return line + b"\r\n" + hdrs + b"\r\n" + body


def _post(hdrs, body):
    return g(b"POST /x HTTP/1.1", H + hdrs, body)


def _te(value, body=b"3\r\nabc\r\n0\r\n\r\n"):
    return _post(b"Transfer-Encoding: " + value + b"\r\n", body)


def _chunks(body):
    return _te(b"chunked", body)


# name: (request bytes, statuses Envoy answers with, connection closed, requests upstream)
CASES = {
    # request line
    "rl_garbage": (b"GARBAGE\r\n\r\n", [400], True, 0),
    "rl_method_only": (b"GET\r\n\r\n", [400], True, 0),
    "rl_http09": (b"GET /\r\n\r\n", [426], True, 0),
    "rl_extra_token": (g(b"GET /x HTTP/1.1 extra"), [400], True, 0),
    "rl_double_space": (g(b"GET  /x HTTP/1.1"), [200], False, 1),
    "rl_trailing_space": (g(b"GET /x HTTP/1.1 "), [200], False, 1),
    "rl_lower_method": (g(b"get /x HTTP/1.1"), [400], True, 0),
    "rl_unknown_method": (g(b"FOO /x HTTP/1.1"), [400], True, 0),
    "rl_custom_method_token": (g(b"X-CUSTOM /x HTTP/1.1"), [400], True, 0),
    "rl_bad_method_char": (g(b"G@T /x HTTP/1.1"), [400], True, 0),
    "rl_query_method": (g(b"QUERY /x HTTP/1.1"), [400], True, 0),
    "rl_msearch": (g(b"MSEARCH /x HTTP/1.1"), [200], False, 1),
    "rl_m_search": (g(b"M-SEARCH /x HTTP/1.1"), [400], True, 0),
    "rl_pri": (g(b"PRI /x HTTP/1.1"), [400], True, 0),
    "rl_describe": (g(b"DESCRIBE /x HTTP/1.1"), [400], True, 0),
    "rl_propfind": (g(b"PROPFIND /x HTTP/1.1"), [200], False, 1),
    "rl_patch": (g(b"PATCH /x HTTP/1.1"), [200], False, 1),
    "rl_http12": (g(b"GET /x HTTP/1.2"), [426], True, 0),
    "rl_http20": (g(b"GET /x HTTP/2.0"), [426], True, 0),
    "rl_http09v": (g(b"GET /x HTTP/0.9"), [426], True, 0),
    "rl_http110": (g(b"GET /x HTTP/1.10"), [400], True, 0),
    "rl_lower_http": (g(b"GET /x http/1.1"), [400], True, 0),
    "rl_tabs": (g(b"GET\t/x\tHTTP/1.1"), [200], False, 1),
    "rl_ctl_in_url": (g(b"GET /a\x01b HTTP/1.1"), [400], True, 0),
    "rl_del_in_url": (g(b"GET /a\x7fb HTTP/1.1"), [400], True, 0),
    "rl_highbit_url": (g(b"GET /a\xffb HTTP/1.1"), [400], True, 0),
    "rl_pct_bad": (g(b"GET /a%zz HTTP/1.1"), [200], False, 1),
    "rl_fragment": (g(b"GET /x#frag HTTP/1.1"), [400], True, 0),
    "rl_query_fragment": (g(b"GET /x?a=b#frag HTTP/1.1"), [400], True, 0),
    "rl_abs_http": (g(b"GET http://foo.com/p?q HTTP/1.1"), [200], False, 1),
    "rl_abs_https": (g(b"GET https://foo.com:8443/p HTTP/1.1"), [200], False, 1),
    "rl_abs_nopath": (g(b"GET http://foo.com HTTP/1.1"), [200], False, 1),
    "rl_abs_userinfo": (g(b"GET http://u:p@foo.com/p HTTP/1.1"), [200], False, 1),
    "rl_abs_ftp": (g(b"GET ftp://foo.com/p HTTP/1.1"), [400], True, 0),
    "rl_abs_upper": (g(b"GET HTTP://FOO.com/p HTTP/1.1"), [200], False, 1),
    "rl_abs_host_override": (g(b"GET http://abs.com:81/p HTTP/1.1", b"Host: other\r\n"),
                             [200], False, 1),
    "rl_abs_no_host": (g(b"GET http://abs.com/p HTTP/1.1", b""), [200], False, 1),
    "rl_abs_empty_host": (g(b"GET http:///p HTTP/1.1"), [400], True, 0),
    "rl_abs_query_only": (g(b"GET http://abs.com?q=1 HTTP/1.1", b""), [404], False, 0),
    "rl_abs_frag": (g(b"GET http://abs.com/p#f HTTP/1.1", b""), [400], True, 0),
    "rl_options_star": (g(b"OPTIONS * HTTP/1.1"), [404], False, 0),
    "rl_get_star": (g(b"GET * HTTP/1.1"), [400], True, 0),
    "rl_authority_get": (g(b"GET foo.com:80 HTTP/1.1"), [400], True, 0),
    "rl_path_noslash": (g(b"GET x HTTP/1.1"), [400], True, 0),
    "rl_leading_crlf": (b"\r\n" + g(b"GET /direct HTTP/1.1"), [200], False, 0),
    "rl_lf_only": (b"GET /direct HTTP/1.1\nHost: a\n\n", [200], False, 0),
    "rl_lf_only_upstream": (b"GET /x HTTP/1.1\nHost: a\nX-A: 1\n\n", [200], False, 1),
    "rl_lf_only_pipelined": (b"GET /x HTTP/1.1\nHost: a\n\nGET /y HTTP/1.1\nHost: a\n\n",
                             [200, 200], False, 2),
    "rl_cr_only": (b"GET /direct HTTP/1.1\rHost: a\r\r", [], False, 0),
    "rl_empty_path_q": (g(b"GET ?a=b HTTP/1.1"), [400], True, 0),
    "rl_dotdot": (g(b"GET /a/../b HTTP/1.1"), [200], False, 1),
    "rl_double_slash": (g(b"GET //a//b HTTP/1.1"), [200], False, 1),
    "rl_pct_encoded": (g(b"GET /a%2Fb%20c HTTP/1.1"), [200], False, 1),
    "rl_backslash": (g(b"GET /a\\b HTTP/1.1"), [200], False, 1),
    "rl_quote_brace": (g(b'GET /a"{b}|^` HTTP/1.1'), [200], False, 1),
    "rl_connect": (b"CONNECT foo:443 HTTP/1.1\r\nHost: foo:443\r\n\r\n", [404], True, 0),
    "rl_connect_nohost": (b"CONNECT foo:443 HTTP/1.1\r\n\r\n", [404], True, 0),
    # header fields
    "h_space_before_colon": (g(hdrs=H + b"X-A : b\r\n"), [400], True, 0),
    "h_no_colon": (g(hdrs=H + b"X-A b\r\n"), [400], True, 0),
    "h_empty_name": (g(hdrs=H + b": b\r\n"), [400], True, 0),
    "h_bad_name_paren": (g(hdrs=H + b"X(a): b\r\n"), [400], True, 0),
    "h_bad_name_del": (g(hdrs=H + b"X\x7fa: b\r\n"), [400], True, 0),
    "h_bad_name_highbit": (g(hdrs=H + b"X\xe9: b\r\n"), [400], True, 0),
    "h_name_slash": (g(hdrs=H + b"X/a: b\r\n"), [400], True, 0),
    "h_value_nul": (g(hdrs=H + b"X-A: a\x00b\r\n"), [400], True, 0),
    "h_value_ctl01": (g(hdrs=H + b"X-A: a\x01b\r\n"), [400], True, 0),
    "h_value_ctl1f": (g(hdrs=H + b"X-A: a\x1fb\r\n"), [400], True, 0),
    "h_value_del": (g(hdrs=H + b"X-A: a\x7fb\r\n"), [400], True, 0),
    "h_value_tab": (g(hdrs=H + b"X-A: a\tb\r\n"), [200], False, 1),
    "h_value_highbit": (g(hdrs=H + b"X-A: caf\xc3\xa9\r\n"), [200], False, 1),
    "h_value_cr_mid": (g(hdrs=H + b"X-A: a\rb\r\n"), [200], False, 1),
    "h_value_lead_trail_ws": (g(hdrs=H + b"X-A: \t a  b \t\r\nX-B:c\r\n"), [200], False, 1),
    "h_value_empty": (g(hdrs=H + b"X-A:\r\n"), [200], False, 1),
    "h_obs_fold_sp": (g(hdrs=H + b"X-A: b\r\n  c\r\n"), [200], False, 1),
    "h_obs_fold_tab": (g(hdrs=H + b"X-A: b\r\n\tc\r\n"), [200], False, 1),
    "h_obs_fold_multi": (g(hdrs=H + b"X-A: b\r\n c\r\n \t d\r\nX-B: e\r\n"), [200], False, 1),
    "h_obs_fold_empty": (g(hdrs=H + b"X-A:\r\n c\r\n"), [200], False, 1),
    "h_obs_fold_first": (g(hdrs=b" X-A: b\r\n" + H), [400], True, 0),
    "h_upper_names": (g(hdrs=b"HOST: a\r\nX-Mixed-Case: V\r\n"), [200], False, 1),
    "h_host_twice": (g(hdrs=H + b"Host: b\r\n"), [200], False, 1),
    "h_host_twice_same": (g(hdrs=H + b"Host: a\r\n"), [200], False, 1),
    "h_host_empty": (g(hdrs=b"Host:\r\n"), [200], False, 1),
    "h_host_bad_chars": (g(hdrs=b"Host: a b\r\n"), [400], True, 0),
    "h_host_slash": (g(hdrs=b"Host: a/b\r\n"), [400], True, 0),
    "h_host_utf8": (g(hdrs=b"Host: \xc3\xa4\r\n"), [400], True, 0),
    "h_host_pct": (g(hdrs=b"Host: a%20b\r\n"), [200], False, 1),
    "h_host_v6": (g(hdrs=b"Host: [::1]:80\r\n"), [200], False, 1),
    "h_host_two_bad": (g(hdrs=H + b"Host: b c\r\n"), [400], True, 0),
    "h_host_with_port": (g(hdrs=b"Host: a:8080\r\n"), [200], False, 1),
    "h_host_userinfo": (g(hdrs=b"Host: u@a\r\n"), [200], False, 1),
    "h_no_host": (g(hdrs=b""), [400], True, 0),
    "h_underscore": (g(hdrs=H + b"X_Under: 1\r\n"), [200], False, 1),
    "h_repeated_inline": (g(hdrs=H + b"Accept: a\r\nX-Forwarded-For: 1.2.3.4\r\nAccept: b\r\n"
                                 b"X-Forwarded-For: 5.6.7.8\r\nUser-Agent: u1\r\nUser-Agent: u2\r\n"
                                 b"Cookie: c1\r\nCookie: c2\r\nX-Other: o1\r\nX-Other: o2\r\n"
                                 b"Via: v1\r\nVia: v2\r\nIf-Match: m1\r\nIf-Match: m2\r\n"),
                          [200], False, 1),
    "h_envoy_control_headers": (g(hdrs=H + b"".join(
        b"%s: 1\r\n" % n for n in (
            b"x-envoy-retry-on", b"x-envoy-retry-grpc-on", b"x-envoy-max-retries",
            b"x-envoy-upstream-alt-stat-name", b"x-envoy-upstream-rq-timeout-ms",
            b"x-envoy-upstream-rq-per-try-timeout-ms", b"x-envoy-upstream-rq-timeout-alt-response",
            b"x-envoy-expected-rq-timeout-ms", b"x-envoy-force-trace", b"x-envoy-ip-tags",
            b"x-envoy-hedge-on-per-try-timeout", b"x-envoy-internal",
            b"x-envoy-retriable-status-codes", b"x-envoy-retriable-header-names",
            b"x-envoy-original-url", b"x-envoy-original-path", b"x-envoy-decorator-operation",
            b"x-envoy-downstream-service-cluster", b"x-envoy-downstream-service-node",
            b"x-envoy-external-address", b"x-envoy-attempt-count", b"x-envoy-is-timeout-retry",
            b"x-envoy-foo", b"x-forwarded-client-cert", b"x-forwarded-host",
            b"x-forwarded-port"))), [200], False, 1),
    "h_cl_dup_same": (_post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"),
                      [400], True, 0),
    "h_cl_dup_diff": (_post(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abc"),
                      [400], True, 0),
    "h_cl_list_same": (_post(b"Content-Length: 3, 3\r\n", b"abc"), [400], True, 0),
    "h_cl_negative": (_post(b"Content-Length: -1\r\n", b"abc"), [400], True, 0),
    "h_cl_nonnum": (_post(b"Content-Length: abc\r\n", b"abc"), [400], True, 0),
    "h_cl_plus": (_post(b"Content-Length: +3\r\n", b"abc"), [400], True, 0),
    "h_cl_huge": (_post(b"Content-Length: 99999999999999999999999\r\n", b"abc"), [400], True, 0),
    "h_cl_spaces": (_post(b"Content-Length:  3 \r\n", b"abc"), [200], False, 1),
    "h_cl_zero_get": (g(b"GET /x HTTP/1.1", H + b"Content-Length: 0\r\n"), [200], False, 1),
    "h_cl_get_body": (g(b"GET /x HTTP/1.1", H + b"Content-Length: 3\r\n", b"abc"),
                      [200], False, 1),
    "h_te_cl": (_post(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                      b"3\r\nabc\r\n0\r\n\r\n"), [400], True, 0),
    "h_te_gzip_chunked": (_te(b"gzip, chunked"), [501], True, 0),
    "h_te_identity": (_te(b"identity", b"abc"), [501], True, 0),
    "h_te_gzip": (_te(b"gzip", b"abc"), [501], True, 0),
    "h_te_chunked_upper": (_te(b"CHUNKED"), [200], False, 1),
    "h_te_chunked_twice_list": (_te(b"chunked, chunked"), [501], True, 0),
    "h_te_two_headers": (_post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                               b"3\r\nabc\r\n0\r\n\r\n"), [501], True, 0),
    "h_te_chunked_gzip": (_te(b"chunked, gzip"), [501], True, 0),
    "h_te_get": (g(b"GET /x HTTP/1.1", H + b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
                 [200], False, 1),
    "h_te_space": (_te(b" chunked "), [200], False, 1),
    "h_te_empty": (_te(b"", b""), [501], True, 0),
    "h_te_http10": (g(b"POST /x HTTP/1.0", H + b"Transfer-Encoding: chunked\r\n",
                      b"3\r\nabc\r\n0\r\n\r\n"), [426], True, 0),
    "h_connection_close_upper": (g(b"GET /direct HTTP/1.1", H + b"Connection: CLOSE\r\n"),
                                 [200], True, 0),
    "h_connection_multi": (g(b"GET /x HTTP/1.1", H + b"Connection: keep-alive\r\n"
                             b"Connection: x-a, close\r\nX-A: 1\r\n"), [200], True, 1),
    "h_conn_xff": (g(hdrs=H + b"Connection: x-forwarded-for\r\nX-Forwarded-For: 1.1.1.1\r\n"),
                   [400], True, 0),
    "h_conn_xfh": (g(hdrs=H + b"Connection: x-forwarded-host\r\n"), [400], True, 0),
    "h_conn_xfp": (g(hdrs=H + b"Connection: host, x-forwarded-proto\r\n"
                          b"X-Forwarded-Proto: https\r\n"), [400], True, 0),
    "h_conn_host": (g(hdrs=H + b"Connection: host\r\n"), [400], True, 0),
    "h_conn_pseudo": (g(hdrs=H + b"Connection: :path\r\n"), [400], True, 0),
    "h_conn_9_tokens": (g(hdrs=H + b"Connection: a1,a2,a3,a4,a5,a6,a7,a8,a9\r\nA1: x\r\n"
                              b"A9: y\r\nB: z\r\n"), [200], False, 1),
    "h_conn_10_tokens": (g(hdrs=H + b"Connection: a1,a2,a3,a4,a5,a6,a7,a8,a9,a10\r\n"),
                         [400], True, 0),
    "h_conn_self": (g(hdrs=H + b"Connection: connection, x-a\r\nX-A: 1\r\n"), [200], False, 1),
    "h_conn_te": (g(hdrs=H + b"Connection: te\r\nTE: trailers, gzip\r\n"), [200], False, 1),
    "h_conn_te_gzip": (g(hdrs=H + b"Connection: te\r\nTE: gzip\r\n"), [200], False, 1),
    "h_conn_empty_tokens": (g(hdrs=H + b"Connection: ,, x-a ,\r\nX-A: 1\r\n"), [200], False, 1),
    "h_conn_upper_token": (g(hdrs=H + b"Connection: X-A\r\nX-A: 1\r\nx-b: 2\r\n"),
                           [200], False, 1),
    "h_te_trailers": (g(hdrs=H + b"TE: trailers, deflate\r\n"), [200], False, 1),
    "h_te_deflate": (g(hdrs=H + b"TE: deflate\r\n"), [200], False, 1),
    "h_te_trailers_q": (g(hdrs=H + b"TE: trailers;q=0.5\r\n"), [200], False, 1),
    "h_expect_other": (_post(b"Expect: foo\r\nContent-Length: 3\r\n", b"abc"), [200], False, 1),
    "h_expect_100_upper": (_post(b"Expect: 100-Continue\r\nContent-Length: 3\r\n", b"abc"),
                           [100, 200], False, 1),
    "h_expect_100_get": (g(hdrs=H + b"Expect: 100-continue\r\n"), [100, 200], False, 1),
    "h_upgrade_ws": (g(hdrs=H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"),
                     [403], True, 0),
    "h_upgrade_no_conn": (g(hdrs=H + b"Upgrade: websocket\r\n"), [200], False, 1),
    "h_upgrade_h2c": (g(hdrs=H + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                              b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n"), [200], False, 1),
    "h_upgrade_h2c_bare": (g(hdrs=H + b"Connection: upgrade\r\nUpgrade: H2C\r\nX-K: 1\r\n"),
                           [200], False, 1),
    "h_proxy_conn": (g(hdrs=H + b"Proxy-Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n"),
                     [200], False, 1),
    "h_long_value_59k": (g(hdrs=H + b"X-Big: " + b"v" * (59 * 1024) + b"\r\n"), [200], False, 1),
    "h_long_value_61k": (g(hdrs=H + b"X-Big: " + b"v" * (61 * 1024) + b"\r\n"), [431], True, 0),
    "h_long_url": (g(b"GET /" + b"a" * 70000 + b" HTTP/1.1"), [431], True, 0),
    "h_100": (g(hdrs=H + b"".join(b"X-%d: v\r\n" % i for i in range(99))), [200], False, 1),
    "h_101": (g(hdrs=H + b"".join(b"X-%d: v\r\n" % i for i in range(100))), [431], True, 0),
    # bodies
    "c_bad_size": (_chunks(b"zz\r\nabc\r\n0\r\n\r\n"), [400], True, 0),
    "c_ext": (_chunks(b"3;a=b\r\nabc\r\n0\r\n\r\n"), [200], False, 1),
    "c_size_space": (_chunks(b"3 \r\nabc\r\n0\r\n\r\n"), [200], False, 1),
    "c_size_huge": (_chunks(b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n"), [400], True, 0),
    "c_size_neg": (_chunks(b"-3\r\nabc\r\n0\r\n\r\n"), [400], True, 0),
    "c_size_0x": (_chunks(b"0x3\r\nabc\r\n0\r\n\r\n"), [400], True, 0),
    "c_size_upper": (_chunks(b"A\r\n0123456789\r\n0\r\n\r\n"), [200], False, 1),
    "c_missing_crlf": (_chunks(b"3\r\nabcX0\r\n\r\n"), [400], True, 0),
    "c_lf_only": (_chunks(b"3\nabc\n0\n\n"), [400], True, 0),
    "c_trailers": (_chunks(b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"), [200], False, 1),
    "c_bad_trailer": (_chunks(b"3\r\nabc\r\n0\r\nX T\r\n\r\n"), [400], True, 0),
    "c_multi": (_chunks(b"1\r\na\r\n2\r\nbc\r\n0\r\n\r\n"), [200], False, 1),
    "c_empty_body": (_chunks(b"0\r\n\r\n"), [200], False, 1),
    "c_leading_zeros": (_chunks(b"0003\r\nabc\r\n0\r\n\r\n"), [200], False, 1),
    "b_cl_body": (_post(b"Content-Length: 3\r\n", b"abc"), [200], False, 1),
    "b_post_no_len": (g(b"POST /x HTTP/1.1"), [200], False, 1),
    "b_extra_after_cl": (_post(b"Content-Length: 3\r\n", b"abcGARBAGE\r\n\r\n"),
                         [200, 400], True, 1),
    # HTTP/1.0 without accept_http_10
    "v_http10": (g(b"GET /x HTTP/1.0", b""), [426], True, 0),
    "v_http10_host": (g(b"GET /x HTTP/1.0"), [426], True, 0),
    # local replies and the connection
    "l_noroute_get": (g(b"GET /zz HTTP/1.1", b"Host: noroute.com\r\n"), [404], False, 0),
    "l_noroute_post_pending": (g(b"POST /zz HTTP/1.1", b"Host: noroute.com\r\n"
                                 b"Content-Length: 10\r\n", b"abc"), [404], True, 0),
    "l_noroute_post_full": (g(b"POST /zz HTTP/1.1", b"Host: noroute.com\r\n"
                              b"Content-Length: 3\r\n", b"abc"), [404], True, 0),
    "l_direct_post_pending": (g(b"POST /direct HTTP/1.1", H + b"Content-Length: 10\r\n", b"abc"),
                              [200], True, 0),
    "l_direct_chunked_pending": (g(b"POST /direct HTTP/1.1", H +
                                   b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n"),
                                 [200], True, 0),
    "l_direct_400": (g(b"GET /d400 HTTP/1.1"), [400], True, 0),
    "l_dead_upstream": (g(b"GET /dead HTTP/1.1"), [503], False, 0),
    "l_dead_upstream_close": (g(b"GET /dead HTTP/1.1", H + b"Connection: close\r\n"),
                              [503], True, 0),
    "l_upstream_close": (g(b"GET /x HTTP/1.1", H + b"Connection: close\r\n"), [200], True, 1),
    "l_keep_alive_token": (g(b"GET /direct HTTP/1.1", H + b"Connection: keep-alive\r\n"),
                           [200], False, 0),
    "l_head": (g(b"HEAD /x HTTP/1.1"), [200], False, 1),
    "l_head_chunked": (g(b"HEAD /chunked HTTP/1.1"), [200], False, 1),
    # pipelining
    "p_two_gets": (g(b"GET /a HTTP/1.1") + g(b"GET /b HTTP/1.1"), [200, 200], False, 2),
    "p_post_then_get": (_post(b"Content-Length: 3\r\n", b"abc") + g(b"GET /b HTTP/1.1"),
                        [200, 200], False, 2),
    "p_chunked_then_get": (_chunks(b"3\r\nabc\r\n0\r\n\r\n") + g(b"GET /b HTTP/1.1"),
                           [200, 200], False, 2),
    "p_get_then_bad": (g(b"GET /a HTTP/1.1") + b"GARBAGE\r\n\r\n", [200, 400], True, 1),
    "p_close_then_get": (g(b"GET /a HTTP/1.1", H + b"Connection: close\r\n") +
                         g(b"GET /b HTTP/1.1"), [200], True, 1),
    "p_direct_then_up": (g(b"GET /direct HTTP/1.1") + g(b"GET /b HTTP/1.1"), [200, 200], False, 1),
    "p_noroute_then_get": (g(b"GET /zz HTTP/1.1", b"Host: noroute.com\r\n") + g(b"GET /b HTTP/1.1"),
                           [404, 200], False, 1),
    "p_upgrade_then_get": (g(hdrs=H + b"Connection: upgrade\r\nUpgrade: websocket\r\n") +
                           g(b"GET /b HTTP/1.1"), [403], True, 0),
    # Envoy's HTTP/1 flood protection: a request that starts while two responses are queued
    # closes the connection (http1.response_flood).
    "p_three_direct": (g(b"GET /direct1 HTTP/1.1") + g(b"GET /direct2 HTTP/1.1") +
                       g(b"GET /direct3 HTTP/1.1"), [200, 200], True, 0),
    "p_two_direct": (g(b"GET /direct1 HTTP/1.1") + g(b"GET /direct2 HTTP/1.1"),
                     [200, 200], False, 0),
    "p_up_direct_direct": (g(b"GET /a HTTP/1.1") + g(b"GET /direct2 HTTP/1.1") +
                           g(b"GET /direct3 HTTP/1.1"), [200, 200], True, 1),
    "p_direct_up_direct": (g(b"GET /direct1 HTTP/1.1") + g(b"GET /b HTTP/1.1") +
                           g(b"GET /direct3 HTTP/1.1"), [200, 200, 200], False, 1),
}


def upstream_handler(req):
    t = req.target
    if t.startswith("/chunked") and req.method == "HEAD":
        # A correct server: the head of a chunked response, no body (and no reuse, which
        # the recording upstream cannot do after a raw reply).
        return Reply(raw=b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                         b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n", close=True)
    if t.startswith("/chunked"):
        return Reply(200, [("content-type", "text/plain")], [b"ab", b"cd"])
    if t.startswith("/server"):
        return Reply(200, [("server", "upstream-srv"), ("content-length", "2")], b"ok")
    if t.startswith("/slow"):
        return Reply(200, [("content-length", "2")], b"ok", delay=0.8)
    return Reply(200, [("content-type", "text/plain"), ("x-upstream", "1")],
                 f"{req.method} {req.target}".encode())


def routes_vhosts():
    routes = [
        {"match": {"prefix": "/direct"},
         "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
        {"match": {"prefix": "/d400"}, "direct_response": {"status": 400}},
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "up"}},
    ]
    return [{"name": "nr", "domains": ["noroute.com"],
             "routes": [{"match": {"prefix": "/direct"}, "direct_response": {"status": 200}}]},
            {"name": "all", "domains": ["*"], "routes": routes}]


def h1_bootstrap(upstream_port: int, listeners: dict) -> dict:
    """One listener per entry of ``listeners`` (name -> extra HCM fields, stat_prefix = name),
    all with the same routes; Envoy's delayed close is 0.1 s unless the entry says otherwise."""
    ls = []
    for name, extra in listeners.items():
        extra = dict(extra)
        extra.setdefault("delayed_close_timeout", "0.1s")
        ls.append(listener(name, hcm(routes_vhosts(), stat_prefix=name, **extra)))
    return bootstrap(ls, [cluster("up", [("127.0.0.1", upstream_port)]),
                          cluster("dead", [("127.0.0.1", 1)])])


_NORM = [(re.compile(rb"date: [^\r]*"), b"date: *"),
         (re.compile(rb"x-request-id: [^\r]*"), b"x-request-id: *"),
         (re.compile(rb"x-envoy-upstream-service-time: [^\r]*"),
          b"x-envoy-upstream-service-time: *")]


def normalise(raw: bytes) -> bytes:
    for rx, sub in _NORM:
        raw = rx.sub(sub, raw)
    return raw


def statuses(raw: bytes) -> list:
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", raw)]


def _read(sock, n_final: int, timeout: float, head: bool = False):
    """Read until ``n_final`` complete final responses, EOF, or ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
        if n_final and len(parse_responses(data, head_request=head)) >= n_final:
            break
    return data, False


def closed_now(sock) -> bool:
    sock.setblocking(False)
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def run_table(port: int, up: Upstream, cases: dict, close_wait: float = 0.4) -> dict:
    """Send each case on its own connection; returns name -> (raw response, closed, upstream
    requests as (method, target, headers, body) with volatile values masked)."""
    out = {}
    socks = {}
    for name, (data, sts, _closed, _n) in cases.items():
        n0 = len(up.requests)
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(data)
        finals = sum(1 for x in sts if x >= 200)
        raw, eof = _read(s, finals, 3.0 if finals else 0.3, data.startswith(b"HEAD"))
        reqs = [(r.method, r.target,
                 [(n, "*" if n == "x-request-id" else v) for n, v in r.headers], r.body)
                for r in up.requests[n0:]]
        out[name] = [raw, eof, reqs]
        socks[name] = s
    # Poll for the (0.1 s delayed) closes; a connection still open at the deadline stays open.
    deadline = time.monotonic() + close_wait
    pending = {n: s for n, s in socks.items() if not out[n][1]}
    while pending and time.monotonic() < deadline:
        for name in [n for n, s in pending.items() if closed_now(s)]:
            out[name][1] = True
            del pending[name]
        time.sleep(0.01)
    for s in socks.values():
        s.close()
    return {k: tuple(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def table_results():
    res = {}
    for codec in ("httptools", "h11"):
        with Upstream(upstream_handler) as up:
            p = ProxyProcess("meshproxy", h1_bootstrap(up.port, {"l": {}}),
                             env={"MESHPROXY_HTTP1_CODEC": codec}).start()
            try:
                res[codec] = run_table(p.port("l"), up, CASES)
            finally:
                p.stop()
    return res


@pytest.mark.parametrize("codec_name", ("httptools", "h11"))
@pytest.mark.parametrize("case", list(CASES))
def test_raw_request(table_results, codec_name, case):
    data, want_statuses, want_closed, want_upstream = CASES[case]
    raw, closed, reqs = table_results[codec_name][case]
    assert statuses(raw) == want_statuses, raw[:300]
    assert closed == want_closed
    assert len(reqs) == want_upstream
