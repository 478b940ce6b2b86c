"""EDS assignments (upstream/eds.py): what a ClusterLoadAssignment does to an EDS cluster's
hosts, and that a bad one changes nothing."""

from __future__ import annotations

import pytest

from meshproxy.config.errors import ConfigError
from meshproxy.config.protos import message_class, parse_json_into
from meshproxy.upstream.cluster import Cluster
from meshproxy.upstream.cluster_config import build_cluster_config
from meshproxy.upstream.eds import apply_load_assignment, eds_service_name
from meshproxy.upstream.host import HEALTHY, UNHEALTHY

CLA = "envoy.config.endpoint.v3.ClusterLoadAssignment"


def eds_cluster(service_name=""):
    c = {"name": "outbound|80||svc", "type": "EDS", "connect_timeout": "1s",
         "eds_cluster_config": {"eds_config": {"ads": {}}}}
    if service_name:
        c["eds_cluster_config"]["service_name"] = service_name
    msg = parse_json_into(c, message_class("envoy.config.cluster.v3.Cluster")())
    return build_cluster_config(msg, "c")


def cla(*endpoints, name="outbound|80||svc", locality=None, priority=0):
    lle = {"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}},
         "health_status": health, "load_balancing_weight": weight,
         "metadata": {"filter_metadata": {"istio": {"workload": ip}}}}
        for ip, port, health, weight in endpoints], "priority": priority}
    if locality:
        lle["locality"] = locality
    return parse_json_into({"cluster_name": name, "endpoints": [lle]}, message_class(CLA)())


class Pool:
    def __init__(self, host, cluster):
        self.drained = False

    def drain(self):
        self.drained = True


def test_service_name_defaults_to_the_cluster_name():
    assert eds_service_name(eds_cluster()) == "outbound|80||svc"
    assert eds_service_name(eds_cluster("svc.ns")) == "svc.ns"


def test_assignment_sets_hosts_warms_the_cluster_and_keeps_surviving_hosts():
    cl = Cluster(eds_cluster(), loop=None, pool_factory=Pool)
    assert not cl.initialized and cl.hosts == []
    apply_load_assignment(cl, cla(("10.0.0.1", 8080, "HEALTHY", 1),
                                  ("10.0.0.2", 8080, "UNHEALTHY", 3),
                                  locality={"region": "r", "zone": "z"}))
    assert cl.initialized
    a, b = cl.hosts
    assert (a.address, a.health_status, a.weight) == (("10.0.0.1", 8080), HEALTHY, 1)
    assert (b.address, b.health_status, b.weight) == (("10.0.0.2", 8080), UNHEALTHY, 3)
    assert a.locality == ("r", "z", "")
    assert a.metadata.filter_metadata["istio"]["workload"] == "10.0.0.1"
    assert cl.stats.membership_total == 2 and cl.stats.membership_healthy == 1
    assert cl.stats.max_host_weight == 3
    pa, pb = cl.pool_for(a), cl.pool_for(b)
    apply_load_assignment(cl, cla(("10.0.0.1", 8080, "HEALTHY", 2),
                                  ("10.0.0.3", 8080, "HEALTHY", 1)))
    assert cl.hosts[0] is a and a.pool is pa and a.weight == 2 and not pa.drained
    assert pb.drained                      # the removed host's requests finish, then it goes
    assert [h.address for h in cl.hosts] == [("10.0.0.1", 8080), ("10.0.0.3", 8080)]


def test_a_bad_assignment_changes_nothing():
    cl = Cluster(eds_cluster(), loop=None, pool_factory=Pool)
    apply_load_assignment(cl, cla(("10.0.0.1", 8080, "HEALTHY", 1)))
    before = list(cl.hosts)
    bad = cla(("10.0.0.5", 8080, "HEALTHY", 1), ("10.0.0.6", 8080, "HEALTHY", 1))
    bad.endpoints[0].lb_endpoints[1].load_balancing_weight.value = 0
    with pytest.raises(ConfigError) as e:
        apply_load_assignment(cl, bad, "ClusterLoadAssignment outbound|80||svc")
    assert "endpoints[0].lb_endpoints[1].load_balancing_weight" in str(e.value)
    assert cl.hosts == before


def test_empty_assignment_empties_the_cluster_but_warms_it():
    cl = Cluster(eds_cluster(), loop=None, pool_factory=Pool)
    apply_load_assignment(cl, cla())
    assert cl.initialized and cl.hosts == [] and cl.choose_host() is None
