"""Where-filter masks from the in-memory column indexes (knowledge/index/columns.py): they equal DuckDB's
answer for random rows and predicates (before and after updates, deletes and a reopen), a filtered search
equals brute force over the matching visible rows, the result metadata names the path used, the richer
filters ($or, in, between, IS NULL) parse once and mean the same on both paths, and a non-admin learns
nothing about hidden rows from a filtered search's answer or metadata."""

from __future__ import annotations

import datetime as dt
import tempfile
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import knowledge
from knowledge import Principal
from knowledge.errors import InvalidQuery

KEYS = [f"k{i}" for i in range(24)]
WORDS = ["ash", "birch", "cedar", "", "élan"]
INTS = [-3, 0, 1, 2, 7, 2 ** 40]
FLOATS = [-1.5, 0.0, 0.25, 2.0, float("nan"), float("inf")]
TIMES = [dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime(2021, 6, 1, 12, tzinfo=dt.UTC),
         dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)]
DOMAIN = {"s": WORDS, "i": INTS, "f": [v for v in FLOATS if np.isfinite(v)], "b": [True, False], "t": TIMES}


def declare(store: knowledge.Store) -> None:
    store.define_node_type("Thing", key="key", properties={
        "s": "str", "i": "int", "f": "float", "b": "bool", "t": "timestamp", "body": "text", "tags": "list[str]",
        "v": {"type": "vector[4]", "metric": "cosine"}})
    store.define_node_type("Other", key="key", properties={"i": "int", "v": {"type": "vector[4]", "metric": "cosine"}})


def maybe(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.sampled_from(values))


rows_strategy = st.dictionaries(st.sampled_from(KEYS), st.fixed_dictionaries({
    "s": maybe(WORDS), "i": maybe(INTS), "f": maybe(FLOATS), "b": maybe([True, False]), "t": maybe(TIMES),
    "labels": st.lists(st.sampled_from(["a", "b"]), unique=True, max_size=2)}), max_size=len(KEYS))


@st.composite
def leaves(draw: Any) -> tuple[str, Any]:
    name = draw(st.sampled_from(sorted(DOMAIN)))
    domain = DOMAIN[name]
    kind = draw(st.sampled_from(["eq", "cmp", "in", "between", "null", "not_null"]))
    if kind == "eq":
        return name, draw(st.sampled_from(domain))
    if kind == "cmp":
        return name, (draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">="])), draw(st.sampled_from(domain)))
    if kind == "in":
        return name, ("in", draw(st.lists(st.sampled_from(domain), max_size=3)))
    if kind == "between":
        return name, ("between", (draw(st.sampled_from(domain)), draw(st.sampled_from(domain))))
    return name, None if kind == "null" else ("!=", None)


@st.composite
def wheres(draw: Any, depth: int = 2) -> dict[str, Any]:
    where = dict(draw(st.lists(leaves(), min_size=1, max_size=3)))
    if depth and draw(st.booleans()):
        where["$or"] = draw(st.lists(wheres(depth - 1), min_size=1, max_size=3))
    return where


def vector(i: int) -> list[float]:
    rng = np.random.default_rng(i)
    return rng.normal(size=4).tolist()


def write(store: knowledge.Store, rows: dict[str, dict[str, Any]]) -> None:
    if not rows:
        return
    with store.session().transaction() as tx:
        tx.upsert_nodes("Thing", [{"key": k, **{p: v for p, v in r.items() if p != "labels"}, "_labels": r["labels"],
                                   "body": f"text {k}", "v": vector(KEYS.index(k))} for k, r in rows.items()])
        tx.upsert_nodes("Other", [{"key": k, "i": 1, "v": vector(100 + KEYS.index(k))} for k in list(rows)[:3]])


def every_leaf() -> list[dict[str, Any]]:
    """One filter per (property, operator, value of its domain), and in/between/NULL forms."""
    out: list[dict[str, Any]] = []
    for name, domain in DOMAIN.items():
        for value in domain:
            out += [{name: (operator, value)} for operator in ("=", "!=", "<", "<=", ">", ">=")]
            out += [{name: ("between", (value, high))} for high in domain]
        out += [{name: ("in", list(domain[:2]))}, {name: ("in", [])}, {name: None}, {name: ("!=", None)}]
    return out


LEAVES = every_leaf()


def assert_paths_agree(store: knowledge.Store, where: dict[str, Any]) -> None:
    session = store.session()
    size = store.directory.capacity
    mask, path = session._where_mask("Thing", where, size)
    assert path == "memory"
    from knowledge.session_where import parse_where

    predicate = parse_where(store.schema.nodes["Thing"], where, session.principal)
    expected = session._duckdb_mask("Thing", predicate, size)
    assert np.array_equal(np.flatnonzero(mask), np.flatnonzero(expected)), where


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=rows_strategy, second=rows_strategy, deleted=st.lists(st.sampled_from(KEYS), max_size=6),
       predicates=st.lists(wheres(), min_size=1, max_size=4))
def test_memory_masks_equal_duckdb(first: dict, second: dict, deleted: list, predicates: list) -> None:
    with tempfile.TemporaryDirectory() as directory:
        with knowledge.open(directory) as store:
            declare(store)
            write(store, first)
            for where in predicates + LEAVES:
                assert_paths_agree(store, where)
            write(store, second)  # updates: a row's values are replaced, a value set to None becomes NULL
            present = [k for k in deleted if k in first or k in second]
            if present:
                with store.session().transaction() as tx:
                    tx.delete_nodes("Thing", sorted(set(present)))
            for where in predicates:
                assert_paths_agree(store, where)
        with knowledge.open(directory) as store:  # loaded from the tables (and the WAL tail) at open
            for where in predicates:
                assert_paths_agree(store, where)
            write(store, first)
            for where in predicates + LEAVES:
                assert_paths_agree(store, where)


def brute_force(store: knowledge.Store, session: Any, query: np.ndarray, where: dict[str, Any], k: int) -> list[Any]:
    """The k nearest visible where-matching Things by numpy over the scanned rows."""
    table = session.scan("Thing", where=where, columns=["v"])
    keys = [store.directory.key_of[i] for i in table.column("_id").to_pylist()]
    if not keys:
        return []
    vectors = np.array(table.column("v").to_pylist(), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = vectors @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    return [keys[i] for i in order]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy, where=wheres(), read=st.lists(st.sampled_from(["a", "b"]), unique=True), k=st.integers(1, 8))
def test_filtered_search_equals_brute_force(rows: dict, where: dict, read: list, k: int) -> None:
    query = np.array([0.3, -0.2, 0.9, 0.1], dtype=np.float32)
    with tempfile.TemporaryDirectory() as directory, knowledge.open(directory) as store:
        declare(store)
        write(store, rows)
        store.create_principal("p", read=read)
        for session in (store.session(), store.session("p")):
            got = session.search(query, k=k, type="Thing", where=where)
            assert got.column("_key").to_pylist() == brute_force(store, session, query, where, k)
            assert got.schema.metadata[b"filter"] == b"memory"


def test_metadata_names_the_path() -> None:
    with tempfile.TemporaryDirectory() as directory, knowledge.open(directory) as store:
        declare(store)
        write(store, {k: {"s": "ash", "i": n, "f": 1.0, "b": True, "t": TIMES[0], "labels": ["a"]}
                      for n, k in enumerate(KEYS[:6])})
        session, query = store.session(), [1.0, 0.0, 0.0, 0.0]
        assert b"filter" not in (session.search(query, type="Thing").schema.metadata or {})
        assert session.search(query, type="Thing", where={"i": ("between", (1, 3))}).schema.metadata[b"filter"] == b"memory"
        for where in ({"body": "text k1"}, {"s": ("like", "a%")}, {"tags": ("contains", "x")},
                      {"f": ("<", float("inf"))}, {"$or": [{"i": 1}, {"s": ("like", "%")}]}):
            table = session.search(query, type="Thing", where=where)
            assert table.schema.metadata[b"filter"] == b"duckdb", where
        table = session.keyword_search("text", type="Thing", where={"i": ("in", [1, 2])})
        assert table.schema.metadata[b"filter"] == b"memory" and sorted(table.column("_key").to_pylist()) == ["k1", "k2"]
        # repeated at one LSN: the same cached (read-only) mask; a write replaces it
        first, _ = session._where_mask("Thing", {"i": (">", 2)}, store.directory.capacity)
        again, _ = session._where_mask("Thing", {"i": (">", 2)}, store.directory.capacity)
        assert first is again and not first.flags.writeable
        write(store, {"k0": {"s": None, "i": 9, "f": None, "b": None, "t": None, "labels": ["a"]}})
        after, _ = session._where_mask("Thing", {"i": (">", 2)}, store.directory.capacity)
        assert after is not first and after.sum() == first.sum() + 1


def test_richer_filters_parse_once_with_typed_errors() -> None:
    with tempfile.TemporaryDirectory() as directory, knowledge.open(directory) as store:
        declare(store)
        write(store, {k: {"s": WORDS[n % 5], "i": n, "f": None, "b": n % 2 == 0, "t": None, "labels": []}
                      for n, k in enumerate(KEYS[:10])})
        session = store.session()
        def keys(where: dict[str, Any]) -> list[str]:
            return session.scan("Thing", where=where).column("_id").to_pylist()
        assert len(keys({"$or": [{"i": ("<", 2)}, {"i": (">=", 8)}]})) == 4
        assert len(keys({"i": ("between", (2, 4))})) == 3
        assert len(keys({"f": None})) == 10 and len(keys({"f": ("!=", None)})) == 0
        assert len(keys({"s": ("in", ["ash", "cedar"]), "b": True})) == 2  # ash at 0, 5; cedar at 2, 7: even ones
        for bad, named in (({"i": ("between", (1,))}, "i"), ({"i": ("between", (1, "x"))}, "i"),
                           ({"$or": {"i": 1}}, None), ({"$or": []}, None), ({"nope": 1}, "nope"),
                           ({"i": ("~", 1)}, "i")):
            with pytest.raises(InvalidQuery) as info:
                session.search([1.0, 0, 0, 0], type="Thing", where=bad)
            assert info.value.property == named, bad
            if named:
                assert repr(named) in str(info.value)


def test_non_admin_learns_nothing_from_hidden_rows() -> None:
    """A filtered search by a reader of label a answers, and describes its answer, exactly as on a store
    holding only the rows it can see."""
    visible = {k: {"s": "ash", "i": n, "f": float(n), "b": True, "t": TIMES[0], "labels": ["a"]}
               for n, k in enumerate(KEYS[:5])}
    hidden = {k: {"s": "ash", "i": n, "f": float("nan"), "b": False, "t": TIMES[1], "labels": ["b"]}
              for n, k in enumerate(KEYS[5:12])}
    query = [0.1, 0.2, 0.3, 0.4]
    wheres_checked = [{"s": "ash"}, {"i": ("between", (0, 9))}, {"$or": [{"b": False}, {"f": (">", 1.0)}]},
                      {"t": None}, {"f": ("in", [1.0, 2.0])}, {"s": ("like", "a%")}]
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two, \
            knowledge.open(one) as full, knowledge.open(two) as reference:
        for store, rows in ((full, {**visible, **hidden}), (reference, visible)):
            declare(store)
            write(store, rows)
            store.create_principal("p", read=["a"])
        for where in wheres_checked:
            got = full.session("p").search(query, k=20, type="Thing", where=where)
            want = reference.session("p").search(query, k=20, type="Thing", where=where)
            assert got.column("_key").to_pylist() == want.column("_key").to_pylist(), where
            assert got.schema.metadata == want.schema.metadata, where
            assert np.allclose(got.column("_score").to_numpy(), want.column("_score").to_numpy())
        assert Principal("x").admin is False
