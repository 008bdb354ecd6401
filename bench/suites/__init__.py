"""The suites of `python -m bench` / `knowledge bench`: each module has NAME, a docstring saying what it
measures against which baseline, and `run(context) -> dict` (see bench/runner.py for the result shape)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Context:
    """What a suite is asked to do: `quick` sizes it for CI (minutes), `smoke` far smaller still (seconds: the
    test suite checks the plumbing with it; its figures mean little); `peers` adds the embedded peers
    (bench/peers.py); `workdir` is a scratch directory the runner deletes afterwards."""

    quick: bool
    workdir: str
    peers: bool = True
    seed: int = 7
    smoke: bool = False
    shared: dict[str, Any] = field(default_factory=dict)

    def pick(self, full: Any, quick: Any, smoke: Any) -> Any:
        """The size for this run: `smoke` when smoke, else `quick` when quick, else `full`."""
        return smoke if self.smoke else quick if self.quick else full


ORDER = ("ingest", "vectors", "acl", "retrieval", "server", "replication", "lifecycle")
"""Every suite, in the order they run."""


def load(name: str) -> Any:
    """The module of suite `name` (imported only when that suite runs)."""
    import importlib

    if name not in ORDER:
        raise KeyError(name)
    return importlib.import_module(f"bench.suites.{name}_suite")
