"""The leak tests of tests/test_leaks.py through the server: a principal reading over gRPC must get
exactly the answers an embedded store holding only what it can see gives. Same generated worlds, same
calls and comparison (`compare`); the writes, grants and revokes go through the client too, and the
reads run both as an admin acting as P and with P's own token."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
import test_leaks
from hypothesis import HealthCheck, given, settings
from remote_fixture import ServedStore
from test_leaks import World, apply_change, compare, declare, worlds

# While the embedded leak test is marked xfail (a known core leak, issue 11), the same cases through the
# server are expected to fail the same way; both marks go when the core is fixed.
EMBEDDED_MARKS = [pytest.mark.xfail(*m.args, **m.kwargs)
                  for m in getattr(test_leaks.test_no_read_reveals_invisible_nodes, "pytestmark", [])
                  if m.name == "xfail"]


def run_world_remote(world_spec: dict[str, Any]) -> None:
    world = World(world_spec["nodes"], world_spec["items"], world_spec["edges"], world_spec["has"])
    read = set(world_spec["read"])
    with tempfile.TemporaryDirectory() as directory:
        served = ServedStore(directory + "/store")
        client = served.client()
        try:
            declare(client)
            world.write(client)
            client.create_principal("p", read=sorted(read))
            compare(client, "p", world, read)
            for change in world_spec["changes"]:
                before = client.session("p").stats()["lsn"]
                seen = apply_change(client, world, read, change)
                after = client.session("p").stats()["lsn"]
                if seen is False:
                    assert after == before, f"P's LSN moved on {change}, which P cannot see"
                elif seen:
                    assert after > before, f"P's LSN stayed on {change}, which P can see"
            own = served.client(token=client.issue_token("p"))  # P's own token: no admin acting as P
            try:
                compare(OwnSessions(own), "p", world, read)
            finally:
                own.close()
        finally:
            client.close()
            served.close()


class OwnSessions:
    """A RemoteStore whose session("p") is the token's own session (no knowledge-as metadata)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def session(self, principal: Any = None) -> Any:
        return self.client.session()


def _embedded_marks(test):
    for mark in EMBEDDED_MARKS:
        test = mark(test)
    return test


@_embedded_marks
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_no_read_through_the_server_reveals_invisible_nodes(world):
    run_world_remote(world)
