"""The test control plane is a faithful peer: it ignores requests with stale nonces (xDS
protocol, "ACK and NACK semantics"), answers SotW named subscriptions with just the names
asked for, and serves resources from files. Checked with a bare gRPC client."""

from __future__ import annotations

import asyncio

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshproxy.xds import types as T
from tests.xds import builders as B


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _sotw_stream(cp):
    channel = grpc.aio.insecure_channel(cp.target)
    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
    return channel, call


def test_stale_nonce_is_recorded_and_not_answered(control_plane):
    cp = control_plane
    cp.set_resources(T.ENDPOINT, [B.cla("a", 1), B.cla("b", 2)], "e1")

    async def body():
        channel, call = await _sotw_stream(cp)
        try:
            await call.write(discovery_pb2.DiscoveryRequest(
                type_url=T.ENDPOINT, resource_names=["a"], node=base_pb2.Node(id="x")))
            first = await call.read()
            assert (first.version_info, first.nonce) == ("e1", "1")
            assert len(first.resources) == 1            # only the name asked for
            cp.set_resources(T.ENDPOINT, [B.cla("a", 3), B.cla("b", 2)], "e2")
            pushed = await call.read()
            assert pushed.nonce == "2"
            # a names change that still carries the old nonce is stale: ignored
            await call.write(discovery_pb2.DiscoveryRequest(
                type_url=T.ENDPOINT, version_info="e1", response_nonce="1",
                resource_names=["a", "b"]))
            # the ACK of the push is current: the names change it carries is answered
            await call.write(discovery_pb2.DiscoveryRequest(
                type_url=T.ENDPOINT, version_info="e2", response_nonce="2",
                resource_names=["a", "b"]))
            answer = await call.read()
            assert answer.nonce == "3"                  # nothing was sent for the stale one
            assert len(answer.resources) == 2
        finally:
            await channel.close()
    run(body())
    assert [(r.nonce, r.stale) for r in cp.requests] == [("", False), ("1", True), ("2", False)]
    assert cp.requests[0].has_node and not cp.requests[1].has_node


def test_nack_is_not_answered_until_the_next_push(control_plane):
    cp = control_plane
    cp.set_resources(T.CLUSTER, [B.cluster("a")], "c1")

    async def body():
        channel, call = await _sotw_stream(cp)
        try:
            await call.write(discovery_pb2.DiscoveryRequest(type_url=T.CLUSTER))
            assert (await call.read()).nonce == "1"
            nack = discovery_pb2.DiscoveryRequest(type_url=T.CLUSTER, response_nonce="1")
            nack.error_detail.code = 13
            await call.write(nack)
            cp.set_resources(T.CLUSTER, [B.cluster("b")], "c2")
            resp = await call.read()
            assert (resp.version_info, resp.nonce) == ("c2", "2")
        finally:
            await channel.close()
    run(body())
    assert cp.requests[1].is_nack and cp.requests[1].error == (13, "")


def test_resources_from_a_yaml_file(control_plane, tmp_path):
    cp = control_plane
    f = tmp_path / "snapshot.yaml"
    f.write_text("""
clusters:
- name: backend
  type: EDS
  connect_timeout: 1s
  eds_cluster_config: {eds_config: {ads: {}}}
endpoints:
- cluster_name: backend
  endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
      {address: 127.0.0.1, port_value: 8080}}}}]}]
type.googleapis.com/envoy.config.route.v3.RouteConfiguration:
- name: r
  virtual_hosts: [{name: all, domains: ["*"], routes: [
      {match: {prefix: /}, route: {cluster: backend}}]}]
""")
    assert cp.load_file(str(f), "v1") == {T.CLUSTER: ["backend"], T.ENDPOINT: ["backend"],
                                           T.ROUTE: ["r"]}
    g = tmp_path / "list.json"
    g.write_text('[{"@type": "%s", "name": "l", "address": {"socket_address": '
                 '{"address": "127.0.0.1", "port_value": 0}}}]' % T.LISTENER)
    assert cp.load_file(str(g), "v2") == {T.LISTENER: ["l"]}
    assert cp.snapshot(T.LISTENER).version == "v2"
