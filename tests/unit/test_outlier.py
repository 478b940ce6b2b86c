"""Outlier detection rules on a fake clock. Expected values come from Envoy's rules
(outlier_detection_impl.cc) worked by hand in each test, not from running the detector."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import outlier_detection_pb2
from google.protobuf import empty_pb2, json_format

from meshproxy.config.errors import ConfigError
from meshproxy.upstream.host import Host
from meshproxy.upstream.outlier import (EXT_ORIGIN_REQUEST_FAILED, LOCAL_ORIGIN_CONNECT_FAILED,
                                        LOCAL_ORIGIN_CONNECT_SUCCESS, LOCAL_ORIGIN_TIMEOUT,
                                        Detector, success_rate_threshold)
from meshproxy.upstream.outlier_config import DetectorConfig, build_detector_config
from tests.support.clock import FakeClock


class Rng:
    """Envoy's random(): a fixed sequence (then ``default``)."""

    def __init__(self, *values, default=0):
        self.values = list(values)
        self.default = default

    def getrandbits(self, n):
        return self.values.pop(0) if self.values else self.default


def setup(n=3, rng=None, **cfg):
    clock = FakeClock(now=1000.0)
    changes = []
    d = Detector(DetectorConfig(**cfg), clock, changes.append, rng or Rng())
    hosts = [Host(None, ("10.0.0.%d" % (i + 1), 80)) for i in range(n)]
    for h in hosts:
        d.add_host(h)
    d.start()
    return d, hosts, clock, changes


def used(stats):
    return {name: v for name, kind, v, _ in stats.items() if v}


# ---------------------------------------------------------------------- consecutive errors


def test_consecutive_5xx_ejects_on_the_fifth_and_a_success_resets():
    d, hosts, clock, changes = setup(max_ejection_percent=50)
    m = hosts[0].outlier
    for _ in range(4):
        m.put_http_status(500)
    m.put_http_status(200)          # resets the run
    for _ in range(4):
        m.put_http_status(500)
    assert not hosts[0].outlier_ejected
    m.put_http_status(500)
    assert hosts[0].outlier_ejected and changes == [hosts[0]]
    # 500 is not a gateway error: only the 5xx rule fired.
    assert used(d.stats) == {"ejections_consecutive_5xx": 1,
                             "ejections_detected_consecutive_5xx": 1,
                             "ejections_enforced_consecutive_5xx": 1,
                             "ejections_enforced_total": 1, "ejections_total": 1,
                             "ejections_active": 1}
    assert m.num_ejections == 1 and m.consecutive_5xx == 0


def test_503s_report_gateway_failure_first_then_5xx():
    # enforcing_consecutive_gateway_failure defaults to 0: the gateway rule is detected, not
    # enforced; the 5xx rule (same fifth response) then ejects.
    d, hosts, *_ = setup(max_ejection_percent=50)
    for _ in range(5):
        hosts[0].outlier.put_http_status(503)
    assert hosts[0].outlier_ejected
    assert used(d.stats) == {"ejections_consecutive_5xx": 1,
                             "ejections_detected_consecutive_5xx": 1,
                             "ejections_detected_consecutive_gateway_failure": 1,
                             "ejections_enforced_consecutive_5xx": 1,
                             "ejections_enforced_total": 1, "ejections_total": 1,
                             "ejections_active": 1}
    # Enforced, the gateway rule ejects first and the 5xx report finds the host ejected.
    d, hosts, *_ = setup(max_ejection_percent=50, enforcing_consecutive_gateway_failure=100)
    for _ in range(5):
        hosts[0].outlier.put_http_status(502)
    assert used(d.stats) == {"ejections_detected_consecutive_gateway_failure": 1,
                             "ejections_enforced_consecutive_gateway_failure": 1,
                             "ejections_enforced_total": 1, "ejections_active": 1}
    # The 5xx counter was not reset by an ignored report; it runs on past the threshold.
    assert hosts[0].outlier.consecutive_5xx == 5


def test_non_gateway_5xx_resets_only_the_gateway_run():
    d, hosts, *_ = setup(max_ejection_percent=50, consecutive_5xx=10,
                         enforcing_consecutive_gateway_failure=100)
    m = hosts[0].outlier
    for code in (502, 503, 504, 504, 500, 502, 502, 502, 502):
        m.put_http_status(code)
    assert not hosts[0].outlier_ejected and m.consecutive_gateway_failure == 4
    m.put_http_status(504)
    assert hosts[0].outlier_ejected
    assert d.stats.ejections_enforced_consecutive_gateway_failure == 1


def test_overflow_when_max_ejection_percent_would_be_passed():
    # Default 10%: with 3 hosts, 100 * 1 / 3 = 33.3 > 10, so nothing is ejected; both rules
    # a 503 run trips overflow (what Envoy 1.40 reports for this case).
    d, hosts, *_ = setup()
    for _ in range(5):
        hosts[0].outlier.put_http_status(503)
    assert not hosts[0].outlier_ejected
    assert used(d.stats) == {"ejections_consecutive_5xx": 1,
                             "ejections_detected_consecutive_5xx": 1,
                             "ejections_detected_consecutive_gateway_failure": 1,
                             "ejections_overflow": 2}
    # 50%: the first host (33%) goes, the second would make 66% and overflows.
    d, hosts, *_ = setup(max_ejection_percent=50)
    for h in hosts[:2]:
        for _ in range(5):
            h.outlier.put_http_status(500)
    assert [h.outlier_ejected for h in hosts] == [True, False, False]
    assert d.stats.ejections_overflow == 1 and d.stats.ejections_active == 1


def test_always_eject_one_host():
    d, hosts, *_ = setup(always_eject_one_host=True)       # max 10% of 3 hosts
    for h in hosts[:2]:
        for _ in range(5):
            h.outlier.put_http_status(500)
    assert [h.outlier_ejected for h in hosts] == [True, False, False]
    assert d.stats.ejections_overflow == 1


def test_enforcing_percentage_draws_from_the_rng():
    # featureEnabled: random % 100 < enforcing. 129 % 100 = 29 < 30 ejects; 30 does not.
    d, hosts, *_ = setup(max_ejection_percent=100, enforcing_consecutive_5xx=30,
                         rng=Rng(30, 129))
    for h in hosts[:2]:
        for _ in range(5):
            h.outlier.put_http_status(500)
    assert [h.outlier_ejected for h in hosts] == [False, True, False]
    assert d.stats.ejections_detected_consecutive_5xx == 2
    assert d.stats.ejections_enforced_consecutive_5xx == 1
    # ejections_total (deprecated) counts every allowed ejection, enforced or not.
    assert d.stats.ejections_total == 2


def test_ejected_host_ignores_further_runs_and_unejection_resets_counters():
    d, hosts, clock, _ = setup(max_ejection_percent=50, base_ejection_time_ms=30000)
    m = hosts[0].outlier
    for _ in range(5):
        m.put_http_status(500)
    for _ in range(7):              # traffic in panic mode, say: no second ejection
        m.put_http_status(500)
    assert d.stats.ejections_detected_consecutive_5xx == 1 and m.consecutive_5xx == 7
    clock.advance(30)               # ticks at 10, 20, 30 s; 30 s after ejection: back
    assert not hosts[0].outlier_ejected and m.consecutive_5xx == 0
    for _ in range(4):
        m.put_http_status(500)
    assert not hosts[0].outlier_ejected


# ---------------------------------------------------------------------- timing


def test_ejection_lasts_base_time_checked_on_interval_ticks():
    d, hosts, clock, changes = setup(max_ejection_percent=50)   # interval 10 s, base 30 s
    clock.advance(1.0)                                          # t = 1001
    for _ in range(5):
        hosts[0].outlier.put_http_status(500)
    clock.advance(29.0)             # ticks at 1010, 1020, 1030: 29 s elapsed < 30 s
    assert hosts[0].outlier_ejected
    clock.advance(9.5)
    assert hosts[0].outlier_ejected
    clock.advance(0.5)              # tick at 1040: 39 s >= 30 s
    assert not hosts[0].outlier_ejected
    assert changes == [hosts[0], hosts[0]] and d.stats.ejections_active == 0


def test_ejected_exactly_on_a_tick_returns_exactly_base_time_later():
    d, hosts, clock, _ = setup(max_ejection_percent=50, interval_ms=1000,
                               base_ejection_time_ms=3000)
    clock.advance(1.0)              # the tick at 1001 has run
    for _ in range(5):
        hosts[0].outlier.put_http_status(500)
    clock.advance(2.0)
    assert hosts[0].outlier_ejected
    clock.advance(1.0)              # 3 s later: min(3 s * 1, max) + 0 <= 3 s
    assert not hosts[0].outlier_ejected


def eject(host):
    for _ in range(5):
        host.outlier.put_http_status(500)


def test_backoff_multiplies_base_time_and_decrements_on_healthy_intervals():
    d, hosts, clock, _ = setup(max_ejection_percent=50, interval_ms=10000,
                               base_ejection_time_ms=10000)
    h, m = hosts[0], hosts[0].outlier
    eject(h)                        # backoff 0 -> 1: 10 s
    assert m.backoff == 1
    clock.advance(10)               # tick 1010: elapsed 10 >= 10 -> back
    assert not h.outlier_ejected
    eject(h)                        # at 1010, backoff 1 -> 2: 20 s
    assert m.backoff == 2
    clock.advance(10)               # 1020: 10 < 20
    assert h.outlier_ejected
    clock.advance(10)               # 1030: 20 >= 20 -> back
    assert not h.outlier_ejected and m.backoff == 2
    clock.advance(10)               # 1040: 10 s since return >= interval: 2 -> 1
    assert m.backoff == 1
    clock.advance(10)               # 1050: 1 -> 0
    clock.advance(10)               # stays 0
    assert m.backoff == 0
    eject(h)
    assert m.backoff == 1           # back to the base time


def test_backoff_is_capped_by_max_ejection_time():
    # base 10 s, max 25 s: backoff grows while backoff * base < max + base (35 s): 1,2,3,4;
    # an ejection lasts min(10 s * backoff, 25 s).
    d, hosts, clock, _ = setup(max_ejection_percent=50, interval_ms=1000,
                               base_ejection_time_ms=10000, max_ejection_time_ms=25000)
    h, m = hosts[0], hosts[0].outlier
    for expected_backoff, duration in ((1, 10), (2, 20), (3, 25), (4, 25), (4, 25)):
        eject(h)
        assert m.backoff == expected_backoff
        clock.advance(duration - 1)
        assert h.outlier_ejected
        clock.advance(1)
        assert not h.outlier_ejected


def test_jitter_adds_random_milliseconds():
    # jitter = random % (max_jitter_ms + 1): 5500 % 2001 = 1498 ms.
    d, hosts, clock, _ = setup(max_ejection_percent=50, interval_ms=100,
                               base_ejection_time_ms=1000, max_ejection_time_jitter_ms=2000,
                               rng=Rng(0, 5500))
    eject(hosts[0])
    assert hosts[0].outlier.jitter_us == 1498000
    clock.advance(2.45)             # ticks every 0.1 s: 2.4 s < 1 s + 1.498 s
    assert hosts[0].outlier_ejected
    clock.advance(0.1)              # 2.5 s >= 2.498 s
    assert not hosts[0].outlier_ejected


def test_removed_host_releases_its_ejection():
    d, hosts, *_ = setup(max_ejection_percent=50)
    eject(hosts[0])
    d.remove_host(hosts[0])
    assert d.stats.ejections_active == 0 and d.active == 0 and hosts[0].outlier is None
    eject(hosts[1])                 # 1 of 2 hosts = 50%: allowed again
    assert hosts[1].outlier_ejected


def test_stop_cancels_the_interval_timer():
    d, hosts, clock, _ = setup()
    assert clock.pending() == 1
    d.stop()
    assert clock.pending() == 0


# ---------------------------------------------------------------------- success rate


def feed(host, total, successes):
    m = host.outlier
    for i in range(total):
        m.put_http_status(200 if i < successes else 500)


def test_success_rate_threshold_formula():
    # Envoy's worked example: {50, 100, 100, 100, 100}: mean 90, variance 400, stdev 20,
    # threshold with factor 1.9 = 90 - 38 = 52.
    assert success_rate_threshold(450.0, [50.0, 100.0, 100.0, 100.0, 100.0], 1.9) == (90.0, 52.0)


def test_success_rate_ejection_on_the_interval():
    d, hosts, clock, changes = setup(n=5, max_ejection_percent=100, consecutive_5xx=1000)
    for h, ok in zip(hosts, (50, 100, 100, 100, 100)):
        feed(h, 100, ok)
    clock.advance(9.5)
    assert not any(h.outlier_ejected for h in hosts)
    clock.advance(0.5)              # the tick rolls the interval over and judges it:
    # rates 50/100/100/100/100 -> mean 90, threshold 52 -> host 0 goes
    assert [h.outlier_ejected for h in hosts] == [True, False, False, False, False]
    assert d.sr_average[0] == 90.0 and d.sr_threshold[0] == 52.0
    assert used(d.stats) == {"ejections_detected_success_rate": 1,
                             "ejections_enforced_success_rate": 1, "ejections_success_rate": 1,
                             "ejections_enforced_total": 1, "ejections_total": 1,
                             "ejections_active": 1}
    assert hosts[0].outlier.success_rate() == 50.0


def test_success_rate_needs_volume_and_minimum_hosts():
    d, hosts, clock, _ = setup(n=5, max_ejection_percent=100, consecutive_5xx=1000)
    for _ in range(2):
        for h, ok in zip(hosts, (50, 100, 100, 100, 100)):
            feed(h, 99 if h is hosts[4] else 100, ok if h is not hosts[4] else 99)
        clock.advance(10)
    # Only 4 hosts reached 100 requests (< success_rate_minimum_hosts 5): no decision.
    assert not any(h.outlier_ejected for h in hosts) and d.sr_average[0] == -1.0
    # Requests of an earlier interval do not count once a new interval began.
    assert hosts[0].outlier.rates[0].last_total == 100


def test_success_rate_stdev_factor():
    # rates 80, 90, 100, 100, 100: mean 94, variance (196+16+36*3)/5 = 64, stdev 8.
    # factor 1.9 -> 78.8 (80 stays); factor 1.5 -> 82 (80 goes).
    for factor, ejected in ((1900, False), (1500, True)):
        d, hosts, clock, _ = setup(n=5, max_ejection_percent=100, consecutive_5xx=1000,
                                   success_rate_stdev_factor=factor)
        for h, ok in zip(hosts, (80, 90, 100, 100, 100)):
            feed(h, 100, ok)
        clock.advance(10)
        assert hosts[0].outlier_ejected is ejected
        assert d.sr_average[0] == 94.0
        assert d.sr_threshold[0] == pytest.approx(94 - factor / 1000 * 8)


def test_failure_percentage_ejection():
    # Host 0 fails 90% >= 85%. enforcing_failure_percentage defaults to 0: detected only.
    for enforcing, ejected in ((0, False), (100, True)):
        d, hosts, clock, _ = setup(n=5, max_ejection_percent=100, consecutive_5xx=1000,
                                   success_rate_request_volume=1000,
                                   enforcing_failure_percentage=enforcing)
        for h in hosts:
            feed(h, 50, 5 if h is hosts[0] else 50)
        clock.advance(10)
        assert hosts[0].outlier_ejected is ejected
        assert d.stats.ejections_detected_failure_percentage == 1
        assert d.stats.ejections_enforced_failure_percentage == int(ejected)
        assert d.sr_average[0] == -1.0      # not enough volume for success rate


def test_failure_percentage_minimum_hosts_and_volume():
    d, hosts, clock, _ = setup(n=5, max_ejection_percent=100, consecutive_5xx=1000,
                               enforcing_failure_percentage=100,
                               failure_percentage_minimum_hosts=6)
    for _ in range(2):
        for h in hosts:
            feed(h, 50, 0 if h is hosts[0] else 50)
        clock.advance(10)
    assert not hosts[0].outlier_ejected
    d, hosts, clock, _ = setup(n=5, max_ejection_percent=100, consecutive_5xx=1000,
                               enforcing_failure_percentage=100)
    for _ in range(2):
        for h in hosts:
            feed(h, 49, 0 if h is hosts[0] else 49)
        clock.advance(10)
    assert not hosts[0].outlier_ejected


# ---------------------------------------------------------------------- local origin


def test_local_origin_events_without_split_count_as_http_codes():
    d, hosts, *_ = setup(max_ejection_percent=50, enforcing_consecutive_gateway_failure=100)
    m = hosts[0].outlier
    m.put_result(LOCAL_ORIGIN_CONNECT_SUCCESS)          # nothing at all
    assert m.rates[0].total == 0
    for _ in range(4):
        m.put_result(LOCAL_ORIGIN_CONNECT_FAILED)       # 503
    m.put_result(LOCAL_ORIGIN_TIMEOUT, 504)
    assert hosts[0].outlier_ejected
    assert d.stats.ejections_enforced_consecutive_gateway_failure == 1
    assert m.rates[0].total == 5 and m.rates[1].total == 0
    m2 = hosts[1].outlier
    m2.put_result(EXT_ORIGIN_REQUEST_FAILED)
    assert m2.consecutive_5xx == 1 and m2.consecutive_gateway_failure == 0   # 500


def test_split_local_origin_failures_have_their_own_rule():
    d, hosts, *_ = setup(max_ejection_percent=50, split_external_local_origin_errors=True)
    m = hosts[0].outlier
    for _ in range(4):
        m.put_result(LOCAL_ORIGIN_CONNECT_FAILED)
    m.put_result(LOCAL_ORIGIN_CONNECT_SUCCESS)          # resets the local run
    for _ in range(4):
        m.put_result(LOCAL_ORIGIN_TIMEOUT, 504)         # the code is ignored when split
    assert m.consecutive_5xx == 0 and m.rates[0].total == 0
    assert not hosts[0].outlier_ejected
    m.put_result(LOCAL_ORIGIN_CONNECT_FAILED)
    assert hosts[0].outlier_ejected
    assert used(d.stats) == {"ejections_detected_consecutive_local_origin_failure": 1,
                             "ejections_enforced_consecutive_local_origin_failure": 1,
                             "ejections_enforced_total": 1, "ejections_active": 1}
    # HTTP codes still go to the external rules.
    for _ in range(5):
        hosts[1].outlier.put_http_status(500)
    assert hosts[1].outlier.rates[1].total == 0


def test_split_local_origin_success_rate_and_failure_percentage():
    d, hosts, clock, _ = setup(n=5, max_ejection_percent=100,
                               split_external_local_origin_errors=True,
                               consecutive_local_origin_failure=1000,
                               enforcing_failure_percentage_local_origin=100)
    for h in hosts:
        m = h.outlier
        for i in range(100):
            m.put_result(LOCAL_ORIGIN_CONNECT_SUCCESS if (h is not hosts[0] or i < 10)
                         else LOCAL_ORIGIN_CONNECT_FAILED)
    clock.advance(10)
    # Host 0: 10% local success. Success rate: mean 82, stdev 36, threshold 13.6 -> 10 goes
    # (SUCCESS_RATE_LOCAL_ORIGIN); the failure-percentage pass of the same tick finds it too
    # and, as Envoy 1.40 does (checked against the binary), ejects it again without
    # re-checking: ejections_active counts 2.
    assert hosts[0].outlier_ejected and d.stats.ejections_active == 2
    assert d.sr_average[1] == 82.0 and d.sr_threshold[1] == pytest.approx(82 - 1.9 * 36)
    assert d.stats.ejections_detected_local_origin_success_rate == 1
    assert d.stats.ejections_enforced_local_origin_success_rate == 1
    assert d.stats.ejections_detected_local_origin_failure_percentage == 1
    assert d.sr_average[0] == -1.0


# ---------------------------------------------------------------------- config


def od(**fields):
    return json_format.ParseDict(fields, outlier_detection_pb2.OutlierDetection())


def test_config_defaults_are_envoys():
    c = build_detector_config(od(), "c.outlier_detection")
    assert c == DetectorConfig()
    assert (c.interval_ms, c.base_ejection_time_ms, c.max_ejection_time_ms,
            c.max_ejection_percent, c.success_rate_stdev_factor) == (10000, 30000, 300000, 10,
                                                                     1900)
    # max_ejection_time defaults to the larger of 300 s and base_ejection_time.
    assert build_detector_config(od(baseEjectionTime="400s"), "p").max_ejection_time_ms == \
        400000
    c = build_detector_config(od(interval="0.25s", consecutive5xx=3, maxEjectionPercent=100,
                                 splitExternalLocalOriginErrors=True,
                                 alwaysEjectOneHost=True, maxEjectionTimeJitter="1.5s"), "p")
    assert (c.interval_ms, c.consecutive_5xx, c.max_ejection_percent,
            c.split_external_local_origin_errors, c.always_eject_one_host,
            c.max_ejection_time_jitter_ms) == (250, 3, 100, True, True, 1500)


@pytest.mark.parametrize("fields,path,msg", [
    ({"maxEjectionPercent": 101}, "max_ejection_percent", "less than or equal to 100"),
    ({"enforcingConsecutive5xx": 101}, "enforcing_consecutive_5xx", "less than or equal"),
    ({"failurePercentageThreshold": 200}, "failure_percentage_threshold", "less than"),
    ({"enforcingLocalOriginSuccessRate": 101}, "enforcing_local_origin_success_rate", "less"),
    ({"interval": "0s"}, "interval", "greater than 0s"),
    ({"baseEjectionTime": "0s"}, "base_ejection_time", "greater than 0s"),
    ({"maxEjectionTime": "0s"}, "max_ejection_time", "greater than 0s"),
    ({"interval": "-1s"}, "interval", "Expected positive duration"),
    ({"maxEjectionTimeJitter": "-1s"}, "max_ejection_time_jitter", "positive duration"),
    ({"baseEjectionTime": "40s", "maxEjectionTime": "30s"}, "max_ejection_time",
     "cannot be smaller than base_ejection_time"),
    ({"monitors": [{"name": "x", "typedConfig": {
        "@type": "type.googleapis.com/" + empty_pb2.Empty.DESCRIPTOR.full_name}}]},
     "monitors", "not supported"),
])
def test_config_errors_name_the_field(fields, path, msg):
    with pytest.raises(ConfigError) as e:
        build_detector_config(od(**fields), "clusters[0].outlier_detection")
    assert e.value.path == "clusters[0].outlier_detection." + path
    assert msg in e.value.message


def test_consecutive_threshold_zero_never_fires():
    # Envoy accepts consecutive_5xx: 0; ++counter == 0 never holds.
    assert build_detector_config(od(consecutive5xx=0), "p").consecutive_5xx == 0
    d, hosts, *_ = setup(max_ejection_percent=100, consecutive_5xx=0)
    for _ in range(20):
        hosts[0].outlier.put_http_status(500)
    assert not hosts[0].outlier_ejected
