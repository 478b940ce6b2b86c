"""The state-of-the-world per-type state machine (meshproxy.xds.sotw), no network, no clock
but a fake one."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from google.protobuf import any_pb2

from meshproxy.xds import types as T
from meshproxy.xds.resources import IgnoreHandler
from meshproxy.xds.sotw import SotwState
from meshproxy.xds.ttl import TtlTimers
from tests.support.clock import FakeClock
from tests.xds import builders as B
from tests.xds.builders import Recorder


def test_initial_wildcard_request_has_no_names_version_or_nonce():
    st = SotwState(T.CLUSTER)
    node = base_pb2.Node(id="n1")
    req = st.request(node)
    assert (req.type_url, req.version_info, req.response_nonce, list(req.resource_names)) == \
        (T.CLUSTER, "", "", [])
    assert req.node.id == "n1" and not req.HasField("error_detail")
    assert not st.request().HasField("node")


def test_ack_echoes_version_and_nonce():
    st, h = SotwState(T.CLUSTER), Recorder()
    out = st.handle(B.sotw(T.CLUSTER, "v1", "n1", B.cluster("a"), B.cluster("b")), h.apply)
    assert out.send and out.error is None
    assert h.names() == (["a", "b"], [])
    assert h.updates[0].state_of_the_world and h.updates[0].version_info == "v1"
    req = st.request()
    assert (req.version_info, req.response_nonce) == ("v1", "n1")
    assert not req.HasField("error_detail")


def test_partial_nack_keeps_last_accepted_version_and_applies_the_valid_ones():
    st = SotwState(T.CLUSTER)
    st.handle(B.sotw(T.CLUSTER, "v1", "n1", B.cluster("a")), Recorder().apply)
    h = Recorder(reject={"bad": "lb_policy: not allowed"})
    out = st.handle(B.sotw(T.CLUSTER, "v2", "n2", B.cluster("a"), B.cluster("b"),
                           B.cluster("bad")), h.apply)
    assert out.error == "Error adding/updating cluster(s) bad: lb_policy: not allowed"
    assert set(st.known) == {"a", "b"}          # the valid ones were applied
    req = st.request()
    assert (req.version_info, req.response_nonce) == ("v1", "n2")
    assert req.error_detail.code == 13
    assert req.error_detail.message == out.error
    # error_detail goes out once; the next request (e.g. a names change) is clean
    assert not st.request().HasField("error_detail")


def test_whole_rejection_on_type_mismatch_and_on_handler_exception():
    st = SotwState(T.CLUSTER)
    wrong = B.packed(T.ROUTE, B.route("r", "a"))
    h = Recorder()
    out = st.handle(B.sotw(T.CLUSTER, "v1", "n1", wrong), h.apply)
    assert out.whole_rejected and "does not match the message-wide type URL" in out.error
    assert h.updates == []
    assert st.request().version_info == ""

    def boom(update):
        raise RuntimeError("listener manager exploded")
    out = st.handle(B.sotw(T.CLUSTER, "v2", "n2", B.cluster("a")), boom)
    req = st.request()
    assert out.whole_rejected and req.error_detail.message == "listener manager exploded"
    assert (req.version_info, req.response_nonce) == ("", "n2")


def test_malformed_resource_bytes_reject_the_whole_response():
    st = SotwState(T.CLUSTER)
    bad = any_pb2.Any(type_url=T.CLUSTER, value=b"\xff\xff\xff")
    h = Recorder()
    out = st.handle(B.sotw(T.CLUSTER, "v1", "n1", B.cluster("a"), bad), h.apply)
    assert out.whole_rejected and "unable to decode" in out.error
    assert h.updates == [] and st.known == {}


def test_wildcard_response_is_the_complete_set_missing_names_are_removed():
    st, h = SotwState(T.CLUSTER), Recorder()
    st.handle(B.sotw(T.CLUSTER, "v1", "n1", B.cluster("a"), B.cluster("b")), h.apply)
    st.handle(B.sotw(T.CLUSTER, "v2", "n2", B.cluster("b")), h.apply)
    assert h.names() == (["b"], ["a"])
    st.handle(B.sotw(T.CLUSTER, "v3", "n3"), h.apply)        # empty: everything goes
    assert h.names() == ([], ["b"])
    assert st.known == {}


def test_a_rejected_resource_keeps_its_previous_version():
    st = SotwState(T.CLUSTER)
    st.handle(B.sotw(T.CLUSTER, "v1", "n1", B.cluster("a")), Recorder().apply)
    st.handle(B.sotw(T.CLUSTER, "v2", "n2", B.cluster("a", service_name="x")),
              Recorder(reject={"a": "no"}).apply)
    assert st.known == {"a": "v1"}


def test_named_type_hears_only_its_names_and_only_when_one_is_present():
    st, h = SotwState(T.ENDPOINT, {"a"}), Recorder()
    assert list(st.request().resource_names) == ["a"]
    st.handle(B.sotw(T.ENDPOINT, "e1", "n1", B.cla("a", 1), B.cla("zz", 2)), h.apply)
    assert h.names() == (["a"], [])
    assert not h.updates[0].state_of_the_world
    # a response without any watched name: no update, but the version is accepted
    out = st.handle(B.sotw(T.ENDPOINT, "e2", "n2", B.cla("zz", 3)), h.apply)
    assert len(h.updates) == 1 and out.error is None
    assert st.request().version_info == "e2"
    # absent from a named response does not mean removed
    st.handle(B.sotw(T.ENDPOINT, "e3", "n3"), h.apply)
    assert st.known == {"a": "e1"}


def test_names_change_resends_the_full_sorted_list():
    st = SotwState(T.ENDPOINT, {"b"})
    st.handle(B.sotw(T.ENDPOINT, "e1", "n1", B.cla("b", 1)), Recorder().apply)
    assert st.set_names({"c", "a", "b"})
    assert not st.set_names({"a", "b", "c"})
    req = st.request()
    assert list(req.resource_names) == ["a", "b", "c"]
    assert (req.version_info, req.response_nonce) == ("e1", "n1")
    st.set_names({"a"})
    assert st.known == {}                           # "b" is no longer watched


def test_nothing_watched_empty_response_is_taken_silently_nonempty_gets_old_version():
    st = SotwState(T.ENDPOINT, set())
    assert not st.watching
    out = st.handle(B.sotw(T.ENDPOINT, "e1", "n1"), Recorder().apply)
    assert not out.send and st.version_info == "e1"
    h = Recorder()
    out = st.handle(B.sotw(T.ENDPOINT, "e2", "n2", B.cla("a", 1)), h.apply)
    req = st.request()
    assert out.send and h.updates == []
    assert (req.version_info, req.response_nonce) == ("e1", "n2")
    assert not req.HasField("error_detail")


def test_new_stream_forgets_the_nonce_and_keeps_the_version():
    st = SotwState(T.LISTENER)
    st.handle(B.sotw(T.LISTENER, "l1", "7", B.listener("l", "r")), Recorder().apply)
    st.stream_fresh()
    req = st.request()
    assert (req.version_info, req.response_nonce) == ("l1", "")


def test_duplicate_names_first_applied_second_rejected():
    st, h = SotwState(T.CLUSTER), Recorder()
    out = st.handle(B.sotw(T.CLUSTER, "v1", "n1", B.cluster("a"), B.cluster("a")), h.apply)
    assert h.names() == (["a"], [])
    assert out.error == "Error adding/updating cluster(s) a: duplicate cluster a found"
    assert st.request().version_info == ""


def test_ttl_expiry_removes_and_heartbeat_refreshes():
    clock = FakeClock()
    expired = []
    st = SotwState(T.CLUSTER)
    st.ttl = TtlTimers(clock, lambda names: expired.append(st.expire(names)))
    h = Recorder()
    st.handle(B.sotw(T.CLUSTER, "v1", "n1", B.wrapped(T.CLUSTER, "a", "v1", B.cluster("a"), 10),
                     B.cluster("b")), h.apply)
    assert h.names() == (["a", "b"], [])
    clock.advance(8)
    # heartbeat: a wrapper without a body at the version the client holds (isHeartbeatResource
    # compares it with version_info); not applied, TTL refreshed
    st.handle(B.sotw(T.CLUSTER, "v1", "n2", B.wrapped(T.CLUSTER, "a", "v1", None, 10),
                     B.cluster("b")), h.apply)
    assert h.names() == (["b"], [])                 # "a" neither re-applied nor removed
    clock.advance(8)
    assert expired == []
    clock.advance(3)
    assert [(u.added, u.removed) for u in expired] == [((), ("a",))]
    assert set(st.known) == {"b"}
    # a body-less wrapper at another version is not a heartbeat: the response is refused
    out = st.handle(B.sotw(T.CLUSTER, "v2", "n3", B.wrapped(T.CLUSTER, "b", "old", None)),
                    h.apply)
    assert out.whole_rejected


def test_unknown_istio_type_is_accepted_and_ignored():
    st = SotwState(T.NAME_TABLE)
    a = any_pb2.Any(type_url=T.NAME_TABLE, value=b"\x0a\x03abc")
    out = st.handle(B.sotw(T.NAME_TABLE, "1", "n1", a), IgnoreHandler().apply)
    assert out.error is None and st.request().version_info == "1"


def test_error_message_is_truncated_like_envoy():
    st = SotwState(T.CLUSTER)
    st.handle(B.sotw(T.CLUSTER, "v1", "n1", B.cluster("a")), Recorder(reject={"a": "x" * 5000}).apply)
    msg = st.request().error_detail.message
    assert len(msg) == 4096 + len("...(truncated)") and msg.endswith("...(truncated)")


def test_every_response_is_processed_whatever_its_nonce():
    """Envoy's client never drops a response for its nonce (grpc_mux_impl.cc has no such
    check; stale nonces are a server-side rule): two pushes in a row are both applied, and the
    requests echo each nonce in turn."""
    st, h = SotwState(T.CLUSTER), Recorder()
    st.handle(B.sotw(T.CLUSTER, "v1", "5", B.cluster("a")), h.apply)
    first = st.request()
    st.handle(B.sotw(T.CLUSTER, "v2", "3", B.cluster("b")), h.apply)     # "older" nonce
    second = st.request()
    assert [u.version_info for u in h.updates] == ["v1", "v2"]
    assert [(r.version_info, r.response_nonce) for r in (first, second)] == \
        [("v1", "5"), ("v2", "3")]
