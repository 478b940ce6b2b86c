"""The fault filter's decisions (http.fault): percentages drawn as Envoy's featureEnabled,
header-controlled kinds capped by the configured percentage, and config errors named."""

from __future__ import annotations

import random

import pytest

from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.http.fault import FAULT_TYPE, FaultSettings


def settings(d: dict) -> FaultSettings:
    return FaultSettings(parse_json_into(d, message_class(FAULT_TYPE)()), "fault")


class Req:
    def __init__(self, **headers):
        self.headers = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]


def share(fn, n=20000) -> float:
    return sum(1 for _ in range(n) if fn() is not None) / n


def test_fixed_abort_percentage_is_drawn_per_request():
    s = settings({"abort": {"http_status": 503, "percentage": {"numerator": 25}}})
    rng = random.Random(7)
    assert 0.23 < share(lambda: s.abort(Req(), rng)) < 0.27
    assert s.abort(Req(), random.Random(1)) in (None, (503, None))


def test_ten_thousand_denominator():
    s = settings({"delay": {"fixed_delay": "1s",
                            "percentage": {"numerator": 50, "denominator": "TEN_THOUSAND"}}})
    rng = random.Random(3)
    assert 0.002 < share(lambda: s.delay(Req(), rng), 100000) < 0.008


def test_header_percentage_is_capped_by_the_configured_one():
    s = settings({"abort": {"header_abort": {}, "percentage": {"numerator": 50}}})
    rng = random.Random(5)
    low = Req(x_envoy_fault_abort_request="503", x_envoy_fault_abort_request_percentage="10")
    high = Req(x_envoy_fault_abort_request="503", x_envoy_fault_abort_request_percentage="90")
    assert 0.08 < share(lambda: s.abort(low, rng)) < 0.12
    assert 0.47 < share(lambda: s.abort(high, rng)) < 0.53
    bad = Req(x_envoy_fault_abort_request="503", x_envoy_fault_abort_request_percentage="x")
    assert 0.47 < share(lambda: s.abort(bad, rng)) < 0.53


def test_header_delay_needs_a_number():
    s = settings({"delay": {"header_delay": {}, "percentage": {"numerator": 100}}})
    rng = random.Random(0)
    assert s.delay(Req(x_envoy_fault_delay_request="250"), rng) == 250
    assert s.delay(Req(x_envoy_fault_delay_request="-5"), rng) is None
    assert s.delay(Req(x_envoy_fault_delay_request="0"), rng) is None
    assert s.delay(Req(), rng) is None


def test_grpc_abort_answers_200_with_the_status():
    s = settings({"abort": {"grpc_status": 14, "percentage": {"numerator": 100}}})
    assert s.abort(Req(), random.Random(0)) == (200, 14)


@pytest.mark.parametrize("d,path", [
    ({"abort": {"http_status": 700, "percentage": {"numerator": 100}}}, "fault.abort.http_status"),
    ({"abort": {"percentage": {"numerator": 100}}}, "fault.abort"),
])
def test_bad_settings_name_the_field(d, path):
    with pytest.raises(ConfigError) as e:
        settings(d)
    assert e.value.path == path
