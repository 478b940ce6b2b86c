"""Translation of the HttpConnectionManager proto into ``HcmConfig`` (Envoy's defaults and the
fields the HTTP/1 codec and connection manager use)."""

from __future__ import annotations

import pytest

from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.http import hcm_config
from meshproxy.http.hcm_config import build_hcm_config, default_hcm_config
from tests.support.proxies import hcm

HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def build(**extra):
    d = hcm([{"match": {"prefix": "/"}, "direct_response": {"status": 200}}], **extra)
    d.pop("@type")
    msg = message_class(HCM)()
    parse_json_into(d, msg)
    return build_hcm_config(msg, "hcm")


def test_envoy_defaults():
    c = build()
    assert c.limits.max_request_headers_kb == 60
    assert c.limits.max_headers_count == 100
    assert c.limits.accept_http_10 is False
    assert c.limits.headers_with_underscores == "ALLOW"
    assert c.idle_timeout == 3600.0
    assert c.stream_idle_timeout == 300.0
    assert c.request_timeout is None and c.request_headers_timeout is None
    assert c.delayed_close_timeout == 1.0
    assert c.drain_timeout == 5.0
    assert c.max_connection_duration is None and c.max_stream_duration is None
    assert c.max_requests_per_connection == 0
    assert c.server_name == b"envoy" and c.server_transform == "OVERWRITE"
    assert c.generate_request_id is True and c.preserve_external_request_id is False
    assert c.use_remote_address is False
    assert c.codec_type == "AUTO"


def test_options():
    c = build(max_request_headers_kb=8, delayed_close_timeout="0s", request_timeout="2s",
              request_headers_timeout="0.5s", stream_idle_timeout="0s", drain_timeout="1s",
              server_name="meshy", server_header_transformation="PASS_THROUGH",
              generate_request_id=False, always_set_request_id_in_response=True,
              via="1.1 m",
              common_http_protocol_options={"max_headers_count": 5, "idle_timeout": "3s",
                                            "max_connection_duration": "4s",
                                            "max_stream_duration": "6s",
                                            "max_requests_per_connection": 7,
                                            "headers_with_underscores_action": "DROP_HEADER"},
              http_protocol_options={"accept_http_10": True,
                                     "default_host_for_http_10": "d.example",
                                     "allow_absolute_url": False})
    assert c.limits.max_request_headers_kb == 8 and c.limits.max_headers_count == 5
    assert c.limits.accept_http_10 and c.limits.default_host_for_http_10 == b"d.example"
    assert c.limits.allow_absolute_url is False
    assert c.limits.headers_with_underscores == "DROP_HEADER"
    # 0 disables the delayed close and the stream idle timeout, as in Envoy
    assert c.delayed_close_timeout == 0.0 and c.stream_idle_timeout is None
    assert (c.request_timeout, c.request_headers_timeout, c.drain_timeout) == (2.0, 0.5, 1.0)
    assert (c.idle_timeout, c.max_connection_duration, c.max_stream_duration) == (3.0, 4.0, 6.0)
    assert c.max_requests_per_connection == 7
    assert c.server_name == b"meshy" and c.server_transform == "PASS_THROUGH"
    assert c.generate_request_id is False and c.always_set_request_id_in_response is True
    assert c.via == b"1.1 m"


@pytest.mark.parametrize("kb", [0, 8193])
def test_max_request_headers_kb_range(kb):
    with pytest.raises(ConfigError) as e:
        build(max_request_headers_kb=kb)
    assert "max_request_headers_kb" in str(e.value)


def test_codec_backend_switch(monkeypatch):
    monkeypatch.setenv("MESHPROXY_HTTP1_CODEC", "h11")
    assert build().codec_backend == "h11"
    monkeypatch.setenv("MESHPROXY_HTTP1_CODEC", "nope")
    with pytest.raises(ConfigError):
        build()


def test_local_address_is_not_loopback():
    a = hcm_config.local_address()
    assert a is None or not a.startswith("127.")
    assert build().local_address == a


def test_admin_defaults():
    c = default_hcm_config("admin", None)
    assert c.delayed_close_timeout == 1.0 and c.limits.max_headers_count == 100


def test_tracing_config_is_warned_about_once():
    # Tracing is not implemented yet: a config asking for it must not pass silently, and
    # Istio's sidecars (tracing on every HCM) must not get one warning per listener.
    import logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.records = []

        def emit(self, record):
            self.records.append(record)

    # on the module's own logger: meshproxy's logging set-up may stop propagation to root
    keep = Keep()
    logger = logging.getLogger("meshproxy.config")
    level = logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.WARNING)   # another test may have set meshproxy's level higher
    try:
        hcm_config._WARNED.discard("tracing")
        build()
        assert not keep.records
        for _ in range(3):
            build(tracing={"random_sampling": {"value": 1}})
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    hits = [r for r in keep.records if "tracing is not implemented" in r.getMessage()]
    assert len(hits) == 1 and "tracing" in hits[0].getMessage()
