"""Principals, grants, tokens and the audit log: written through the WAL, effective at once."""

from __future__ import annotations

import pytest

import knowledge
from knowledge.errors import InvalidArgument, NotFound, PermissionDenied


@pytest.fixture
def docs(store):
    store.define_node_type("Doc", key="id", properties={"body": "text", "secret_note": {"type": "str", "hidden": True}})
    store.define_edge_type("CITES", source="Doc", target="Doc")
    s = store.session()
    with s.transaction() as tx:
        tx.upsert_nodes("Doc", [{"id": "pub", "_labels": ["public"], "secret_note": "x"},
                                {"id": "hr", "_labels": ["hr"]},
                                {"id": "both", "_labels": ["hr", "public"]}])
        tx.upsert_edges("CITES", [{"src": "pub", "dst": "hr"}, {"src": "hr", "dst": "both"}])
    return store


def test_principals_are_durable_and_tokens_stored_hashed(docs):
    docs.create_principal("alice", read=["public"], write=["public"])
    token = docs.issue_token("alice")
    st = docs.reopen()
    assert [p.name for p in st.principals()] == ["alice"]
    assert st.authenticate(token).name == "alice"
    st.wait_applied()
    stored = st.tables.con.execute("SELECT string_agg(value, '') FROM _meta").fetchone()[0]
    assert token not in stored
    st.revoke_tokens("alice")
    with pytest.raises(PermissionDenied):
        st.authenticate(token)
    with pytest.raises(PermissionDenied):
        st.authenticate("kn_made_up")


def test_grant_and_revoke_apply_to_open_sessions(docs):
    docs.create_principal("bob", read=["public"])
    session = docs.session("bob")
    assert session.count() == 2
    docs.grant("bob", read=["hr"])
    assert session.count() == 3
    assert [n.key for n in session.neighbors("Doc", "pub")] == ["hr"]
    docs.revoke("bob", read=["public"])
    with pytest.raises(NotFound):
        session.get("Doc", "pub")
    st = docs.reopen()
    assert st.session("bob").count() == 2
    st.drop_principal("bob")
    with pytest.raises(InvalidArgument):
        st.session("bob")


def test_dropped_principal_session_fails(docs):
    docs.create_principal("carol", read=["public"])
    session = docs.session("carol")
    docs.drop_principal("carol")
    with pytest.raises(PermissionDenied):
        session.count()


def test_bad_principal_changes(docs):
    docs.create_principal("dave")
    with pytest.raises(InvalidArgument):
        docs.create_principal("dave")
    with pytest.raises(InvalidArgument):
        docs.create_principal("no spaces allowed")
    with pytest.raises(InvalidArgument):
        docs.grant("nobody", read=["x"])
    with pytest.raises(InvalidArgument):
        docs.grant("dave", read=[""])


def test_writer_needs_write_grant_on_labels_it_removes(docs):
    docs.create_principal("editor", read=["public", "hr"], write=["public"])
    editor = docs.session("editor")
    with pytest.raises(PermissionDenied):   # "both" carries hr, which editor may not write
        with editor.transaction() as tx:
            tx.upsert_nodes("Doc", [{"id": "both", "_labels": ["public"]}])
    with pytest.raises(PermissionDenied):
        with editor.transaction() as tx:
            tx.delete_nodes("Doc", ["hr"])
    with editor.transaction() as tx:
        tx.upsert_nodes("Doc", [{"id": "pub", "body": "edited", "_labels": ["public"]}])
    assert docs.reopen().session().get("Doc", "pub")["body"] == "edited"


def test_writer_cannot_overwrite_a_node_it_cannot_see(docs):
    docs.create_principal("outsider", read=["public"], write=["public"])
    outsider = docs.session("outsider")
    with pytest.raises(PermissionDenied) as info:
        with outsider.transaction() as tx:
            tx.upsert_nodes("Doc", [{"id": "hr", "_labels": ["public"]}])
    assert "hr" in str(info.value)
    assert docs.reopen().session().get("Doc", "hr")["_labels"] == ["hr"]


def test_hidden_properties_are_absent_for_non_admins(docs):
    docs.create_principal("eve", read=["public"])
    row = docs.session("eve").get("Doc", "pub")
    assert "secret_note" not in row
    assert "secret_note" not in docs.session("eve").scan("Doc").column_names
    assert docs.session().get("Doc", "pub")["secret_note"] == "x"


def test_audit_log(tmp_path):
    with knowledge.open(str(tmp_path / "s"), config=knowledge.StoreConfig(audit=True)) as st:
        st.define_node_type("Doc", key="id")
        with st.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"id": "a", "_labels": ["public"]}, {"id": "b", "_labels": ["hr"]}])
        st.create_principal("frank", read=["public"])
        frank = st.session("frank")
        frank.get("Doc", "a")
        frank.scan("Doc")
        entries = st.session().audit_log(principal="frank")
        assert [e.api for e in entries] == ["scan", "get"]
        a_id = st.session().get("Doc", "a")["_id"]
        assert entries[0].node_ids == (a_id,) and entries[0].lsn == st.memory_lsn
        with pytest.raises(PermissionDenied):
            frank.audit_log()


def test_principal_cli(tmp_path, capsys):
    import json

    from knowledge.cli import main
    path = str(tmp_path / "s")
    assert main(["init", path]) == 0
    assert main(["principal", "create", path, "gina", "--read", "public", "--write", "public"]) == 0
    assert main(["principal", "token", path, "gina"]) == 0
    capsys.readouterr()
    assert main(["principal", "grant", path, "gina", "--read", "hr"]) == 0
    assert json.loads(capsys.readouterr().out)["read"] == ["hr", "public"]
    assert main(["principal", "list", path]) == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)] == ["gina"]
    assert main(["principal", "revoke", path, "gina", "--read", "hr"]) == 0
    assert main(["principal", "drop", path, "gina"]) == 0
    assert main(["principal", "drop", path, "gina"]) == 1
    assert "no principal named 'gina'" in capsys.readouterr().err
    for action in ("create", "grant", "revoke", "drop", "list", "token"):
        assert main(["principal", action, "--help"]) == 0
        assert "Example:" in capsys.readouterr().out


def test_a_relabel_cannot_land_between_a_reads_visibility_check_and_its_fetch(tmp_path, monkeypatch):
    """A concurrent commit that hides a node and rewrites it must not reach a read that checked visibility
    before it: the read returns the old row (or nothing), never the new, now hidden, content."""
    import threading

    from knowledge.session import Session

    with knowledge.open(str(tmp_path / "s")) as store:
        store.define_node_type("Doc", key="k", properties={"body": "str"})
        with store.session().transaction() as tx:
            tx.upsert_nodes("Doc", [{"k": "d", "body": "public text", "_labels": ["pub"]}])
        reader = store.session(knowledge.Principal("r", read=frozenset({"pub"})))
        fetch = Session._fetch
        writers: list[threading.Thread] = []

        def fetch_with_a_concurrent_relabel(self, *args):
            def relabel():
                with store.session().transaction() as tx:
                    tx.upsert_nodes("Doc", [{"k": "d", "body": "secret text", "_labels": ["secret"]}])
            writer = threading.Thread(target=relabel)
            writer.start()
            writer.join(0.3)  # time enough to commit, were the read not holding the state
            writers.append(writer)
            return fetch(self, *args)

        monkeypatch.setattr(Session, "_fetch", fetch_with_a_concurrent_relabel)
        for read in (lambda: [reader.get("Doc", "d")["body"]],
                     lambda: reader.get_many("Doc", ["d"]).column("body").to_pylist()):
            assert read() == ["public text"]
            writers[-1].join(10)
            monkeypatch.setattr(Session, "_fetch", fetch)
            assert reader.get_many("Doc", ["d"]).num_rows == 0  # the relabel is in now: hidden
            with store.session().transaction() as tx:  # back to public for the next read
                tx.upsert_nodes("Doc", [{"k": "d", "body": "public text", "_labels": ["pub"]}])
            monkeypatch.setattr(Session, "_fetch", fetch_with_a_concurrent_relabel)
