"""Keyword (BM25) search through the store: recovered after reopen, filtered by visibility and where."""

from __future__ import annotations

import os

import pytest

from knowledge import Principal
from knowledge.errors import InvalidArgument


@pytest.fixture
def articles(store):
    store.define_node_type("Article", key="id", properties={"body": "text", "year": "int", "title": "str"})
    with store.session().transaction() as tx:
        tx.upsert_nodes("Article", [
            {"id": "a1", "body": "graph databases store nodes and edges", "year": 2020, "_labels": ["pub"]},
            {"id": "a2", "body": "vector databases search embeddings", "year": 2021, "_labels": ["pub"]},
            {"id": "a3", "body": "graph graph graph secret plans", "year": 2022, "_labels": ["secret"]},
            {"id": "a4", "body": "cooking with graphs of flavour", "year": 2020, "_labels": ["pub"]},
        ])
    return store


def test_ranking_and_recovery(articles):
    session = articles.reopen().session()
    keys = session.keyword_search("graph databases", k=3).column("_key").to_pylist()
    assert keys[0] in ("a1", "a3") and "a2" in keys or "a1" in keys
    assert session.keyword_search("embeddings").column("_key").to_pylist() == ["a2"]
    assert session.keyword_search("nothingmatches").num_rows == 0


def test_visibility_and_where(articles):
    st = articles.reopen()
    reader = st.session(Principal("r", read=frozenset({"pub"})))
    assert "a3" not in reader.keyword_search("graph secret plans", k=10).column("_key").to_pylist()
    table = reader.keyword_search("graph", k=10, where={"year": 2020}, columns=["year"])
    assert table.column("year").to_pylist() == [2020] * table.num_rows and table.num_rows >= 1


def test_scores_ignore_invisible_documents(articles, tmp_path):
    import knowledge
    reader = articles.session(Principal("r", read=frozenset({"pub"})))
    got = reader.keyword_search("graph databases", k=10)
    with knowledge.open(str(tmp_path / "visible-only")) as other:
        other.define_node_type("Article", key="id", properties={"body": "text", "year": "int", "title": "str"})
        with other.session().transaction() as tx:
            tx.upsert_nodes("Article", [
                {"id": "a1", "body": "graph databases store nodes and edges", "year": 2020},
                {"id": "a2", "body": "vector databases search embeddings", "year": 2021},
                {"id": "a4", "body": "cooking with graphs of flavour", "year": 2020}])
        want = other.session().keyword_search("graph databases", k=10)
    assert got.column("_key").to_pylist() == want.column("_key").to_pylist()
    assert got.column("_score").to_pylist() == pytest.approx(want.column("_score").to_pylist(), rel=1e-5)


def test_updates_and_deletes(articles):
    session = articles.session()
    with session.transaction() as tx:
        tx.upsert_nodes("Article", [{"id": "a2", "body": "now about gardening", "_labels": ["pub"]}])
        tx.delete_nodes("Article", ["a1"])
    session = articles.reopen().session()
    assert session.keyword_search("embeddings").num_rows == 0
    assert session.keyword_search("gardening").column("_key").to_pylist() == ["a2"]
    assert "a1" not in session.keyword_search("graph", k=10).column("_key").to_pylist()


@pytest.mark.parametrize("kwargs", [{"query": ""}, {"query": "x", "k": 0}, {"query": "x", "property": "title"}])
def test_bad_input(articles, kwargs):
    with pytest.raises(InvalidArgument):
        articles.session().keyword_search(**kwargs)


def _scores(session, query="graph databases"):
    table = session.keyword_search(query, k=10)
    return list(zip(table.column("_key").to_pylist(), table.column("_score").to_pylist(), strict=True))


def test_checkpoint_snapshot_is_loaded_with_the_tail_replayed(tmp_path, monkeypatch, caplog):
    import knowledge
    from knowledge.storage import loading

    path = str(tmp_path / "kw")
    with knowledge.open(path) as store:
        store.define_node_type("Article", key="id", properties={"body": "text"})
        with store.session().transaction() as tx:
            tx.upsert_nodes("Article", [{"id": f"a{i}", "body": f"graph databases note {i}"} for i in range(20)])
        store.checkpoint()
        with store.session().transaction() as tx:  # after the snapshot: replayed from the WAL on open
            tx.upsert_nodes("Article", [{"id": "a3", "body": "vector search only"}, {"id": "new", "body": "graph"}])
            tx.delete_nodes("Article", ["a4"])
        expected = _scores(store.session())
    assert os.path.exists(os.path.join(path, "snapshots", "keywords-Article-body.snap"))

    def no_rebuild(*_args):
        raise AssertionError("rebuilt from the table although a snapshot exists")

    with monkeypatch.context() as patch:
        patch.setattr(loading, "_keywords_from_table", no_rebuild)
        with knowledge.open(path) as store:
            assert _scores(store.session()) == expected
            assert "a4" not in [k for k, _ in _scores(store.session(), "note")]

    with open(os.path.join(path, "snapshots", "keywords-Article-body.snap"), "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\xff\xff\xff")
    with caplog.at_level("WARNING"), knowledge.open(path) as store:
        assert _scores(store.session()) == expected
    assert "keyword index Article.body rebuilt" in caplog.text
