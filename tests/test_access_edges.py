"""Access control at its edges (issue 11, points 1-4 and 6): ids, labels, hidden properties, side channels,
and traversal over mixed key types. For a non-admin, a node it may not see and a property marked hidden do
not exist: no result, count, label, metadata, LSN or error may tell that they do."""

from __future__ import annotations

import hashlib
import inspect
import re

import numpy as np
import pytest

import knowledge
from knowledge import Principal, Session
from knowledge.errors import InvalidArgument, KnowledgeError, NotFound, PermissionDenied

SECRET = "lbl_x9secret"  # a label name that appears nowhere else, so any trace of it is a leak
ALICE = "alice"


def _doc_store(path: str, *, with_secret: bool = True) -> knowledge.Store:
    store = knowledge.open(path)
    store.define_node_type("Doc", key="id", properties={
        "body": "text", "sec": {"type": "text", "hidden": True},
        "emb": {"type": "vector[4]", "metric": "l2"}, "hemb": {"type": "vector[4]", "metric": "l2", "hidden": True}})
    store.define_edge_type("L", source="Doc", target="Doc", properties={"w": "int", "hw": {"type": "int", "hidden": True}})
    rows = [{"id": f"p{i}", "body": f"hello public {i}", "sec": "hello hello hidden", "emb": [float(i), 0, 0, 1],
             "hemb": [0, float(i), 0, 1], "_labels": ["public"]} for i in range(6)]
    if with_secret:
        rows += [{"id": f"s{i}", "body": f"hello secret {i}", "sec": "x", "emb": [float(i), 1, 0, 1],
                  "hemb": [1, 1, 1, float(i)], "_labels": [SECRET]} for i in range(6)]
        rows.append({"id": "both", "body": "hello both", "sec": "y", "emb": [9.0, 9, 9, 9], "hemb": [9.0, 9, 9, 9],
                     "_labels": ["public", SECRET]})
    with store.session().transaction() as tx:
        tx.upsert_nodes("Doc", rows)
        tx.upsert_edges("L", [{"src": "p0", "dst": "p1", "w": 1, "hw": 7}])
        if with_secret:
            tx.upsert_edges("L", [{"src": "p1", "dst": "s1", "w": 2, "hw": 8}, {"src": "both", "dst": "p0", "w": 3, "hw": 9}])
    store.create_principal(ALICE, read=["public"], write=["public"])
    return store


@pytest.fixture
def docs(tmp_path):
    with _doc_store(str(tmp_path / "s")) as store:
        yield store


def _error(call) -> KnowledgeError:
    with pytest.raises(KnowledgeError) as info:
        call()
    return info.value


# -- 1. ids --------------------------------------------------------------------------------------
def test_ref_of_an_invisible_id_reads_exactly_as_an_absent_one(docs):
    admin, alice = docs.session(), docs.session(ALICE)
    secret_id, public_id = admin.get("Doc", "s0")["_id"], admin.get("Doc", "p0")["_id"]
    assert admin.ref(secret_id) == knowledge.NodeRef(secret_id, "Doc", "s0")
    assert alice.ref(public_id) == knowledge.NodeRef(public_id, "Doc", "p0")
    with admin.transaction() as tx:
        tx.delete_nodes("Doc", ["s5"])
    deleted_id = secret_id + 5
    absent_id = 100_000
    hidden = _error(lambda: alice.ref(secret_id))
    for other in (absent_id, deleted_id, docs.directory.next_id):
        absent = _error(lambda other=other: alice.ref(other))
        assert type(hidden) is type(absent) and isinstance(hidden, NotFound)
        assert str(hidden).replace(str(secret_id), "ID") == str(absent).replace(str(other), "ID")
        assert "s0" not in str(hidden) and "Doc" not in str(hidden)
    with pytest.raises(NotFound):
        admin.ref(deleted_id)  # an absent id is absent for admins too (not the last type's name and None)
    with pytest.raises(NotFound):
        admin.ref(absent_id)
    for bad in (-1, "1", 1.5, True, None):
        with pytest.raises(InvalidArgument):
            alice.ref(bad)


ID_PARAMETERS = {"node", "node_id", "id", "ids", "node_ids", "nodes"}
ID_TAKING = {"ref": lambda session, node: session.ref(node)}
ADMIN_ONLY = {"audit_log"}


def test_every_id_taking_session_method_answers_invisible_as_absent(docs):
    """Every public Session method with a node-id parameter is listed in ID_TAKING (or is admin-only), and each
    answers a non-admin's invisible id exactly as an absent one."""
    taking = {name for name, member in inspect.getmembers(Session) if not name.startswith("_") and callable(member)
              and ID_PARAMETERS & set(inspect.signature(member).parameters)}
    assert taking <= set(ID_TAKING) | ADMIN_ONLY, f"not checked for invisible ids: {taking - set(ID_TAKING) - ADMIN_ONLY}"
    alice, secret_id = docs.session(ALICE), docs.session().get("Doc", "s0")["_id"]
    for name, call in ID_TAKING.items():
        hidden, absent = _error(lambda call=call: call(alice, secret_id)), _error(lambda call=call: call(alice, 99_999))
        assert type(hidden) is type(absent), name
        assert str(hidden).replace(str(secret_id), "ID") == str(absent).replace("99999", "ID"), name
    with pytest.raises(PermissionDenied):
        alice.audit_log(node_id=secret_id)


# -- 2. labels -----------------------------------------------------------------------------------
def test_labels_show_only_the_readers_grants_on_every_read_path(docs):
    alice, admin = docs.session(ALICE), docs.session()
    assert admin.get("Doc", "both")["_labels"] == sorted(["public", SECRET])
    assert alice.get("Doc", "both")["_labels"] == ["public"]
    assert alice.get("Doc", "both", columns=["body"])["_labels"] == ["public"]
    for table in (alice.get_many("Doc", ["both", "p0"]), alice.get_many("Doc", ["both"], columns=[]),
                  alice.scan("Doc"), alice.scan("Doc", where={"body": ("like", "%both%")}, columns=["body"]),
                  alice.scan("Doc", limit=100)):
        labels = table.column("_labels").to_pylist()
        assert labels and all(row == ["public"] for row in labels), labels
        assert SECRET not in str(table.to_pylist())
    alice.get("Doc", "both")  # twice: the second read comes from the row cache
    assert alice.get("Doc", "both")["_labels"] == ["public"]
    assert admin.get("Doc", "both")["_labels"] == sorted(["public", SECRET])  # the cache holds the full row
    docs.grant(ALICE, read=[SECRET])
    assert alice.get("Doc", "both")["_labels"] == sorted(["public", SECRET])  # grants apply at once
    docs.revoke(ALICE, read=[SECRET])
    assert alice.scan("Doc", where={"body": ("like", "%both%")}).column("_labels").to_pylist() == [["public"]]


class HashEmbedder:
    """Deterministic bag-of-words embedder (no model)."""

    name = "hash-bow"
    dimension = 32

    def embed(self, texts):
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                digest = hashlib.sha256(word.encode()).digest()
                out[row, digest[0] % self.dimension] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)


def test_graphrag_entity_labels_and_retrieve_show_nothing_of_a_secret_mention(tmp_path):
    from knowledge.graphrag import Document, ingest

    embedder = HashEmbedder()
    with knowledge.open(str(tmp_path / "rag")) as store:
        ingest(store.session(), [
            Document("pub", "Acme Corp builds rockets in Zurich.", title="Pub", labels=["public"],
                     triples=[("Acme Corp", "builds in", "Zurich")]),
            Document("sec", "Acme Corp secretly buys Globex.", title="Sec", labels=[SECRET],
                     triples=[("Acme Corp", "buys", "Globex")])], embedder=embedder)
        reader = store.session(Principal("reader", read=frozenset({"public"})))
        assert store.session().get("Entity", "acme corp")["_labels"] == sorted(["public", SECRET])
        assert reader.get("Entity", "acme corp")["_labels"] == ["public"]
        assert reader.get_many("Entity", ["acme corp"]).column("_labels").to_pylist() == [["public"]]
        assert [labels for labels in reader.scan("Entity").column("_labels").to_pylist()] == [["public"]] * 2
        for mode in ("vector", "keyword", "hybrid", "graph"):
            result = reader.retrieve("Acme Corp Zurich Globex", k=5, mode=mode, embedder=embedder)
            found = repr([result.chunks, result.documents, result.entities, result.edges, result.context, result.notes])
            assert result.chunks and SECRET not in found and "globex" not in found.lower() and "buys" not in found


# -- 3. hidden properties ------------------------------------------------------------------------
def test_a_hidden_text_property_is_not_searchable_and_not_named(docs):
    alice, admin = docs.session(ALICE), docs.session()
    absent = _error(lambda: alice.keyword_search("hello", type="Doc", property="nope"))
    hidden = _error(lambda: alice.keyword_search("hello", type="Doc", property="sec"))
    assert type(hidden) is type(absent) is InvalidArgument
    assert str(hidden) == str(absent)
    # without property=: the one visible text property, no error naming the hidden one
    default = alice.keyword_search("hello", type="Doc", k=50)
    assert default.equals(alice.keyword_search("hello", type="Doc", property="body", k=50))
    assert sorted(default.column("_key").to_pylist()) == sorted(["both", *(f"p{i}" for i in range(6))])
    everything = alice.keyword_search("hello", k=50)  # no type= either: still only Doc.body
    assert everything.equals(default)
    assert admin.keyword_search("hello", type="Doc", property="sec", k=50).num_rows == 6  # admins see it
    with pytest.raises(InvalidArgument, match="several"):
        admin.keyword_search("hello", type="Doc")  # ... and must choose
    for call in (lambda name: alice.scan("Doc", where={name: "x"}), lambda name: alice.get("Doc", "p0", columns=[name]),
                 lambda name: alice.keyword_search("hello", type="Doc", columns=[name])):
        hidden, absent = _error(lambda call=call: call("sec")), _error(lambda call=call: call("nope"))
        assert type(hidden) is type(absent) and isinstance(hidden, InvalidArgument)
        assert str(hidden).replace("sec", "NAME") == str(absent).replace("nope", "NAME")


def test_a_hidden_vector_property_does_not_rank_and_is_not_named(docs):
    alice, admin = docs.session(ALICE), docs.session()
    query = [1.0, 1.0, 1.0, 1.0]
    absent = _error(lambda: alice.search(query, type="Doc", property="nope"))
    hidden = _error(lambda: alice.search(query, type="Doc", property="hemb"))
    assert type(hidden) is type(absent) is InvalidArgument
    assert str(hidden).replace("hemb", "NAME") == str(absent).replace("nope", "NAME")
    default = alice.search(query, type="Doc", k=20)  # the one visible vector property
    assert default.column("_key").to_pylist() == alice.search(query, type="Doc", property="emb", k=20).column("_key").to_pylist()
    assert "hemb" not in str(_error(lambda: alice.search(query, property="zzz")))
    assert admin.search(query, type="Doc", property="hemb", k=3).num_rows == 3
    with pytest.raises(InvalidArgument, match="several"):
        admin.search(query, type="Doc")


def test_edges_return_no_hidden_edge_property(docs):
    alice, admin = docs.session(ALICE), docs.session()
    assert "hw" in admin.edges("L").column_names
    table = alice.edges("L")
    assert "hw" not in table.column_names and "w" in table.column_names
    assert sorted(table.column("w").to_pylist()) == [1, 3]  # not p1 -> s1: s1 is hidden
    assert all(row.keys() == {"_src", "_dst", "w"} for row in table.to_pylist())


# -- 4. side channels ----------------------------------------------------------------------------
def test_visible_hands_a_non_admin_only_what_it_may_see(docs):
    """A non-admin's bitmap ends at its last visible id: hidden nodes past it (their count, their ids, the
    directory's capacity) leave no trace; below it, False is absent or hidden alike (ids have gaps)."""
    admin, alice = docs.session(), docs.session(ALICE)
    want = sorted(admin.get("Doc", key)["_id"] for key in ["both", *(f"p{i}" for i in range(6))])
    bitmap = alice.visible()
    assert bitmap.dtype == np.bool_ and len(bitmap) == want[-1] + 1 and np.flatnonzero(bitmap).tolist() == want
    with pytest.raises(ValueError):
        bitmap[0] = True  # read-only
    with admin.transaction() as tx:  # 3000 hidden nodes: the directory grows well past its first capacity
        tx.upsert_nodes("Doc", [{"id": f"h{i}", "_labels": [SECRET]} for i in range(3000)])
    assert np.array_equal(alice.visible(), bitmap)
    full = admin.visible()
    assert len(full) >= docs.directory.next_id and np.count_nonzero(full) == 3013  # admins: the whole bitmap
    with admin.transaction() as tx:
        tx.upsert_nodes("Doc", [{"id": "p_new", "_labels": ["public"]}])
    grown = alice.visible()
    assert len(grown) == admin.get("Doc", "p_new")["_id"] + 1 and np.count_nonzero(grown) == len(want) + 1


def test_search_metadata_does_not_depend_on_hidden_rows(tmp_path):
    with _doc_store(str(tmp_path / "full")) as full, _doc_store(str(tmp_path / "public"), with_secret=False) as mine:
        for where in (None, {"body": ("like", "%1%")}):
            for query in ([0.0, 0, 0, 1], [3.0, 1, 0, 1]):
                got = full.session(ALICE).search(query, type="Doc", property="emb", k=3, where=where)
                want = mine.session(ALICE).search(query, type="Doc", property="emb", k=3, where=where)
                assert got.schema.metadata == want.schema.metadata, (where, got.schema.metadata, want.schema.metadata)
                assert got.column("_key").to_pylist() == want.column("_key").to_pylist()


def _lsns(session: Session) -> tuple[int, int]:
    with session.snapshot() as lsn:
        return session.stats()["lsn"], lsn


def test_lsn_seen_by_a_non_admin_does_not_advance_on_invisible_writes(docs):
    admin, alice = docs.session(), docs.session(ALICE)
    before = _lsns(alice)
    assert before[0] == before[1]
    with admin.transaction() as tx:
        tx.upsert_nodes("Doc", [{"id": "s0", "body": "changed", "_labels": [SECRET]},
                                {"id": "s9", "body": "new", "_labels": [SECRET]}])
    with admin.transaction() as tx:
        tx.upsert_edges("L", [{"src": "p0", "dst": "s0", "w": 5}, {"src": "s1", "dst": "s2", "w": 5}])
    with admin.transaction() as tx:
        tx.delete_edges("L", [{"src": "p1", "dst": "s1"}])
    with admin.transaction() as tx:
        tx.upsert_nodes("Doc", [{"id": "s2", "_labels": ["other"]}])  # hidden before and after
    with admin.transaction() as tx:
        tx.delete_nodes("Doc", ["s3"])
    docs.create_principal("bob", read=[SECRET])
    docs.grant("bob", read=["public"])
    assert _lsns(alice) == before, "a write alice cannot see moved her LSN"
    assert docs.memory_lsn > before[0] + 5
    with admin.transaction() as tx:
        tx.upsert_nodes("Doc", [{"id": "p3", "body": "edited", "_labels": ["public"]}])
    visible_write = docs.memory_lsn
    assert _lsns(alice) == (visible_write, visible_write)
    admin.transaction().delete_nodes("Doc", ["s4"]).commit()
    assert _lsns(alice) == (visible_write, visible_write)
    for change in (lambda: admin.transaction().delete_nodes("Doc", ["p5"]).commit(),            # a visible node goes
                   lambda: admin.transaction().upsert_nodes("Doc", [{"id": "p4", "_labels": [SECRET]}]).commit(),
                   lambda: admin.transaction().delete_edges("L", [{"src": "p0", "dst": "p1"}]).commit(),
                   lambda: admin.transaction().upsert_nodes("Doc", [{"id": "s1", "_labels": ["public"]}]).commit(),
                   lambda: docs.grant(ALICE, read=["other"])):
        previous = _lsns(alice)[0]
        change()
        assert _lsns(alice)[0] == docs.memory_lsn > previous
    assert admin.stats()["lsn"] == docs.memory_lsn  # admins see the store's LSN


def test_lsn_seen_by_a_non_admin_survives_a_reopen_without_counting_invisible_writes(tmp_path):
    path = str(tmp_path / "s")
    with _doc_store(path) as store:
        with store.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"id": "p2", "body": "last public write", "_labels": ["public"]}])
        seen = store.memory_lsn
        for i in range(3):
            with store.session().transaction() as tx:
                tx.upsert_nodes("Doc", [{"id": f"s{i}", "body": "secret write", "_labels": [SECRET]}])
        assert store.session(ALICE).stats()["lsn"] == seen
    with knowledge.open(path) as store:
        assert store.session(ALICE).stats()["lsn"] == seen
        store.checkpoint()
    with knowledge.open(path) as store:
        assert store.session(ALICE).stats()["lsn"] == seen
        assert store.session().stats()["lsn"] == store.memory_lsn > seen


def test_lsn_of_a_visible_delete_survives_a_clean_close_and_a_lost_clock_never_counts_invisible_writes(tmp_path):
    """A delete leaves no row: a clean close keeps its LSN (the view clock's file); without that file (a crash)
    the tables' `_lsn` columns give an older visible write, never a newer invisible one."""
    import os

    path = str(tmp_path / "s")
    with _doc_store(path) as store:
        with store.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"id": "p2", "body": "last public upsert", "_labels": ["public"]}])
        upserted = store.memory_lsn
        store.session().transaction().delete_nodes("Doc", ["p5"]).commit()
        deleted = store.memory_lsn
        with store.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"id": "s1", "body": "secret write", "_labels": [SECRET]}])
        assert store.session(ALICE).stats()["lsn"] == deleted
    with knowledge.open(path) as store:
        with store.session(ALICE).snapshot() as lsn:
            assert lsn == deleted
    os.remove(os.path.join(path, "view_lsn.json"))  # as after a crash
    with knowledge.open(path) as store:
        assert store.session(ALICE).stats()["lsn"] == upserted < deleted < store.memory_lsn


# -- 6. traversal over mixed key types -----------------------------------------------------------
def test_traverse_reaches_nodes_of_str_and_int_keys(tmp_path):
    with knowledge.open(str(tmp_path / "s")) as store:
        store.define_node_type("Doc", key="id")
        store.define_node_type("Item", key="n", properties={"n": "int"})
        store.define_edge_type("HAS", source="Doc", target="Item")
        store.define_edge_type("NEXT", source="Item", target="Doc")
        with store.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"id": "d1", "_labels": ["public"]}, {"id": "d2", "_labels": ["public"]}])
            tx.upsert_nodes("Item", [{"n": 7, "_labels": ["public"]}, {"n": 8, "_labels": ["public"]}])
            tx.upsert_edges("HAS", [{"src": "d1", "dst": 7}, {"src": "d1", "dst": 8}])
            tx.upsert_edges("NEXT", [{"src": 8, "dst": "d2"}])
        for session in (store.session(), store.session(Principal("r", read=frozenset({"public"})))):
            walk = session.traverse("Doc", "d1", depth=3)
            assert list(zip(walk.column("type").to_pylist(), walk.column("key").to_pylist(),
                            walk.column("depth").to_pylist(), strict=True)) == [
                ("Doc", "d1", 0), ("Item", 7, 1), ("Item", 8, 1), ("Doc", "d2", 2)]
            back = session.traverse("Item", 8, direction="both", depth=1)
            assert sorted(map(str, back.column("key").to_pylist())) == ["8", "d1", "d2"]
            assert [type(k) for k in back.column("key").to_pylist()].count(int) == 1
            assert session.traverse("Item", 7, depth=2).column("key").to_pylist() == [7]
            assert session.traverse("Doc", "d2", depth=2).column("key").to_pylist() == ["d2"]


def test_view_clock_label_pairs_match_brute_force():
    """The per-label bookkeeping behind a non-admin's LSN: every (source label, target label) pair of a batch
    of edges, with its largest LSN, on the one-node-at-a-time path and the vectorised one (1 and 2 words)."""
    from knowledge.access import view_clock

    rng = np.random.default_rng(3)
    for _ in range(150):
        labels = int(rng.integers(1, 80))
        bitmaps = {f"x{i}": rng.random(int(rng.integers(1, 200))) < 0.3 for i in range(labels)}
        edges = int(rng.integers(1, 60))
        src, dst, lsns = (rng.integers(0, 200, edges), rng.integers(0, 200, edges), rng.integers(1, 100, edges))
        want: dict[tuple[str, str], int] = {}
        for s, d, lsn in zip(src.tolist(), dst.tolist(), lsns.tolist(), strict=True):
            for a, bits_a in bitmaps.items():
                for b, bits_b in bitmaps.items():
                    if s < len(bits_a) and bits_a[s] and d < len(bits_b) and bits_b[d]:
                        want[(a, b)] = max(want.get((a, b), 0), lsn)
        for small in (0, 64):
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(view_clock, "SMALL_BATCH", small)
                assert view_clock.label_pairs(bitmaps, src, dst, lsns) == want
                assert view_clock.label_pairs(bitmaps, src, dst) == set(want)
                assert view_clock.labels_of_ids(bitmaps, src) == {
                    a for a, bits in bitmaps.items() for s in src.tolist() if s < len(bits) and bits[s]}


def test_label_cuts_agree_for_small_and_large_arrays():
    """The Python cut for a few rows and the Arrow kernels for many give the same lists (order kept, nulls read
    as empty lists, labels outside the grants dropped), whatever the list type."""
    import random

    import pyarrow as pa

    from knowledge.access import labels
    from knowledge.access.principal import Principal

    rng = random.Random(5)
    reader = Principal("r", frozenset({"public", "team"}), frozenset())
    names = ["public", "team", "secret", "x", None]
    for trial in range(60):
        rows = [None if rng.random() < 0.1 else [rng.choice(names) for _ in range(rng.randint(0, 4))]
                for _ in range(rng.randint(1, 30))]
        for kind in (pa.list_(pa.string()), pa.large_list(pa.string())):
            array = pa.array(rows, type=kind)
            small = labels.readable_labels(array, reader)
            saved, labels.SMALL_LABELS = labels.SMALL_LABELS, -1
            try:
                large = labels.readable_labels(array, reader)
            finally:
                labels.SMALL_LABELS = saved
            expected = [[n for n in row if n in reader.read] if row else [] for row in rows]
            assert small.type == kind and small.to_pylist() == expected, (trial, rows)
            assert large.to_pylist() == expected, (trial, rows)
