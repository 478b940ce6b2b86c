"""Real Istio sidecar ``/config_dump``s (../shared/real-configs: DeathStarBench on Istio 1.18,
hello-openshift on OSSM 2.6 / Istio 1.20, scout's bookinfo on Istio ~1.9) served over ADS by the
test control plane as raw ``Any`` resources with the dumped type URLs and typed configs
(tests/xds/real_dump.py), to meshproxy and to Envoy 1.40 on the same push.

- As dumped: vanilla Envoy refuses most of it over Istio's own extensions (``istio.stats``,
  metadata exchange, null-VM Wasm); meshproxy must accept at least everything Envoy accepts
  (it skips the telemetry filters; a security filter it lacks is refused, fail closed).
- Without the Istio-only filters and the TLS paths (whose SDS secrets Envoy would wait for
  without end): both ACK (or, for scout's Istio 1.9 name-only extensions, NACK) the same, and
  ``/config_dump`` agrees section by section.
- Requests through the served outbound port listeners (bound on 127.0.0.1) reach the same
  loopback upstreams with the same request; endpoints Istio marks ``tlsMode: istio`` are never
  served in plain text by meshproxy (it has no TLS yet: 503, nothing reaches the upstream).
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from meshproxy.xds import types as T
from tests.support.proxies import REAL_CONFIGS, ProxyProcess, find_envoy
from tests.support.upstream import Reply, Upstream
from tests.xds import builders as B
from tests.xds import real_dump as R
from tests.xds.control_plane import ControlPlane

pytestmark = pytest.mark.skipif(not os.path.isdir(REAL_CONFIGS),
                                reason=f"{REAL_CONFIGS} not present (only beside the steering "
                                       f"repository's shared/ directory)")
needs_envoy = pytest.mark.skipif(find_envoy() is None,
                                 reason="Envoy 1.40 oracle not installed (run ./scripts/test)")

NODE = "sidecar~10.0.0.1~app.default~default.svc.cluster.local"
TYPES = (T.CLUSTER, T.ENDPOINT, T.LISTENER, T.ROUTE)
N_UPSTREAMS = 4


def serve(cp, key: str, vanilla: bool, port_for, bind_http_ports=False) -> dict:
    """Put the dump's resources on ``cp``; returns {type_url: [names]}."""
    d = R.load(key)
    if vanilla:
        d = {t: R.strip_istio_only(t, v) for t, v in d.items()}
    clas = d[T.ENDPOINT] or [{"cluster_name": n} for n in R.eds_cluster_names(d[T.CLUSTER])]
    listeners = d[T.LISTENER]
    if bind_http_ports:
        listeners = [_bound(ls) if ls["name"] in http_port_listeners(d) else ls
                     for ls in listeners]
    names = {}
    for t, items, v in ((T.CLUSTER, d[T.CLUSTER], "c1"),
                        (T.ENDPOINT, R.localize_endpoints(clas, port_for), "e1"),
                        (T.LISTENER, R.localize_listeners(listeners), "l1"),
                        (T.ROUTE, d[T.ROUTE], "r1")):
        resources = R.encode(t, items)
        cp.set_resources(t, resources, v)
        names[t] = [r.name for r in resources]
    return names


def _bound(ls: dict) -> dict:
    ls = dict(ls)
    ls.pop("deprecated_v1", None)
    ls["bind_to_port"] = True
    return ls


def http_port_listeners(d: dict) -> dict:
    """Istio's outbound HTTP port listeners (``0.0.0.0_<port>``, HCM over RDS ``<port>``):
    {listener name: route configuration name}."""
    out = {}
    for ls in d[T.LISTENER]:
        if not ls["name"].startswith("0.0.0.0_"):
            continue
        for fc in ls.get("filter_chains", []):
            for f in fc.get("filters", []):
                rds = f.get("typed_config", {}).get("rds")
                if rds:
                    out[ls["name"]] = rds["route_config_name"]
    return out


def _settled(start: int):
    """Every type the proxy asked for (on streams opened after ``start``) was answered."""
    def pred(reqs):
        mine = reqs[start:]
        asked = {r.type_url for r in mine}
        return asked >= {T.CLUSTER, T.LISTENER} and all(
            any(r.type_url == t and r.nonce and not r.stale for r in mine) for t in asked)
    return pred


def run(kind: str, cp, fn=None, delta=False):
    """Start ``kind`` on ``cp``; wait for every type it fetched to be ACKed or NACKed; return
    ({type_url: [NACK message]}, fn(proxy))."""
    start = len(cp.requests)
    boot = B.sidecar_bootstrap(cp, delta, NODE, "app.default", initial_fetch_timeout="0s")
    proxy = ProxyProcess(kind, boot).start(timeout=60)
    try:
        cp.wait_for(_settled(start), timeout=30)
        out = fn(proxy) if fn else None
    finally:
        proxy.stop()
    nacks = {}
    for r in cp.requests[start:]:
        if r.error:
            assert r.error[0] == 13, r.error
            nacks.setdefault(r.type_url, []).append(r.error[1])
    return nacks, out


def rejected(names: list, messages: list) -> set:
    """The resources an "Error adding/updating X(s) a: why, b: why" message names."""
    out = set()
    for msg in messages:
        body = msg.split("(s) ", 1)[1] if "(s) " in msg else msg
        for n in names:
            if body.startswith(n + ": ") or f", {n}: " in body or f"\n{n}: " in body:
                out.add(n)
    return out


# ------------------------------------------------------------------ as dumped


@needs_envoy
@pytest.mark.oracle
@pytest.mark.parametrize("key", sorted(R.DUMPS))
def test_as_dumped_meshproxy_accepts_what_envoy_accepts(key):
    with Upstream() as up, ControlPlane() as cp:
        names = serve(cp, key, vanilla=False, port_for=lambda n: up.port)
        envoy, _ = run("envoy", cp)
        mine, dump = run("meshproxy", cp, lambda p: p.get_admin("/config_dump?include_eds"))
    for t in (T.CLUSTER, T.LISTENER):
        env_rej = rejected(names[t], envoy.get(t, []))
        my_rej = rejected(names[t], mine.get(t, []))
        # vanilla Envoy refuses Istio's own extensions ...
        assert env_rej, (key, t)
        assert all("Didn't find a registered implementation" in m or "Wasm" in m
                   for m in envoy[t]), envoy[t]
        # ... and nothing it accepts is refused by meshproxy
        assert my_rej <= env_rej, (t, my_rej - env_rej, mine.get(t))
    # Istio <= 1.9's authn filter enforces peer authentication: refused, fail closed.
    if key == "scout":
        assert rejected(names[T.LISTENER], mine[T.LISTENER]) == {"virtualInbound"}
        assert "'istio_authn'" in mine[T.LISTENER][0] and "fail closed" in mine[T.LISTENER][0]
        # and, as Envoy 1.40, extensions named without a typed_config (Istio 1.9)
        assert "with type URL: ''" in mine[T.CLUSTER][0]
    else:
        assert mine == {}, mine
    # meshproxy dumps what it holds, Istio's types named by URL (Envoy without those types
    # cannot print its dump at all: "Failed to convert protobuf message to JSON string").
    status, body = dump
    assert status == 200
    types = {c["@type"].rsplit(".", 1)[-1]: c for c in json.loads(body)["configs"]}
    if key != "scout":
        assert len(types["ClustersConfigDump"]["dynamic_active_clusters"]) == \
            len(names[T.CLUSTER])


# ------------------------------------------------------------------ vanilla variant

_KEYS = {"dynamic_active_clusters": lambda e: e["cluster"]["name"],
         "dynamic_listeners": lambda e: e["name"],
         "dynamic_route_configs": lambda e: e["route_config"]["name"],
         "dynamic_endpoint_configs": lambda e: e["endpoint_config"]["cluster_name"],
         # the route configurations inline in listeners (one per HCM, same name, same config)
         "static_route_configs": lambda e: e["route_config"]["name"]}


def dump_sections(body: str) -> dict:
    """{(dump type, section): {resource name: entry}} (Envoy lists dynamic resources in hash
    map order, so they are compared by name); other fields as {field: value}."""
    out = {}
    for c in json.loads(body)["configs"]:
        kind = c["@type"].rsplit(".", 1)[-1]
        if kind == "BootstrapConfigDump":
            continue
        for field, value in c.items():
            if field in _KEYS:
                out[(kind, field)] = {_KEYS[field](e): B.untimed(e) for e in value}
            else:
                out[(kind, field)] = B.untimed(value)
    return out


@needs_envoy
@pytest.mark.oracle
@pytest.mark.parametrize("key,delta", [("deathstarbench", False), ("deathstarbench", True),
                                       ("hello-openshift", False), ("hello-openshift", True),
                                       ("scout", False), ("scout", True)])
def test_vanilla_variant_same_acks_and_config_dump_as_envoy(key, delta):
    def get_dump(p):
        status, body = p.get_admin("/config_dump?include_eds")
        assert status == 200, body[:300]
        return dump_sections(body)
    with Upstream() as up, ControlPlane() as cp:
        names = serve(cp, key, vanilla=True, port_for=lambda n: up.port)
        envoy_nacks, envoy = run("envoy", cp, get_dump, delta)
        mine_nacks, mine = run("meshproxy", cp, get_dump, delta)
    if key != "scout":
        assert envoy_nacks == mine_nacks == {}
        assert len(mine[("ClustersConfigDump", "dynamic_active_clusters")]) == \
            len(names[T.CLUSTER])
        assert len(mine[("ListenersConfigDump", "dynamic_listeners")]) == len(names[T.LISTENER])
    # Istio 1.9 named extensions without a typed_config (raw_buffer sockets, previous_hosts):
    # Envoy 1.40 refuses them; so does meshproxy, naming the field first
    # (which ones: the dumps below; the NACK texts are cut at 4096 characters, meshproxy's
    # sooner for the field paths)
    assert set(envoy_nacks) == set(mine_nacks)
    for t in envoy_nacks:
        assert len(envoy_nacks[t]) == len(mine_nacks[t])
        for e, m in zip(envoy_nacks[t], mine_nacks[t]):
            assert "Didn't find a registered implementation" in e, e
            first = e.split(", ")[0].split(": ")[-1]
            assert first in m, (first, m[:300])
    assert set(mine) == set(envoy)
    for section in sorted(envoy):
        assert mine[section] == envoy[section], section


# ------------------------------------------------------------------ requests


def _requests(key: str) -> list:
    """(listener, Host, path) for up to three outbound virtual hosts of each HTTP port
    listener: those whose first route goes to an ``outbound|`` cluster (not to the
    PassthroughCluster, which would send the request back to the listener itself)."""
    d = R.load(key)
    routes = {rc["name"]: rc for rc in d[T.ROUTE]}
    out = []
    for lname, rname in sorted(http_port_listeners(d).items()):
        vhosts = sorted(routes.get(rname, {}).get("virtual_hosts", []), key=lambda v: v["name"])
        picked = [v for v in vhosts if v.get("routes") and
                  v["routes"][0].get("route", {}).get("cluster", "").startswith("outbound|")]
        for v in picked[:3]:
            out.append((lname, v["domains"][0], f"/real/{lname}/{v['name'].split('.')[0]}"))
    return out


_RANDOM = ("x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "traceparent",
           "x-envoy-expected-rq-timeout-ms", "date")


# Envoy adds the route's decorator as x-envoy-decorator-operation on egress requests when the
# HCM has a tracing config (conn_manager_impl.cc traceRequest); meshproxy has no tracing yet.
_NOT_YET = ("x-envoy-decorator-operation",)


def _echo(i):
    def handler(req):
        heads = sorted((n, "*" if n in _RANDOM else v) for n, v in req.headers
                       if n not in _NOT_YET)
        return Reply(200, body=json.dumps({"u": i, "method": req.method, "target": req.target,
                                           "headers": heads}).encode())
    return handler


def _upstreams() -> list:
    ups = [Upstream(_echo(i)) for i in range(N_UPSTREAMS)]
    for u in ups:
        u.start()
    return ups


def _get(port: int, host: str, path: str):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def route_through(kind: str, key: str, vanilla: bool, ups, delta: bool = False) -> list:
    d = R.load(key)
    order = sorted(R.eds_cluster_names(d[T.CLUSTER]))
    index = {n: i % len(ups) for i, n in enumerate(order)}
    reqs = _requests(key)
    assert reqs, key
    with ControlPlane() as cp:
        serve(cp, key, vanilla, lambda n: ups[index.get(n, 0)].port, bind_http_ports=True)
        _, seen = run(kind, cp, lambda p: [(ln, host, path, _get(p.port(ln), host, path))
                                            for ln, host, path in reqs], delta)
    return seen


@needs_envoy
@pytest.mark.oracle
@pytest.mark.parametrize("key,delta", [("deathstarbench", False), ("deathstarbench", True),
                                       ("hello-openshift", False)])
def test_requests_through_the_served_config_as_envoy(key, delta):
    ups = _upstreams()
    try:
        envoy = route_through("envoy", key, True, ups, delta)
        mine = route_through("meshproxy", key, True, ups, delta)
    finally:
        for u in ups:
            u.stop()
    assert sum(1 for r in envoy if r[3][0] == 200) >= 3, envoy
    diffs = [(e, m) for e, m in zip(envoy, mine) if e != m]
    assert not diffs, "\n".join(f"{e[:3]}\n  envoy: {e[3]}\n  mine:  {m[3]}" for e, m in diffs)
    assert len(mine) == len(envoy)


def test_tls_mode_endpoints_are_never_served_in_plain_text():
    """As dumped, DeathStarBench's clusters pick Istio's mTLS socket for endpoints labelled
    ``tlsMode: istio``; meshproxy has no TLS, so those requests fail (503) and nothing reaches
    the upstream, while the config is still accepted (no NACK)."""
    d = R.load("deathstarbench")
    tls = _tls_clusters(d)
    by_vhost = {}
    for rc in d[T.ROUTE]:
        for v in rc.get("virtual_hosts", []):
            if v.get("routes"):
                by_vhost[(rc["name"], v["domains"][0])] = v["routes"][0]["route"].get("cluster")
    ports = http_port_listeners(d)
    ups = _upstreams()
    try:
        seen = route_through("meshproxy", "deathstarbench", False, ups)
    finally:
        for u in ups:
            u.stop()
    want = {True: [], False: []}
    paths = {True: set(), False: set()}
    for lname, host, path, (status, _) in seen:
        cluster = by_vhost[(ports[lname], host)]
        if cluster in tls:
            want[tls[cluster]].append(status)
            paths[tls[cluster]].add(path)
    # mTLS endpoints: refused before any byte is sent; plain-text ones (outside the mesh) work
    assert want[True] and set(want[True]) == {503}, seen
    assert set(want[False]) <= {200}, seen
    reached = {r.target for u in ups for r in u.requests}
    assert not reached & paths[True] and paths[False] <= reached


def _tls_clusters(d) -> dict:
    """{cluster: True when all its endpoints select Istio's mTLS socket, False when none do}
    (clusters with a mix, and HTTP/2 clusters, are left out)."""
    clas = {c["cluster_name"]: c for c in d[T.ENDPOINT]}
    out = {}
    for c in d[T.CLUSTER]:
        if "http2_protocol_options" in json.dumps(c.get("typed_extension_protocol_options", {})):
            continue    # HTTP/2 upstreams: the HTTP/1.1 test upstream cannot answer them
        tls_match = any(m.get("match", {}).get("tlsMode") == "istio" and
                        "tls.v3" in json.dumps(m.get("transport_socket", {}))
                        for m in c.get("transport_socket_matches", []))
        cla = clas.get(c.get("eds_cluster_config", {}).get("service_name") or c["name"], {})
        modes = {lbe.get("metadata", {}).get("filter_metadata", {})
                 .get("envoy.transport_socket_match", {}).get("tlsMode")
                 for g in cla.get("endpoints", []) for lbe in g.get("lb_endpoints", [])}
        if not modes:
            continue
        if modes == {"istio"}:
            out[c["name"]] = tls_match
        elif "istio" not in modes or not tls_match:
            out[c["name"]] = False
    return out
