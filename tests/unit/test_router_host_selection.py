"""The router's host re-selection for retry_host_predicate (previous_hosts): Envoy's
ZoneAwareLoadBalancerBase::chooseHost makes host_selection_retry_max_attempts + 1 picks at
most, and keeps the last pick when every one was a tried host."""

from __future__ import annotations

import types

import pytest

from meshproxy.router.router import Router


class Cluster:
    def __init__(self, hosts):
        self.hosts = list(hosts)
        self.picks = 0
        self.pool = types.SimpleNamespace(new_stream=lambda up: None)

    def choose_host(self, ctx=None):
        h = self.hosts[min(self.picks, len(self.hosts) - 1)]
        self.picks += 1
        return h

    def pool_for(self, host):
        return self.pool


class Retry:
    def __init__(self, tried, max_attempts):
        self.tried = set(tried)
        self.max_host_attempts = max_attempts
        self.attempted = []

    def reject_host(self, host):
        return host in self.tried

    def host_attempted(self, host):
        self.attempted.append(host)


def start(hosts, tried, max_attempts):
    stream = types.SimpleNamespace(upstream_host=None, request=types.SimpleNamespace())
    route = types.SimpleNamespace(action=types.SimpleNamespace(auto_host_rewrite=False),
                                  vhost=types.SimpleNamespace(include_attempt_count=False))
    r = Router(stream, route)
    r.cluster = Cluster(hosts)
    r.retry = Retry(tried, max_attempts)
    r._start_attempt()
    return r, stream


@pytest.mark.parametrize("max_attempts", [1, 3, 5])
def test_at_most_max_attempts_more_picks_then_the_last_host(max_attempts):
    r, stream = start(["a"], tried=["a"], max_attempts=max_attempts)
    assert r.cluster.picks == max_attempts + 1
    assert stream.upstream_host == "a"


def test_stops_at_the_first_host_not_tried():
    r, stream = start(["a", "a", "b", "c"], tried=["a"], max_attempts=5)
    assert r.cluster.picks == 3 and stream.upstream_host == "b"


def test_default_single_retry_pick_finds_the_other_host():
    # Envoy's default host_selection_retry_max_attempts is 1: two picks in all
    r, stream = start(["a", "b"], tried=["a"], max_attempts=1)
    assert stream.upstream_host == "b"
