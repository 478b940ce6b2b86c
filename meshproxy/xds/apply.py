"""Accepted xDS resources into the running server: what Envoy's cluster manager, listener manager
and route config providers do with an update once the subscription has accepted it.

The ``Catalog`` (``xds/catalog.py``) decides order, warming and ACKs; it calls ``on_update``
with resources it has already checked (``xds/validate.py``, the same translation as here), so
a failure here is a bug, logged, not a NACK.

- Clusters (CDS): translated with ``build_cluster_config`` and added to the cluster manager, or
  replacing the cluster of the same name; an EDS cluster gets the assignment already held for
  its service name. Removed clusters go.
- Endpoints (EDS): ``upstream.eds.apply_load_assignment`` on every EDS cluster that watches the
  name.
- Route configurations (RDS): ``router.rds.RdsRegistry.apply`` swaps the table of every HCM that
  names them; requests in flight keep the route they matched.
- Listeners (LDS): translated with the RDS registry; a version warms until its route
  configurations are in, then is added (bound at once when the server runs) or replaces the
  live version make-before-break (``ListenerManager.replace``: the sockets pass to the new
  version, the old one drains for ``--drain-time-s``). Removed listeners drain the same way.
"""

from __future__ import annotations

import logging

from meshproxy.xds import types as T

log = logging.getLogger("meshproxy.xds")


class ServerApplier:
    def __init__(self, ctx, rds, on_listener=None, started=lambda: True, on_drained=None,
                 set_fetch_timeout=None):
        """``ctx``: the ``ServerContext`` (cluster and listener managers); ``rds``: the
        ``RdsRegistry`` the listeners' HCMs use; ``on_listener(config)`` adds a new listener
        (the server binds it at once once running); ``started()`` says whether listeners
        serve yet; ``on_drained(name)`` runs when a replaced or removed listener's old
        version has finished draining (the catalog then stops watching its routes)."""
        self.ctx = ctx
        self.rds = rds
        self.on_listener = on_listener
        self.started = started
        self.on_drained = on_drained
        self.pending: dict[str, object] = {}        # listener name -> version warming
        # (type_url, name, seconds): the initial fetch timeout a config source gives a watch
        self.set_fetch_timeout = set_fetch_timeout
        self.store = getattr(ctx, "store", None)
        self.eds_stats: dict[str, object] = {}      # cluster name -> EdsStats
        self.rds_stats: dict[str, object] = {}      # route configuration name -> RdsStats
        self.gave_up: set[str] = set()              # route configurations that timed out
        self.assignments: dict[str, object] = {}   # EDS service name -> ClusterLoadAssignment
        self._eds_index: dict | None = None        # EDS service name -> [EdsStats]

    def eds_stats_for(self, service_name: str) -> list:
        # Indexed once per cluster change: a 1000-cluster EDS response asks for every name
        # (a scan per name made re-pushes quadratic: benchmarks/xds_push.py).
        if self._eds_index is None:
            from meshproxy.upstream.eds import eds_service_name
            cm = self.ctx.cluster_manager
            index: dict[str, list] = {}
            for name, st in self.eds_stats.items():
                if name in cm.clusters:
                    index.setdefault(eds_service_name(cm.clusters[name].config), []).append(st)
            self._eds_index = index
        return self._eds_index.get(service_name, [])

    def rds_stats_for(self, name: str) -> list:
        st = self.rds_stats.get(name)
        return [st] if st is not None else []

    def _new_block(self, cls, prefix: str):
        from meshproxy.xds.stats import new_stats
        st = new_stats(cls)
        if self.store is not None:
            self.store.register(prefix, st)
        return st

    def on_update(self, type_url: str, accepted: list, removed: list) -> None:
        fn = _APPLY.get(type_url)
        if fn is None:
            return
        try:
            fn(self, accepted, removed)
        except Exception:   # the catalog checked these: a failure here is meshproxy's bug
            log.exception("applying %s update failed", T.short(type_url))

    # ------------------------------------------------------------------ CDS

    def _clusters(self, accepted, removed) -> None:
        from meshproxy.upstream.cluster_config import build_cluster_config
        from meshproxy.upstream.eds import apply_load_assignment, eds_service_name
        cm = self.ctx.cluster_manager
        self._eds_index = None
        for r in accepted:
            cfg = build_cluster_config(r.message, f"Cluster {r.name}")
            cluster = cm.add(cfg, added_via_api=True)
            cluster.version_info = r.version
            if cfg.type == "EDS":
                if cfg.name not in self.eds_stats:
                    from meshproxy.xds.stats import EdsStats
                    self.eds_stats[cfg.name] = self._new_block(EdsStats,
                                                               f"cluster.{cfg.stat_name}.")
                if self.set_fetch_timeout is not None:
                    self.set_fetch_timeout(T.ENDPOINT, eds_service_name(cfg),
                                           _source_timeout(r.message.eds_cluster_config,
                                                           "eds_config"))
                cla = self.assignments.get(eds_service_name(cfg))
                if cla is not None:
                    apply_load_assignment(cluster, cla)
        for name in removed:
            cm.remove(name, drain=True)
            st = self.eds_stats.pop(name, None)
            if st is not None and self.store is not None:
                self.store.unregister(st)

    # ------------------------------------------------------------------ EDS

    def _endpoints(self, accepted, removed) -> None:
        from meshproxy.upstream.eds import apply_load_assignment, eds_service_name
        cm = self.ctx.cluster_manager
        by_service: dict[str, list] = {}
        if accepted:
            for cluster in list(cm.clusters.values()):
                if cluster.config.type == "EDS":
                    by_service.setdefault(eds_service_name(cluster.config), []).append(cluster)
        for r in accepted:
            self.assignments[r.name] = r.message
            for cluster in by_service.get(r.name, ()):
                apply_load_assignment(cluster, r.message, f"ClusterLoadAssignment {r.name}")
        for name in removed:
            self.assignments.pop(name, None)

    # ------------------------------------------------------------------ RDS

    def _routes(self, accepted, removed) -> None:
        for r in accepted:
            # checked as the catalog checked it (validate.py: no cluster-name check yet)
            self.rds.apply(r.message, r.version or "", f"RouteConfiguration {r.name}")

    # ------------------------------------------------------------------ LDS

    def _listeners(self, accepted, removed) -> None:
        from meshproxy.listener.config import build_listener_config
        for r in accepted:
            cfg = build_listener_config(r.message, f"Listener {r.name}", rds=self.rds)
            for chain in cfg.all_chains():
                h = chain.config.proto if chain.kind == "http" else None
                if h is None or h.WhichOneof("route_specifier") != "rds":
                    continue
                rname = h.rds.route_config_name
                if rname not in self.rds_stats:
                    # Envoy's RDS subscription scope: the first HCM that names it
                    from meshproxy.xds.stats import RdsStats
                    self.rds_stats[rname] = self._new_block(
                        RdsStats, f"http.{h.stat_prefix}.rds.{rname}.")
                if self.set_fetch_timeout is not None:
                    self.set_fetch_timeout(T.ROUTE, rname,
                                           _source_timeout(h.rds, "config_source"))
            self.pending[r.name] = cfg
            waiting = [p for p in _rds_providers(cfg)
                       if not p.ready and p.name not in self.gave_up]
            if not waiting:
                self._activate(cfg)
                continue
            # Make-before-break: the new version warms until its route configurations are
            # in; until then the current version (if any) keeps serving.
            left = [len(waiting)]

            def one_ready(cfg=cfg, left=left):
                left[0] -= 1
                if left[0] == 0:
                    self._activate(cfg)
            for p in waiting:
                p.when_ready(one_ready)
        lm = self.ctx.listener_manager
        for name in removed:
            self.pending.pop(name, None)
            if name in lm.listeners:
                lm.remove(name, self._drain_time(), self.on_drained)

    def routes_timed_out(self, names) -> None:
        """RDS gave up waiting for these route configurations (initial fetch timeout): as in
        Envoy, a listener stops warming and serves with them empty (404 NR) until they come."""
        if not names:   # a timeout of the whole type: every route configuration waited on
            names = {p.name for cfg in self.pending.values() for p in _rds_providers(cfg)}
        self.gave_up |= set(names)
        for cfg in list(self.pending.values()):
            if all(p.ready or p.name in self.gave_up for p in _rds_providers(cfg)):
                self._activate(cfg)

    def _activate(self, cfg) -> None:
        if self.pending.get(cfg.name) is not cfg:
            return    # a newer version arrived (or the listener was removed) meanwhile
        del self.pending[cfg.name]
        lm = self.ctx.listener_manager
        if cfg.name in lm.listeners and self.started():
            self.ctx.loop.create_task(lm.replace(cfg, self._drain_time(), self.on_drained))
        elif cfg.name in lm.listeners:
            lm.listeners.pop(cfg.name)   # replaced before it ever served
            lm.add(cfg)
        elif self.on_listener is not None:
            self.on_listener(cfg)
        else:
            lm.add(cfg)

    def _drain_time(self) -> float:
        opts = getattr(self.ctx, "options", None)
        return float(getattr(opts, "drain_time_s", 600) or 0)


def _source_timeout(msg, field: str) -> float:
    """``initial_fetch_timeout`` of the ConfigSource in ``msg.field`` (Envoy's 15 s default)."""
    from meshproxy.config.dynamic import DEFAULT_INITIAL_FETCH_TIMEOUT
    from meshproxy.config.protos import duration
    if not msg.HasField(field):
        return DEFAULT_INITIAL_FETCH_TIMEOUT
    return duration(getattr(msg, field), "initial_fetch_timeout", DEFAULT_INITIAL_FETCH_TIMEOUT)


def _rds_providers(cfg) -> list:
    out = []
    for chain in cfg.all_chains():
        p = getattr(chain.config, "rds_provider", None) if chain.kind == "http" else None
        if p is not None and p not in out:
            out.append(p)
    return out


_APPLY = {T.CLUSTER: ServerApplier._clusters, T.ENDPOINT: ServerApplier._endpoints,
          T.ROUTE: ServerApplier._routes, T.LISTENER: ServerApplier._listeners}
