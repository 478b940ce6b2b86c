"""Envoy's tag extraction (default extractors, Istio's custom ``stats_tags``, fixed tags) and the
``stats_matcher`` built from a bootstrap's ``stats_config``. Names and label orders follow
Envoy 1.40's TagProducerImpl; the ones our proxies emit are also compared with the binary's
``/stats/prometheus`` in tests/oracle/test_admin_oracle.py."""

from __future__ import annotations

import pytest

from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.stats.config import build_stats_config
from meshproxy.stats.tags import TagProducer, extract_tags, regex_prefix

DEFAULTS = [
    ("cluster.up.upstream_rq_200", "cluster.upstream_rq",
     [("envoy.response_code", "200"), ("envoy.cluster_name", "up")]),
    ("cluster.up.external.upstream_rq_2xx", "cluster.external.upstream_rq_xx",
     [("envoy.response_code_class", "2"), ("envoy.cluster_name", "up")]),
    ("cluster.a-b.circuit_breakers.default.cx_open", "cluster.circuit_breakers.default.cx_open",
     [("envoy.cluster_name", "a-b")]),
    ("listener.127.0.0.1_0.http.ingress.downstream_rq_2xx", "listener.http.downstream_rq_xx",
     [("envoy.response_code_class", "2"), ("envoy.http_conn_manager_prefix", "ingress"),
      ("envoy.listener_address", "127.0.0.1_0")]),
    ("listener.127.0.0.1_0.worker_0.downstream_cx_total", "listener.worker_downstream_cx_total",
     [("envoy.worker_id", "0"), ("envoy.listener_address", "127.0.0.1_0")]),
    ("listener.[__1]_8080.downstream_cx_total", "listener.downstream_cx_total",
     [("envoy.listener_address", "[__1]_8080")]),
    # "admin" is never a listener address (negative match), but is an HCM prefix
    ("listener.admin.downstream_cx_total", "listener.admin.downstream_cx_total", []),
    ("listener.admin.http.admin.downstream_rq_completed",
     "listener.admin.http.downstream_rq_completed",
     [("envoy.http_conn_manager_prefix", "admin")]),
    ("listener.admin.main_thread.downstream_cx_total",
     "listener.admin.main_thread.downstream_cx_total", []),
    ("http.ingress.downstream_rq_total", "http.downstream_rq_total",
     [("envoy.http_conn_manager_prefix", "ingress")]),
    ("http.async-client.rq_total", "http.rq_total",
     [("envoy.http_conn_manager_prefix", "async-client")]),
    ("server.worker_0.watchdog_miss", "server.worker_watchdog_miss", [("envoy.worker_id", "0")]),
    ("thread_local_cluster_manager.worker_0.clusters_inflated",
     "thread_local_cluster_manager.worker_clusters_inflated", [("envoy.worker_id", "0")]),
    ("tcp.egress.downstream_cx_total", "tcp.downstream_cx_total",
     [("envoy.tcp_prefix", "egress")]),
    ("vhost.v.route.r.upstream_rq_503", "vhost.route.upstream_rq",
     [("envoy.response_code", "503"), ("envoy.virtual_host", "v"), ("envoy.route", "r")]),
    # regex extractors run before token patterns (TagProducerImpl::addDefaultExtractors)
    ("http.ingress.rds.my.route.config_reload", "http.rds.config_reload",
     [("envoy.rds_route_config", "my.route"), ("envoy.http_conn_manager_prefix", "ingress")]),
    ("server.state", "server.state", []),
    ("cluster_manager.cds.update_success", "cluster_manager.cds.update_success", []),
]


@pytest.mark.parametrize("name,extracted,tags", DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_default_extraction(name, extracted, tags):
    assert extract_tags(name) == (extracted, tags)


def test_regex_prefix_as_envoy():
    assert regex_prefix(r"^cluster\.((.+?)\.)") == "cluster"
    assert regex_prefix(r"^listener(?=\.).*?\.http\.") == "listener"
    assert regex_prefix(r"^cluster(\.(.+);)") == ""          # Istio's: no literal token
    assert regex_prefix(r"_rq(_(\d{3}))$") == ""
    assert regex_prefix(r"^(?:listener|server)\.") == ""
    assert regex_prefix("^foo$") == "foo"


def _stats_config(d: dict, cli_tags=()):
    msg = message_class("envoy.config.metrics.v3.StatsConfig")()
    parse_json_into(d, msg)
    return build_stats_config(msg, cli_tags)


# Istio's rendered bootstrap (pkg/bootstrap/testdata/default_golden.json), abridged.
ISTIO = {
    "use_all_default_tags": False,
    "stats_tags": [
        {"tag_name": "cluster_name", "regex": "^cluster(\\.(.+);)"},
        {"tag_name": "http_conn_manager_prefix",
         "regex": "^http\\.(((?:[_.[:digit:]\\w]*|[_\\[\\]aAbBcCdDeEfF[:digit:]\\w\\:]*));\\.)"},
        {"tag_name": "response_code", "regex": "_rq(_(\\d{3}))$"},
        {"tag_name": "response_code_class", "regex": "_rq(_(\\dxx))$"},
        {"tag_name": "listener_address",
         "regex": "^listener\\.(((?:[_.[:digit:]]*|[_\\[\\]aAbBcCdDeEfF[:digit:]]*))\\.)"},
    ],
    "stats_matcher": {"inclusion_list": {"patterns": [
        {"prefix": "cluster_manager"}, {"prefix": "server"}, {"prefix": "cluster.xds-grpc"},
        {"suffix": "rbac.allowed"}, {"safe_regex": {"regex": "vhost\\..*\\.route\\..*"}}]}},
}


def test_istio_custom_tags():
    sc = _stats_config(ISTIO)
    assert sc.tags("cluster.xds-grpc;.upstream_cx_total") == \
        ("cluster.upstream_cx_total", [("cluster_name", "xds-grpc")])
    # "^http\\." has a literal first token, so it runs after the prefix-less regexes
    assert sc.tags("http.10.0.0.1_8080;.downstream_rq_2xx") == \
        ("http.downstream_rq", [("response_code_class", "2xx"),
                                ("http_conn_manager_prefix", "10.0.0.1_8080")])
    # no default extractors: a plain cluster name stays in the name
    assert sc.tags("cluster.up.upstream_cx_total") == ("cluster.up.upstream_cx_total", [])
    assert sc.tags("listener.0.0.0.0_15006.downstream_cx_total") == \
        ("listener.downstream_cx_total", [("listener_address", "0.0.0.0_15006")])


def test_istio_inclusion_list():
    sc = _stats_config(ISTIO)
    assert not sc.rejects("cluster_manager.cds.update_success")
    assert not sc.rejects("server.state")
    assert not sc.rejects("cluster.xds-grpc;.upstream_cx_total")
    assert not sc.rejects("http.inbound.rbac.allowed")
    assert not sc.rejects("vhost.a.route.b.upstream_rq_200")       # full regex match
    assert sc.rejects("cluster.up.upstream_cx_total")
    assert sc.rejects("listener_manager.workers_started")
    assert sc.rejects("vhost.a.upstream_rq_200")


def test_exclusion_list_and_reject_all():
    sc = _stats_config({"stats_matcher": {"exclusion_list": {"patterns": [
        {"prefix": "http.", "ignore_case": True}, {"exact": "server.uptime"},
        {"contains": "watchdog"}]}}})
    assert sc.rejects("HTTP.admin.downstream_rq_total")
    assert sc.rejects("server.uptime") and not sc.rejects("server.uptime2")
    assert sc.rejects("server.main_thread.watchdog_miss")
    assert not sc.rejects("server.state")
    assert _stats_config({"stats_matcher": {"reject_all": True}}).rejects("server.state")
    assert not _stats_config({"stats_matcher": {"reject_all": False}}).rejects("server.state")


def test_fixed_and_named_default_tags():
    sc = _stats_config({"use_all_default_tags": False,
                        "stats_tags": [{"tag_name": "envoy.cluster_name"},
                                       {"tag_name": "mesh", "fixed_value": "m1"}]},
                       cli_tags=["zone:z1"])
    assert sc.tags("cluster.up.upstream_rq_200") == \
        ("cluster.upstream_rq_200", [("zone", "z1"), ("mesh", "m1"),
                                     ("envoy.cluster_name", "up")])


def test_bad_stats_config_names_the_field():
    with pytest.raises(ConfigError) as e:
        _stats_config({"stats_tags": [{"tag_name": "nope"}]})
    assert e.value.path == "stats_config.stats_tags[0]"
    assert "no default regex for name: 'nope'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        _stats_config({"stats_tags": [{"tag_name": "x", "regex": "(("}]})
    assert e.value.path == "stats_config.stats_tags[0].regex"
    with pytest.raises(ConfigError) as e:
        _stats_config({"stats_matcher": {"inclusion_list": {"patterns": [
            {"safe_regex": {"regex": "a(?=b)"}}]}}})
    assert "invalid perl operator" in str(e.value)


def test_duplicate_tag_names_keep_the_first_match():
    # HTTP_CONN_MANAGER_PREFIX is both a regex (listener.*.http.X.) and a token pattern
    # (http.X.**); only one tag comes out per name.
    p = TagProducer()
    _, tags = p.produce("listener.1.2.3.4_80.http.h.downstream_rq_total")
    assert [t for t in tags if t[0] == "envoy.http_conn_manager_prefix"] == \
        [("envoy.http_conn_manager_prefix", "h")]
