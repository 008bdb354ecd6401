"""The store core: schema, transactions, validation errors, reads, recovery, checkpoint, backup."""

from __future__ import annotations

import datetime as dt
import os

import pandas as pd
import pyarrow as pa
import pytest

import knowledge
from knowledge import Principal
from knowledge.errors import (
    BackupError,
    InvalidArgument,
    MissingEndpoint,
    MissingKey,
    NotFound,
    PermissionDenied,
    SchemaError,
    StoreLocked,
    TypeMismatch,
    UnknownType,
    ValidationError,
    ValueTooLarge,
    WrongEndpointType,
)

PUBLIC = ["public"]


def add_people(session, names, labels=PUBLIC, **extra):
    with session.transaction() as tx:
        tx.upsert_nodes("Person", [{"name": n, "_labels": labels, **extra} for n in names])
    return tx.lsn


# -- schema -----------------------------------------------------------------------------------------
def test_schema_types_round_trip(people):
    schema = people.reopen().schema
    person = schema.nodes["Person"]
    assert person.key == "name"
    assert person.properties["tags"].type == "list[str]"
    assert person.properties["ssn"].hidden
    assert schema.edges["KNOWS"].sources == ("Person",)


def test_add_optional_property_on_populated_store(people):
    s = people.session()
    add_people(s, ["ada"])
    people.add_property("Person", "email", "str")
    with s.transaction() as tx:
        tx.upsert_nodes("Person", [{"name": "bob", "email": "b@x", "_labels": PUBLIC}])
    st = people.reopen()
    s = st.session()
    assert s.get("Person", "ada")["email"] is None
    assert s.get("Person", "bob")["email"] == "b@x"


@pytest.mark.parametrize("change, message", [
    ({"nodes": {"Person": {"key": "name", "properties": {"age": "str"}}}}, "incompatible"),
    ({"nodes": {"Person": {"key": "age", "properties": {}}}}, "key"),
    ({"nodes": {"Person": {"key": "name", "properties": {"x": {"type": "int", "required": True}}}}}, "required"),
    ({"nodes": {"Bad Name": {"key": "k"}}}, "must match"),
    ({"nodes": {"T": {"key": "k", "properties": {"v": "vector[0]"}}}}, "dimension"),
    ({"nodes": {"T": {"key": "k", "properties": {"v": "decimal"}}}}, "unknown property type"),
    ({"edges": {"E": {"source": "Nope", "target": "Person"}}}, "unknown node type"),
    ({"tables": {}}, "unknown section"),
])
def test_incompatible_schema_change_fails_and_changes_nothing(people, change, message):
    add_people(people.session(), ["ada"])
    before = people.schema.to_dict()
    lsn = people.memory_lsn
    with pytest.raises(SchemaError, match=message):
        people.apply_schema(change)
    assert people.schema.to_dict() == before
    assert people.memory_lsn == lsn
    assert people.reopen().schema.to_dict() == before


def test_redeclaring_identically_is_a_no_op(people):
    lsn = people.memory_lsn
    people.define_edge_type("KNOWS", source="Person", target="Person", properties={"since": "int"})
    assert people.memory_lsn == lsn


# -- transactions ---------------------------------------------------------------------------------
def test_commit_returns_increasing_lsns_and_all_property_types(people):
    s = people.session()
    born = dt.datetime(1815, 12, 10, tzinfo=dt.UTC)
    first = add_people(s, ["ada"], age=36, score=9.5, bio="analyst", active=True, born=born,
                       meta={"k": [1, 2]}, tags=["math", "poetry"], ssn="123")
    second = add_people(s, ["bob"])
    assert second == first + 1
    row = people.reopen().session().get("Person", "ada")
    assert row["age"] == 36 and row["score"] == 9.5 and row["bio"] == "analyst" and row["active"] is True
    assert row["born"] == born and row["meta"] == {"k": [1, 2]} and row["tags"] == ["math", "poetry"]
    assert row["ssn"] == "123" and row["_labels"] == PUBLIC


def test_upsert_replaces_and_keeps_the_id(people):
    s = people.session()
    add_people(s, ["ada"], age=1)
    first_id = s.get("Person", "ada")["_id"]
    add_people(s, ["ada"], age=2)
    s = people.reopen().session()
    row = s.get("Person", "ada")
    assert row["age"] == 2 and row["_id"] == first_id
    assert s.count("Person") == 1


def test_duplicate_keys_in_one_batch_keep_the_last(people):
    s = people.session()
    with s.transaction() as tx:
        tx.upsert_nodes("Person", [{"name": "ada", "age": 1}, {"name": "ada", "age": 2}])
    assert people.reopen().session().get("Person", "ada")["age"] == 2


def test_arrow_and_pandas_input(people):
    s = people.session()
    with s.transaction() as tx:
        tx.upsert_nodes("Person", pa.table({"name": ["a", "b"], "age": pa.array([1, 2], pa.int32()),
                                            "_labels": [PUBLIC, PUBLIC]}))
        tx.upsert_nodes("Person", pd.DataFrame({"name": ["c"], "score": [0.5]}))
    s = people.reopen().session()
    assert s.get("Person", "b")["age"] == 2
    assert s.get("Person", "c")["score"] == 0.5


@pytest.mark.parametrize("rows, error, row, field", [
    ([{"name": "a"}, {"name": "b", "age": "old"}], TypeMismatch, 1, "age"),
    ([{"name": "a", "age": True}], TypeMismatch, 0, "age"),
    ([{"name": "a", "tags": "notalist"}], TypeMismatch, 0, "tags"),
    ([{"name": "a", "born": "yesterday"}], TypeMismatch, 0, "born"),
    ([{"name": "a", "meta": {1, 2}}], TypeMismatch, 0, "meta"),
    ([{"name": "a"}, {"age": 3}], MissingKey, 1, "name"),
    ([{"name": "a", "colour": "red"}], ValidationError, 0, "colour"),
    ([{"name": "a", "_labels": "public"}], TypeMismatch, 0, "_labels"),
])
def test_validation_errors_name_row_and_field_and_reject_everything(people, rows, error, row, field):
    s = people.session()
    add_people(s, ["keep"])
    lsn = people.memory_lsn
    with pytest.raises(error) as info:
        with s.transaction() as tx:
            tx.upsert_nodes("Person", [{"name": "first-op"}])
            tx.upsert_nodes("Person", rows)
    assert info.value.row == row and info.value.field == field and info.value.type_name == "Person"
    assert people.memory_lsn == lsn
    s = people.reopen().session()
    assert s.count("Person") == 1
    with pytest.raises(NotFound):
        s.get("Person", "first-op")


def test_unknown_type(people):
    with pytest.raises(UnknownType):
        people.session().transaction().upsert_nodes("Nope", [{"k": 1}])




def test_oversized_value_and_transaction(tmp_path):
    config = knowledge.StoreConfig(value_bytes_max=100, transaction_bytes_max=10_000)
    with knowledge.open(str(tmp_path / "s"), config=config) as st:
        st.define_node_type("Doc", key="id", properties={"body": "text"})
        s = st.session()
        with pytest.raises(ValueTooLarge) as info:
            with s.transaction() as tx:
                tx.upsert_nodes("Doc", [{"id": "a", "body": "x"}, {"id": "b", "body": "y" * 101}])
        assert info.value.row == 1 and info.value.field == "body"
        with pytest.raises(ValueTooLarge, match="transaction_bytes_max"):
            with s.transaction() as tx:
                tx.upsert_nodes("Doc", [{"id": str(i), "body": "z" * 90} for i in range(200)])
        assert s.count("Doc") == 0


def test_edge_errors(people):
    s = people.session()
    add_people(s, ["ada", "bob"])
    with s.transaction() as tx:
        tx.upsert_nodes("Company", [{"cid": 7, "title": "acme", "_labels": PUBLIC}])
    lsn = people.memory_lsn
    with pytest.raises(MissingEndpoint) as info:
        with s.transaction() as tx:
            tx.upsert_edges("KNOWS", [{"src": "ada", "dst": "bob"}, {"src": "ada", "dst": "zed"}])
    assert info.value.row == 1 and info.value.field == "dst" and "zed" in str(info.value)
    with pytest.raises(WrongEndpointType):
        with s.transaction() as tx:
            tx.upsert_edges("KNOWS", [{"src": "ada", "dst": 7}])
    with pytest.raises(WrongEndpointType):
        with s.transaction() as tx:
            tx.upsert_edges("KNOWS", [{"src": "ada", "dst": "bob", "dst_type": "Company"}])
    assert people.memory_lsn == lsn
    assert people.reopen().session().neighbors("Person", "ada") == []


def test_edge_to_node_created_in_same_transaction(people):
    s = people.session()
    with s.transaction() as tx:
        tx.upsert_nodes("Person", [{"name": "ada", "_labels": PUBLIC}, {"name": "bob", "_labels": PUBLIC}])
        tx.upsert_edges("KNOWS", [{"src": "ada", "dst": "bob", "since": 3}])
        tx.upsert_nodes("Company", [{"cid": 1, "_labels": PUBLIC}])
        tx.upsert_edges("WORKS_AT", [{"src": "ada", "dst": 1}])
    s = people.reopen().session()
    assert [n.key for n in s.neighbors("Person", "ada", "KNOWS")] == ["bob"]
    assert [n.key for n in s.neighbors("Person", "ada", "WORKS_AT")] == [1]
    assert [n.key for n in s.neighbors("Person", "bob", "KNOWS", direction="in")] == ["ada"]
    edges = s.edges("KNOWS")
    assert edges.column("since").to_pylist() == [3]


def test_edge_upsert_replaces_properties(people):
    s = people.session()
    add_people(s, ["ada", "bob"])
    for since in (1, 2):
        with s.transaction() as tx:
            tx.upsert_edges("KNOWS", [{"src": "ada", "dst": "bob", "since": since}])
    s = people.reopen().session()
    assert s.edges("KNOWS").column("since").to_pylist() == [2]
    assert s.stats()["edges"]["KNOWS"] == 1


def test_delete_nodes_removes_their_edges(people):
    s = people.session()
    add_people(s, ["ada", "bob", "cy"])
    with s.transaction() as tx:
        tx.upsert_edges("KNOWS", [{"src": "ada", "dst": "bob"}, {"src": "bob", "dst": "cy"}])
    with s.transaction() as tx:
        tx.delete_nodes("Person", ["bob", "never-existed"])
    s = people.reopen().session()
    with pytest.raises(NotFound):
        s.get("Person", "bob")
    assert s.neighbors("Person", "ada") == []
    assert s.edges("KNOWS").num_rows == 0
    assert s.count("Person") == 2


def test_deleted_then_recreated_key_gets_a_new_id(people):
    s = people.session()
    add_people(s, ["ada", "bob"])
    old = s.get("Person", "ada")["_id"]
    with s.transaction() as tx:
        tx.upsert_edges("KNOWS", [{"src": "ada", "dst": "bob"}])
    with s.transaction() as tx:
        tx.delete_nodes("Person", ["ada"])
        tx.upsert_nodes("Person", [{"name": "ada", "_labels": PUBLIC}])
    s = people.reopen().session()
    assert s.get("Person", "ada")["_id"] != old
    assert s.neighbors("Person", "ada") == []
    assert s.neighbors("Person", "bob", direction="in") == []


def test_delete_edges(people):
    s = people.session()
    add_people(s, ["ada", "bob"])
    with s.transaction() as tx:
        tx.upsert_edges("KNOWS", [{"src": "ada", "dst": "bob"}])
    with s.transaction() as tx:
        tx.delete_edges("KNOWS", [{"src": "ada", "dst": "bob"}, {"src": "ada", "dst": "nobody"}])
    assert people.reopen().session().neighbors("Person", "ada") == []


def test_rollback_and_exception_in_block_discard(people):
    s = people.session()
    tx = s.transaction()
    tx.upsert_nodes("Person", [{"name": "ada"}])
    tx.rollback()
    with pytest.raises(RuntimeError):
        with s.transaction() as tx2:
            tx2.upsert_nodes("Person", [{"name": "bob"}])
            raise RuntimeError("boom")
    assert people.reopen().session().count() == 0


# -- reads --------------------------------------------------------------------------------------------
def chain(session, count):
    names = [f"p{i}" for i in range(count)]
    add_people(session, names)
    with session.transaction() as tx:
        tx.upsert_edges("KNOWS", [{"src": a, "dst": b} for a, b in zip(names, names[1:], strict=False)])
    return names


def test_traverse_depth_limit_and_direction(people):
    s = people.session()
    chain(s, 6)
    s = people.reopen().session()
    walk = s.traverse("Person", "p0", depth=3)
    assert walk.column("key").to_pylist() == ["p0", "p1", "p2", "p3"]
    assert walk.column("depth").to_pylist() == [0, 1, 2, 3]
    assert s.traverse("Person", "p0", depth=5, limit=2).num_rows == 2
    assert s.traverse("Person", "p3", depth=2, direction="in").column("key").to_pylist() == ["p3", "p2", "p1"]
    both = s.traverse("Person", "p3", depth=1, direction="both").column("key").to_pylist()
    assert sorted(both) == ["p2", "p3", "p4"]


@pytest.mark.parametrize("kwargs", [{"depth": 0}, {"depth": 99}, {"limit": 0}, {"direction": "up"}])
def test_traverse_bad_arguments(people, kwargs):
    add_people(people.session(), ["ada"])
    with pytest.raises(InvalidArgument):
        people.session().traverse("Person", "ada", **kwargs)


def test_scan_where_columns_limit(people):
    s = people.session()
    with s.transaction() as tx:
        tx.upsert_nodes("Person", [{"name": f"p{i}", "age": i, "tags": ["even" if i % 2 == 0 else "odd"],
                                    "_labels": PUBLIC} for i in range(10)])
    s = people.reopen().session()
    assert s.scan("Person", where={"age": (">=", 7)}).column("name").to_pylist() == ["p7", "p8", "p9"]
    assert s.scan("Person", where={"age": ("in", [1, 3])}).num_rows == 2
    assert s.scan("Person", where={"tags": ("contains", "even")}).num_rows == 5
    assert s.scan("Person", where={"name": ("like", "p1%")}).num_rows == 1
    table = s.scan("Person", columns=["age"], limit=3)
    assert table.column_names == ["_id", "_labels", "age"] and table.num_rows == 3
    with pytest.raises(InvalidArgument):
        s.scan("Person", where={"nope": 1})
    with pytest.raises(InvalidArgument):
        s.scan("Person", where={"age": ("~", 1)})


def test_get_many(people):
    s = people.session()
    add_people(s, ["a", "b", "c"])
    assert people.reopen().session().get_many("Person", ["c", "a", "zz"]).column("name").to_pylist() == ["a", "c"]


# -- visibility (the single filter every read passes) ---------------------------------------------
def test_every_read_honours_visibility(people):
    admin = people.session()
    add_people(admin, ["pub1", "pub2"], labels=["public"])
    add_people(admin, ["hidden"], labels=["secret"])
    add_people(admin, ["nolabel"], labels=[])
    with admin.transaction() as tx:
        tx.upsert_edges("KNOWS", [{"src": "pub1", "dst": "hidden"}, {"src": "hidden", "dst": "pub2"},
                                  {"src": "pub1", "dst": "nolabel"}])
    st = people.reopen()
    user = st.session(Principal("u", read=frozenset({"public"})))
    assert user.count() == 2 and user.count("Person") == 2
    assert user.stats()["nodes"]["Person"] == 2 and user.stats()["edges"]["KNOWS"] == 0
    for key in ("hidden", "nolabel", "absent"):
        with pytest.raises(NotFound) as info:
            user.get("Person", key)
        assert str(info.value) == f"no Person node with key {key!r}"
    assert user.neighbors("Person", "pub1") == []
    assert user.traverse("Person", "pub1", depth=3).column("key").to_pylist() == ["pub1"]
    assert user.scan("Person").column("name").to_pylist() == ["pub1", "pub2"]
    assert user.get_many("Person", ["pub1", "hidden"]).num_rows == 1
    assert user.edges("KNOWS").num_rows == 0
    assert "ssn" not in user.get("Person", "pub1")
    with pytest.raises(InvalidArgument):
        user.scan("Person", where={"ssn": "1"})
    admin = st.session()
    assert admin.count() == 4 and len(admin.traverse("Person", "pub1", depth=2)) == 4


def test_writer_needs_grants_and_cannot_reach_invisible_nodes(people):
    admin = people.session()
    add_people(admin, ["secret-node"], labels=["secret"])
    writer = people.session(Principal("w", read=frozenset({"public"}), write=frozenset({"public"})))
    add_people(writer, ["mine"], labels=["public"])
    with pytest.raises(PermissionDenied):
        add_people(writer, ["bad"], labels=["secret"])
    with pytest.raises(MissingEndpoint):
        with writer.transaction() as tx:
            tx.upsert_edges("KNOWS", [{"src": "mine", "dst": "secret-node"}])
    assert people.reopen().session().count() == 2


# -- durability, locking, checkpoint, backup ------------------------------------------------------
def test_second_open_in_same_process_is_locked(people):
    with pytest.raises(StoreLocked) as info:
        knowledge.open(people.path)
    assert info.value.holder_pid == os.getpid()


def test_checkpoint_truncates_wal_and_state_survives(tmp_path):
    path = str(tmp_path / "s")
    config = knowledge.StoreConfig(segment_bytes_max=4096)
    with knowledge.open(path, config=config) as st:
        st.define_node_type("Person", key="name", properties={"age": "int"})
        st.define_edge_type("KNOWS", source="Person", target="Person")
        s = st.session()
        for i in range(50):
            with s.transaction() as tx:
                tx.upsert_nodes("Person", [{"name": f"p{i}", "age": i}])
                if i:
                    tx.upsert_edges("KNOWS", [{"src": f"p{i - 1}", "dst": f"p{i}"}])
        segments_before = len(os.listdir(os.path.join(path, "wal")))
        lsn = st.checkpoint()
        assert lsn == st.memory_lsn
        assert len(os.listdir(os.path.join(path, "wal"))) < segments_before
        with s.transaction() as tx:
            tx.upsert_nodes("Person", [{"name": "after", "age": 1}])
    with knowledge.open(path, config=config) as st:
        s = st.session()
        assert s.count("Person") == 51
        assert len(s.traverse("Person", "p0", depth=16)) == 17
        assert s.get("Person", "after")["age"] == 1


def test_backup_is_consistent_and_restorable(people, tmp_path):
    s = people.session()
    add_people(s, ["ada", "bob"])
    lsn = people.backup(str(tmp_path / "backup"))
    add_people(s, ["after-backup"])
    restored_lsn = knowledge.restore(str(tmp_path / "backup"), str(tmp_path / "restored"))
    assert restored_lsn == lsn
    with knowledge.open(str(tmp_path / "restored")) as restored:
        r = restored.session()
        assert r.count() == 2
        with pytest.raises(NotFound):
            r.get("Person", "after-backup")
        add_people(r, ["new"])
        assert r.count() == 3
    with pytest.raises(BackupError):
        people.backup(str(tmp_path / "restored"))
    with pytest.raises(BackupError):
        knowledge.restore(str(tmp_path / "nothing"), str(tmp_path / "x"))


def test_open_without_create(tmp_path):
    with pytest.raises(knowledge.errors.StoreNotFound):
        knowledge.open(str(tmp_path / "missing"), create=False)
