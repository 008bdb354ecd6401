"""A replicated store applies committed records in batches (Engine.apply_replicated_many, the driver's apply
step): runs of single-row inserts go in as one upsert, as a local group commit's do. Whatever the batching,
the store ends in the state the primary reached committing the same records one at a time."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

import knowledge
from knowledge.errors import NotFound, StorePoisoned
from knowledge.storage.ops import decode_ops


def _seed(path: str) -> None:
    with knowledge.open(path) as store:
        store.define_node_type("Doc", key="name", properties={"n": "int"})
        store.define_node_type("Tag", key="name", properties={"n": "int"})
        store.define_edge_type("TAGGED", source="Doc", target="Tag")


def _commit_mix(store) -> None:
    """Single-row inserts (runs to merge), interrupted by an update, a delete, another type and an edge."""
    session = store.session()

    def commit(build) -> None:
        tx = session.transaction()
        build(tx)
        tx.commit()
    for i in range(5):
        commit(lambda tx, i=i: tx.upsert_nodes("Doc", [{"name": f"d{i}", "n": i}]))
    commit(lambda tx: tx.upsert_nodes("Doc", [{"name": "d1", "n": 100}]))  # an update: not a fresh insert
    commit(lambda tx: tx.upsert_nodes("Tag", [{"name": "t0", "n": 0}]))
    for i in range(5, 9):
        commit(lambda tx, i=i: tx.upsert_nodes("Doc", [{"name": f"d{i}", "n": i}]))
    commit(lambda tx: tx.delete_nodes("Doc", ["d3"]))
    commit(lambda tx: tx.upsert_edges("TAGGED", [{"src": "d2", "dst": "t0"}]))
    for i in range(9, 12):
        commit(lambda tx, i=i: tx.upsert_nodes("Doc", [{"name": f"d{i}", "n": i}]))


def _state(store) -> dict:
    """What the in-memory state holds (the directory, the columns, the edge index) and the tables."""
    session = store.session()
    present = {}
    for type_name, keys in (("Doc", [f"d{i}" for i in range(12)]), ("Tag", ["t0"])):
        for key in keys:
            try:
                present[(type_name, key)] = session.get(type_name, key, columns=["n"])["n"]
            except NotFound:
                pass
    tables = sorted((d["name"], d["n"]) for d in session.scan("Doc", columns=["name", "n"]).to_pylist())
    return {"present": present, "count": session.count("Doc"), "tables": tables,
            "tagged": [ref.key for ref in session.neighbors("Doc", "d2", "TAGGED")]}


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_batched_replicated_apply_reaches_the_primarys_state(tmp_path, chunk):
    primary_path, replica_path = str(tmp_path / "p"), str(tmp_path / "r")
    _seed(primary_path)
    shutil.copytree(primary_path, replica_path)
    with knowledge.open(primary_path) as primary:
        first = primary.engine.memory_lsn + 1
        _commit_mix(primary)
        last = primary.engine.memory_lsn
        records = [(r.lsn, r.epoch, decode_ops(bytes(r.payload), r.lsn), None)
                   for r in primary.engine.wal.read_from(first, until_lsn=last)]
        expected = _state(primary)
    assert [r[0] for r in records] == list(range(first, last + 1))
    config = dataclasses.replace(knowledge.StoreConfig(), replicated=True)
    with knowledge.open(replica_path, config=config) as replica:
        engine = replica.engine
        assert engine.memory_lsn == first - 1
        for start in range(0, len(records), chunk):
            engine.apply_replicated_many(records[start:start + chunk])
        assert engine.memory_lsn == last
        engine.apply_replicated_many(records[:4])  # applied already: skipped
        assert engine.memory_lsn == last
        assert _state(replica) == expected
        assert expected["present"][("Doc", "d1")] == 100 and ("Doc", "d3") not in expected["present"]
        assert expected["tagged"] == ["t0"] and expected["count"] == 11 and len(expected["present"]) == 12


def test_a_gap_in_replicated_records_is_refused(tmp_path):
    path = str(tmp_path / "s")
    _seed(path)
    with knowledge.open(path) as store:
        first = store.engine.memory_lsn + 1
        _commit_mix(store)
        records = [(r.lsn, r.epoch, decode_ops(bytes(r.payload), r.lsn), None)
                   for r in store.engine.wal.read_from(first, until_lsn=store.engine.memory_lsn)]
    replica_path = str(tmp_path / "r")
    _seed(replica_path)
    config = dataclasses.replace(knowledge.StoreConfig(), replicated=True)
    with knowledge.open(replica_path, config=config) as replica:
        before = replica.engine.memory_lsn
        assert before == first - 1
        with pytest.raises(StorePoisoned, match="replicated apply"):
            replica.engine.apply_replicated_many([records[0], records[2]])
        assert replica.engine.memory_lsn == before  # nothing of the batch was applied
