"""Every Python package under knowledge/ (and the mapped kernels/, replication/) is declared for installs."""

from __future__ import annotations

import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_package_is_declared():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    declared = set(setuptools["packages"])
    folders = {"knowledge": "knowledge", "kernels": "knowledge.kernels", "replication": "knowledge.replication"}
    found = set()
    for folder, package in folders.items():
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            if "__init__.py" in files:
                relative = os.path.relpath(directory, os.path.join(ROOT, folder))
                found.add(package if relative == "." else f"{package}.{relative.replace(os.sep, '.')}")
    assert found == declared
    assert setuptools["package-dir"]["knowledge.kernels"] == "kernels"
    assert "kernels" not in declared and "replication" not in declared  # never top-level in site-packages
