"""The Catalog handler set drives the mux in Envoy 1.40's order - the request sequences here are
the ones Envoy sent to tests/xds/control_plane.py (see test_xds_oracle.py) - and checks
resources with meshproxy's config translation. No network: responses are fed by hand."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2

from meshproxy.xds import types as T
from meshproxy.xds.catalog import Catalog
from meshproxy.xds.mux import AdsMux
from tests.support.clock import FakeClock
from tests.xds import builders as B


class Harness:
    def __init__(self, delta=False, **kw):
        self.clock = FakeClock()
        self.mux = AdsMux(base_pb2.Node(id="n"), {}, delta=delta, clock=self.clock, **kw)
        self.catalog = Catalog(self.mux)
        self.mux.handlers.update(self.catalog.handlers())
        self.delta = delta
        self.nonce = 0
        self.mux.stream_started()
        self.catalog.start()

    def push(self, type_url, version, *resources):
        self.nonce += 1
        if self.delta:
            named = [(B.proto(type_url, r).cluster_name if type_url == T.ENDPOINT else r["name"],
                      version, r) for r in resources]
            self.mux.on_response(B.delta(type_url, str(self.nonce), named,
                                         system_version=version))
        else:
            self.mux.on_response(B.sotw(type_url, version, str(self.nonce), *resources))

    def sent(self):
        out = []
        for r in self.mux.take_requests():
            kind = "NACK" if r.HasField("error_detail") else ("ACK" if r.response_nonce else "REQ")
            names = list(r.resource_names_subscribe if self.delta else r.resource_names)
            version = "" if self.delta else r.version_info
            out.append(" ".join(x for x in (kind, T.short(r.type_url), version, ",".join(names))
                                if x))
        return out


def initial_sync(h):
    h.push(T.CLUSTER, "c1", B.cluster("backend"))
    h.push(T.ENDPOINT, "e1", B.cla("backend", 9001))
    h.push(T.LISTENER, "l1", B.listener("http", "route1"))
    h.push(T.ROUTE, "r1", B.route("route1", "backend"))


def test_initial_sync_in_envoys_order_sotw():
    h = Harness()
    initial_sync(h)
    assert h.sent() == ["REQ CDS", "REQ EDS backend", "ACK CDS c1", "REQ LDS",
                        "ACK EDS e1 backend", "REQ RDS route1", "ACK LDS l1",
                        "ACK RDS r1 route1"]
    assert h.catalog.ready


def test_initial_sync_in_envoys_order_delta():
    h = Harness(delta=True)
    initial_sync(h)
    assert h.sent() == ["REQ CDS", "REQ EDS backend", "ACK CDS", "REQ LDS", "ACK EDS",
                        "REQ RDS route1", "ACK LDS", "ACK RDS"]
    assert h.catalog.ready


def test_lds_waits_for_the_clusters_to_warm():
    h = Harness()
    h.push(T.CLUSTER, "c1", B.cluster("backend"))
    assert "REQ LDS" not in h.sent()
    assert not h.catalog.clusters_initialized and h.catalog.warming_clusters == {"backend"}


def test_without_eds_clusters_lds_starts_before_the_cds_ack():
    h = Harness()
    h.push(T.CLUSTER, "c1", B.static_cluster("s", 9000))
    assert h.sent() == ["REQ CDS", "REQ LDS", "ACK CDS c1"]


def test_after_init_the_cds_ack_waits_for_new_clusters_to_warm():
    h = Harness()
    initial_sync(h)
    h.sent()
    h.push(T.CLUSTER, "c2", B.cluster("backend"), B.cluster("b2"))
    # the names change goes out as the previous EDS ACK again (SotW re-sends its state)
    assert h.sent() == ["ACK EDS e1 b2,backend"]
    h.push(T.ENDPOINT, "e2", B.cla("backend", 9001), B.cla("b2", 9002))
    assert h.sent() == ["ACK CDS c2", "ACK EDS e2 b2,backend"]


def test_a_bad_cluster_is_nacked_with_envoys_message_and_the_rest_kept():
    h = Harness()
    initial_sync(h)
    h.sent()
    h.push(T.CLUSTER, "c2", B.cluster("backend"), B.bad_cluster("bad"))
    [nack] = h.mux.take_requests()
    assert nack.version_info == "c1" and nack.error_detail.code == 13
    assert nack.error_detail.message.startswith(
        "Error adding/updating cluster(s) bad: lb_policy: cluster: LB policy ROUND_ROBIN is "
        "not valid for Cluster type ORIGINAL_DST")
    assert set(h.catalog.resources[T.CLUSTER]) == {"backend"}


def test_removing_a_cluster_unsubscribes_its_endpoints():
    h = Harness()
    initial_sync(h)
    h.push(T.CLUSTER, "c2", B.cluster("backend"), B.cluster("b2"))
    h.push(T.ENDPOINT, "e2", B.cla("backend", 1), B.cla("b2", 2))
    h.sent()
    h.push(T.CLUSTER, "c3", B.cluster("b2"))
    assert h.sent() == ["ACK EDS e2 b2", "ACK CDS c3"]
    assert set(h.catalog.resources[T.ENDPOINT]) == {"b2"}


def test_listener_route_names_follow_the_listeners():
    h = Harness(delta=True)
    initial_sync(h)
    h.sent()
    h.push(T.LISTENER, "l2", B.listener("http", "route2"))
    assert h.sent() == ["REQ RDS route2", "ACK LDS"]
    assert h.catalog.warming_listeners == {"http"}
    h.push(T.ROUTE, "r2", B.route("route2", "backend"))
    assert h.catalog.warming_listeners == set()


@pytest.mark.parametrize("what", ["timeout", "rejected"])
def test_initialisation_carries_on_without_endpoints(what):
    h = Harness(initial_fetch_timeout={T.CLUSTER: 15, T.ENDPOINT: 15, T.LISTENER: 15,
                                       T.ROUTE: 15})
    h.push(T.CLUSTER, "c1", B.cluster("backend"))
    h.sent()
    if what == "timeout":
        h.clock.advance(15)
    else:
        h.push(T.ENDPOINT, "e1", {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "not-an-ip",
                                                         "port_value": 1}}}}]}]})
    assert "REQ LDS" in h.sent()
    assert h.catalog.clusters_initialized


def test_invalid_listener_and_route_are_refused_by_the_static_translation():
    h = Harness()
    initial_sync(h)
    h.sent()
    bad_listener = B.listener("http2", "route1")
    bad_listener["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": 0,
                                                  "protocol": "UDP"}}
    h.push(T.LISTENER, "l2", B.listener("http", "route1"), bad_listener)
    [nack] = h.mux.take_requests()
    assert nack.error_detail.message == ("Error adding/updating listener(s) http2: "
                                         "address.socket_address.protocol: only TCP is supported\n")
    bad_route = B.route("route1", "backend")
    bad_route["virtual_hosts"][0]["domains"] = []
    h.push(T.ROUTE, "r2", bad_route)
    [nack] = h.mux.take_requests()
    assert nack.version_info == "r1" and "virtual_hosts[0].domains" in nack.error_detail.message


def test_a_replaced_listener_keeps_its_routes_watched_while_it_drains():
    h = Harness()
    initial_sync(h)
    h.sent()
    h.push(T.LISTENER, "l2", B.listener("http", "route2"))
    assert h.sent() == ["ACK RDS r1 route1,route2", "ACK LDS l2"]
    h.push(T.ROUTE, "r2", B.route("route1", "backend"), B.route("route2", "backend"))
    assert h.sent() == ["ACK RDS r2 route1,route2"]
    h.catalog.drained("http")
    assert h.sent() == ["ACK RDS r2 route2"]
    assert set(h.catalog.resources[T.ROUTE]) == {"route2"}
