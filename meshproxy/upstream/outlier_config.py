"""Translate ``envoy.config.cluster.v3.OutlierDetection`` into an immutable ``DetectorConfig``.

Defaults and derived values are Envoy's ``DetectorConfig`` (``outlier_detection_impl.h``):
interval 10 s, base ejection 30 s, max ejection ``max(300 s, base)``, consecutive 5xx /
gateway / local-origin thresholds 5, max ejection 10 %, success rate over 5 hosts with 100
requests each and a stdev factor of 1.9 (1900 / 1000), failure percentage 85 % over 5 hosts
with 50 requests each; enforcing 100 % except gateway failures and failure percentage (0 %).
Durations are kept in milliseconds, as Envoy truncates them (``PROTOBUF_GET_MS_OR_DEFAULT``).

Validation is the proto's PGV rules (``outlier_detection.proto``: intervals and ejection times
``gt 0s``, every percentage ``lte 100``) plus ``DetectorImpl::create``'s "max_ejection_time
cannot be smaller than base_ejection_time", each error naming the field.
"""

from __future__ import annotations

import dataclasses

from meshproxy.config.errors import ConfigError, join
from meshproxy.config.protos import wrapped

_PERCENT_FIELDS = (
    "max_ejection_percent", "enforcing_consecutive_5xx", "enforcing_success_rate",
    "enforcing_consecutive_gateway_failure", "enforcing_consecutive_local_origin_failure",
    "enforcing_local_origin_success_rate", "failure_percentage_threshold",
    "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin",
)
_POSITIVE_DURATIONS = ("interval", "base_ejection_time", "max_ejection_time")


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    interval_ms: int = 10000
    base_ejection_time_ms: int = 30000
    max_ejection_time_ms: int = 300000
    max_ejection_time_jitter_ms: int = 0
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    consecutive_local_origin_failure: int = 5
    max_ejection_percent: int = 10
    always_eject_one_host: bool = False
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_success_rate: int = 100
    enforcing_local_origin_success_rate: int = 100
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    split_external_local_origin_errors: bool = False
    successful_active_health_check_uneject_host: bool = True


def _ms(msg, field: str, path: str, default: int) -> int:
    """``PROTOBUF_GET_MS_OR_DEFAULT``: whole milliseconds; negative durations are refused as
    Envoy's duration check refuses them."""
    if not msg.HasField(field):
        return default
    d = getattr(msg, field)
    if d.seconds < 0 or d.nanos < 0:
        raise ConfigError(join(path, field), "Invalid duration: Expected positive duration")
    return d.seconds * 1000 + d.nanos // 1000000


def build_detector_config(od, path: str) -> DetectorConfig:
    """``od`` is an ``OutlierDetection`` message; ``path`` names it in errors."""
    for f in _POSITIVE_DURATIONS:
        if od.HasField(f):
            d = getattr(od, f)
            if d.seconds < 0 or d.nanos < 0:
                raise ConfigError(join(path, f), "Invalid duration: Expected positive duration")
            if d.seconds == 0 and d.nanos == 0:
                raise ConfigError(join(path, f), "value must be greater than 0s")
    for f in _PERCENT_FIELDS:
        if wrapped(od, f, 0) > 100:
            raise ConfigError(join(path, f), "value must be less than or equal to 100")
    if len(od.monitors):
        raise ConfigError(join(path, "monitors"),
                          "outlier detection monitor extensions are not supported by meshproxy")
    d = DetectorConfig()
    base = _ms(od, "base_ejection_time", path, d.base_ejection_time_ms)
    # "If not specified, the default value (300000ms or 300s) or base_ejection_time value is
    # applied, whatever is larger."
    max_time = _ms(od, "max_ejection_time", path, max(d.max_ejection_time_ms, base))
    if max_time < base:
        raise ConfigError(join(path, "max_ejection_time"),
                          "outlier detector's max_ejection_time cannot be smaller than "
                          "base_ejection_time")
    kw = {f.name: wrapped(od, f.name, f.default) for f in dataclasses.fields(DetectorConfig)
          if not f.name.endswith("_ms") and f.name != "split_external_local_origin_errors"}
    return DetectorConfig(
        interval_ms=_ms(od, "interval", path, d.interval_ms),
        base_ejection_time_ms=base,
        max_ejection_time_ms=max_time,
        max_ejection_time_jitter_ms=_ms(od, "max_ejection_time_jitter", path, 0),
        split_external_local_origin_errors=od.split_external_local_origin_errors,
        **kw,
    )
