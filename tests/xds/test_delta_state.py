"""The delta per-type state machine (meshproxy.xds.delta, a port of Envoy's
DeltaSubscriptionState), no network."""

from __future__ import annotations

from meshproxy.xds import types as T
from meshproxy.xds.delta import Ack, DeltaState
from meshproxy.xds.ttl import TtlTimers
from tests.support.clock import FakeClock
from tests.xds import builders as B
from tests.xds.builders import Recorder


def _req(st, ack=None):
    r = st.request(ack)
    return (list(r.resource_names_subscribe), list(r.resource_names_unsubscribe),
            dict(r.initial_resource_versions), r.response_nonce,
            r.error_detail.code if r.HasField("error_detail") else None)


def test_wildcard_starts_as_legacy_wildcard_and_named_as_subscriptions():
    cds = DeltaState(T.CLUSTER)
    assert cds.update_pending()
    assert _req(cds) == ([], [], {}, "", None)
    assert not cds.update_pending()
    eds = DeltaState(T.ENDPOINT, {"b", "a"})
    assert _req(eds) == (["a", "b"], [], {}, "", None)
    assert not eds.update_pending()
    # a named subscription with nothing named sends nothing (it is not a wildcard)
    assert not DeltaState(T.ENDPOINT, set()).update_pending()


def test_ack_carries_the_nonce_only_and_versions_are_recorded():
    st, h = DeltaState(T.CLUSTER), Recorder()
    st.request()
    ack, out = st.handle(B.delta(T.CLUSTER, "1", [("a", "va", B.cluster("a"))],
                                 system_version="s1"), h.apply)
    assert ack == Ack(T.CLUSTER, "1") and out.error is None
    assert h.names() == (["a"], [])
    assert _req(st, ack) == ([], [], {}, "1", None)
    assert st.versions() == {"a": "va"} and st.system_version_info == "s1"


def test_nack_records_no_version_even_for_the_valid_resources():
    st = DeltaState(T.CLUSTER)
    st.request()
    h = Recorder(reject={"bad": "why"})
    ack, out = st.handle(B.delta(T.CLUSTER, "1", [("a", "va", B.cluster("a")),
                                                  ("bad", "vb", B.cluster("bad"))]), h.apply)
    assert out.error == "Error adding/updating cluster(s) bad: why"
    assert ack.error.code == 13 and ack.nonce == "1"
    assert h.names() == (["a", "bad"], [])          # the handler applied "a"
    assert st.versions() == {}                      # but no version is recorded (Envoy's order)
    assert _req(st, ack)[3:] == ("1", 13)


def test_reconnect_sends_initial_resource_versions_and_the_whole_interest():
    st = DeltaState(T.ENDPOINT, {"a", "b"})
    st.request()
    ack, _ = st.handle(B.delta(T.ENDPOINT, "1", [("a", "1", B.cla("a", 1))]), Recorder().apply)
    st.request(ack)
    st.stream_fresh()
    assert st.update_pending()
    assert _req(st) == (["a", "b"], [], {"a": "1"}, "", None)    # "b" has no version yet
    cds = DeltaState(T.CLUSTER)
    cds.request()
    cds.handle(B.delta(T.CLUSTER, "1", [("x", "vx", B.cluster("x"))]), Recorder().apply)
    cds.stream_fresh()
    # still the legacy wildcard: no names, but the versions it holds
    assert _req(cds) == ([], [], {"x": "vx"}, "", None)


def test_unsubscribe_and_resubscribe():
    st = DeltaState(T.ENDPOINT, {"a", "b"})
    st.request()
    st.set_names({"b", "c"})
    assert _req(st) == (["c"], ["a"], {}, "", None)
    # removed then added again before a request went out: an addition
    st.set_names({"c"})
    st.set_names({"b", "c"})
    assert _req(st) == (["b"], [], {}, "", None)


def test_removed_resources_reach_the_handler_and_the_name_stays_wanted():
    st, h = DeltaState(T.ENDPOINT, {"a"}), Recorder()
    st.request()
    st.handle(B.delta(T.ENDPOINT, "1", [("a", "1", B.cla("a", 1))]), h.apply)
    ack, out = st.handle(B.delta(T.ENDPOINT, "2", removed=["a"]), h.apply)
    assert out.error is None and h.names() == ([], ["a"])
    assert st.requested == {"a": None}
    st.stream_fresh()
    assert _req(st)[:3] == (["a"], [], {})


def test_unrequested_resources_are_not_delivered_to_a_named_subscription():
    st, h = DeltaState(T.ENDPOINT, {"a"}), Recorder()
    st.request()
    st.handle(B.delta(T.ENDPOINT, "1", [("a", "1", B.cla("a", 1)), ("z", "1", B.cla("z", 2))]),
              h.apply)
    assert h.names() == (["a"], [])
    assert st.versions() == {"a": "1"}


def test_heartbeat_is_not_applied_and_refreshes_ttl():
    clock = FakeClock()
    expired = []
    st = DeltaState(T.CLUSTER)
    st.ttl = TtlTimers(clock, lambda names: expired.append(st.expire(names)))
    st.request()
    h = Recorder()
    st.handle(B.delta(T.CLUSTER, "1", [("a", "v1", B.cluster("a"))], ttl={"a": 5}), h.apply)
    clock.advance(4)
    st.handle(B.delta(T.CLUSTER, "2", [("a", "v1", None)], ttl={"a": 5}), h.apply)
    assert len(h.updates) == 1                      # the heartbeat applied nothing
    clock.advance(4)
    assert expired == []
    clock.advance(2)
    assert [u.removed for u in expired] == [("a",)]
    assert st.versions() == {}


def test_ttl_expiry_of_a_requested_resource_waits_for_the_server_again():
    clock = FakeClock()
    st = DeltaState(T.ENDPOINT, {"a"})
    got = []
    st.ttl = TtlTimers(clock, lambda names: got.append(st.expire(names)))
    st.request()
    st.handle(B.delta(T.ENDPOINT, "1", [("a", "1", B.cla("a", 1))], ttl={"a": 1}),
              Recorder().apply)
    clock.advance(1.5)
    assert got[0].removed == ("a",) and st.requested == {"a": None}


def test_duplicate_names_reject_the_whole_response():
    st, h = DeltaState(T.CLUSTER), Recorder()
    st.request()
    _, out = st.handle(B.delta(T.CLUSTER, "1", [("a", "1", B.cluster("a")),
                                                ("a", "2", B.cluster("a"))]), h.apply)
    assert out.whole_rejected and "duplicate name a found" in out.error
    _, out = st.handle(B.delta(T.CLUSTER, "2", [("a", "1", B.cluster("a"))], removed=["a"]),
                       h.apply)
    assert out.whole_rejected and "union of added+removed" in out.error
    assert h.updates == []


def test_wrong_embedded_type_rejects_the_whole_response():
    st, h = DeltaState(T.CLUSTER), Recorder()
    st.request()
    r = B.delta(T.CLUSTER, "1", [("a", "1", B.packed(T.ROUTE, B.route("a", "x")))])
    _, out = st.handle(r, h.apply)
    assert out.whole_rejected and "does not match the message-wide type URL" in out.error


def test_wildcard_plus_names_unsubscribing_keeps_an_ambiguous_version():
    st = DeltaState(T.CLUSTER)
    st.request()                                    # legacy wildcard: requested {"*"}
    st.handle(B.delta(T.CLUSTER, "1", [("a", "va", B.cluster("a"))]), Recorder().apply)
    st.set_names({"a"})                             # explicit interest on top of the wildcard
    assert _req(st)[:2] == (["a"], [])
    st.set_names(set())
    assert _req(st)[:2] == ([], ["a"])
    assert st.ambiguous == {"a": "va"}
    st.stream_fresh()
    assert _req(st)[2] == {"a": "va"}
