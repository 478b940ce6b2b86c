"""The subscription stats pilot-agent and dashboards read (Envoy's ``SubscriptionStats``,
``source/common/config/utility.h``; counted as ``GrpcSubscriptionImpl`` counts them):

- ``update_attempt``: once when the subscription starts, once per response, and over delta xDS
  once more per rejection (``onConfigUpdateFailed`` counts again), once per lost stream;
- ``update_success`` / ``update_rejected`` / ``update_failure`` (connection lost) /
  ``init_fetch_timeout``;
- ``version``: xxHash64 of the last accepted ``version_info``; ``update_time``: when, in ms;
- CDS also ``config_reload`` and ``config_reload_time_ms``.

And ``control_plane.connected_state`` (1 while the ADS stream is up), ``pending_requests``,
``rate_limit_enforced``. Per-cluster EDS and per-route-configuration RDS stats, and the
``version_text`` text readouts, are not kept yet.
"""

from __future__ import annotations

import time

import xxhash

from meshproxy.stats import stat_block
from meshproxy.xds.resources import CONNECTION, FETCH_TIMEOUT, REJECTED, Handler

_COUNTERS = ("update_attempt", "update_success", "update_failure", "update_rejected",
             "init_fetch_timeout")
# CDS and LDS have no update_empty in Envoy 1.40 (EDS and RDS subscriptions do)
# version_text: the last accepted version_info, a text readout (subscription_base.h)
_TEXTS = ("version_text",)
SubscriptionStats = stat_block("SubscriptionStats", counters=_COUNTERS,
                               gauges=("update_time", "version"), texts=_TEXTS)
CdsStats = stat_block("CdsStats", counters=_COUNTERS + ("config_reload",),
                      gauges=("update_time", "version", "config_reload_time_ms"), texts=_TEXTS)
# An EDS cluster's subscription (``cluster.<name>.*``) and an RDS route configuration's
# (``http.<stat_prefix>.rds.<name>.*``), with the names Envoy 1.40 shows
EdsStats = stat_block("EdsStats", counters=_COUNTERS + (
    "update_empty", "assignment_stale", "assignment_timeout_received", "assignment_use_cached",
    "update_no_rebuild"), gauges=("update_time", "version"), texts=_TEXTS)
RdsStats = stat_block("RdsStats", counters=_COUNTERS + ("update_empty", "config_reload"),
                      gauges=("update_time", "version", "config_reload_time_ms"), texts=_TEXTS)
ControlPlaneStats = stat_block("ControlPlaneStats", counters=("rate_limit_enforced",),
                               gauges=("connected_state", "pending_requests"),
                               texts=("identifier",))


def new_stats(cls):
    st = cls()
    # (a stat is "used" for usedonly once written: checked against Envoy 1.40,
    # tests/xds/test_version_text.py)
    st.update_attempt = 1        # GrpcSubscriptionImpl::start
    return st


def _accepted(st, version_info: str, now_ms: int, changed: bool = True) -> None:
    st.update_success += 1
    st.update_time = now_ms
    st.version = xxhash.xxh64(version_info.encode()).intdigest()
    st.version_text = version_info
    # CDS and RDS count a reload only when the config changed (cds_api_helper any_applied,
    # RdsRouteConfigSubscription: onRdsUpdate false for the same hash)
    if changed and hasattr(st, "config_reload"):
        st.config_reload += 1
        st.config_reload_time_ms = now_ms


class CountingHandler(Handler):
    """Wraps a type's handler and counts what happens to its updates."""

    def __init__(self, inner: Handler, stats, delta: bool, clock=time.time,
                 unchanged=lambda: ()):
        self.inner = inner
        self.stats = stats
        self.delta = delta
        self.clock = clock
        self.unchanged = unchanged     # () -> names the last apply skipped as identical

    def apply(self, update):
        st = self.stats
        st.update_attempt += 1
        try:
            errors = self.inner.apply(update)
        except Exception:
            self._rejected()
            raise
        if errors:
            self._rejected()
            return errors
        same = self.unchanged()
        _accepted(st, update.version_info, int(self.clock() * 1000),
                  changed=bool(update.removed) or any(r.name not in same for r in update.added))
        if update.state_of_the_world and not update.added and hasattr(st, "update_empty"):
            st.update_empty += 1
        return errors

    def _rejected(self) -> None:
        # Envoy 1.40 counts a rejection as one more attempt over delta xDS only (measured
        # against it: tests/xds/test_server_xds.py::test_control_plane_stats_as_envoy)
        if self.delta:
            self.stats.update_attempt += 1
        self.stats.update_rejected += 1

    def on_failure(self, failure) -> None:
        st = self.stats
        if failure.reason == CONNECTION:
            st.update_attempt += 1
            st.update_failure += 1
        elif failure.reason == FETCH_TIMEOUT:
            st.init_fetch_timeout += 1
        self.inner.on_failure(failure)


SYSTEM_VERSIONS = "system_version_info"   # key of {type_url: version} in the record


class VersionRecorder(Handler):
    """Remembers, per type and resource name, the version and time each accepted resource came
    with (what ``/config_dump`` shows as ``version_info`` / ``last_updated``): the resource's
    own version over delta xDS, the response's ``version_info`` over state of the world."""

    def __init__(self, inner: Handler, record: dict, clock=time.time, on_timeout=None,
                 unchanged=lambda: (), in_place=lambda: ()):
        self.inner = inner
        self.record = record
        self.clock = clock
        self.on_timeout = on_timeout   # (names) -> None, after an initial fetch timeout
        self.unchanged = unchanged     # () -> names the last apply skipped as identical
        self.in_place = in_place       # () -> listeners updated in place: keep their version

    def apply(self, update):
        errors = self.inner.apply(update)
        now = self.clock()
        mine = self.record.setdefault(update.type_url, {})
        same, in_place = self.unchanged(), self.in_place()
        applied = False
        for r in update.added:
            # An identical resource keeps the version and time it came with (Envoy does not
            # apply it: checked against Envoy 1.40, tests/xds/test_config_dump_versions.py).
            if r.name not in errors and r.name not in same:
                version = r.version or update.version_info
                if r.name in in_place and r.name in mine:
                    version = mine[r.name][0]
                mine[r.name] = (version, now)
                applied = True
        for name in update.removed:
            applied |= mine.pop(name, None) is not None
        if applied:
            # The dump's top-level version_info moves only when something was applied
            # (cds_api_helper.cc / lds_api.cc: "if (any_applied) system_version_info_ = ...").
            self.record.setdefault(SYSTEM_VERSIONS, {})[update.type_url] = update.version_info
        return errors

    def on_failure(self, failure) -> None:
        self.inner.on_failure(failure)
        # A rejection ends the waits too: every watch of the type hears onConfigUpdateFailed
        # and its init target is ready (a listener then serves without those routes: 404).
        if self.on_timeout is not None and failure.reason in (FETCH_TIMEOUT, REJECTED):
            self.on_timeout(failure.names)


class PerNameCounting(Handler):
    """As ``CountingHandler`` for named types whose stats belong to each resource: EDS (per
    cluster) and RDS (per route configuration). ``stats_for(name)`` gives the blocks that
    count a name (an EDS service name can serve several clusters)."""

    def __init__(self, inner: Handler, stats_for, delta: bool, clock=time.time,
                 unchanged=lambda: ()):
        self.inner = inner
        self.stats_for = stats_for
        self.delta = delta
        self.clock = clock
        self.unchanged = unchanged

    def apply(self, update):
        errors = self.inner.apply(update)
        same = self.unchanged()
        now_ms = int(self.clock() * 1000)
        for r in update.added:
            for st in self.stats_for(r.name):
                st.update_attempt += 1
                if r.name in errors:
                    if self.delta:
                        st.update_attempt += 1
                    st.update_rejected += 1
                    continue
                if r.name in same and hasattr(st, "update_no_rebuild"):
                    st.update_no_rebuild += 1      # EDS: the same hosts again
                _accepted(st, update.version_info, now_ms, changed=r.name not in same)
        return errors

    def on_failure(self, failure) -> None:
        if failure.reason == FETCH_TIMEOUT:
            for name in failure.names:
                for st in self.stats_for(name):
                    st.init_fetch_timeout += 1
        self.inner.on_failure(failure)
