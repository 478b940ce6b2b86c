"""The admin listener: an HTTP connection manager of its own on the bootstrap's
``admin.address``, whose only route is the admin handler.

It is a separate listener with a separate filter chain, so no data-plane listener can ever
route to it (DESIGN.md, "Safe defaults"): the admin route action exists only in this listener's
route table, and data-plane route tables are built from config, which cannot name it. As in
Envoy, a data-plane cluster that points at the admin address reaches it like any other
upstream; that is the operator's choice (Istio's 15090 listener does it for
``/stats/prometheus``). Its stats are ``http.admin.*`` and ``listener.admin.*``, as in Envoy.
"""

from __future__ import annotations

from meshproxy.http.hcm_config import HcmStats, default_hcm_config
from meshproxy.listener.config import (MAIN_THREAD_ONLY, FilterChain, ListenerConfig,
                                       ListenerHttpStats)
from meshproxy.listener.manager import ActiveListener
from meshproxy.router.route_table import (ADMIN, PREFIX, Route, RouteMatch, RouteTable,
                                          VirtualHost)
from meshproxy.stats.config import from_bootstrap


class AdminAction:
    """Route action whose per-stream filter is the admin handler."""

    def __init__(self, ctx):
        self.ctx = ctx

    def filter_for(self, stream):
        from meshproxy.admin.handlers import AdminFilter
        return AdminFilter(stream, self.ctx)


def _admin_route_table(ctx) -> RouteTable:
    table = RouteTable("admin")
    vh = VirtualHost("admin", ("*",))
    vh.table = table
    vh.routes = (Route("admin", RouteMatch(PREFIX, b""), ADMIN, AdminAction(ctx), None, None,
                       vh),)
    table.default = vh
    table.only_default = True
    table.vhosts = (vh,)
    return table


# The admin HCM has no router filter, so Envoy has no router stats under http.admin.
_ROUTER_STATS = ("no_route", "no_cluster", "rq_direct_response", "rq_redirect", "rq_total",
                 "rq_reset_after_downstream_response_started",
                 "rq_retry_skipped_request_not_complete",
                 "passthrough_internal_redirect_bad_location")


class Admin:
    def __init__(self, ctx):
        self.ctx = ctx
        cfg = ctx.config
        # stats_config decides which stats exist and how Prometheus names them; a translated
        # one may come with the server config, else it is translated here.
        sc = getattr(cfg, "stats_config", None)
        if sc is None:
            sc = from_bootstrap(cfg.bootstrap, getattr(ctx.options, "stats_tags", ()))
        ctx.store.config = sc
        hcm = default_hcm_config("admin", _admin_route_table(ctx))
        hcm.stats = HcmStats()
        hcm.stats.mark_used("downstream_cx_active", "downstream_rq_active",
                            "downstream_cx_http1_active")
        chain = FilterChain("admin", "http", hcm)
        chain.ctx = ctx
        chain.listener_http_stats = ListenerHttpStats()
        ctx.store.register("listener.admin.http.admin.", chain.listener_http_stats)
        self.listener_config = ListenerConfig(
            name="admin", address=cfg.admin_address, unix=cfg.admin_unix, stat_name="admin",
            chains=(chain,), default_chain=None, buffer_limit=1024 * 1024, bind_to_port=True,
            reuse_port=False, backlog=128, traffic_direction=0, transparent=False,
            freebind=False, ipv4_compat=False)
        self.listener = ActiveListener(self.listener_config, ctx)
        ctx.store.register("http.admin.", hcm.stats, exclude=_ROUTER_STATS)
        ctx.store.register("listener.admin.", self.listener.stats,
                           exclude=("extension_config_missing",
                                    "network_extension_config_missing") + MAIN_THREAD_ONLY)

    def bind(self) -> None:
        self.listener.bind()

    async def start(self) -> None:
        await self.listener.start()

    def stop(self) -> None:
        self.listener.stop_accepting()
        for conn in list(self.listener.connections):
            conn.close()

    @property
    def bound_address(self):
        return self.listener.bound_address

    def address_text(self) -> str:
        a = self.bound_address
        if isinstance(a, tuple):
            return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"
        return str(a)
