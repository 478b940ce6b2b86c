"""Fixtures for the xDS tests: a test control plane on TCP port 0 or on a Unix socket in a
temporary directory."""

from __future__ import annotations

import pytest

from tests.xds.control_plane import ControlPlane


@pytest.fixture(params=["tcp", "unix"])
def control_plane(request, tmp_path):
    cp = ControlPlane(unix_path=str(tmp_path / "xds.sock") if request.param == "unix" else None)
    cp.start()
    yield cp
    cp.close()


@pytest.fixture(params=["sotw", "delta"])
def delta(request):
    return request.param == "delta"
