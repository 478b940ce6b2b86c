"""Differential: the admin API of meshproxy and of Envoy 1.40, same bootstrap, same traffic.

What must be equal: status codes, content types and bodies of the fixed pages and of every
error; stat ordering and ``usedonly`` semantics for the stats both proxies have; Prometheus
families, types and labels of those stats (Envoy's tag extraction, with default tags and with
Istio's ``stats_config``); ``/config_dump`` (modulo times, ports and Envoy's extension list);
``/clusters``, ``/listeners``, ``/server_info`` shapes. Which stats exist at all is the stat
producers' business and is not asserted here.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.client import exchange, parse_responses, request
from tests.support.proxies import (REAL_CONFIGS, ProxyProcess, bootstrap, cluster, find_envoy,
                                   hcm, listener)
from tests.support.upstream import Upstream

pytestmark = pytest.mark.oracle

ISTIO_BOOTSTRAP = os.path.join(REAL_CONFIGS, "istio-bootstrap", "default_golden.json")


def admin_call(p: ProxyProcess, path: str, method: str = "GET", body: bytes = b"",
               headers=()):
    """(status, headers dict, body bytes) of one admin request, parsed by h11."""
    port = int(p.admin.rsplit(":", 1)[1])
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    data, _ = exchange(port, head.encode() + body, expect=1, timeout=5)
    r = parse_responses(data)[0]
    return r.status, dict(r.headers), r.body


def _boot(up_port: int) -> dict:
    # Two extra clusters whose names sort differently as bytes and token by token
    # ("a-b" < "a." as bytes, "a" < "a-b" as tokens), never used by traffic.
    return bootstrap(
        [listener("l", hcm([{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]))],
        [cluster("up", [("127.0.0.1", up_port)]),
         cluster("a-b", [("127.0.0.1", up_port)]), cluster("a", [("127.0.0.1", up_port)])])


def _start_pair(boot, traffic=3, args=()):
    procs = {}
    for kind in ("envoy", "meshproxy"):
        procs[kind] = ProxyProcess(kind, boot, args).start()
        for _ in range(traffic):
            request(procs[kind].port("l"), "GET", "/x")
    return procs


@pytest.fixture(scope="module")
def pair():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    with Upstream() as up:
        procs = _start_pair(_boot(up.port))
        try:
            yield procs
        finally:
            for p in procs.values():
                p.stop()


@pytest.fixture
def fresh_pair():
    """A pair for tests that change server state."""
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    with Upstream() as up:
        procs = _start_pair(_boot(up.port), traffic=1)
        try:
            yield procs
        finally:
            for p in procs.values():
                p.stop()


def both(pair, path, method="GET", **kw):
    return {k: admin_call(p, path, method, **kw) for k, p in pair.items()}


# ---------------------------------------------------------------------- exact answers

EXACT = [
    ("GET", "/help"), ("GET", "/nope"), ("GET", "/stats/prometheus/"),
    ("GET", "/quitquitquit"), ("GET", "/logging"), ("GET", "/healthcheck/fail"),
    ("GET", "/ready"), ("POST", "/ready"), ("GET", "/hot_restart_version"),
    ("GET", "/certs"), ("GET", "/init_dump"), ("GET", "/contention"),
    ("POST", "/cpuprofiler"), ("POST", "/runtime_modify"), ("POST", "/runtime_modify?a=b"),
    ("GET", "/stats/recentlookups/clear"),
    ("GET", "/stats?filter=("), ("GET", "/stats?filter=(?=a)"), ("GET", "/stats?filter=a["),
    ("GET", "/stats?filter=*a"), ("GET", "/stats?filter=a{2,1}"), ("GET", "/stats?filter=\\8"),
    ("GET", "/stats?filter=a)"), ("GET", "/stats?filter=ab**"), ("GET", "/stats?filter=a*%2B"),
    ("GET", "/stats?filter=x(?<=a)"), ("GET", "/stats?filter=[z-a]"),
    ("GET", "/stats?filter=[[:foo:]]"), ("GET", "/stats?filter=x\\"),
    ("GET", "/stats?type=foo"), ("GET", "/stats?format=foo"), ("GET", "/stats?hidden=bogus"),
    ("GET", "/stats?histogram_buckets=bogus"),
    ("GET", "/stats/prometheus?histogram_buckets=detailed"),
    ("GET", "/stats/prometheus?filter=("), ("GET", "/stats?type=TextReadouts"),
    ("GET", "/stats?format=json&filter=nomatch"), ("GET", "/stats?filter=nomatch"),
    ("GET", "/clusters?filter=("), ("GET", "/clusters?filter=nomatch&format=json"),
    ("GET", "/config_dump?resource=bogus"), ("GET", "/config_dump?resource=version_info"),
    ("GET", "/config_dump?mask=bogus"), ("GET", "/config_dump?mask=static_clusters,bogus"),
    ("GET", "/config_dump?mask=static_clusters.cluster"),
    ("GET", "/config_dump?name_regex=("),
    ("GET", "/config_dump?resource=static_clusters&mask=cluster"),
    ("GET", "/config_dump?resource=static_listeners&mask=listener.name,listener.bogus"),
    ("GET", "/config_dump?resource=dynamic_active_clusters"),
    ("GET", "/config_dump?resource=static_clusters&name_regex=u"),
    ("GET", "/config_dump?resource=static_route_configs&name_regex=local"),
    ("GET", "/config_dump?mask=bootstrap.node.id"),
    ("GET", "/config_dump?mask=static_clusters&name_regex=nomatch"),
    ("GET", "/stats?usedonly&filter=^(server\\.state|listener_manager\\.workers_started)"),
    ("GET", "/stats?usedonly&filter=^(cluster_manager\\.cds|listener_manager\\.lds)\\."
            "(update_success|update_rejected)$"),
    ("GET", "/stats/prometheus?usedonly&filter=^server\\.(live|state)$"),
    ("GET", "/stats?format=prometheus&filter=^server\\.state$"),
    ("GET", "/stats?format=json&filter=^server\\.(live|state)$"),
    ("GET", "/stats?filter=^http\\.ingress\\.downstream_rq_(total|completed|2xx)$"),
    ("GET", "/stats?usedonly=0&filter=^server\\.state$"),
    ("GET", "/stats?filter=server\\.stat%65$"),
    ("POST", "/logging?level=bogus"), ("POST", "/logging?bogus=debug"),
    ("POST", "/logging?upstream=bogus"), ("POST", "/logging?paths=bad"),
    ("POST", "/logging?paths=upstream:bad"), ("POST", "/logging?group=upstream:debug"),
    ("POST", "/logging?a=b&c=d"), ("POST", "/logging"), ("POST", "/logging?paths="),
    ("POST", "/logging?paths=upstream:debug,bogus:info"), ("POST", "/logging?=debug"),
    ("POST", "/logging?paths=upstream:debug:x"),
]


@pytest.mark.parametrize("method,path", EXACT, ids=[f"{m} {p}" for m, p in EXACT])
def test_same_answer(pair, method, path):
    got = both(pair, path, method)
    # protobuf's DebugString starts with a marker whose spelling is randomised per process
    e, m = ((r[0], r[1].get("content-type"), re.sub(rb"goo\.gle/debug\w+ +", b"", r[2]))
            for r in (got["envoy"], got["meshproxy"]))
    assert m == e


def test_admin_headers(pair):
    for path in ("/ready", "/stats", "/nope", "/config_dump", "/stats?format=json"):
        got = both(pair, path)
        for kind, (_, h, _) in got.items():
            assert h.get("cache-control") == "no-cache, max-age=0", (kind, path)
            assert h.get("x-content-type-options") == "nosniff", (kind, path)
            assert h.get("transfer-encoding") == "chunked", (kind, path)
            assert "content-length" not in h, (kind, path)


# ---------------------------------------------------------------------- /stats


def _names(body: bytes) -> list:
    return [line.split(": ", 1)[0] for line in body.decode().splitlines() if line]


def _common_order(a: list, b: list) -> tuple:
    common = set(a) & set(b)
    return [n for n in a if n in common], [n for n in b if n in common]


@pytest.mark.parametrize("query", ["", "?type=Counters", "?type=Gauges",
                                   "?filter=cluster\\.", "?filter=cluster&invert_filter"])
def test_stats_selection_and_order(pair, query):
    """For the stats both have: the same selected (type, filter) in the same order (Envoy
    sorts by the whole name as bytes: cluster.a-b.* before cluster.a.*)."""
    got = both(pair, "/stats" + query)
    shared = set(_shared_stat_names(pair))
    e_sel = [n for n in _names(got["envoy"][2]) if n in shared]
    m_sel = [n for n in _names(got["meshproxy"][2]) if n in shared]
    assert m_sel == e_sel
    if "invert" not in query and "Gauges" not in query:
        assert [n for n in m_sel if n.startswith("cluster.a")][:1] == \
            ["cluster.a-b.assignment_stale"]


def test_stats_usedonly_order(pair):
    """Which stats are used is the producers' business; the ones both list come in the same
    order, and meshproxy's usedonly list is a subset of its full list."""
    got = both(pair, "/stats?usedonly")
    e, m = _common_order(_names(got["envoy"][2]), _names(got["meshproxy"][2]))
    assert m == e and len(m) > 30
    full = _names(admin_call(pair["meshproxy"], "/stats")[2])
    assert set(_names(got["meshproxy"][2])) <= set(full)


def test_stats_json_format(pair):
    got = both(pair, "/stats?format=json&filter=^(server\\.(live|state)|cluster_manager\\.)")
    e = json.loads(got["envoy"][2])
    m = json.loads(got["meshproxy"][2])
    assert [s["name"] for s in m["stats"] if s["name"] in {x["name"] for x in e["stats"]}] == \
        [s["name"] for s in e["stats"] if s["name"] in {x["name"] for x in m["stats"]}]
    assert got["meshproxy"][2].startswith(b'{"stats":[{"name":"')


def _prom_samples(body: bytes) -> dict:
    """{(family, type): sorted [labels]} of a Prometheus text exposition (parsed strictly)."""
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        out[(fam.name, fam.type)] = sorted(json.dumps(s.labels, sort_keys=True)
                                           for s in fam.samples)
    return out


def _prom_lines(body: bytes) -> list:
    """TYPE lines and sample lines without values, in order."""
    out = []
    for line in body.decode().splitlines():
        out.append(line if line.startswith("#") else line.rsplit(" ", 1)[0])
    return out


def _shared_stat_names(pair, flt: str = "") -> list:
    e = set(_names(admin_call(pair["envoy"], "/stats" + flt)[2]))
    m = set(_names(admin_call(pair["meshproxy"], "/stats" + flt)[2]))
    return sorted(e & m)


def test_prometheus_valid_counters_then_gauges(pair):
    body = admin_call(pair["meshproxy"], "/stats/prometheus")[2]
    fams = list(text_string_to_metric_families(body.decode()))
    assert len(fams) > 50, body[:200]
    kinds = [f.type for f in fams]
    assert kinds == sorted(kinds, key=lambda k: {"counter": 0, "gauge": 1}[k])
    assert {"counter", "gauge"} == set(kinds)


def test_prometheus_tags_match_envoy(pair):
    """Each stat both proxies have lands in the same family with the same labels, and the
    whole output keeps Envoy's family and sample order."""
    shared = _shared_stat_names(pair)
    assert len(shared) > 100
    rx = "^(" + "|".join(re.escape(n) for n in shared) + ")$"
    from urllib.parse import quote
    got = both(pair, "/stats/prometheus?filter=" + quote(rx))
    assert _prom_samples(got["meshproxy"][2]) == _prom_samples(got["envoy"][2])
    assert _prom_lines(got["meshproxy"][2]) == _prom_lines(got["envoy"][2])


def test_prometheus_type_and_usedonly(pair):
    from urllib.parse import quote
    shared = _shared_stat_names(pair, "?usedonly")
    rx = quote("^(" + "|".join(re.escape(n) for n in shared) + ")$")
    # type= does not apply to Prometheus output (Envoy prints gauges for type=Counters)
    for q in (f"?usedonly&filter={rx}", f"?type=Counters&filter={rx}",
              f"?filter={rx}&invert_filter&usedonly"):
        got = both(pair, "/stats/prometheus" + q)
        if "invert_filter" in q:
            assert not [line for line in _prom_lines(got["meshproxy"][2])
                        if line.startswith("envoy_server_state")]
            continue
        assert _prom_lines(got["meshproxy"][2]) == _prom_lines(got["envoy"][2]), q


# ---------------------------------------------------------------------- other pages


def _normalise_dump(d, ports=True):
    """Drop what legitimately differs: times, bound ports, Envoy's own build identity."""
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            if k in ("last_updated", "extensions", "user_agent_build_version"):
                continue
            if k == "port_value" and ports:
                v = 0
            out[k] = _normalise_dump(v, ports)
        return out
    if isinstance(d, list):
        return [_normalise_dump(x, ports) for x in d]
    return d


@pytest.mark.parametrize("query", ["", "?include_eds", "?resource=static_clusters",
                                   "?resource=static_listeners&name_regex=^l$",
                                   "?resource=static_clusters&mask=cluster.name,last_updated",
                                   "?mask=static_clusters", "?name_regex=nomatch",
                                   "?resource=static_endpoint_configs&include_eds",
                                   "?resource=static_clusters&name_regex=a-b|up"])
def test_config_dump_matches(pair, query):
    got = both(pair, "/config_dump" + query)
    assert got["meshproxy"][0] == got["envoy"][0] == 200
    m = json.loads(got["meshproxy"][2])
    e = json.loads(got["envoy"][2])
    assert _normalise_dump(m) == _normalise_dump(e)
    parse_config_dump(m)
    assert got["meshproxy"][2].endswith(b"\n")


def parse_config_dump(d: dict):
    """json_format parse into envoy.admin.v3.ConfigDump, after loading the descriptors of
    every ``@type`` in it (they are imported lazily, as meshproxy does)."""
    from google.protobuf import json_format

    from meshproxy.config.protos import find_message_descriptor, message_class

    def load(v):
        if isinstance(v, dict):
            t = v.get("@type")
            if isinstance(t, str):
                find_message_descriptor(t.rsplit("/", 1)[-1])
            for x in v.values():
                load(x)
        elif isinstance(v, list):
            for x in v:
                load(x)
    load(d)
    return json_format.ParseDict(d, message_class("envoy.admin.v3.ConfigDump")())


def _cluster_blocks(body: bytes) -> list:
    """/clusters text as sorted per-cluster line blocks: Envoy lists clusters in hash-map
    order, meshproxy by name."""
    blocks: dict = {}
    for line in re.sub(rb":\d+::", b":P::", body).decode().splitlines():
        blocks.setdefault(line.split("::", 1)[0], []).append(line)
    return sorted(blocks.items())


def test_clusters_and_listeners_match(pair):
    for path in ("/clusters", "/clusters?filter=^a", "/clusters?format=bogus"):
        got = both(pair, path)
        assert _cluster_blocks(got["meshproxy"][2]) == _cluster_blocks(got["envoy"][2]), path
    got = both(pair, "/clusters?format=json")
    m, e = (_normalise_dump(json.loads(got[k][2])) for k in ("meshproxy", "envoy"))
    for d in (m, e):
        d["cluster_statuses"].sort(key=lambda c: c["name"])
    assert m == e
    got = both(pair, "/runtime")
    assert json.loads(got["meshproxy"][2]) == json.loads(got["envoy"][2])
    got = both(pair, "/listeners?format=json")
    assert _normalise_dump(json.loads(got["meshproxy"][2])) == \
        _normalise_dump(json.loads(got["envoy"][2]))
    got = both(pair, "/listeners")
    assert [re.sub(r":\d+$", "", x) for x in got["meshproxy"][2].decode().splitlines()] == \
        [re.sub(r":\d+$", "", x) for x in got["envoy"][2].decode().splitlines()]


def _keys(d, prefix=""):
    out = set()
    if isinstance(d, dict):
        for k, v in d.items():
            out.add(prefix + k)
            if k not in ("node",):
                out |= _keys(v, prefix + k + ".")
    return out


def test_server_info_shape(pair):
    got = both(pair, "/server_info")
    e, m = json.loads(got["envoy"][2]), json.loads(got["meshproxy"][2])
    assert _keys(m) == _keys(e)
    for k in ("state", "hot_restart_version"):
        assert m[k] == e[k]
    co_e, co_m = e["command_line_options"], m["command_line_options"]
    for k in ("concurrency", "log_level", "mode", "local_address_ip_version", "drain_time",
              "parent_shutdown_time", "file_flush_interval", "drain_strategy", "stats_tag",
              "restart_epoch", "log_format", "allow_unknown_static_fields"):
        assert co_m[k] == co_e[k], k
    assert set(m["node"]) >= {"id", "cluster", "user_agent_name", "user_agent_build_version"}
    assert m["node"]["user_agent_name"] == e["node"]["user_agent_name"]
    assert m["node"]["user_agent_build_version"]["version"] == \
        e["node"]["user_agent_build_version"]["version"]
    assert m["version"].split("/")[1] == e["version"].split("/")[1] == "1.40.0"


# ---------------------------------------------------------------------- state changes


def test_logging_changes_like_envoy(fresh_pair):
    for q in ("paths=upstream:debug,config:trace", "http=error", "level=", "level=warn",
              "paths=upstream:debug,,config:info", "router=info"):
        got = both(fresh_pair, "/logging?" + q, "POST")
        assert got["meshproxy"][0] == got["envoy"][0], q
        assert got["meshproxy"][2] == got["envoy"][2], q
    # without a query string, a form body carries the parameters
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    for path, body in (("/logging", b"upstream=trace"), ("/logging?router=error", b"http=off")):
        got = both(fresh_pair, path, "POST", body=body, headers=form)
        assert got["meshproxy"][:3:2] == got["envoy"][:3:2], path


def test_healthcheck_fail_ok_like_envoy(fresh_pair):
    seq = [("POST", "/healthcheck/fail"), ("GET", "/ready"), ("POST", "/healthcheck/ok"),
           ("GET", "/ready")]
    for method, path in seq:
        got = both(fresh_pair, path, method)
        assert got["meshproxy"][0] == got["envoy"][0], path
        assert got["meshproxy"][2] == got["envoy"][2], path


def test_reset_counters_keeps_used(fresh_pair):
    q = "/stats?usedonly&filter=^http\\.ingress\\.downstream_rq_(total|2xx)$"
    before = both(fresh_pair, q)
    assert before["meshproxy"][2] == before["envoy"][2] != b""
    got = both(fresh_pair, "/reset_counters", "POST")
    assert got["meshproxy"][:3:2] == got["envoy"][:3:2]
    after = both(fresh_pair, q)
    assert after["meshproxy"][2] == after["envoy"][2] == \
        b"http.ingress.downstream_rq_2xx: 0\nhttp.ingress.downstream_rq_total: 0\n"


def test_drain_listeners_stops_accepting(fresh_pair):
    ports = {k: p.port("l") for k, p in fresh_pair.items()}
    got = both(fresh_pair, "/drain_listeners", "POST")
    assert got["meshproxy"][2] == got["envoy"][2] == b"OK\n"
    for kind, port in ports.items():
        with pytest.raises(OSError):
            request(port, "GET", "/x", timeout=1)


# ---------------------------------------------------------------------- Istio's stats_config


def _istio_boot(path: str) -> dict:
    with open(path) as f:
        d = json.load(f)
    d.pop("dynamic_resources", None)  # no xDS server here; static part only
    for lst in d["static_resources"]["listeners"]:
        sa = lst["address"]["socket_address"]
        sa["address"], sa["port_value"] = "127.0.0.1", 0
    d["admin"]["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": 0}}
    return d


@pytest.fixture(scope="module")
def istio_pair():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    if not os.path.exists(ISTIO_BOOTSTRAP):
        pytest.skip(f"real configs not found at {ISTIO_BOOTSTRAP} (../shared is absent)")
    boot = _istio_boot(ISTIO_BOOTSTRAP)
    procs = {k: ProxyProcess(k, boot).start() for k in ("envoy", "meshproxy")}
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def test_istio_stats_matcher_and_tags(istio_pair):
    """Istio's inclusion list hides everything but cluster_manager, listener_manager, server,
    cluster.xds-grpc...; its own tag regexes (``^cluster(\\.(.+);)``) name the families."""
    names_m = _names(admin_call(istio_pair["meshproxy"], "/stats")[2])
    names_e = set(_names(admin_call(istio_pair["envoy"], "/stats")[2]))
    allowed = ("cluster_manager", "listener_manager", "server", "cluster.xds-grpc")
    assert names_m and all(n.startswith(allowed) for n in names_m)
    assert not any(n.startswith(("http.", "listener.", "cluster.agent")) for n in names_m)
    shared = sorted(set(names_m) & names_e)
    assert any(n.startswith("cluster.xds-grpc;.") for n in shared)
    from urllib.parse import quote
    rx = quote("^(" + "|".join(re.escape(n) for n in shared) + ")$")
    got = both(istio_pair, "/stats/prometheus?filter=" + rx)
    assert _prom_samples(got["meshproxy"][2]) == _prom_samples(got["envoy"][2])
    assert _prom_lines(got["meshproxy"][2]) == _prom_lines(got["envoy"][2])
    assert 'envoy_cluster_membership_total{cluster_name="xds-grpc"}' in \
        got["meshproxy"][2].decode()


def test_istio_config_dump_matches(istio_pair):
    got = both(istio_pair, "/config_dump")
    m = _normalise_dump(json.loads(got["meshproxy"][2]))
    e = _normalise_dump(json.loads(got["envoy"][2]))
    # Envoy lists inline route configs in hash order; compare them as a set.
    for d in (m, e):
        for c in d["configs"]:
            if "static_route_configs" in c:
                c["static_route_configs"].sort(key=lambda x: json.dumps(x, sort_keys=True))
    assert m == e


def test_stats_tag_flag_like_envoy():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    with Upstream() as up:
        procs = _start_pair(_boot(up.port), traffic=1, args=["--stats-tag", "mesh:m1"])
        try:
            got = both(procs, "/stats/prometheus?filter=^(cluster\\.up\\.upstream_rq_200|"
                              "server\\.state|http\\.ingress\\.downstream_rq_2xx)$")
            assert got["meshproxy"][2] == got["envoy"][2]
            assert b'mesh="m1"' in got["meshproxy"][2]
        finally:
            for p in procs.values():
                p.stop()
