"""The server: owns the event loop, the cluster and listener managers and the admin API; runs
start-up in Envoy's order and shuts down on SIGTERM/SIGINT or ``/quitquitquit``.

Start-up: translate the whole bootstrap first (a bad one exits 1 before any port is bound),
add clusters and wait for DNS clusters' first answers, bind the admin listener, bind every
listener, then report LIVE (``server.state`` 0, ``listener_manager.workers_started`` 1).
Shutdown: stop accepting, let HTTP connections finish their current response with
``Connection: close`` (idle ones close at once), and exit 0 when connections are gone or
``--drain-time-s`` has passed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from meshproxy import __version__, log as mplog
from meshproxy.config.errors import ConfigError
from meshproxy.stats import Store, stat_block

log = logging.getLogger("meshproxy.main")

ServerStats = stat_block(
    "ServerStats",
    counters=("static_unknown_fields", "dynamic_unknown_fields", "wip_protos",
              "debug_assertion_failures", "envoy_bug_failures", "envoy_notifications",
              "dropped_stat_flushes", "main_thread.watchdog_miss",
              "main_thread.watchdog_mega_miss", "worker_0.watchdog_miss",
              "worker_0.watchdog_mega_miss"),
    gauges=("state", "live", "uptime", "concurrency", "hot_restart_epoch", "total_connections",
            "parent_connections", "memory_allocated", "memory_heap_size",
            "memory_physical_size", "days_until_first_cert_expiring",
            "seconds_until_first_ocsp_response_expiring", "version", "stats_recent_lookups",
            "compilation_settings.fips_mode"),
)

# Process-wide stats Envoy has outside "server." (watchdogs, runtime, file flushing, the
# HTTP/1 codec's global counters, per-thread cluster manager).
GlobalStats = stat_block(
    "GlobalStats",
    counters=("main_thread.watchdog_miss", "main_thread.watchdog_mega_miss",
              "workers.watchdog_miss", "workers.watchdog_mega_miss", "runtime.load_error",
              "runtime.load_success", "runtime.override_dir_exists",
              "runtime.override_dir_not_exists", "runtime.deprecated_feature_use",
              "filesystem.flushed_by_timer", "filesystem.reopen_failed",
              "filesystem.write_buffered", "filesystem.write_completed",
              "filesystem.write_failed", "http1.dropped_headers_with_underscores",
              "http1.metadata_not_supported_error",
              "http1.requests_rejected_with_underscores_in_headers", "http1.response_flood",
              "envoy.overload_actions.reset_high_memory_stream.count",
              "meshproxy.extensions_skipped"),
    gauges=("runtime.num_keys", "runtime.num_layers", "runtime.admin_overrides_active",
            "runtime.deprecated_feature_seen_since_process_start",
            "filesystem.write_total_buffered",
            "thread_local_cluster_manager.main_thread.clusters_inflated",
            "thread_local_cluster_manager.worker_0.clusters_inflated"),
)

# Listener-filter stats are global in Envoy (``tls_inspector.tls_found`` ...).
InspectorStats = stat_block(
    "InspectorStats",
    counters=("tls_inspector.client_hello_too_large", "tls_inspector.tls_found",
              "tls_inspector.tls_not_found", "tls_inspector.alpn_found",
              "tls_inspector.alpn_not_found", "tls_inspector.sni_found",
              "tls_inspector.sni_not_found", "http_inspector.read_error",
              "http_inspector.http10_found", "http_inspector.http11_found",
              "http_inspector.http2_found", "http_inspector.http_not_found"),
)

# envoy.admin.v3.ServerInfo.State
LIVE, DRAINING, PRE_INITIALIZING, INITIALIZING = 0, 1, 2, 3
STATE_NAMES = {LIVE: "LIVE", DRAINING: "DRAINING", PRE_INITIALIZING: "PRE_INITIALIZING",
               INITIALIZING: "INITIALIZING"}


class ServerContext:
    """What network filters and the admin API need from the server."""

    def __init__(self, loop, options, config):
        self.loop = loop
        self.options = options
        self.config = config
        self.store = Store()
        self.cluster_manager = None
        self.listener_manager = None
        self.draining = False
        self.start_time = time.time()
        self.state = PRE_INITIALIZING
        self.healthcheck_failed = False
        self.shutdown_event = asyncio.Event()
        self.admin = None
        self.global_stats = None
        self.inspector_stats = InspectorStats()
        self.rds = None        # router.rds.RdsRegistry when xDS serves route configurations
        self.xds = None        # (AdsClient, Catalog, ServerApplier) when ADS configures us
        self.xds_record = {}   # type URL -> {name: (version, time)} of accepted resources
        self.store.register("", self.inspector_stats)


def _server_stats(ctx) -> "ServerStats":
    st = ServerStats()
    # What Envoy 1.40 writes at start-up (so "usedonly" lists them), with --disable-hot-restart.
    st.mark_used("state", "live", "uptime", "concurrency", "total_connections",
                 "days_until_first_cert_expiring", "version", "memory_allocated",
                 "memory_heap_size", "memory_physical_size", "compilation_settings.fips_mode",
                 "stats_recent_lookups")
    st.mark_used("static_unknown_fields", "dynamic_unknown_fields", "wip_protos")
    st.concurrency = ctx.options.concurrency
    st.hot_restart_epoch = ctx.options.restart_epoch
    st.days_until_first_cert_expiring = 4294967295
    st.version = int("".join(f"{int(p):02d}" for p in __version__.split(".")))
    return st


def _global_stats() -> "GlobalStats":
    g = GlobalStats()
    g.runtime__load_success = 2
    g.runtime__override_dir_not_exists = 2
    g.mark_used("runtime.num_keys", "runtime.num_layers",
                "thread_local_cluster_manager.main_thread.clusters_inflated",
                "thread_local_cluster_manager.worker_0.clusters_inflated")
    return g


def _refresh_server_stats(ctx, st, g):
    """A stats source: refreshes the computed gauges; yields no extra stats."""
    from meshproxy.admin.status import server_state
    from meshproxy.config.extensions import SkipCounter
    state = server_state(ctx)
    st.state = state
    st.live = 1 if state == LIVE else 0
    st.uptime = int(time.time() - ctx.start_time)
    lm = ctx.listener_manager
    st.total_connections = lm.active_connections() if lm is not None else 0
    rss = _rss_bytes()
    st.memory_allocated = rss
    st.memory_heap_size = rss
    st.memory_physical_size = rss
    g.meshproxy__extensions_skipped = SkipCounter.skipped
    cm = ctx.cluster_manager
    n = len(cm.clusters) if cm is not None else 0
    g.thread_local_cluster_manager__main_thread__clusters_inflated = n
    g.thread_local_cluster_manager__worker_0__clusters_inflated = n
    return ()


def _settle_heap() -> None:
    """Move everything built at start-up (protobuf descriptors, translated config) out of the
    cycle collector's sight, and collect young objects less often: per-request objects are
    freed by reference counting, and a full collection over the start-up heap cost ~15 ms."""
    import gc
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 20, 20)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Server:
    def __init__(self, config, options):
        self.config = config
        self.options = options
        self.ctx = None

    async def serve(self) -> int:
        from meshproxy.admin.server import Admin
        from meshproxy.listener.manager import BindError, ListenerManager
        from meshproxy.upstream.manager import ClusterManager

        loop = asyncio.get_running_loop()
        ctx = self.ctx = ServerContext(loop, self.options, self.config)
        store = ctx.store
        sstats = _server_stats(ctx)
        sstats.state = INITIALIZING
        ctx.state = INITIALIZING
        gstats = ctx.global_stats = _global_stats()
        store.register("server.", sstats)
        store.register("", gstats)
        store.add_source(lambda: _refresh_server_stats(ctx, sstats, gstats))
        if self.options.concurrency > 1:
            log.info("--concurrency %d: meshproxy runs one event loop for now",
                     self.options.concurrency)
        for w in self.config.warnings:
            log.warning("%s", w)
        cm = ctx.cluster_manager = ClusterManager(loop, store)
        for c in self.config.clusters:
            cm.add(c)
        lm = ctx.listener_manager = ListenerManager(ctx, store)
        for lc in self.config.listeners:
            lm.add(lc)
        try:
            if self.config.admin_address is not None:
                ctx.admin = Admin(ctx)
                ctx.admin.bind()
                await ctx.admin.start()
                self._write_admin_address_path(ctx)
            await cm.initialize()
            dyn = self.config.dynamic
            if dyn is not None and dyn.ads is not None:
                # Envoy's init manager: listeners serve only once the first CDS/EDS/LDS/RDS
                # round is in (or its initial fetch timed out); /ready says LIVE after that.
                from meshproxy.xds.start import start_ads
                ready = start_ads(ctx, dyn, self.config.bootstrap.node)
                stop = asyncio.ensure_future(ctx.shutdown_event.wait())
                done, _ = await asyncio.wait({ready, stop},
                                             return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    await self._drain_and_stop()
                    return 0
                stop.cancel()
            await lm.start_all()
            cm.own_addresses = lm.bound_addresses()
            if ctx.admin is not None and isinstance(ctx.admin.bound_address, tuple):
                cm.own_addresses.add(tuple(ctx.admin.bound_address[:2]))
        except (BindError, OSError) as exc:
            log.critical("error initializing configuration: %s", exc)
            return 1
        ctx.state = LIVE
        _settle_heap()
        log.info("starting main dispatch loop")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown, sig.name)
        await ctx.shutdown_event.wait()
        await self._drain_and_stop()
        return 0

    def _write_admin_address_path(self, ctx):
        path = self.options.admin_address_path
        if path:
            with open(path, "w") as f:
                f.write(ctx.admin.address_text())

    def request_shutdown(self, why: str = "") -> None:
        log.warning("caught %s", why or "shutdown request")
        self.ctx.shutdown_event.set()

    async def _drain_and_stop(self) -> None:
        ctx = self.ctx
        ctx.state = DRAINING
        ctx.draining = True
        lm = ctx.listener_manager
        lm.stop_accepting()
        lm.drain()
        deadline = ctx.loop.time() + self.options.drain_time_s
        while lm.active_connections() and ctx.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for al in lm.listeners.values():
            for conn in list(al.connections):
                conn.close(flush=True)
        if ctx.admin is not None:
            ctx.admin.stop()
        if ctx.xds is not None:
            await ctx.xds[0].close()
        ctx.cluster_manager.close()
        log.warning("exiting")


def run(opts) -> int:
    """Entry point after the command line is parsed: validate or serve."""
    from meshproxy.config.bootstrap import build_server_config, load_bootstrap

    shown = opts.config_path or ""
    try:
        bootstrap = load_bootstrap(opts.config_path, opts.config_yaml,
                                   allow_unknown_fields=opts.allow_unknown_static_fields,
                                   service_cluster=opts.service_cluster,
                                   service_node=opts.service_node,
                                   service_zone=opts.service_zone)
        config = build_server_config(bootstrap, opts.stats_tags)
    except ConfigError as exc:
        log.critical("error initializing configuration '%s': %s", shown, exc)
        return 1
    if config.log_format and not opts.log_format_set:
        mplog.setup(opts.log_level, opts.component_log_level, config.log_format,
                    opts.log_path or None)
    if opts.mode == "validate":
        for w in config.warnings:
            log.warning("%s", w)
        print(f"configuration '{shown}' OK")
        return 0
    if opts.mode == "init_only":
        return 0
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    try:
        return runner(Server(config, opts).serve())
    except KeyboardInterrupt:
        return 0

