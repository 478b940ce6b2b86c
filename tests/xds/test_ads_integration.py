"""meshproxy's ADS client against the test control plane through real gRPC: SotW and delta, over
TCP on loopback and over a Unix socket. Waits are on the control plane's recorded requests
(a condition variable), never on sleeps."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import any_pb2

from meshproxy.xds import types as T
from meshproxy.xds.ads_client import AdsClient
from meshproxy.xds.catalog import Catalog
from tests.xds import builders as B
from tests.xds.control_plane import RawResource
from tests.xds.sequences import acked, nacked, steps

NODE = base_pb2.Node(id="sidecar~127.0.0.1~app.default~default.svc.cluster.local",
                     cluster="app.default")
INITIAL_SOTW = ["REQ CDS v= n= [] *node", "REQ EDS v= n= [backend]", "ACK CDS v=c1 n=1 []",
                "REQ LDS v= n= []", "ACK EDS v=e1 n=2 [backend]", "REQ RDS v= n= [route1]",
                "ACK LDS v=l1 n=3 []", "ACK RDS v=r1 n=4 [route1]"]
INITIAL_DELTA = ["REQ CDS n= *node", "REQ EDS n= +[backend]", "ACK CDS n=1", "REQ LDS n=",
                 "ACK EDS n=2", "REQ RDS n= +[route1]", "ACK LDS n=3", "ACK RDS n=4"]


def serve_initial(cp):
    cp.set_resources(T.CLUSTER, [B.cluster("backend")], "c1")
    cp.set_resources(T.ENDPOINT, [B.cla("backend", 9001)], "e1")
    cp.set_resources(T.LISTENER, [B.listener("http", "route1")], "l1")
    cp.set_resources(T.ROUTE, [B.route("route1", "backend")], "r1")


class Proxy:
    """The xDS side of a sidecar: AdsClient + Catalog, as the server will wire them."""

    def __init__(self, cp, delta, **kw):
        kw.setdefault("random", lambda: 0.0)       # reconnect at once (jitter drawn as 0)
        self.client = AdsClient(cp.target, NODE, {}, delta=delta, **kw)
        self.catalog = Catalog(self.client)
        self.client.mux.handlers.update(self.catalog.handlers())

    def start(self):
        self.client.start()
        self.catalog.start()
        return self

    async def close(self):
        await self.client.close()


def run(coro_fn, timeout=30):
    async def main():
        return await asyncio.wait_for(coro_fn(), timeout)
    return asyncio.run(main())


def test_initial_sync_update_and_partial_nack(control_plane, delta):
    cp = control_plane
    serve_initial(cp)

    async def body():
        p = Proxy(cp, delta).start()
        try:
            await cp.wait_for_async(acked(T.ROUTE))
            assert steps(cp.requests) == (INITIAL_DELTA if delta else INITIAL_SOTW)
            assert p.catalog.ready
            assert p.client.version(T.CLUSTER) == "c1"

            # an endpoint update is applied and ACKed
            n = len(cp.requests)
            cp.set_resources(T.ENDPOINT, [B.cla("backend", 9002)], "e2")
            await cp.wait_for_async(lambda rs: acked(T.ENDPOINT, None if delta else "e2")(rs[n:]))
            cla = p.catalog.resources[T.ENDPOINT]["backend"].message
            assert cla.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value \
                == 9002

            # a bad cluster next to a good new one: the good one is applied, the push NACKed
            # with the last accepted version
            n = len(cp.requests)
            cp.set_resources(T.CLUSTER, [B.cluster("backend"), B.static_cluster("s", 9003),
                                         B.bad_cluster("bad")], "c2")
            await cp.wait_for_async(lambda rs: nacked(T.CLUSTER)(rs[n:]))
            nack = [r for r in cp.requests[n:] if r.error][0]
            assert nack.error[0] == 13
            assert nack.error[1].startswith("Error adding/updating cluster(s) bad: lb_policy: ")
            if not delta:
                assert nack.version_info == "c1"
            assert set(p.catalog.resources[T.CLUSTER]) == {"backend", "s"}
            assert p.client.mux.subscriptions[T.CLUSTER].rejected == 1
        finally:
            await p.close()
    run(body)


def test_control_plane_restart_resubscribes_with_last_versions(control_plane, delta):
    cp = control_plane
    serve_initial(cp)

    async def body():
        p = Proxy(cp, delta).start()
        try:
            await cp.wait_for_async(acked(T.ROUTE))
            first = cp.requests[0].stream
            await asyncio.get_running_loop().run_in_executor(None, cp.restart)
            # the new stream re-sends all four subscriptions, then ACKs the fresh pushes
            await cp.wait_for_async(lambda rs: sum(
                1 for r in rs if r.stream != first and r.nonce) >= 4)
            again = [r for r in cp.requests if r.stream != first]
            assert [T.short(r.type_url) for r in again[:4]] == ["CDS", "EDS", "LDS", "RDS"]
            assert [r.has_node for r in again[:4]] == [True, False, False, False]
            assert all(r.nonce == "" for r in again[:4])
            if delta:
                assert [dict(r.initial_versions).keys() for r in again[:4]] == \
                    [{"backend"}, {"backend"}, {"http"}, {"route1"}]
                assert [r.subscribe for r in again[:4]] == \
                    [(), ("backend",), (), ("route1",)]
            else:
                assert [r.version_info for r in again[:4]] == ["c1", "e1", "l1", "r1"]
                assert [r.names for r in again[:4]] == [(), ("backend",), (), ("route1",)]
            assert all(not r.error for r in again)
            assert p.client.streams_started >= 2 and p.client.connected
        finally:
            await p.close()
    run(body)


class _Capture(logging.Handler):
    """Records of one logger, whatever other tests did to the loggers above it (meshproxy's
    log setup may stop propagation to the root logger that caplog listens on)."""

    def __init__(self, name):
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(name)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self._level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)


def test_clean_stream_end_reconnects_silently(control_plane, delta):
    cp = control_plane
    serve_initial(cp)

    async def body():
        p = Proxy(cp, delta).start()
        try:
            await cp.wait_for_async(acked(T.ROUTE))
            with _Capture("meshproxy.xds") as logs:
                await asyncio.get_running_loop().run_in_executor(None, cp.end_streams)
                await cp.wait_for_async(lambda rs: any(r.stream == 2 and r.type_url == T.ROUTE
                                                       and r.nonce for r in rs))
            assert not [r for r in logs.records if r.levelno >= logging.WARNING]
            assert any("stream ended by the server" in r.getMessage() for r in logs.records)
            # the new stream re-subscribed with what the catalog holds: nothing re-applied
            assert [r.version_info for r in cp.requests if r.stream == 2 and not r.nonce] == \
                (["", "", "", ""] if delta else ["c1", "e1", "l1", "r1"])
            assert p.catalog.ready and p.client.streams_started == 2
        finally:
            await p.close()
    run(body)


def test_unknown_istio_type_is_acked_and_ignored(control_plane):
    cp = control_plane
    name_table = any_pb2.Any(type_url=T.NAME_TABLE, value=b"\x0a\x05hosts")
    cp.set_resources(T.NAME_TABLE, [RawResource("", name_table)], "1")

    async def body():
        client = AdsClient(cp.target, NODE, {}, random=lambda: 0.0)
        client.mux.handlers.update(Catalog(client).handlers())
        client.start()
        client.subscribe(T.NAME_TABLE)
        try:
            await cp.wait_for_async(acked(T.NAME_TABLE, "1"))
        finally:
            await client.close()
    run(body)


def test_backoff_schedule_while_the_control_plane_is_down():
    with socket.socket() as s:          # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays = []

    async def body():
        done = asyncio.Event()

        async def sleep(d):
            delays.append(round(d, 3))
            if len(delays) == 8:
                done.set()
            await asyncio.sleep(0)
        client = AdsClient(f"127.0.0.1:{port}", NODE, {T.CLUSTER: Catalog(None).handlers()[
            T.CLUSTER]}, random=lambda: 0.999999, sleep=sleep)
        client.start()
        client.subscribe(T.CLUSTER)
        try:
            await done.wait()
        finally:
            await client.close()
        assert client.responses == 0 and not client.connected
        assert "UNAVAILABLE" in client.last_close
    run(body)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_uvloop_runs_the_client(tmp_path):
    uvloop = pytest.importorskip("uvloop")
    from tests.xds.control_plane import ControlPlane
    with ControlPlane(unix_path=str(tmp_path / "xds.sock")) as cp:
        serve_initial(cp)

        async def body():
            p = Proxy(cp, True).start()
            try:
                await cp.wait_for_async(acked(T.ROUTE))
            finally:
                await p.close()
        uvloop.run(asyncio.wait_for(body(), 30))
        assert steps(cp.requests) == INITIAL_DELTA


def test_an_owner_that_raises_outside_apply_costs_a_reconnect_not_the_client(control_plane):
    cp = control_plane
    serve_initial(cp)

    async def body():
        p = Proxy(cp, False)
        real = p.catalog.failure
        calls = []

        def failing(f):
            calls.append(f)
            if len(calls) == 1 and f.reason == "rejected":
                raise RuntimeError("owner bug")
            real(f)
        p.catalog.failure = failing
        p.start()
        try:
            await cp.wait_for_async(acked(T.ROUTE))
            cp.set_resources(T.CLUSTER, [B.cluster("backend"), B.bad_cluster()], "c2")
            # the failure hook blew up: the stream is dropped and re-made, the NACK repeated
            await cp.wait_for_async(lambda rs: sum(1 for r in rs if r.error) >= 1
                                    and any(r.stream == 2 and r.type_url == T.ROUTE and r.nonce
                                            for r in rs))
            assert p.client.streams_started == 2 and "owner bug" in p.client.last_close
        finally:
            await p.close()
    run(body)
