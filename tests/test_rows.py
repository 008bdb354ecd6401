"""The small-batch Python row path (knowledge/storage/rows.py) against the Arrow path it stands in for.

For any dict rows, valid or not, `node_rows` must raise what `node_batch` raises (class, row, field)
or build exactly the table `node_batch` builds; and a store must read back the same values whichever
path wrote them, before and after a reopen (WAL replay) and through DuckDB.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import knowledge
from knowledge.config import StoreConfig
from knowledge.errors import ValidationError
from knowledge.storage.ops import OpKind, decode_ops, encode_ops
from knowledge.storage.rows import SMALL_ROWS_MAX, NodeRows, is_small, node_rows
from knowledge.storage.schema import NodeType
from knowledge.storage.values import node_batch

NODE = NodeType.build("Doc", "k", {
    "n": "int", "x": "float", "ok": "bool", "title": "str", "body": "text", "at": "timestamp",
    "meta": "json", "tags": "list[str]", "emb": {"type": "vector[3]", "metric": "cosine"},
    "must": {"type": "str", "required": True},
})
CONFIG = StoreConfig(value_bytes_max=64, labels_per_node_max=3)

text = st.text(max_size=8)
odd = st.sampled_from([None, "\ud800", 2**64, -(2**63) - 1, float("nan"), float("inf"), True, 3, 2.5, "x" * 70,
                       "é" * 40, [1], ["a", 2], ["\udfff"], {"a": 1}, [1.0, float("nan"), 2.0], [1.0, 2.0],
                       "2024-01-02T03:04:05", "not a time", b"bytes", object()])
VALUES = {
    "k": text,
    "n": st.integers(-(2**63), 2**63 - 1),
    "x": st.floats(allow_nan=False),
    "ok": st.booleans(),
    "title": text,
    "body": st.text(max_size=30),
    "at": st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1),
                       timezones=st.none() | st.just(dt.UTC) | st.just(dt.timezone(dt.timedelta(hours=-7)))),
    "meta": st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    "tags": st.lists(text, max_size=3),
    "emb": st.lists(st.floats(-10, 10, width=32), min_size=3, max_size=3),
    "must": text,
}


@st.composite
def row(draw):
    out = {}
    for name, values in VALUES.items():
        choice = draw(st.sampled_from(["value"] * 30 + ["absent", "odd"]))
        if choice == "absent":
            continue
        out[name] = draw(odd) if choice == "odd" else draw(values)
    if draw(st.sampled_from([False] * 10 + [True])):
        out["_labels"] = draw(st.sampled_from([["a"], ["b", "a", "a"], "a", [""], ["\ud800"], ["a", "b", "c", "d"],
                                               [1], None]))
    elif draw(st.booleans()):
        out["_labels"] = draw(st.lists(st.sampled_from(["pub", "hr", "eng"]), max_size=3))
    if draw(st.sampled_from([False] * 60 + [True])):
        out["unknown"] = 1
    return out


def _error_or_table(build):
    try:
        return build()
    except ValidationError as exc:
        return (type(exc), exc.row, exc.field)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(row(), min_size=1, max_size=4))
@example(rows=[{"k": "", "x": float("nan"), "must": "", "at": dt.datetime(2000, 1, 1), "emb": [0.0, 0.0, 0.0]}])
def test_python_rows_raise_or_build_exactly_what_the_arrow_path_does(rows):
    arrow = _error_or_table(lambda: node_batch(NODE, rows, CONFIG))
    python = _error_or_table(lambda: node_rows(NODE, rows, CONFIG))
    if isinstance(arrow, tuple) or isinstance(python, tuple):
        assert python == arrow
        return
    assert isinstance(python, NodeRows)
    table = python.to_table()
    assert table.schema.equals(arrow.schema), (table.schema, arrow.schema)
    assert _same(table, arrow)
    back = decode_ops(encode_ops([_op(python)]))[0].rows
    assert back is not None and _same(back.to_table(), python.with_ids(list(range(len(rows)))).to_table())


def _same(a, b) -> bool:
    """Equal tables, NaN equal to NaN (Table.equals says NaN != NaN)."""
    return a.schema.equals(b.schema) and repr(a.to_pylist()) == repr(b.to_pylist())


def _op(rows: NodeRows):
    from knowledge.storage.ops import Op
    return Op(OpKind.UPSERT_NODES, "Doc", rows=rows.with_ids(list(range(len(rows)))))


def test_only_short_lists_of_dicts_take_the_python_path():
    assert is_small([{"k": 1}]) and is_small(({"k": 1},))
    assert not is_small([{"k": i} for i in range(SMALL_ROWS_MAX + 1)])
    assert not is_small({"k": 1}) and not is_small([("k", 1)])


@pytest.fixture()
def pair(tmp_path):
    stores = []
    for name in ("rows", "arrow"):
        store = knowledge.open(str(tmp_path / name))
        store.apply_schema({"nodes": {"Doc": NODE.to_dict()}})
        stores.append(store)
    yield stores
    for store in stores:
        store.close()


def _write(store, rows, small: bool) -> None:
    with store.session().transaction() as tx:
        if small:
            assert is_small(rows)
            tx.upsert_nodes("Doc", rows)
        else:  # a list longer than the Python path takes, or an iterator, goes the Arrow way
            tx.upsert_nodes("Doc", iter(rows))


def test_a_store_reads_the_same_whichever_path_wrote(pair, tmp_path):
    batches = [
        [{"k": "a", "n": 1, "x": 0.5, "ok": True, "title": "t", "body": "hello world", "must": "m",
          "at": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC), "meta": {"z": [1, 2]},
          "tags": ["p", "q"], "emb": [0.1, 0.2, 0.3], "_labels": ["pub"]}],
        [{"k": "b", "must": "m", "body": "other words", "emb": np.array([1, 0, 0], dtype=np.float32)},
         {"k": "a", "must": "m2", "n": 2, "_labels": ["hr", "pub"]}],  # replaces a: no vector now
        [{"k": "c", "must": "m", "at": "2020-01-01T00:00:00+02:00", "_labels": ["eng"]},
         {"k": "c", "must": "last wins"}],
    ]
    batches += [[{"k": f"run{i}", "must": "m", "n": i, "tags": [str(i)], "emb": [i, 1, 0]}] for i in range(40)]
    for batch in batches:  # the single-row tail forms runs the table applier merges into one insert
        _write(pair[0], batch, small=True)
        _write(pair[1], batch, small=False)
    query = np.array([1, 0.1, 0], dtype=np.float32)

    def view(store):
        s = store.session()
        return (s.scan("Doc").sort_by("k").drop(["_id"]).to_pylist(),
                s.search(query, k=5, type="Doc").to_pylist(),
                s.keyword_search("words", type="Doc").to_pylist(),
                s.count("Doc"), s.get("Doc", "c"))

    assert view(pair[0]) == view(pair[1])
    before = view(pair[0])
    path = pair[0].path
    pair[0].close()
    reopened = knowledge.open(path)
    pair[0] = reopened
    assert view(reopened) == before
