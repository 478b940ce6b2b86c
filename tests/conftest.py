"""Shared fixtures: a recording upstream, meshproxy (per HTTP/1 codec backend) and Envoy."""

from __future__ import annotations

import pytest

from tests.support.proxies import ProxyProcess, find_envoy
from tests.support.upstream import Upstream

CODECS = ("httptools", "h11")


@pytest.fixture
def upstream():
    with Upstream() as up:
        yield up


@pytest.fixture(params=CODECS)
def codec(request):
    """Run the test once per HTTP/1 parser backend."""
    return request.param


@pytest.fixture
def start_meshproxy(codec):
    """``start_meshproxy(bootstrap_dict, *args)`` -> a running ProxyProcess (stopped after)."""
    procs = []

    def start(boot, *args, env=None):
        e = {"MESHPROXY_HTTP1_CODEC": codec}
        e.update(env or {})
        p = ProxyProcess("meshproxy", boot, args, env=e).start()
        procs.append(p)
        return p
    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def start_meshproxy_default():
    """Like start_meshproxy, with the default HTTP/1 codec only (for tests about something
    other than HTTP/1 parsing)."""
    procs = []

    def start(boot, *args, env=None):
        p = ProxyProcess("meshproxy", boot, args, env=env).start()
        procs.append(p)
        return p
    yield start
    for p in procs:
        p.stop()


@pytest.fixture
def start_envoy():
    if find_envoy() is None:
        pytest.skip("Envoy oracle not installed (run ./scripts/test, or set MESHPROXY_ENVOY)")
    procs = []

    def start(boot, *args):
        p = ProxyProcess("envoy", boot, args).start()
        procs.append(p)
        return p
    yield start
    for p in procs:
        p.stop()
