"""The sans-IO ADS mux: node placement, request order, pauses, initial fetch timeouts, TTLs,
SotW and delta, on a fake clock."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2

from meshproxy.xds import types as T
from meshproxy.xds.mux import AdsMux
from meshproxy.xds.resources import FETCH_TIMEOUT, REJECTED
from tests.support.clock import FakeClock
from tests.xds import builders as B
from tests.xds.builders import Recorder

NODE = base_pb2.Node(id="sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local")


def make(delta=False, handlers=None, **kw):
    handlers = handlers or {t: Recorder() for t in (T.CLUSTER, T.ENDPOINT, T.LISTENER, T.ROUTE)}
    clock = FakeClock()
    mux = AdsMux(NODE, handlers, delta=delta, clock=clock, **kw)
    return mux, handlers, clock


def summary(reqs):
    out = []
    for r in reqs:
        if hasattr(r, "resource_names_subscribe"):
            names = list(r.resource_names_subscribe)
        else:
            names = list(r.resource_names)
        kind = "NACK" if r.HasField("error_detail") else ("ACK" if r.response_nonce else "REQ")
        out.append((kind, T.short(r.type_url), names, r.HasField("node")))
    return out


@pytest.mark.parametrize("delta", [False, True])
def test_node_only_on_the_first_request_of_each_stream(delta):
    mux, _, _ = make(delta)
    mux.subscribe(T.CLUSTER)
    mux.subscribe(T.LISTENER)
    assert mux.take_requests() == []                # no stream: dropped, re-sent on start
    mux.stream_started()
    assert [(t, n) for _, t, _, n in summary(mux.take_requests())] == \
        [("CDS", True), ("LDS", False)]
    mux.stream_closed()
    mux.stream_started()
    assert [n for *_, n in summary(mux.take_requests())] == [True, False]


def test_node_on_every_request_when_not_first_message_only():
    mux, _, _ = make(node_on_first_message_only=False)
    mux.stream_started()
    mux.subscribe(T.CLUSTER)
    mux.subscribe(T.LISTENER)
    assert [n for *_, n in summary(mux.take_requests())] == [True, True]


@pytest.mark.parametrize("delta", [False, True])
def test_new_stream_resends_subscriptions_in_the_order_they_were_made(delta):
    mux, _, _ = make(delta)
    mux.stream_started()
    mux.subscribe(T.CLUSTER)
    mux.subscribe(T.ENDPOINT, {"b", "a"})
    mux.subscribe(T.LISTENER)
    mux.subscribe(T.ROUTE, {"r"})
    mux.take_requests()
    mux.stream_closed()
    mux.stream_started()
    assert [(t, names) for _, t, names, _ in summary(mux.take_requests())] == \
        [("CDS", []), ("EDS", ["a", "b"]), ("LDS", []), ("RDS", ["r"])]


@pytest.mark.parametrize("delta", [False, True])
def test_names_set_while_applying_cds_go_out_in_one_request_before_the_cds_ack(delta):
    mux, h, _ = make(delta)

    def cds_owner(update):
        # one EDS watch per cluster, as Envoy's EDS clusters make them
        for i in range(len(update.added)):
            mux.set_names(T.ENDPOINT, [r.name for r in update.added[:i + 1]])
    h[T.CLUSTER].on_apply = cds_owner
    mux.stream_started()
    mux.subscribe(T.CLUSTER)
    mux.take_requests()
    resp = (B.delta(T.CLUSTER, "1", [("a", "1", B.cluster("a")), ("b", "1", B.cluster("b"))])
            if delta else B.sotw(T.CLUSTER, "c1", "1", B.cluster("a"), B.cluster("b")))
    mux.on_response(resp)
    assert summary(mux.take_requests()) == [("REQ", "EDS", ["a", "b"], False),
                                            ("ACK", "CDS", [], False)]


def test_pause_holds_and_coalesces_sotw_requests():
    mux, _, _ = make()
    mux.stream_started()
    mux.subscribe(T.ENDPOINT, {"a"})
    mux.take_requests()
    with mux.pause(T.ENDPOINT):
        mux.set_names(T.ENDPOINT, {"a", "b"})
        with mux.pause(T.ENDPOINT):                 # pauses nest
            mux.set_names(T.ENDPOINT, {"a", "b", "c"})
        assert mux.take_requests() == []
    assert summary(mux.take_requests()) == [("REQ", "EDS", ["a", "b", "c"], False)]


def test_delta_ack_of_a_paused_type_waits_and_acks_go_before_interest():
    mux, _, _ = make(delta=True)
    mux.stream_started()
    mux.subscribe(T.CLUSTER)
    mux.subscribe(T.ENDPOINT, {"a"})
    mux.take_requests()
    held = mux.pause(T.CLUSTER)
    mux.on_response(B.delta(T.CLUSTER, "1", [("a", "1", B.cluster("a"))]))
    assert mux.take_requests() == []
    mux.set_names(T.ENDPOINT, {"a", "b"})
    mux.on_response(B.delta(T.ENDPOINT, "2", [("a", "1", B.cla("a", 1))]))
    # EDS is not paused: its interest and its ACK go out; the CDS ACK waits for the resume
    reqs = mux.take_requests()
    assert [(T.short(r.type_url), r.response_nonce, list(r.resource_names_subscribe))
            for r in reqs] == [("EDS", "", ["b"]), ("EDS", "2", [])]
    held.resume()
    assert [(T.short(r.type_url), r.response_nonce) for r in mux.take_requests()] == \
        [("CDS", "1")]


def test_sotw_ack_of_a_paused_type_waits_for_resume():
    mux, _, _ = make()
    mux.stream_started()
    mux.subscribe(T.CLUSTER)
    mux.take_requests()
    held = mux.pause(T.CLUSTER)
    mux.on_response(B.sotw(T.CLUSTER, "c1", "1", B.cluster("a")))
    assert mux.take_requests() == []
    held.resume()
    held.resume()                                   # resuming twice is harmless
    [req] = mux.take_requests()
    assert (req.version_info, req.response_nonce) == ("c1", "1")


@pytest.mark.parametrize("delta", [False, True])
def test_initial_fetch_timeout_on_the_injected_clock(delta):
    mux, h, clock = make(delta, initial_fetch_timeout={T.CLUSTER: 5, T.ENDPOINT: 2})
    mux.stream_started()
    mux.subscribe(T.CLUSTER)
    mux.subscribe(T.ENDPOINT, {"a", "b"})
    clock.advance(1.9)
    assert h[T.ENDPOINT].failures == []
    # "a" arrives in time; "b" does not
    mux.on_response(B.delta(T.ENDPOINT, "1", [("a", "1", B.cla("a", 1))]) if delta else
                    B.sotw(T.ENDPOINT, "e1", "1", B.cla("a", 1)))
    clock.advance(0.2)
    assert [(f.reason, f.names) for f in h[T.ENDPOINT].failures] == [(FETCH_TIMEOUT, ("b",))]
    assert h[T.CLUSTER].failures == []
    clock.advance(5)
    assert [(f.reason, f.names) for f in h[T.CLUSTER].failures] == [(FETCH_TIMEOUT, ())]
    assert mux.subscriptions[T.CLUSTER].fetch_timeouts == 1


def test_any_response_ends_the_wildcard_wait_and_zero_disables_it():
    mux, h, clock = make(initial_fetch_timeout={T.CLUSTER: 5, T.LISTENER: 0})
    mux.stream_started()
    mux.subscribe(T.CLUSTER)
    mux.subscribe(T.LISTENER)
    mux.on_response(B.sotw(T.CLUSTER, "c1", "1"))
    clock.advance(100)
    assert h[T.CLUSTER].failures == [] and h[T.LISTENER].failures == []


def test_rejection_is_reported_to_the_handler_and_ends_the_wait():
    mux, h, clock = make(initial_fetch_timeout=5)
    h[T.CLUSTER].reject = {"bad": "no"}
    mux.stream_started()
    mux.subscribe(T.CLUSTER)
    mux.on_response(B.sotw(T.CLUSTER, "c1", "1", B.cluster("bad")))
    [nack] = [r for r in mux.take_requests() if r.response_nonce]
    assert nack.error_detail.code == 13 and nack.version_info == ""
    assert [f.reason for f in h[T.CLUSTER].failures] == [REJECTED]
    clock.advance(10)
    assert [f.reason for f in h[T.CLUSTER].failures] == [REJECTED]
    assert mux.subscriptions[T.CLUSTER].rejected == 1


def test_response_for_a_type_never_subscribed_is_ignored():
    mux, h, _ = make()
    mux.stream_started()
    mux.subscribe(T.CLUSTER)
    mux.take_requests()
    mux.on_response(B.sotw(T.LISTENER, "l1", "1", B.listener("l", "r")))
    assert mux.take_requests() == [] and h[T.LISTENER].updates == []


def test_ttl_expiry_reaches_the_handler_through_the_mux():
    mux, h, clock = make(delta=True, initial_fetch_timeout=None)
    mux.stream_started()
    mux.subscribe(T.CLUSTER)
    mux.on_response(B.delta(T.CLUSTER, "1", [("a", "1", B.cluster("a"))], ttl={"a": 3}))
    clock.advance(3.5)
    assert h[T.CLUSTER].names() == ([], ["a"])


def test_subscribing_a_type_without_a_handler_is_an_error():
    mux, _, _ = make(handlers={T.CLUSTER: Recorder()})
    with pytest.raises(ValueError):
        mux.subscribe(T.LISTENER)


def test_requests_made_without_a_stream_are_dropped_not_queued():
    mux, _, _ = make()
    mux.subscribe(T.ENDPOINT, {"a"})
    mux.set_names(T.ENDPOINT, {"a", "b"})
    mux.stream_started()
    assert summary(mux.take_requests()) == [("REQ", "EDS", ["a", "b"], True)]


def test_per_name_fetch_timeouts_from_config_sources():
    # Istio's EDS and RDS config sources say initial_fetch_timeout 0s: wait for ever; another
    # name keeps the type's default
    mux, h, clock = make(initial_fetch_timeout={T.ENDPOINT: 15})
    mux.set_fetch_timeout(T.ENDPOINT, "istio", 0)
    mux.set_fetch_timeout(T.ENDPOINT, "short", 2)
    mux.stream_started()
    mux.subscribe(T.ENDPOINT, {"istio", "short", "plain"})
    clock.advance(2.1)
    assert [f.names for f in h[T.ENDPOINT].failures] == [("short",)]
    clock.advance(13)
    assert sorted(f.names for f in h[T.ENDPOINT].failures) == [("plain",), ("short",)]
    clock.advance(1000)
    assert len(h[T.ENDPOINT].failures) == 2
