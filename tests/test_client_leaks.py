"""The leak tests of tests/test_leaks.py through the server: a principal reading over gRPC must get
exactly the answers an embedded store holding only what it can see gives. Same generated worlds, same
calls and comparison (`compare`); the writes, grants and revokes go through the client too, and the
reads run both as an admin acting as P and with P's own token."""

from __future__ import annotations

import re
import tempfile
from typing import Any

import pytest
import test_leaks
from hypothesis import HealthCheck, given, settings
from remote_fixture import ServedStore
from test_leaks import World, apply_change, compare, declare, node_row, worlds

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


def test_an_invisible_write_changes_nothing_a_reader_observes_through_the_server(tmp_path):
    """Between two remote snapshot()/stats()/memory_lsn/scan-page calls of a non-admin, a write to nodes it
    cannot see changes nothing it can observe: the same LSN (its view LSN, never the store's), a snapshot
    block opened before the write goes on without SnapshotMoved, the same page cursors. A write it can see
    moves the snapshot, and the SnapshotMoved message names only LSNs it was told."""
    from knowledge.errors import SnapshotMoved

    served = ServedStore(str(tmp_path / "store"))
    try:
        store = served.store
        declare(store)
        World({"n1": {"labels": ["a"], "tags": ["a"], "weight": 1}, "n2": {"labels": ["b"], "tags": ["b"], "weight": 2}},
              {}, [], []).write(store)
        store.create_principal("p", read=["a"])
        with served.client(token=store.issue_token("p")) as own, served.client() as admin:
            session = own.session()

            def observed() -> tuple:
                with session.snapshot() as lsn:
                    page = session.scan("Node", limit=1)
                    return (lsn, session.stats(), own.memory_lsn, session.count(),
                            page.schema.metadata, page.column("key").to_pylist())

            before = observed()
            with session.snapshot() as pinned:
                assert session.count() == 1
                hidden = node_row("n3", {"labels": ["b"], "tags": ["b"], "weight": 3}, True)
                lsn = admin.session().transaction().upsert_nodes("Node", [hidden]).commit()
                assert lsn > pinned and admin.memory_lsn == lsn  # the store moved ...
                assert session.count() == 1 and session.stats()["lsn"] == pinned  # ... the reader's view did not
                admin.session().transaction().delete_nodes("Node", ["n2"]).commit()
                assert session.get("Node", "n1")["key"] == "n1"
            assert observed() == before
            store_lsn = admin.memory_lsn
            with pytest.raises(SnapshotMoved) as caught, session.snapshot() as pinned:
                visible = node_row("n4", {"labels": ["a"], "tags": ["a"], "weight": 4}, True)
                seen_lsn = admin.session().transaction().upsert_nodes("Node", [visible]).commit()
                session.count()
            named = {int(n) for n in re.findall(r"\d+", str(caught.value))}
            assert named == {pinned, seen_lsn} and store_lsn not in named and pinned < store_lsn
            assert "the store is at" not in str(caught.value)  # it names the reader's view, not the store
            assert observed()[0] == seen_lsn == session.stats()["lsn"]
    finally:
        served.close()
