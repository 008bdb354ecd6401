"""Retention: after deletes and expiry a checkpoint gives the space back (tables, vector and keyword
indexes, graph), and `store.stats()["space"]` says what is live and what is dead per structure."""

from __future__ import annotations

import os

import numpy as np
import pytest

import knowledge
from knowledge.config import StoreConfig
from knowledge.errors import StorageFull

T0 = 1_700_000_000.0
N = 6000


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(path) for name in files)


def build(path, keys, clock, *, ttl: bool):
    store = knowledge.open(str(path), config=StoreConfig(clock=clock, ttl_sweep_rows_per_s=0,
                                                         wal_preallocate_bytes=0))
    store.define_node_type("Doc", key="name", properties={"body": "text", "emb": {"type": "vector[16]"}})
    store.define_edge_type("NEXT", source="Doc", target="Doc")
    if ttl:
        store.set_ttl("Doc", "1d")
    rng = np.random.default_rng(1)
    session = store.session()
    for start in range(0, len(keys), 2000):
        batch = keys[start:start + 2000]
        session.transaction().upsert_nodes("Doc", [
            {"name": k, "body": f"document {k} about topic {int(k[1:]) % 17} and more words here",
             "emb": rng.normal(size=16).astype(np.float32).tolist(), "_labels": ["public"]} for k in batch]).commit()
        session.transaction().upsert_edges("NEXT", [{"src": a, "dst": b} for a, b in zip(batch[:-1], batch[1:], strict=True)]).commit()
    return store


def test_checkpoint_after_deletes_gives_the_space_back(tmp_path):
    clock = Clock()
    keys = [f"d{i}" for i in range(N)]
    store = build(tmp_path / "s", keys, clock, ttl=False)
    try:
        store.checkpoint()
        full = store_bytes(store.path)
        snapshots = {name: os.path.getsize(os.path.join(store.path, "snapshots", name))
                     for name in os.listdir(os.path.join(store.path, "snapshots"))}
        gone = [k for i, k in enumerate(keys) if i % 10]
        session = store.session()
        for start in range(0, len(gone), 2000):
            session.transaction().delete_nodes("Doc", gone[start:start + 2000]).commit()
        store.wait_applied()
        space = store.stats()["space"]
        assert space["vectors"]["Doc.emb"]["dead_bytes"] == len(gone) * 16 * 4
        assert space["keywords"]["Doc.body"]["dead_bytes"] > 0
        assert space["tables"]["dead_rows"] >= len(gone)
        before = dict(session.search([0.1] * 16, k=5).select(["_key", "_score"]).to_pylist()[0])
        store.checkpoint()
        assert store.engine.last_compaction["tables_rewritten"] is True
        assert store.engine.last_compaction["keywords"] == ["Doc.body"]
        space = store.stats()["space"]
        for structure in ("vectors", "keywords", "graph"):
            assert all(part["dead_bytes"] == 0 for part in space[structure].values()), (structure, space[structure])
        assert space["tables"]["dead_rows"] == 0
        assert store_bytes(store.path) < 0.6 * full  # DuckDB's file has a floor of a few 256 KiB blocks
        for snap in ("vectors-Doc-emb.snap", "keywords-Doc-body.snap"):
            assert os.path.getsize(os.path.join(store.path, "snapshots", snap)) < 0.2 * snapshots[snap]
        # the rewritten store reads as before, takes writes and reopens
        assert session.search([0.1] * 16, k=5).select(["_key", "_score"]).to_pylist()[0] == before
        assert session.count("Doc") == N // 10
        session.transaction().upsert_nodes("Doc", [{"name": "fresh", "body": "a fresh document"}]).commit()
    finally:
        store.close()
    with knowledge.open(str(tmp_path / "s")) as store:
        session = store.session()
        assert session.count("Doc") == N // 10 + 1 and session.get("Doc", "fresh")["body"] == "a fresh document"
        assert session.keyword_search("fresh", k=1).column("_key").to_pylist() == ["fresh"]
        assert session.stats()["edges"]["NEXT"] == 0  # every NEXT edge had an endpoint among the deleted


def test_expired_store_after_checkpoint_is_near_a_store_of_the_survivors(tmp_path):
    clock = Clock()
    keys = [f"d{i}" for i in range(N)]
    survivors = [k for i, k in enumerate(keys) if i % 10 == 0]
    expired = build(tmp_path / "expired", keys, clock, ttl=True)
    try:
        session = expired.session()
        session.transaction().upsert_nodes("Doc", [{"name": k, "_expires_at": T0 + 10 * 86400} for k in survivors])
        for start in range(0, len(survivors), 2000):  # the survivors get a later deadline of their own
            session.transaction().upsert_nodes("Doc", [
                {"name": k, "body": f"document {k}", "_expires_at": T0 + 10 * 86400,
                 "_labels": ["public"]} for k in survivors[start:start + 2000]]).commit()
        clock.now = T0 + 86400
        assert expired.sweep_expired()["nodes"] == N - len(survivors)
        expired.checkpoint()
        expired_bytes = store_bytes(expired.path)
    finally:
        expired.close()
    alone = build(tmp_path / "alone", survivors, clock, ttl=True)
    try:
        alone.checkpoint()
        alone_bytes = store_bytes(alone.path)
    finally:
        alone.close()
    assert expired_bytes <= 1.3 * alone_bytes, (expired_bytes, alone_bytes)


def test_ttl_stamps_of_deleted_rows_are_dropped(tmp_path):
    clock = Clock()
    with knowledge.open(str(tmp_path / "s"), config=StoreConfig(clock=clock, ttl_sweep_rows_per_s=0)) as store:
        store.define_node_type("Doc", key="name")
        store.set_ttl("Doc", "1h")
        store.session().transaction().upsert_nodes("Doc", [{"name": f"d{i}"} for i in range(50)]).commit()
        clock.now += 3600
        store.sweep_expired()
        store.checkpoint()
        cursor = store.tables.cursor()
        try:  # the stamps went with their rows (or never reached the table: deleted in the same batch)
            exists = cursor.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = '_ttl'").fetchone()[0]
            assert not exists or cursor.execute("SELECT count(*) FROM _ttl").fetchone()[0] == 0
        finally:
            cursor.close()
        store.session().transaction().upsert_nodes("Doc", [{"name": "kept"}]).commit()
        store.wait_applied()
        cursor = store.tables.cursor()
        try:
            assert cursor.execute("SELECT id FROM _ttl").fetchall() == [(store.session().get("Doc", "kept")["_id"],)]
        finally:
            cursor.close()


def test_space_reports_every_structure(tmp_path):
    with knowledge.open(str(tmp_path / "s")) as store:
        store.define_node_type("Doc", key="name", properties={"body": "text", "emb": {"type": "vector[4]"}})
        store.define_edge_type("L", source="Doc", target="Doc")
        store.session().transaction().upsert_nodes("Doc", [{"name": "a", "body": "x y", "emb": [1, 0, 0, 0]},
                                                           {"name": "b", "body": "y z", "emb": [0, 1, 0, 0]}]
                                                          ).upsert_edges("L", [{"src": "a", "dst": "b"}]).commit()
        space = store.stats()["space"]
        assert set(space) == {"tables", "wal", "vectors", "keywords", "graph", "snapshots"}
        assert space["vectors"]["Doc.emb"] == {"live_bytes": 32, "dead_bytes": 0}
        assert space["keywords"]["Doc.body"]["live_bytes"] == 4 * 12 + 3 * 100  # postings, terms
        assert space["graph"]["L"]["live_bytes"] == 16
        assert space["wal"]["live_bytes"] > 0 and space["tables"]["file_bytes"] > 0
        store.session().transaction().delete_nodes("Doc", ["b"]).commit()
        space = store.stats()["space"]
        assert space["vectors"]["Doc.emb"] == {"live_bytes": 16, "dead_bytes": 16}
        assert space["graph"]["L"]["live_bytes"] == 0 and space["graph"]["L"]["dead_bytes"] > 0


def test_a_failed_rewrite_keeps_the_old_file(tmp_path, monkeypatch):
    from knowledge.storage import retention

    def refuse(*_):
        raise OSError(28, "No space left on device")

    store = build(tmp_path / "s", [f"d{i}" for i in range(N)], Clock(), ttl=False)
    try:
        store.checkpoint()  # the rows in the file: deleting them now leaves dead rows there
        store.session().transaction().delete_nodes("Doc", [f"d{i}" for i in range(N) if i % 10]).commit()
        monkeypatch.setattr(retention, "_rename", refuse)
        with pytest.raises(StorageFull, match="state.duckdb") as refused:
            store.checkpoint()
        assert refused.value.path == os.path.join(store.path, "state.duckdb")
        monkeypatch.undo()
        assert not os.path.exists(os.path.join(store.path, "state.duckdb.compact"))
        assert store.session().count("Doc") == N // 10 and store.session().get("Doc", "d0")["name"] == "d0"
        store.session().transaction().upsert_nodes("Doc", [{"name": "after"}]).commit()
        store.checkpoint()  # works once the file system does
        assert store.engine.last_compaction["tables_rewritten"] is True
        assert store.session().count("Doc") == N // 10 + 1
    finally:
        store.close()
    with knowledge.open(str(tmp_path / "s")) as reopened:
        assert reopened.session().count("Doc") == N // 10 + 1
