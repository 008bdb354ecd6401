"""The store API, run against both back-ends (the `api_store` fixture: embedded, and remote over a real
gRPC socket): same results, same result types, same exception classes and fields."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

import knowledge
from knowledge import NodeRef, Principal
from knowledge.embed import EmbedderUnavailable, HashingEmbedder
from knowledge.errors import (
    InvalidArgument,
    KnowledgeError,
    MissingEndpoint,
    NotFound,
    PermissionDenied,
    SchemaError,
    TypeMismatch,
    UnknownType,
)
from knowledge.graphrag import Document, NoExtractor, RetrievalResult, RetrievedChunk, ingest

BORN = dt.datetime(1815, 12, 10, 8, 30)


def declare(store):
    store.define_node_type("Person", key="name", properties={
        "age": "int", "score": "float", "bio": "text", "active": "bool", "born": "timestamp", "meta": "json",
        "tags": "list[str]", "ssn": {"type": "str", "hidden": True}, "emb": {"type": "vector[3]", "metric": "l2"}})
    store.define_node_type("Company", key="cid", properties={"cid": "int", "title": "str"})
    store.define_edge_type("KNOWS", source="Person", target="Person", properties={"since": "int"})
    store.define_edge_type("WORKS_AT", source="Person", target="Company")


PEOPLE = [
    {"name": "ada", "age": 36, "score": 1.5, "bio": "wrote the first program for the analytical engine",
     "active": True, "born": BORN, "meta": {"lang": ["en", "fr"], "n": 1}, "tags": ["math", "poet"], "ssn": "1",
     "emb": [1.0, 0.0, 0.0], "_labels": ["public"]},
    {"name": "bob", "age": 40, "score": 2.0, "bio": "builds engines", "active": False, "tags": ["eng"],
     "emb": [0.0, 1.0, 0.0], "_labels": ["public"]},
    {"name": "cy", "age": 25, "bio": "secret engine research", "tags": ["math"], "emb": [0.9, 0.1, 0.0],
     "_labels": ["secret"]},
    {"name": "dee", "age": 51, "bio": "poet of the engine", "emb": [0.0, 0.0, 1.0], "_labels": ["public", "hr"]},
]


@pytest.fixture
def people(api_store):
    declare(api_store)
    with api_store.session().transaction() as tx:
        tx.upsert_nodes("Person", PEOPLE)
        tx.upsert_nodes("Company", pa.table({"cid": [7], "title": ["Analytical Engines"], "_labels": [["public"]]}))
        tx.upsert_edges("KNOWS", [{"src": "ada", "dst": "bob", "since": 1843}, {"src": "bob", "dst": "cy", "since": 1850},
                                  {"src": "cy", "dst": "dee", "since": 1860}, {"src": "ada", "dst": "dee", "since": 1844}])
        tx.upsert_edges("WORKS_AT", [{"src": "bob", "dst": 7}])
    api_store.create_principal("reader", read=["public"])
    api_store.create_principal("writer", read=["public"], write=["public"])
    return api_store


def test_schema_round_trips(people):
    schema = people.schema
    assert set(schema.nodes) == {"Person", "Company"} and set(schema.edges) == {"KNOWS", "WORKS_AT"}
    assert schema.nodes["Person"].key == "name"
    with pytest.raises(SchemaError):
        people.define_node_type("Person", key="age")
    people.add_property("Person", "nick", "str")
    assert "nick" in people.schema.nodes["Person"].properties
    people.add_property("Company", "founded", "int")  # an int key stays int (embedded and remote alike)
    assert people.schema.nodes["Company"].properties["cid"].type == "int"
    assert "founded" in people.schema.nodes["Company"].properties
    people.add_property("KNOWS", "note", "str")
    assert "note" in people.schema.edges["KNOWS"].properties


def test_get_returns_typed_properties(people):
    row = people.session().get("Person", "ada")
    assert isinstance(row, dict)
    assert row["age"] == 36 and row["score"] == 1.5 and row["active"] is True and row["born"] == BORN.replace(tzinfo=dt.UTC)
    assert row["meta"] == {"lang": ["en", "fr"], "n": 1} and row["tags"] == ["math", "poet"]
    assert row["_labels"] == ["public"] and row["ssn"] == "1" and isinstance(row["_id"], int)
    assert row["emb"] == pytest.approx([1.0, 0.0, 0.0])
    assert people.session().get("Company", 7)["title"] == "Analytical Engines"
    assert set(people.session().get("Person", "bob", columns=["age"])) == {"_id", "_labels", "age"}


def test_errors_keep_their_class_and_fields(people):
    session = people.session()
    with pytest.raises(NotFound) as caught:
        session.get("Person", "zed")
    assert caught.value.type_name == "Person" and caught.value.key == "zed"
    assert str(caught.value) == "no Person node with key 'zed'"
    with pytest.raises(UnknownType):
        session.get("Robot", "r2")
    with pytest.raises(InvalidArgument, match="direction"):
        session.neighbors("Person", "ada", direction="sideways")
    with pytest.raises(InvalidArgument, match="depth"):
        session.traverse("Person", "ada", depth=99)
    with pytest.raises(TypeMismatch) as caught:
        session.transaction().upsert_nodes("Person", [{"name": "eve", "age": "old"}]).commit()
    assert caught.value.type_name == "Person" and caught.value.field == "age" and caught.value.row == 0
    with pytest.raises(MissingEndpoint):
        session.transaction().upsert_edges("KNOWS", [{"src": "ada", "dst": "nobody"}]).commit()
    with pytest.raises(NotFound):
        session.get("Person", "eve")  # the failed transaction left nothing behind


def test_get_many_and_scan(people):
    session = people.session()
    many = session.get_many("Person", ["bob", "ada", "zed"], columns=["age"])
    assert isinstance(many, pa.Table) and many.column_names == ["_id", "_labels", "age"]
    assert sorted(many.column("age").to_pylist()) == [36, 40]
    older = session.scan("Person", where={"age": (">", 30)}, columns=["age"])
    assert sorted(older.column("age").to_pylist()) == [36, 40, 51]
    assert session.scan("Person", where={"tags": ("contains", "math")}).num_rows == 2
    assert session.scan("Person", where={"name": ("in", ["ada", "cy"])}).num_rows == 2
    assert session.scan("Person", where={"bio": ("like", "%engine%")}).num_rows == 4
    assert session.scan("Person", where={"active": True}, limit=5).column("name").to_pylist() == ["ada"]
    assert session.scan("Person", limit=2).num_rows == 2
    with pytest.raises(InvalidArgument, match="no property"):
        session.scan("Person", where={"height": 3})
    with pytest.raises(InvalidArgument):
        session.scan("Person", where={"age": ("~", 3)})


def test_graph_reads(people):
    session = people.session()
    refs = session.neighbors("Person", "ada", "KNOWS")
    assert refs == [NodeRef(refs[0].id, "Person", "bob"), NodeRef(refs[1].id, "Person", "dee")]
    assert all(isinstance(r, NodeRef) for r in refs)
    assert [r.key for r in session.neighbors("Person", "bob", direction="both")] == ["ada", "cy", 7]
    walk = session.traverse("Person", "ada", "KNOWS", depth=2)
    assert walk.column_names == ["id", "type", "key", "depth"]
    assert sorted(zip(walk.column("key").to_pylist(), walk.column("depth").to_pylist(), strict=True)) == [
        ("ada", 0), ("bob", 1), ("cy", 2), ("dee", 1)]
    assert session.ref(refs[0].id) == refs[0]
    src, dst, kind = session.adjacency("KNOWS")
    assert len(src) == len(dst) == len(kind) == 4
    edges = session.edges("KNOWS")
    assert sorted(edges.column("since").to_pylist()) == [1843, 1844, 1850, 1860]


def test_vector_and_keyword_search(people):
    session = people.session()
    found = session.search([1.0, 0.0, 0.0], k=2, columns=["age"])
    assert found.column_names == ["_id", "_key", "_score", "age"]
    assert found.column("_key").to_pylist() == ["ada", "cy"] and found.column("age").to_pylist() == [36, 25]
    assert found.schema.metadata and b"plan" in found.schema.metadata
    assert session.search([1.0, 0.0, 0.0], k=3, where={"age": (">", 30)}).column("_key").to_pylist() == [
        "ada", "bob", "dee"]
    with pytest.raises(InvalidArgument):
        session.search([1.0, 0.0], k=2)
    with pytest.raises(InvalidArgument):
        session.search([1.0, 0.0, 0.0], k=0)
    with pytest.raises(InvalidArgument):
        session.search([float("nan"), 0.0, 0.0], k=1)
    hits = session.keyword_search("poet engine", k=2)
    assert hits.column("_key").to_pylist()[0] == "dee" and hits.num_rows == 2
    with pytest.raises(InvalidArgument):
        session.keyword_search("  ")


def test_counts_stats_and_lsn(people):
    session = people.session()
    assert session.count() == 5 and session.count("Person") == 4
    stats = session.stats()
    assert stats["nodes"] == {"Person": 4, "Company": 1} and stats["edges"] == {"KNOWS": 4, "WORKS_AT": 1}
    assert stats["lsn"] == people.memory_lsn > 0
    assert people.stats()["lsn"] == stats["lsn"]


def test_access_control_holds(people):
    reader = people.session("reader")
    assert reader.principal.name == "reader" and reader.principal.read == frozenset({"public"})
    assert reader.count("Person") == 3
    with pytest.raises(NotFound):
        reader.get("Person", "cy")  # invisible reads as absent
    assert "ssn" not in reader.get("Person", "ada")  # hidden for non-admins
    assert [r.key for r in reader.neighbors("Person", "bob", "KNOWS")] == []
    assert "cy" not in reader.search([1.0, 0.0, 0.0], k=4).column("_key").to_pylist()
    assert "cy" not in reader.keyword_search("secret engine", k=4).column("_key").to_pylist()
    assert reader.stats()["edges"]["KNOWS"] == 2
    with pytest.raises(PermissionDenied):
        reader.transaction().upsert_nodes("Person", [{"name": "x", "_labels": ["public"]}]).commit()
    writer = people.session("writer")
    writer.transaction().upsert_nodes("Person", [{"name": "x", "_labels": ["public"]}]).commit()
    with pytest.raises(PermissionDenied):
        writer.transaction().upsert_nodes("Person", [{"name": "y", "_labels": ["secret"]}]).commit()
    adhoc = people.session(Principal("temp", read=frozenset({"secret"})))
    assert [r["name"] for r in adhoc.scan("Person").to_pylist()] == ["cy"]
    people.grant("reader", read=["secret"])
    assert reader.count("Person") == 5  # grants apply to open sessions at once
    people.revoke("reader", read=["secret"])
    assert reader.count("Person") == 4


def test_principal_administration(people):
    token = people.issue_token("reader")
    assert token.startswith("kn_") and people.authenticate(token).name == "reader"
    assert {p.name for p in people.principals()} >= {"reader", "writer"}
    people.revoke_tokens("reader")
    with pytest.raises(PermissionDenied):
        people.authenticate(token)
    people.drop_principal("writer")
    assert "writer" not in {p.name for p in people.principals()}
    with pytest.raises(InvalidArgument):
        people.create_principal("reader")


def test_deletes_and_transactions(people):
    session = people.session()
    with session.transaction() as tx:
        tx.delete_edges("KNOWS", [{"src": "ada", "dst": "bob"}])
        tx.delete_nodes("Person", ["dee"])
    assert [r.key for r in session.neighbors("Person", "ada", "KNOWS")] == []
    with pytest.raises(NotFound):
        session.get("Person", "dee")
    tx = session.transaction()
    tx.upsert_nodes("Person", [{"name": "zed", "_labels": ["public"]}])
    tx.rollback()
    with pytest.raises(KnowledgeError):
        tx.commit()
    with pytest.raises(NotFound):
        session.get("Person", "zed")
    lsn = session.transaction().upsert_nodes("Person", [{"name": "zed", "age": 1}]).commit()
    assert lsn == people.memory_lsn


def test_checkpoint_and_backup(people, tmp_path):
    assert people.checkpoint() >= 1
    lsn = people.backup(str(tmp_path / "copy"))
    with knowledge.open(str(tmp_path / "copy"), create=False) as copy:
        assert copy.session().get("Person", "ada")["age"] == 36 and copy.memory_lsn == lsn
    assert people.build_indexes(wait=True) is True


def test_retrieve_matches_across_backends(api_store):
    embedder = HashingEmbedder(64)
    docs = [Document("bees", "Honey bees live in hives and make honey from nectar.", title="Bees", labels=["public"]),
            Document("rhine", "The Rhine flows through Switzerland to the North Sea.", title="Rhine", labels=["public"]),
            Document("memo", "Project Nightingale is a secret merger in Zurich.", title="Memo", labels=["secret"])]
    ingest(api_store.session(), docs, embedder=embedder, extractor=NoExtractor(), synonyms=False)
    api_store.create_principal("reader", read=["public"])
    result = api_store.session("reader").retrieve("where do honey bees live", k=2, mode="hybrid",
                                                  embedder=embedder, token_budget=200)
    assert isinstance(result, RetrievalResult) and isinstance(result.chunks[0], RetrievedChunk)
    assert result.chunks[0].doc_id == "bees" and all(c.doc_id != "memo" for c in result.chunks)
    assert result.documents[0].title == "Bees" and "honey" in result.context.lower()
    assert result.lsn == api_store.memory_lsn and result.context_tokens <= 200
    vector = embedder.embed(["secret merger Zurich"])[0]
    secret = api_store.session("reader").retrieve("secret merger Zurich", k=3, mode="vector", query_vector=vector)
    assert all(c.doc_id != "memo" for c in secret.chunks)
    with pytest.raises(EmbedderUnavailable):
        api_store.session().retrieve("honey", mode="vector")
    with pytest.raises(InvalidArgument):
        api_store.session().retrieve("honey", k=0, embedder=embedder)
    with pytest.warns(UserWarning, match="without an embedder"):
        api_store.session().retrieve("honey bees", k=1)


def test_arrow_and_pandas_rows(api_store):
    declare(api_store)
    table = pa.table({"name": ["p1", "p2"], "age": [1, 2], "emb": [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]],
                      "_labels": [["public"], ["public"]]})
    api_store.session().transaction().upsert_nodes("Person", table).commit()
    rows = [{"name": f"q{i}", "age": i, "emb": np.array([1.0, float(i), 0.0], dtype=np.float32)} for i in range(80)]
    api_store.session().transaction().upsert_nodes("Person", rows).commit()  # > 64 rows, numpy vectors
    assert api_store.session().count("Person") == 82
    assert api_store.session().get("Person", "q3")["emb"] == pytest.approx([1.0, 3.0, 0.0])


def test_the_remote_classes_have_the_embedded_methods():
    """Every public Session and Transaction method exists on the remote classes with the same parameters
    (retrieve spells out the options the embedded one passes on as **options)."""
    import inspect

    from knowledge.remote import RemoteSession, RemoteStore, RemoteTransaction

    def public(cls):
        return {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}

    for embedded, remote in ((knowledge.Session, RemoteSession), (knowledge.Transaction, RemoteTransaction)):
        assert public(embedded) <= public(remote), sorted(public(embedded) - public(remote))
        for name in public(embedded) - {"retrieve"}:
            member = getattr(embedded, name)
            if callable(member) and not isinstance(member, property):
                assert list(inspect.signature(member).parameters) == list(
                    inspect.signature(getattr(remote, name)).parameters), name
    store_api = {"session", "schema", "apply_schema", "define_node_type", "define_edge_type", "add_property",
                 "create_principal", "grant", "revoke", "drop_principal", "principals", "issue_token",
                 "revoke_tokens", "authenticate", "checkpoint", "backup", "build_indexes", "stats", "memory_lsn",
                 "epoch", "position", "close"}
    assert store_api <= public(knowledge.Store) & public(RemoteStore)


def _page(table):
    metadata = table.schema.metadata or {}
    return table.column("name").to_pylist(), metadata.get(b"has_more"), metadata.get(b"next_cursor", b"").decode()


def test_scan_pages_by_limit_offset_and_cursor(people):
    """Pages in id order; next_cursor resumes after the last row returned, has_more says whether rows
    followed as of the read; offset skips matching rows; unpaged scans carry no page metadata."""
    from knowledge.session_where import scan_cursor

    session = people.session()
    everyone = session.scan("Person").column("name").to_pylist()
    assert everyone == ["ada", "bob", "cy", "dee"] and session.scan("Person").schema.metadata is None
    names, more, cursor = _page(session.scan("Person", limit=3))
    assert names == ["ada", "bob", "cy"] and more == b"true"
    names, more, cursor = _page(session.scan("Person", limit=3, cursor=cursor))
    assert names == ["dee"] and more == b"false"
    assert _page(session.scan("Person", limit=3, cursor=cursor))[:2] == ([], b"false")
    assert _page(session.scan("Person", limit=2, offset=1))[:2] == (["bob", "cy"], b"true")
    assert _page(session.scan("Person", offset=3))[:2] == (["dee"], b"false")
    first = _page(session.scan("Person", limit=1))[2]
    assert _page(session.scan("Person", limit=1, offset=1, cursor=first))[:2] == (["cy"], b"true")
    assert _page(session.scan("Person", where={"age": (">", 30)}, limit=2))[:2] == (["ada", "bob"], b"true")
    assert _page(session.scan("Person", cursor=""))[0] == everyone  # "" starts from the first row
    reader = people.session("reader")  # pages of what the reader sees; the hidden cy is no row of any page
    names, more, cursor = _page(reader.scan("Person", limit=2))
    assert names == ["ada", "bob"] and more == b"true"
    assert _page(reader.scan("Person", limit=2, cursor=cursor))[:2] == (["dee"], b"false")
    cy = session.get("Person", "cy")["_id"]
    assert _page(reader.scan("Person", cursor=scan_cursor("Person", cy)))[:2] == (["dee"], b"false")
    for bad, message in (("nonsense", "is not a scan cursor"), ("kc1.AAAA", "is not a scan cursor"),
                         (scan_cursor("Company", 0), "belongs to a scan of 'Company'")):
        with pytest.raises(InvalidArgument, match=message):
            session.scan("Person", cursor=bad)
    for offset in (-1, 1.5, True):
        with pytest.raises(InvalidArgument, match="offset must be an int >= 0"):
            session.scan("Person", offset=offset)


def test_scan_pages_under_concurrent_inserts_and_deletes(people):
    """Paging while others write: every row present throughout comes exactly once, inserted rows come on
    later pages (new ids are larger), a row deleted before its page never comes, and a cursor naming a
    deleted row still resumes after it."""
    session = people.session()
    seen, cursor, written = [], None, 0
    while True:
        names, more, cursor = _page(session.scan("Person", limit=2, cursor=cursor))
        seen += names
        if written < 3:  # between pages: insert two rows, delete one not yet returned
            with session.transaction() as tx:
                tx.upsert_nodes("Person", [{"name": f"new{written}a", "age": 1}, {"name": f"new{written}b", "age": 2}])
                if written == 0:
                    tx.delete_nodes("Person", ["dee"])
            written += 1
        if more != b"true":
            break
    assert sorted(seen) == sorted(["ada", "bob", "cy", "new0a", "new0b", "new1a", "new1b", "new2a", "new2b"])
    assert len(seen) == len(set(seen)) and "dee" not in seen
    assert seen[:3] == ["ada", "bob", "cy"]  # id order: the old rows first
    names, _, cursor = _page(session.scan("Person", limit=1, where={"name": "bob"}))
    session.transaction().delete_nodes("Person", ["bob"]).commit()
    assert _page(session.scan("Person", limit=1, cursor=cursor))[0] == ["cy"]


WHERE_FORMS = [  # (filter, the names it matches)
    ({"age": ("between", (30, 45))}, ["ada", "bob"]),
    ({"age": ("between", [36, 36])}, ["ada"]),
    ({"name": ("in", ["ada", "dee", "zed"])}, ["ada", "dee"]),
    ({"score": None}, ["cy", "dee"]),
    ({"score": ("!=", None)}, ["ada", "bob"]),
    ({"born": (">=", BORN)}, ["ada"]),
    ({"$or": [{"age": ("<", 30)}, {"name": "bob"}]}, ["bob", "cy"]),
    ({"$or": [{"age": (">", 50)}, {"$or": [{"tags": ("contains", "eng")}, {"active": True, "score": 1.5}]}]},
     ["ada", "bob", "dee"]),
    ({"bio": ("like", "%engine%"), "$or": [{"score": None}, {"age": ("between", (39, 41))}]}, ["bob", "cy", "dee"]),
    ({"$or": [{"age": None}, {"$or": [{"name": ("in", [])}]}]}, []),
]


@pytest.mark.parametrize(("where", "names"), WHERE_FORMS)
def test_every_where_form_on_both_backends(people, where, names):
    """scan, search and keyword_search take the same where-filters embedded and over the wire: $or (nested),
    between, in, IS NULL / IS NOT NULL, timestamps."""
    session = people.session()
    assert session.scan("Person", where=where).column("name").to_pylist() == names
    assert sorted(session.search([1.0, 0.0, 0.0], k=4, where=where).column("_key").to_pylist()) == names
    matching = set(session.keyword_search("engine", k=4, type="Person").column("_key").to_pylist())
    found = session.keyword_search("engine", k=4, type="Person", where=where).column("_key").to_pylist()
    assert sorted(found) == [n for n in names if n in matching]
    reader = people.session("reader")
    assert reader.scan("Person", where=where).column("name").to_pylist() == [n for n in names if n != "cy"]


@pytest.mark.parametrize(("where", "message"), [
    ([("age", 3)], "where must be a dict mapping property names"),
    ({"$or": {"age": 3}}, "'[$]or' takes a list of where-filters"),
    ({"$or": []}, "needs at least one where-filter"),
    ({"$or": [3]}, "where must be a dict mapping property names to a value or to .operator, value., got int"),
    ({"age": (1, 2, 3)}, r"a condition is a value or an \(operator, value\) pair, got \(1, 2, 3\)"),
    ({"age": ("between", (1,))}, r"'between' takes \(low, high\)"),
    ({"age": ("between", (1, None))}, "needs two values"),
    ({"$or": [{"age": 1}, {"height": 3}]}, "has no property 'height'"),
    ({"$or": [{"ssn": "1"}]}, None),  # hidden: fine for the admin, no property for the reader
    ({"age": (">", "abc")}, "age"),
])
def test_malformed_where_filters_fail_alike_on_both_backends(people, where, message):
    if message is None:
        assert people.session().scan("Person", where=where).column("name").to_pylist() == ["ada"]
        with pytest.raises(InvalidArgument, match="has no property 'ssn'"):
            people.session("reader").scan("Person", where=where)
        return
    with pytest.raises(InvalidArgument, match=message) as caught:
        people.session().scan("Person", where=where)
    assert type(caught.value).__name__ == "InvalidQuery"
    with pytest.raises(InvalidArgument, match=message):
        people.session().search([1.0, 0.0, 0.0], k=2, where=where)
