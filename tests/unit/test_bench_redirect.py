"""The ``redirect`` benchmark scenario's sidecar bootstrap: the shape the benchmark relies on,
and both proxies accept it (``--mode validate``), so a broken benchmark config is caught here
and not half-way through a long run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import podnet
from benchmarks.scenarios import (
    ISTIO_RETRY_POLICY,
    SCENARIOS,
    SERVICE_CLUSTER,
    SERVICE_PORT,
    SERVICE_VIP,
)
from tests.support.proxies import find_envoy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def bootstrap_file(tmp_path):
    boot = SCENARIOS["redirect"].envoy_bootstrap(podnet.UPSTREAM_PORT, "10.200.255.1")
    path = tmp_path / "redirect.json"
    path.write_text(json.dumps(boot))
    return boot, str(path)


def test_sidecar_shape(bootstrap_file):
    boot, _ = bootstrap_file
    listeners = {ls["name"]: ls for ls in boot["static_resources"]["listeners"]}
    outbound = listeners["virtualOutbound"]
    assert outbound["use_original_dst"] is True
    assert outbound["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 15001}
    assert [f["name"] for f in outbound["listener_filters"]] == [
        "envoy.filters.listener.original_dst"]
    service = listeners["0.0.0.0_80"]
    assert service["bind_to_port"] is False
    assert service["address"]["socket_address"]["port_value"] == SERVICE_PORT
    hcm = service["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["cluster"] == SERVICE_CLUSTER
    assert route["retry_policy"] == ISTIO_RETRY_POLICY
    clusters = {c["name"]: c for c in boot["static_resources"]["clusters"]}
    ep = clusters[SERVICE_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert clusters[SERVICE_CLUSTER]["type"] == "STATIC"
    assert ep["endpoint"]["address"]["socket_address"] == {
        "address": "10.200.255.1", "port_value": podnet.UPSTREAM_PORT}
    assert clusters["PassthroughCluster"]["type"] == "ORIGINAL_DST"
    # The VIP the app calls must not be where anything listens or is sent.
    assert SERVICE_VIP not in json.dumps(boot)


def test_meshproxy_validates_it(bootstrap_file):
    _, path = bootstrap_file
    r = subprocess.run([sys.executable, "-m", "meshproxy", "--mode", "validate", "-c", path],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout + r.stderr


def test_envoy_validates_it(bootstrap_file):
    envoy = find_envoy()
    if envoy is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    _, path = bootstrap_file
    r = subprocess.run([envoy, "--mode", "validate", "-c", path, "--base-id",
                        str(os.getpid() % 50000 + 7)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"configuration '{path}' OK" in r.stdout + r.stderr
