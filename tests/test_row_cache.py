"""The row cache: point reads answer exactly as without it, through writes, deletes, relabels and schema changes."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

import knowledge
from knowledge import Principal
from knowledge.errors import NotFound
from knowledge.storage.row_cache import PUT_ROWS_MAX, RowCache


def _row(node: int, value: str) -> pa.Table:
    return pa.table({"_id": pa.array([node], type=pa.int64()), "v": [value]})


def test_cache_unit_behaviour():
    cache = RowCache(rows_max=2)
    token = cache.token()
    cache.put("T", pa.concat_tables([_row(1, "a"), _row(2, "b"), _row(3, "c")]), token)
    assert sorted(cache.get_many("T", [1, 2, 3])) == [2, 3]  # bounded: the oldest went
    stale = cache.token()
    cache.invalidate("T", [2])
    assert sorted(cache.get_many("T", [2, 3])) == [3]
    cache.put("T", _row(2, "old"), stale)  # fetched before the write: refused
    assert 2 not in cache.get_many("T", [2])
    cache.put("T", _row(2, "new"), cache.token())
    assert cache.get_many("T", [2])[2].column("v").to_pylist() == ["new"]
    assert cache.get_many("Other", [2]) == {}
    cache.clear()
    assert len(cache) == 0
    big = pa.concat_tables([_row(node, "x") for node in range(10, 10 + PUT_ROWS_MAX + 1)])
    cache.put("T", big, cache.token())  # a large fetch is not cached (its rows would pin it whole)
    assert cache.get_many("T", [10]) == {}
    off = RowCache(rows_max=0)
    off.put("T", _row(1, "a"), off.token())
    assert off.get_many("T", [1]) == {}


@pytest.fixture()
def pair(tmp_path):
    stores = [knowledge.open(str(tmp_path / name), config=knowledge.StoreConfig(row_cache_rows_max=rows_max))
              for name, rows_max in (("cached", 50), ("uncached", 0))]
    for store in stores:
        store.define_node_type("Doc", key="k", properties={"n": "int", "tags": "list[str]", "meta": "json",
                                                          "secret": {"type": "str", "hidden": True}})
    yield stores
    for store in stores:
        store.close()


def _reads(store, keys, principal):
    session = store.session(principal)
    out = []
    for key in keys:
        try:
            row = session.get("Doc", key)
            row.pop("_id")
            out.append(row)
        except NotFound:
            out.append(None)
    for columns in (None, ["n"], ["tags", "meta"]):
        table = session.get_many("Doc", keys, columns=columns).drop(["_id"])
        out.append(table.to_pylist())
    return out


def test_reads_match_an_uncached_store_through_every_kind_of_write(pair):
    rng = random.Random(11)
    keys = [f"k{i}" for i in range(40)]
    reader = Principal("r", read=frozenset({"a"}))
    for step in range(60):
        batch = []
        for key in rng.sample(keys, rng.randint(1, 6)):
            batch.append({"k": key, "n": rng.randint(0, 9), "tags": [str(rng.randint(0, 3))],
                          "meta": {"s": step}, "secret": f"s{step}", "_labels": rng.choice([["a"], ["b"], ["a", "b"]])})
        dead = rng.sample(keys, rng.randint(0, 3))
        for store in pair:
            with store.session().transaction() as tx:
                tx.upsert_nodes("Doc", batch)
                if step % 3 == 0:
                    tx.delete_nodes("Doc", dead)
        if step == 30:
            for store in pair:
                store.add_property("Doc", "late", "str")
        probe = rng.sample(keys, 8)
        for principal in (None, reader):
            cached, uncached = (_reads(store, probe, principal) for store in pair)
            assert cached == uncached, step
            assert _reads(pair[0], probe, principal) == uncached  # the second read is served from the cache
    assert pair[0].row_cache.hits > 0 and len(pair[0].row_cache) <= 50
    figures = pair[0].stats()["row_cache"]
    assert figures["hits"] == pair[0].row_cache.hits > 0 and figures["misses"] > 0 and figures["rows"] <= 50
    hidden = pair[0].session(reader).get_many("Doc", keys).column_names
    assert "secret" not in hidden
