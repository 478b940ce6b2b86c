"""The ADS transport: one gRPC bidirectional stream (grpcio's asyncio API) to the control plane,
feeding the sans-IO ``AdsMux``.

``AdsClient(target, node, handlers, delta=...)`` connects to ``host:port`` or ``unix:/path``,
opens ``StreamAggregatedResources`` (state of the world) or ``DeltaAggregatedResources`` and
keeps it open: when the stream ends - an error, the server going away, a GOAWAY or a clean end
after max connection age - it reconnects after a jittered exponential backoff (500 ms doubling to
30 s, reset by every response received, as ``GrpcStream`` does) and the mux re-subscribes with
the versions it holds. Stream ends are logged at debug level, as Envoy logs an OK close; repeated
failures at warning.

Each attempt uses a fresh channel (Envoy's xds-grpc cluster in Istio uses one request per
connection too), so grpc's own reconnect backoff never stacks on ours.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random as _random

import grpc

from meshproxy.xds.backoff import JitteredBackoff
from meshproxy.xds.mux import DEFAULT_INITIAL_FETCH_TIMEOUT, AdsMux

log = logging.getLogger("meshproxy.xds")

SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


@dataclasses.dataclass(frozen=True)
class Keepalive:
    """HTTP/2 PING keepalive on the ADS connection (the xds cluster's
    ``http2_protocol_options.connection_keepalive``): ``interval`` seconds between PINGs, a
    connection that does not answer within ``timeout`` is closed."""

    interval: float | None = None
    timeout: float = 20.0


def channel_options(keepalive: Keepalive | None) -> list[tuple]:
    opts = [
        # xDS responses for a large mesh are many MB (the DeathStarBench dump is ~10 MB); Envoy
        # sets no limit on them.
        ("grpc.max_receive_message_length", -1),
        ("grpc.max_send_message_length", -1),
        ("grpc.enable_retries", 0),
        # One channel per attempt; keep grpc's connect backoff out of the way of ours.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
    ]
    if keepalive is not None and keepalive.interval:
        opts += [
            ("grpc.keepalive_time_ms", max(1, int(keepalive.interval * 1000))),
            ("grpc.keepalive_timeout_ms", max(1, int(keepalive.timeout * 1000))),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return opts


class AdsClient:
    """The server plugs in here: ``handlers`` maps type URLs to ``resources.Handler``s; owners
    call ``subscribe`` / ``set_names`` / ``pause`` (delegated to the mux) from their handlers.

    Injected for tests: ``random`` (backoff jitter, [0, 1)), ``sleep`` (the wait between
    attempts), ``clock`` (the mux's timers; the running loop by default)."""

    def __init__(self, target: str, node, handlers: dict, *, delta: bool = False,
                 node_on_first_message_only: bool = True,
                 initial_fetch_timeout: float | dict | None = DEFAULT_INITIAL_FETCH_TIMEOUT,
                 keepalive: Keepalive | None = None, random=_random.random, sleep=None,
                 clock=None, backoff: JitteredBackoff | None = None):
        self.target = target
        self.delta = delta
        self._options = channel_options(keepalive)
        self._clock = clock
        self.mux = AdsMux(node, handlers, delta=delta, clock=_LazyClock(self),
                          node_on_first_message_only=node_on_first_message_only,
                          initial_fetch_timeout=initial_fetch_timeout)
        self.backoff = backoff or JitteredBackoff(random=random)
        self._sleep = sleep or asyncio.sleep
        self._wake = asyncio.Event()
        self.mux.wakeup = self._wake.set
        self._task: asyncio.Task | None = None
        self._closed = False
        self.connected = False
        self.streams_started = 0
        self.responses = 0
        self.last_close: str = ""
        self.connected_changed = None       # (bool) -> None, e.g. the control_plane gauge

    @classmethod
    def from_dynamic_config(cls, dynamic, node, handlers: dict, **kw) -> "AdsClient":
        """The client for a bootstrap's ``dynamic_resources`` (``config.dynamic.DynamicConfig``,
        whose ``ads`` names the server): its target, api_type, node rule, the xds cluster's
        HTTP/2 keepalive and the CDS/LDS initial fetch timeouts (0: wait for ever, Istio's
        choice). EDS and RDS use Envoy's default timeout."""
        from meshproxy.xds import types as T
        server = dynamic.ads
        timeouts = {}
        for type_url, source in ((T.CLUSTER, dynamic.cds), (T.LISTENER, dynamic.lds)):
            if source is not None:
                timeouts[type_url] = source.initial_fetch_timeout
        keepalive = None
        if server.keepalive_interval:
            keepalive = Keepalive(server.keepalive_interval, server.keepalive_timeout or 20.0)
        kw.setdefault("initial_fetch_timeout", timeouts)
        return cls(server.target, node, handlers, delta=server.api_type == "DELTA_GRPC",
                   node_on_first_message_only=server.set_node_on_first_message_only,
                   keepalive=keepalive, **kw)

    # ------------------------------------------------------------------ owner API

    def subscribe(self, type_url: str, names=None) -> None:
        self.mux.subscribe(type_url, names)

    def set_names(self, type_url: str, names) -> None:
        self.mux.set_names(type_url, names)

    def pause(self, *type_urls: str):
        return self.mux.pause(*type_urls)

    def names(self, type_url: str) -> frozenset:
        return self.mux.names(type_url)

    def version(self, type_url: str) -> str:
        return self.mux.version(type_url)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "AdsClient":
        if self._clock is None:
            self._clock = asyncio.get_running_loop()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ads-client")
        return self

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while not self._closed:
            got_response = await self._one_stream()
            if self._closed:
                return
            failures = 0 if got_response else failures + 1
            delay = self.backoff.next_delay()
            log_fn = log.warning if failures >= 3 else log.debug
            log_fn("xDS stream to %s closed (%s); reconnecting in %.0f ms", self.target,
                   self.last_close, delay * 1000)
            await self._sleep(delay)

    async def _one_stream(self) -> bool:
        method = DELTA_METHOD if self.delta else SOTW_METHOD
        from envoy.service.discovery.v3 import discovery_pb2
        req_cls, resp_cls = ((discovery_pb2.DeltaDiscoveryRequest,
                              discovery_pb2.DeltaDiscoveryResponse) if self.delta else
                             (discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse))
        channel = grpc.aio.insecure_channel(self.target, options=self._options)
        got_response = False
        writer = None
        try:
            call = channel.stream_stream(method, request_serializer=req_cls.SerializeToString,
                                         response_deserializer=resp_cls.FromString)()
            self.streams_started += 1
            # Like Envoy's async client, the stream exists before the connection does: the
            # initial requests are queued on it and go out once connected.
            self.mux.stream_started()
            writer = asyncio.ensure_future(self._write(call))
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    self.last_close = "stream ended by the server"
                    break
                if not got_response:
                    got_response = True
                    self._set_connected(True)
                # GrpcStream::onReceiveMessage resets the backoff on every message.
                self.backoff.reset()
                self.responses += 1
                self.mux.on_response(resp)
        except grpc.aio.AioRpcError as exc:
            self.last_close = f"{exc.code().name}: {exc.details()}"
        except Exception as exc:  # noqa: BLE001 - a bug in an owner must not end xDS for good
            log.exception("xDS: stream to %s failed", self.target)
            self.last_close = f"{type(exc).__name__}: {exc}"
        finally:
            if writer is not None:
                writer.cancel()
            self._set_connected(False)
            self.mux.stream_closed()
            await channel.close(grace=None)
        return got_response

    async def _write(self, call) -> None:
        try:
            while True:
                reqs = self.mux.take_requests()
                if not reqs:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                for req in reqs:
                    await call.write(req)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            # The reader sees the same end of stream and handles it.
            log.debug("xDS: write failed: %s", exc)

    def _set_connected(self, up: bool) -> None:
        if up != self.connected:
            self.connected = up
            if self.connected_changed is not None:
                self.connected_changed(up)

    def __repr__(self) -> str:
        return (f"<AdsClient {self.target} {'connected' if self.connected else 'disconnected'} "
                f"streams={self.streams_started} responses={self.responses} {self.mux!r}>")


class _LazyClock:
    """The mux's clock: the injected one, else the running loop once the client starts."""

    def __init__(self, client: AdsClient):
        self._client = client

    def _c(self):
        return self._client._clock or asyncio.get_event_loop()

    def time(self) -> float:
        return self._c().time()

    def call_later(self, delay, fn, *args):
        return self._c().call_later(delay, fn, *args)
