"""A failure while applying a durable record to memory poisons the store and is raised to the committer;
it must never deadlock (Engine.fail used to retake the non-reentrant memory-turn lock the commit held)."""

from __future__ import annotations

import threading

import pytest

import knowledge
import knowledge.storage.engine as engine_module
from knowledge.errors import StorePoisoned


def test_a_failed_memory_apply_poisons_without_deadlock(tmp_path, monkeypatch):
    store = knowledge.open(str(tmp_path / "s"))
    store.define_node_type("Doc", key="k")
    session = store.session()

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure applying to memory")

    monkeypatch.setattr(engine_module, "apply_memory", broken)
    outcome: list[BaseException] = []

    def commit() -> None:
        try:
            with session.transaction() as tx:
                tx.upsert_nodes("Doc", [{"k": "a"}])
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=commit, daemon=True)
    thread.start()
    thread.join(120)  # a deadlock would hang here for good; 120 s is far beyond any commit
    assert not thread.is_alive(), "the commit deadlocked in Engine.fail"
    assert outcome and isinstance(outcome[0], RuntimeError)
    with pytest.raises(StorePoisoned):
        session.get("Doc", "a")
    monkeypatch.undo()
    store.close()
    with knowledge.open(str(tmp_path / "s")) as reopened:  # the record was durable: the reopen applies it
        assert reopened.session().get("Doc", "a")["k"] == "a"


def test_add_property_on_a_type_with_an_int_key(tmp_path):
    with knowledge.open(str(tmp_path / "s")) as store:
        store.define_node_type("Item", key="id", properties={"id": "int"})
        with store.session().transaction() as tx:
            tx.upsert_nodes("Item", [{"id": 7}])
        store.add_property("Item", "note", "str")
        assert store.schema.nodes["Item"].properties["id"].type == "int"
        with store.session().transaction() as tx:
            tx.upsert_nodes("Item", [{"id": 8, "note": "added"}])
        assert store.session().get("Item", 8)["note"] == "added"
