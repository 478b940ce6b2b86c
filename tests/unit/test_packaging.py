"""pyproject.toml lists packages explicitly (iptables/ is mapped to meshproxy_iptables), so a
new subpackage must be added there or a wheel install would silently lack it."""

from __future__ import annotations

import os
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_package_directory_is_listed():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = set()
    for root, dirs, files in os.walk(os.path.join(REPO, "meshproxy")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if "__init__.py" in files:
            found.add(os.path.relpath(root, REPO).replace(os.sep, "."))
    if os.path.exists(os.path.join(REPO, "iptables", "__init__.py")):
        found.add("meshproxy_iptables")
    assert found == listed
