"""The accepted xDS resources, and the rules by which owning them drives the ADS mux in Envoy's
order. This is what Envoy's cluster manager, listener manager and init managers do that the
control plane can see; the server plugs its real managers in through ``on_update``.

Envoy's rules (``cluster_manager_impl.cc`` ``ClusterManagerInitHelper``, ``server.cc``
``RunHelper``, ``cds_api_helper.cc``, ``lds_api.cc``, ``eds.cc``):
- CDS is subscribed first (wildcard). Each EDS cluster watches its ClusterLoadAssignment
  (``eds_cluster_config.service_name`` or its name); the EDS names change as clusters come and
  go, and the mux sends them in one request before the CDS ACK.
- Initialisation: the first CDS update (or its rejection or initial fetch timeout) ends CDS
  initialisation; the EDS clusters then warm until their first assignment (or its rejection or
  timeout). When every cluster is warm the cluster manager is initialised, and only then is LDS
  subscribed (with RDS paused while the init targets run).
- After initialisation, CDS is kept paused while any cluster warms ("This prevents CDS ACK from
  being sent to ADS", ``updateClusterCounts``): the CDS ACK says the clusters are usable.
- Each listener's HCMs watch their RDS route configurations; the listener warms until they
  arrive. The server is ready when LDS has delivered once and every listener is warm.
- A listener replaced by one with other route configurations, or removed, drains with its old
  configuration, whose route configurations stay watched until the server calls ``drained()``
  (Envoy 1.40 keeps ``route1`` subscribed after the listener moved to ``route2``, for the drain
  time).
- Resources are checked with ``validate.validate``; the valid ones of a partly invalid update
  are kept and the others reported (the update is NACKed).

One difference from Envoy, on purpose: a changed EDS cluster whose assignment is already held
stays warm (Envoy re-creates the cluster and waits for a new EDS response, which a control plane
that sees no change never sends - until the 15 s initial fetch timeout).
"""

from __future__ import annotations

import logging

from meshproxy.config.errors import ConfigError
from meshproxy.listener.config import filter_chain_only_change
from meshproxy.xds import types as T
from meshproxy.xds import validate as V
from meshproxy.xds.resources import CONNECTION, Failure, Handler, IgnoreHandler, Update

log = logging.getLogger("meshproxy.xds")

MANAGED = (T.CLUSTER, T.ENDPOINT, T.LISTENER, T.ROUTE, T.SECRET)


class Catalog:
    def __init__(self, mux, *, validator=V.validate, on_update=None, on_ready=None,
                 cluster_names=None):
        """``mux``: an ``AdsMux`` (or ``AdsClient``, anything with subscribe/set_names/pause).
        ``on_update(type_url, accepted: list[Resource], removed: list[str])`` sees every change
        that was applied; ``on_ready()`` fires once, when initialisation completes;
        ``cluster_names()`` are the clusters a route configuration may name when it sets
        ``validate_clusters`` (default: those from CDS)."""
        self.mux = mux
        self.cluster_names = cluster_names or (lambda: self.resources[T.CLUSTER].keys())
        self.validator = validator
        self.on_update = on_update
        self.on_ready = on_ready
        self.resources: dict[str, dict] = {t: {} for t in MANAGED}
        self.warming_clusters: set[str] = set()
        self.warming_listeners: set[str] = set()
        self.draining_listeners: list[tuple[str, frozenset]] = []   # (name, its RDS names)
        self.cds_initialized = False
        self.clusters_initialized = False   # the cluster manager's "initialized" callback ran
        self.lds_initialized = False
        self.ready = False
        self._cds_pause = None
        self._gave_up = {T.ENDPOINT: set(), T.ROUTE: set()}
        self._want_lds = True
        self.unchanged: set[str] = set()   # names the last apply found identical (skipped)
        # EDS/RDS name -> when it was first watched (Envoy's SotW watch order, see apply)
        self._order: dict[str, dict[str, int]] = {T.ENDPOINT: {}, T.ROUTE: {}}
        self._seq = 0
        self._delta = getattr(getattr(mux, "mux", mux), "delta", False)
        self.in_place: set[str] = set()    # listeners the last apply changed in chains only

    def handlers(self) -> dict:
        h = {t: _CatalogHandler(self, t) for t in MANAGED}
        h[T.NAME_TABLE] = IgnoreHandler()
        return h

    def start(self, cds: bool = True, lds: bool = True) -> None:
        """Begin as Envoy does: CDS first; LDS once the clusters are initialised."""
        self._want_lds = lds
        if cds:
            self.mux.subscribe(T.CLUSTER)
        else:
            self.cds_initialized = True
            self._maybe_clusters_initialized()

    # ------------------------------------------------------------------ updates

    def apply(self, type_url: str, update: Update) -> dict[str, str]:
        store = self.resources[type_url]
        before = dict(store) if type_url in (T.LISTENER, T.ROUTE) else {}
        errors, accepted = {}, []
        self.unchanged = set()
        added = update.added
        in_turn = type_url in self._order and not self._delta
        if in_turn:
            # Envoy's SotW mux hands an EDS or RDS response to each watch in turn, newest
            # subscription first (GrpcMuxImpl: ``watches_`` grows at the front), and stops at
            # the first that throws: those before it keep their update, the rest do not. Over
            # delta each is applied or refused on its own. (Observed with Envoy 1.40:
            # tests/xds/test_rds_validate_clusters.py, test_eds_rejection.py.)
            order = self._order[type_url]
            added = sorted(added, key=lambda r: -order.get(r.name, 0))
        for r in added:
            if errors and in_turn:
                break

            old = store.get(r.name)
            if old is not None and old.message == r.message:
                self.unchanged.add(r.name)
                # The same resource again (every SotW response carries them all): nothing to
                # do, as Envoy skips a cluster, listener or route configuration whose hash is
                # unchanged (addOrUpdateCluster, addOrUpdateListener "duplicate listener",
                # RouteConfigUpdateReceiverImpl::onRdsUpdate).
                continue
            try:
                self.validator(type_url, r.message)
                if type_url == T.ROUTE:
                    V.route_clusters(r.message, self.cluster_names())
            except ConfigError as exc:
                errors[r.name] = str(exc)
                continue
            store[r.name] = r
            accepted.append(r)
        previous = {r.name: old for r in accepted if (old := before.get(r.name)) is not None}
        self.in_place = {n for n, old in previous.items() if type_url == T.LISTENER and
                         self.ready and filter_chain_only_change(old.message, store[n].message)}
        removed = []
        for n in update.removed:
            old = store.pop(n, None)
            if old is not None:
                removed.append(n)
                previous[n] = old
        if self.on_update is not None and (accepted or removed):
            self.on_update(type_url, accepted, removed)
        if type_url == T.LISTENER:
            self._after_listeners(accepted, removed, previous)
        else:
            after = _AFTER.get(type_url)
            if after is not None:
                after(self, accepted, removed)
        return errors

    def _after_clusters(self, accepted, removed) -> None:
        for r in accepted:
            if self._cluster_waits(r):
                self.warming_clusters.add(r.name)
            else:
                self.warming_clusters.discard(r.name)
        for n in removed:
            self.warming_clusters.discard(n)
        names = [V.eds_service_name(r.message) for r in self.resources[T.CLUSTER].values()]
        names = [n for n in names if n is not None]
        self._note_order(T.ENDPOINT, names)
        self._watch(T.ENDPOINT, set(names))
        self.cds_initialized = True
        self._maybe_clusters_initialized()
        self._update_cds_pause()

    def _after_listeners(self, accepted, removed, previous) -> None:
        # A replaced or removed listener drains with its old configuration (for
        # --drain-time-s), and keeps its route configurations watched until it is gone.
        for name, old in previous.items():
            new = self.resources[T.LISTENER].get(name)
            if new is None or V.rds_names(new.message) != V.rds_names(old.message):
                self.draining_listeners.append((name, frozenset(V.rds_names(old.message))))
        for r in accepted:
            if self._listener_waits(r):
                self.warming_listeners.add(r.name)
            else:
                self.warming_listeners.discard(r.name)
        for n in removed:
            self.warming_listeners.discard(n)
        self._watch_routes()
        self.lds_initialized = True
        self._maybe_ready()

    def _watch_routes(self) -> None:
        names = set()
        for r in self.resources[T.LISTENER].values():
            ordered = V.rds_names_in_order(r.message)
            self._note_order(T.ROUTE, ordered)
            names.update(ordered)
        for _, held in self.draining_listeners:
            names |= held
        self._watch(T.ROUTE, names)

    def _note_order(self, type_url: str, ordered) -> None:
        order = self._order[type_url]
        for n in ordered:
            if n not in order:
                self._seq += 1
                order[n] = self._seq

    def drained(self, listener_name: str) -> None:
        """The server reports that the old versions of a listener finished draining: their
        route configurations are no longer needed."""
        before = len(self.draining_listeners)
        self.draining_listeners = [(n, h) for n, h in self.draining_listeners
                                   if n != listener_name]
        if len(self.draining_listeners) != before:
            self._watch_routes()

    def _watch(self, type_url: str, names: set) -> None:
        """Watch exactly ``names`` of a named type; forget what is no longer watched."""
        if not names and not self.mux.names(type_url):
            return
        self.mux.set_names(type_url, names)
        if type_url in self._order:
            self._order[type_url] = {n: i for n, i in self._order[type_url].items() if n in names}
        store = self.resources[type_url]
        for n in [n for n in store if n not in names]:
            del store[n]
        self._gave_up[type_url] &= names

    def _cluster_waits(self, r) -> bool:
        name = V.eds_service_name(r.message)
        return name is not None and name not in self.resources[T.ENDPOINT] and \
            name not in self._gave_up[T.ENDPOINT]

    def _listener_waits(self, r) -> bool:
        missing = V.rds_names(r.message) - self.resources[T.ROUTE].keys()
        return bool(missing - self._gave_up[T.ROUTE])

    def _rewarm(self) -> None:
        """Warming ends for what now has its dependencies (or gave up waiting for them)."""
        clusters, listeners = self.resources[T.CLUSTER], self.resources[T.LISTENER]
        self.warming_clusters = {n for n in self.warming_clusters
                                 if n in clusters and self._cluster_waits(clusters[n])}
        self.warming_listeners = {n for n in self.warming_listeners
                                  if n in listeners and self._listener_waits(listeners[n])}
        self._maybe_clusters_initialized()
        self._update_cds_pause()
        self._maybe_ready()

    # ------------------------------------------------------------------ failures

    def failure(self, f: Failure) -> None:
        if f.reason == CONNECTION:
            return
        # Every owner lets initialisation continue on a rejection or a timeout ("We need to
        # allow server startup to continue, even if we have a bad config"): a timed-out name
        # stops being waited for; a rejection ends every wait of the type.
        if f.type_url == T.CLUSTER:
            self.cds_initialized = True
        elif f.type_url == T.LISTENER:
            self.lds_initialized = True
        elif f.type_url in (T.ENDPOINT, T.ROUTE):
            self._gave_up[f.type_url] |= set(f.names) if f.names else \
                set(self.mux.names(f.type_url))
        self._rewarm()

    # ------------------------------------------------------------------ init order

    def _maybe_clusters_initialized(self) -> None:
        if self.clusters_initialized or not self.cds_initialized or self.warming_clusters:
            return
        self.clusters_initialized = True
        if self._want_lds:
            # RunHelper: RDS stays paused while the init targets (LDS) start.
            with self.mux.pause(T.ROUTE):
                self.mux.subscribe(T.LISTENER)
        else:
            self.lds_initialized = True
            self._maybe_ready()

    def _update_cds_pause(self) -> None:
        if not self.clusters_initialized:
            return
        if self.warming_clusters and self._cds_pause is None:
            self._cds_pause = self.mux.pause(T.CLUSTER)
        elif not self.warming_clusters and self._cds_pause is not None:
            pause, self._cds_pause = self._cds_pause, None
            pause.resume()

    def _maybe_ready(self) -> None:
        if self.ready or not self.clusters_initialized or not self.lds_initialized or \
                self.warming_listeners:
            return
        self.ready = True
        if self.on_ready is not None:
            self.on_ready()

    def __repr__(self) -> str:
        counts = " ".join(f"{T.short(t)}={len(v)}" for t, v in self.resources.items())
        return (f"<Catalog {counts} warming clusters={len(self.warming_clusters)} "
                f"listeners={len(self.warming_listeners)} ready={self.ready}>")


_AFTER = {T.CLUSTER: Catalog._after_clusters, T.ENDPOINT: lambda c, a, r: c._rewarm(),
          T.ROUTE: lambda c, a, r: c._rewarm()}


class _CatalogHandler(Handler):
    def __init__(self, catalog: Catalog, type_url: str):
        self.catalog = catalog
        self.type_url = type_url

    def apply(self, update: Update) -> dict[str, str]:
        return self.catalog.apply(self.type_url, update)

    def on_failure(self, failure: Failure) -> None:
        self.catalog.failure(failure)
