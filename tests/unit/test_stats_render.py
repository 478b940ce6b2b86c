"""Admin renderings: Envoy's text and JSON formats and a Prometheus exposition that
prometheus_client parses, with Envoy's family/sample ordering and label escaping."""

from __future__ import annotations

import json
import re

from prometheus_client.parser import text_string_to_metric_families

from meshproxy.stats import render
from meshproxy.stats.config import StatsConfig
from meshproxy.stats.store import Stat


def _stats():
    return [Stat(n, k, v, v != 0) for n, k, v in [
        ("cluster.a-b.upstream_rq_200", "counter", 1),
        ("cluster.a.upstream_rq_200", "counter", 2),
        ("cluster.a.upstream_rq_503", "counter", 3),
        ("cluster.a.upstream_cx_active", "gauge", 0),
        ("server.state", "gauge", 0),
        ("http.in\"g.downstream_rq_total", "counter", 4),
    ]]


def test_text_and_json():
    stats = _stats()[:2]
    assert render.text(stats) == "cluster.a-b.upstream_rq_200: 1\ncluster.a.upstream_rq_200: 2\n"
    body = render.as_json(stats)
    assert body == ('{"stats":[{"name":"cluster.a-b.upstream_rq_200","value":1},'
                    '{"name":"cluster.a.upstream_rq_200","value":2}]}')
    assert json.loads(render.as_json([])) == {"stats": []}


def test_select():
    stats = _stats()
    assert [s.name for s in render.select(stats, used_only=True, kind="gauge")] == []
    rx = re.compile("^cluster")
    assert len(render.select(stats, regex=rx)) == 4
    assert [s.name for s in render.select(stats, regex=rx, invert=True)] == \
        ["server.state", "http.in\"g.downstream_rq_total"]


def test_prometheus_families_order_and_labels():
    body = render.prometheus(_stats(), StatsConfig())
    fams = list(text_string_to_metric_families(body))
    assert [(f.name, f.type) for f in fams] == [
        ("envoy_cluster_upstream_rq", "counter"),
        ("envoy_http_downstream_rq", "counter"),  # the parser drops "_total"
        ("envoy_cluster_upstream_cx_active", "gauge"),
        ("envoy_server_state", "gauge")]
    # samples of a family sorted token by token: "a" before "a-b" (bytes would say otherwise)
    assert [dict(s.labels) for s in fams[0].samples] == [
        {"envoy_response_code": "200", "envoy_cluster_name": "a"},
        {"envoy_response_code": "503", "envoy_cluster_name": "a"},
        {"envoy_response_code": "200", "envoy_cluster_name": "a-b"}]
    assert fams[1].samples[0].labels == {"envoy_http_conn_manager_prefix": 'in"g'}
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="in\\"g"} 4' in body
    assert "envoy_server_state{} 0\n" in body
    assert body.endswith("\n")
    assert render.prometheus([], StatsConfig()) == ""


def test_prometheus_same_extracted_name_two_kinds():
    # a counter and a gauge with one tag-extracted name: two families, as Envoy prints them
    stats = [Stat("x.a", "counter", 1, True), Stat("x.a", "gauge", 2, True)]
    body = render.prometheus(stats, StatsConfig())
    assert body == "# TYPE envoy_x_a counter\nenvoy_x_a{} 1\n# TYPE envoy_x_a gauge\n" \
                   "envoy_x_a{} 2\n"
