"""A small ADS server for tests: state of the world and delta, over TCP (port 0) or a Unix socket.

It serves a snapshot per type URL, pushes changes to every subscribed stream, answers each
request the way istiod and go-control-plane do, and records every request it receives so tests
can compare what Envoy and meshproxy send for the same script of pushes.

Server-side rules (xDS protocol, "ACK and NACK semantics" and "Resource updates"):
- a request whose ``response_nonce`` is not the last nonce sent for its type is stale: recorded,
  not treated as an ACK or NACK;
- the first request of a type on a stream is always answered (istiod pushes a full config on a
  new connection; Envoy's initial fetch waits for that answer);
- SotW: a later request is answered when its names changed or its ``version_info`` is behind the
  snapshot and it is not a NACK; delta: when the subscription brings resources the client does
  not have at their current version, or removals;
- a push answers every stream subscribed to the type.

The server runs on its own event loop in a thread, so it can drive a subprocess (Envoy) while the
test thread waits, and a client on another loop. ``wait_for`` blocks on a condition variable,
never sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import os
import threading

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, duration_pb2

from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.xds import types as T


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it."""

    stream: int
    delta: bool
    type_url: str
    version_info: str           # SotW version_info ("" in delta)
    nonce: str                  # response_nonce
    names: tuple                # SotW resource_names, sorted
    subscribe: tuple            # delta resource_names_subscribe, sorted
    unsubscribe: tuple          # delta resource_names_unsubscribe, sorted
    initial_versions: tuple     # delta initial_resource_versions, sorted (name, version) pairs
    error: tuple | None         # (code, message) of error_detail, or None
    has_node: bool
    node_id: str
    stale: bool                 # nonce did not match the last one sent for the type

    @property
    def is_nack(self) -> bool:
        return self.error is not None

    def short(self) -> str:
        kind = "NACK" if self.error else ("ACK" if self.nonce else "REQ")
        names = self.subscribe if self.delta else self.names
        return f"{kind} {T.short(self.type_url)} v={self.version_info!r} n={self.nonce!r} {list(names)}"


@dataclasses.dataclass
class RawResource:
    """A resource given as an ``Any`` (for bad or unknown-typed resources), with its name."""

    name: str
    any: any_pb2.Any


@dataclasses.dataclass
class _Entry:
    name: str
    any: any_pb2.Any
    version: str            # per-resource version (a content hash)
    ttl: float | None


def to_any(type_url: str, resource) -> tuple[str, any_pb2.Any]:
    """(name, Any) for a proto message, a dict (parsed as the type's message) or a RawResource."""
    if isinstance(resource, RawResource):
        return resource.name, resource.any
    if isinstance(resource, dict):
        cls = message_class(T.message_name(type_url))
        msg = parse_json_into(resource, cls())
    else:
        msg = resource
    a = any_pb2.Any()
    a.Pack(msg)
    return T.resource_name(type_url, msg), a


_FILE_KEYS = {"clusters": T.CLUSTER, "endpoints": T.ENDPOINT, "listeners": T.LISTENER,
              "routes": T.ROUTE, "secrets": T.SECRET}


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


class _TypeSnapshot:
    def __init__(self):
        self.version = ""
        self.entries: dict[str, _Entry] = {}


class ControlPlane:
    """``ControlPlane(unix_path=None)``; ``start()``, ``set_resources()``, ``wait_for()``,
    ``stop()``, ``restart()``. ``target`` is the gRPC target, ``envoy_address()`` the address
    for an Envoy bootstrap."""

    def __init__(self, unix_path: str | None = None, host: str = "127.0.0.1", port: int = 0):
        self.unix_path = unix_path
        self.host = host
        self.port = port
        self.requests: list[RequestRecord] = []
        self._cond = threading.Condition()
        self._snapshots: dict[str, _TypeSnapshot] = {}
        self._streams: dict[int, object] = {}
        self._stream_ids = itertools.count(1)
        self.streams_opened = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="test-control-plane")
        self._thread.start()
        self._server = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def target(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path else f"{self.host}:{self.port}"

    def envoy_address(self) -> dict:
        if self.unix_path:
            return {"pipe": {"path": self.unix_path}}
        return {"socket_address": {"address": self.host, "port_value": self.port}}

    def _call(self, coro, timeout=10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> "ControlPlane":
        self._call(self._start())
        return self

    async def _start(self):
        server = grpc.aio.server(options=[
            # Clients may ping as often as they like (keepalive tests, Envoy's defaults).
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", 0),
        ])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        if self.unix_path:
            if os.path.exists(self.unix_path):
                os.unlink(self.unix_path)
            server.add_insecure_port(f"unix:{self.unix_path}")
        else:
            self.port = server.add_insecure_port(f"{self.host}:{self.port}")
        await server.start()
        self._server = server

    def stop(self) -> None:
        """Kill the server: open streams end with an error, as when istiod goes away."""
        if self._server is not None:
            self._call(self._stop())

    async def _stop(self):
        server, self._server = self._server, None
        await server.stop(None)
        self._streams.clear()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def end_streams(self) -> None:
        """End every open stream cleanly (status OK), as a control plane does on max age."""
        self._call(self._end_streams())

    async def _end_streams(self):
        for s in list(self._streams.values()):
            s.outbox.put_nowait(None)

    # ------------------------------------------------------------------ resources

    def set_resources(self, type_url: str, resources, version: str, *, ttl: dict | None = None,
                      push: bool = True) -> None:
        """Replace the snapshot of ``type_url`` (a list of messages, dicts or RawResources) at
        ``version``; push it to subscribed streams unless ``push`` is false. ``ttl`` maps
        resource names to seconds."""
        entries = {}
        for r in resources:
            name, a = to_any(type_url, r)
            digest = hashlib.sha256(a.SerializeToString(deterministic=True)).hexdigest()[:12]
            entries[name] = _Entry(name, a, digest, (ttl or {}).get(name))
        self._call(self._set(type_url, entries, version, push))

    def load_file(self, path: str, version: str, *, push: bool = True) -> dict:
        """Serve the resources of a YAML or JSON file at ``version``: a mapping of type (a type
        URL, or ``clusters``/``endpoints``/``listeners``/``routes``/``secrets``) to a list of
        resources, or a list of resources that each carry their ``@type``. Returns
        {type_url: [names]}."""
        from meshproxy.config.bootstrap import parse_yaml
        with open(path) as f:
            data = parse_yaml(f.read(), path)
        by_type: dict[str, list] = {}
        if isinstance(data, dict):
            for key, items in data.items():
                by_type.setdefault(_FILE_KEYS.get(key, key), []).extend(items or [])
        else:
            for item in data or []:
                item = dict(item)
                by_type.setdefault(item.pop("@type"), []).append(item)
        out = {}
        for type_url, items in by_type.items():
            self.set_resources(type_url, items, version, push=push)
            out[type_url] = sorted(self.snapshot(type_url).entries)
        return out

    async def _set(self, type_url, entries, version, push):
        snap = self._snapshots.setdefault(type_url, _TypeSnapshot())
        snap.entries = entries
        snap.version = version
        if push:
            for s in list(self._streams.values()):
                s.push(type_url)

    def snapshot(self, type_url: str) -> _TypeSnapshot:
        return self._snapshots.setdefault(type_url, _TypeSnapshot())

    # ------------------------------------------------------------------ recording

    def record(self, rec: RequestRecord) -> None:
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 15.0):
        """Block until ``predicate(requests)`` is truthy; return its value. Raises on timeout
        with the requests seen so far."""
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.requests), timeout)
            if not ok:
                seen = "\n".join(r.short() for r in self.requests)
                raise TimeoutError(f"control plane: condition not met; requests:\n{seen}")
            return ok

    async def wait_for_async(self, predicate, timeout: float = 15.0):
        return await asyncio.get_running_loop().run_in_executor(
            None, self.wait_for, predicate, timeout)

    def wait_acked(self, type_url: str, version: str, count: int = 1, timeout: float = 15.0):
        """Wait until ``count`` ACKs of ``version`` for ``type_url`` arrived (any stream)."""
        return self.wait_for(lambda reqs: sum(
            1 for r in reqs if r.type_url == type_url and r.nonce and not r.error and not r.stale
            and (r.delta or r.version_info == version)) >= count, timeout)

    def of_type(self, type_url: str) -> list[RequestRecord]:
        with self._cond:
            return [r for r in self.requests if r.type_url == type_url]


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, cp: ControlPlane):
        self.cp = cp

    async def StreamAggregatedResources(self, request_iterator, context):
        async for resp in _serve(self.cp, _SotwStream, request_iterator):
            yield resp

    async def DeltaAggregatedResources(self, request_iterator, context):
        async for resp in _serve(self.cp, _DeltaStream, request_iterator):
            yield resp


async def _serve(cp, stream_cls, request_iterator):
    sid = next(cp._stream_ids)
    cp.streams_opened += 1
    stream = stream_cls(cp, sid)
    cp._streams[sid] = stream

    async def read():
        try:
            async for req in request_iterator:
                stream.on_request(req)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            stream.outbox.put_nowait(None)

    reader = asyncio.ensure_future(read())
    try:
        while True:
            resp = await stream.outbox.get()
            if resp is None:
                break
            yield resp
    finally:
        reader.cancel()
        cp._streams.pop(sid, None)


class _StreamBase:
    delta = False

    def __init__(self, cp: ControlPlane, sid: int):
        self.cp = cp
        self.sid = sid
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.nonces = itertools.count(1)
        self.types: dict[str, dict] = {}   # type_url -> per-type server state

    def _record(self, req, stale, **kw):
        err = None
        if req.HasField("error_detail"):
            err = (req.error_detail.code, req.error_detail.message)
        self.cp.record(RequestRecord(
            stream=self.sid, delta=self.delta, type_url=req.type_url, nonce=req.response_nonce,
            error=err, has_node=req.HasField("node"), node_id=req.node.id, stale=stale, **kw))

    def _next_nonce(self) -> str:
        return str(next(self.nonces))


class _SotwStream(_StreamBase):
    def on_request(self, req: discovery_pb2.DiscoveryRequest):
        st = self.types.get(req.type_url)
        first = st is None
        if first:
            st = self.types[req.type_url] = {"nonce": "", "names": None}
        stale = bool(req.response_nonce) and req.response_nonce != st["nonce"]
        self._record(req, stale, version_info=req.version_info,
                     names=tuple(sorted(req.resource_names)), subscribe=(), unsubscribe=(),
                     initial_versions=())
        if stale:
            return
        names = frozenset(req.resource_names)
        changed = names != st["names"]
        st["names"] = names
        snap = self.cp.snapshot(req.type_url)
        if first or changed or (not req.HasField("error_detail")
                                and req.version_info != snap.version):
            self.push(req.type_url)

    def push(self, type_url: str):
        st = self.types.get(type_url)
        if st is None:
            return
        snap = self.cp.snapshot(type_url)
        names = st["names"]
        wildcard = (type_url in T.WILDCARD_TYPES and not names) or "*" in names
        resp = discovery_pb2.DiscoveryResponse(type_url=type_url, version_info=snap.version)
        for e in snap.entries.values():
            if not wildcard and e.name not in names:
                continue
            if e.ttl is not None:
                wrapped = discovery_pb2.Resource(name=e.name, version=e.version,
                                                 ttl=_duration(e.ttl))
                wrapped.resource.CopyFrom(e.any)
                resp.resources.add().Pack(wrapped)
            else:
                resp.resources.add().CopyFrom(e.any)
        resp.nonce = st["nonce"] = self._next_nonce()
        self.outbox.put_nowait(resp)


class _DeltaStream(_StreamBase):
    delta = True

    def on_request(self, req: discovery_pb2.DeltaDiscoveryRequest):
        st = self.types.get(req.type_url)
        first = st is None
        if first:
            st = self.types[req.type_url] = {"nonce": "", "names": set(), "wildcard": False,
                                             "client": dict(req.initial_resource_versions)}
            # An empty first subscription is the legacy wildcard (xDS protocol, "How the client
            # specifies what resources to return").
            if not req.resource_names_subscribe and req.type_url in T.WILDCARD_TYPES:
                st["wildcard"] = True
        stale = bool(req.response_nonce) and req.response_nonce != st["nonce"]
        self._record(req, stale, version_info="", names=(),
                     subscribe=tuple(sorted(req.resource_names_subscribe)),
                     unsubscribe=tuple(sorted(req.resource_names_unsubscribe)),
                     initial_versions=tuple(sorted(req.initial_resource_versions.items())))
        for n in req.resource_names_subscribe:
            if n == "*":
                st["wildcard"] = True
            else:
                st["names"].add(n)
        for n in req.resource_names_unsubscribe:
            if n == "*":
                st["wildcard"] = False
            else:
                st["names"].discard(n)
                st["client"].pop(n, None)
        if req.HasField("error_detail") and not stale:
            return
        self.push(req.type_url, always=first)

    def push(self, type_url: str, always: bool = False):
        st = self.types.get(type_url)
        if st is None:
            return
        snap = self.cp.snapshot(type_url)
        resp = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url,
                                                    system_version_info=snap.version)

        def wanted(name):
            return st["wildcard"] or name in st["names"]
        for e in snap.entries.values():
            if wanted(e.name) and st["client"].get(e.name) != e.version:
                r = resp.resources.add(name=e.name, version=e.version)
                r.resource.CopyFrom(e.any)
                if e.ttl is not None:
                    r.ttl.CopyFrom(_duration(e.ttl))
                st["client"][e.name] = e.version
        for name in sorted(st["client"]):
            if name not in snap.entries and wanted(name):
                resp.removed_resources.append(name)
                del st["client"][name]
        if not (resp.resources or resp.removed_resources or always):
            return
        resp.nonce = st["nonce"] = self._next_nonce()
        self.outbox.put_nowait(resp)
