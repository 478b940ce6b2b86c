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
- Listeners (LDS): translated with the RDS registry and added to the listener manager; a new
  listener is bound and serving at once (its HCMs answer 404 NR until their routes arrive,
  which the catalog's warming makes the server wait for at start-up).
"""

from __future__ import annotations

import logging

from meshproxy.xds import types as T

log = logging.getLogger("meshproxy.xds")


class ServerApplier:
    def __init__(self, ctx, rds, on_listener=None):
        """``ctx``: the ``ServerContext`` (cluster and listener managers); ``rds``: the
        ``RdsRegistry`` the listeners' HCMs use; ``on_listener(config)`` binds and starts a
        listener that arrived after start-up (the server's)."""
        self.ctx = ctx
        self.rds = rds
        self.on_listener = on_listener
        self.assignments: dict[str, object] = {}   # EDS service name -> ClusterLoadAssignment

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
        for r in accepted:
            cfg = build_cluster_config(r.message, f"Cluster {r.name}")
            cluster = cm.add(cfg, added_via_api=True)
            cluster.version_info = r.version
            if cfg.type == "EDS":
                cla = self.assignments.get(eds_service_name(cfg))
                if cla is not None:
                    apply_load_assignment(cluster, cla)
        for name in removed:
            cm.remove(name)

    # ------------------------------------------------------------------ EDS

    def _endpoints(self, accepted, removed) -> None:
        from meshproxy.upstream.eds import apply_load_assignment, eds_service_name
        cm = self.ctx.cluster_manager
        for r in accepted:
            self.assignments[r.name] = r.message
            for cluster in list(cm.clusters.values()):
                if cluster.config.type == "EDS" and eds_service_name(cluster.config) == r.name:
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
        lm = self.ctx.listener_manager
        for r in accepted:
            if r.name in lm.listeners:
                # Replacing a live listener (drain the old one, hand its socket to the new one)
                # is not built yet: the old version keeps serving.
                log.warning("listener %s changed over LDS; updating a live listener is not "
                            "implemented yet, the previous version keeps serving", r.name)
                continue
            cfg = build_listener_config(r.message, f"Listener {r.name}", rds=self.rds)
            if self.on_listener is not None:
                self.on_listener(cfg)
            else:
                lm.add(cfg)
        for name in removed:
            log.warning("listener %s removed over LDS; removing a live listener is not "
                        "implemented yet, it keeps serving", name)


_APPLY = {T.CLUSTER: ServerApplier._clusters, T.ENDPOINT: ServerApplier._endpoints,
          T.ROUTE: ServerApplier._routes, T.LISTENER: ServerApplier._listeners}
