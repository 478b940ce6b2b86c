"""The stat store: Envoy's names from blocks and sources, ``usedonly`` semantics (a write marks a
stat used forever, even a write of 0 and across /reset_counters), the stats matcher, and
sources refreshed before blocks are read."""

from __future__ import annotations

from meshproxy.stats import Store, stat_block
from meshproxy.stats.config import StatsConfig, StatsMatcher, StringMatcher

Block = stat_block("Block", counters=("rq_total", "main_thread.watchdog_miss"),
                   gauges=("cx_active", "state"), counter_maps=("codes",))


def _by_name(store):
    return {s.name: s for s in store.snapshot()}


def test_names_kinds_and_order():
    st = Store()
    b = Block()
    st.register("cluster.up.", b)
    st.register("cluster.a-b.", Block())
    names = [s.name for s in st.snapshot()]
    assert names == sorted(names)
    assert names.index("cluster.a-b.cx_active") < names.index("cluster.up.cx_active")
    snap = _by_name(st)
    assert snap["cluster.up.main_thread.watchdog_miss"].kind == "counter"
    assert snap["cluster.up.state"].kind == "gauge"


def test_used_means_written():
    st = Store()
    b = Block()
    st.register("x.", b)
    assert not any(s.used for s in st.snapshot())
    b.rq_total += 1
    b.mark_used("state", "main_thread.watchdog_miss")  # written with 0, as Envoy's add(0)
    snap = _by_name(st)
    assert snap["x.rq_total"].used and snap["x.state"].used
    assert snap["x.main_thread.watchdog_miss"].used
    assert not snap["x.cx_active"].used


def test_used_is_sticky_and_survives_reset():
    st = Store()
    b = Block()
    st.register("x.", b)
    b.cx_active = 1
    st.snapshot()
    b.cx_active = 0                      # a gauge back to 0 stays used
    b.rq_total = 5
    b.codes[200] = 3
    st.reset_counters()                  # counters to 0, still used
    snap = _by_name(st)
    assert snap["x.cx_active"].used
    assert (snap["x.rq_total"].value, snap["x.rq_total"].used) == (0, True)
    assert b.codes == {200: 0}


def test_blocks_sharing_a_prefix_add_up_and_exclude():
    st = Store()
    a, b = Block(), Block()
    a.rq_total, b.rq_total = 2, 3
    st.register("http.ingress.", a)
    st.register("http.ingress.", b, exclude=("state",))
    snap = _by_name(st)
    assert snap["http.ingress.rq_total"].value == 5
    assert "http.ingress.state" in snap        # a still has it
    st2 = Store()
    st2.register("http.admin.", Block(), exclude=("state",))
    assert "http.admin.state" not in _by_name(st2)


def test_sources_run_before_blocks_are_read():
    st = Store()
    b = Block()
    st.register("server.", b)
    state = {"v": 3}

    def refresh():
        b.state = state["v"]
        yield "cluster.up.upstream_rq_200", "counter", 7, None

    st.add_source(refresh)
    state["v"] = 0
    snap = _by_name(st)
    assert snap["server.state"].value == 0
    assert snap["cluster.up.upstream_rq_200"].value == 7
    st.remove_source(refresh)
    assert "cluster.up.upstream_rq_200" not in _by_name(st)


def test_matcher_hides_rejected_stats():
    matcher = StatsMatcher("include", [StringMatcher("prefix", "server.")])
    st = Store(StatsConfig(matcher=matcher))
    st.register("server.", Block())
    st.register("cluster.up.", Block())
    assert {s.name.split(".")[0] for s in st.snapshot()} == {"server"}


def test_unregister():
    st = Store()
    b = Block()
    st.register("x.", b)
    st.unregister(b)
    assert st.snapshot() == []


def test_deferred_block_appears_on_first_write():
    st = Store()
    b = Block()
    st.register("cluster.xds-grpc;.", b, deferred=True)
    assert st.snapshot() == []
    b.rq_total += 1
    assert "cluster.xds-grpc;.cx_active" in _by_name(st)
    b.rq_total = 0
    assert "cluster.xds-grpc;.rq_total" in _by_name(st)   # once created, it stays
