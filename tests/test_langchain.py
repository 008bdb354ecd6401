"""The LangChain adapters beyond the standard suites: metadata filters, scores, MMR, from_texts,
as_retriever, the GraphRAG retriever's metadata and token budget, dimension checks, and access control
through every entry point."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("langchain_core", reason="needs the langchain extra: pip install -e '.[langchain]'")

from langchain_core.documents import Document as LCDocument  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402

import knowledge  # noqa: E402
from knowledge.adapters.langchain import (  # noqa: E402
    KnowledgeEmbeddings,
    KnowledgeGraphRetriever,
    KnowledgeVectorStore,
    LangChainEmbedder,
)
from knowledge.embed import HashingEmbedder  # noqa: E402
from knowledge.errors import DimensionMismatch, InvalidArgument, PermissionDenied  # noqa: E402
from knowledge.graphrag import Document, ingest  # noqa: E402

POEMS = [
    ("p1", "the raven perched above my chamber door", {"author": "poe", "year": 1845, "tags": ["bird", "night"]}),
    ("p2", "a raven and a crow argue in the rain", {"author": "anon", "year": 1999, "tags": ["bird"]}),
    ("p3", "the sea at night is black and loud", {"author": "poe", "year": 1849, "tags": ["sea", "night"]}),
    ("p4", "tomatoes ripen in the summer garden", {"author": "kim", "year": 2020, "tags": []}),
]
SECRETS = [
    ("s1", "the raven secret plan is hidden in the chamber", {"author": "poe", "year": 1845, "tags": ["bird"]}),
    ("s2", "secret tomatoes garden coordinates", {"author": "kim", "year": 2020, "tags": ["secret"]}),
]


@pytest.fixture
def store(tmp_path):
    with knowledge.open(str(tmp_path / "lc.store")) as opened:
        opened.create_principal("reader", read=["public"])
        opened.create_principal("writer", read=["public"], write=["public"])
        yield opened


def _load(store, embedding):
    admin = store.session()
    public = KnowledgeVectorStore(admin, embedding, labels=["public"])
    public.add_texts([t for _, t, _ in POEMS], [m for _, _, m in POEMS], ids=[i for i, _, _ in POEMS])
    secret = KnowledgeVectorStore(admin, embedding, labels=["secret"])
    secret.add_texts([t for _, t, _ in SECRETS], [m for _, _, m in SECRETS], ids=[i for i, _, _ in SECRETS])
    return public


def test_metadata_filters_narrow_the_search_and_keep_k(store):
    embedding = KnowledgeEmbeddings(HashingEmbedder(64))
    vs = _load(store, embedding)
    ids = lambda docs: [d.id for d in docs]  # noqa: E731
    assert ids(vs.similarity_search("raven", k=10, filter={"author": "poe"})) == ["s1", "p1", "p3"]
    assert set(ids(vs.similarity_search("raven", k=10, filter={"year": {"$gte": 1846, "$lt": 2000}}))) == {"p2", "p3"}
    assert set(ids(vs.similarity_search("x", k=10, filter={"tags": {"$contains": "night"}}))) == {"p1", "p3"}
    assert set(ids(vs.similarity_search("x", k=10, filter={"$or": [{"author": "kim"}, {"year": 1999}]}))) == \
        {"p2", "p4", "s2"}
    assert set(ids(vs.similarity_search("x", k=10, filter={"$not": {"author": "poe"}}))) == {"p2", "p4", "s2"}
    assert ids(vs.similarity_search("raven", k=1, filter={"author": "anon"})) == ["p2"]   # k met by the filter
    assert vs.similarity_search("raven", k=3, filter={"author": "nobody"}) == []
    callable_filter = vs.similarity_search("x", k=10, filter=lambda doc: "sea" in doc.page_content)
    assert ids(callable_filter) == ["p3"]
    with pytest.raises(InvalidArgument, match="unknown filter operator"):
        vs.similarity_search("x", filter={"year": {"$between": [1, 2]}})


def test_scores_relevance_mmr_and_as_retriever(store):
    embedding = KnowledgeEmbeddings(HashingEmbedder(64))
    vs = _load(store, embedding)
    scored = vs.similarity_search_with_score("the raven perched above my chamber door", k=3)
    assert scored[0][0].id == "p1" and scored[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [s for _, s in scored] == sorted((s for _, s in scored), reverse=True)
    assert scored[0][0].metadata == {"author": "poe", "year": 1845, "tags": ["bird", "night"]}
    relevance = vs.similarity_search_with_relevance_scores("raven", k=6)
    assert all(0.0 <= r <= 1.0 for _, r in relevance)
    mmr = vs.max_marginal_relevance_search("raven chamber", k=2, fetch_k=6)
    assert len(mmr) == 2 and len({d.id for d in mmr}) == 2
    retriever = vs.as_retriever(search_kwargs={"k": 2, "filter": {"author": "poe"}})
    assert [d.metadata["author"] for d in retriever.invoke("raven")] == ["poe", "poe"]


def test_from_texts_opens_a_store_at_a_path_and_delete_needs_ids(tmp_path):
    vs = KnowledgeVectorStore.from_texts(["alpha", "beta"], DeterministicFakeEmbedding(size=8),
                                         metadatas=[{"n": 1}, {"n": 2}], ids=["a", "b"],
                                         path=str(tmp_path / "new.store"), labels=["public"])
    try:
        assert [d.id for d in vs.get_by_ids(["b", "missing", "a"])] == ["b", "a"]
        assert vs.similarity_search("alpha", k=1)[0] == LCDocument(page_content="alpha", metadata={"n": 1}, id="a")
        with pytest.raises(InvalidArgument, match="needs the ids"):
            vs.delete()
        assert vs.delete(["a"]) is True and vs.get_by_ids(["a"]) == []
        with pytest.raises(InvalidArgument, match="without '#'"):
            vs.add_texts(["x"], ids=["bad#id"])
        with pytest.raises(InvalidArgument, match="session= .* or path="):
            KnowledgeVectorStore.from_texts(["x"], DeterministicFakeEmbedding(size=8))
    finally:
        vs.session.store.close()


def test_an_embedder_of_another_dimension_is_refused_naming_both(store):
    vs = KnowledgeVectorStore(store.session(), DeterministicFakeEmbedding(size=6), labels=["public"])
    vs.add_texts(["six dims"])
    other = KnowledgeVectorStore(store.session(), KnowledgeEmbeddings(HashingEmbedder(64)), labels=["public"])
    with pytest.raises(DimensionMismatch, match=r"makes 64-d vectors but the store declares Chunk.embedding vector\[6\]"):
        other.add_texts(["sixty-four dims"])
    assert [d.page_content for d in vs.similarity_search("six dims", k=5)] == ["six dims"]


def test_writes_need_write_grants_and_reads_follow_the_principal(store):
    embedding = KnowledgeEmbeddings(HashingEmbedder(64))
    with pytest.raises(PermissionDenied):
        KnowledgeVectorStore(store.session("reader"), embedding, labels=["public"]).add_texts(["nope"])
    writer = KnowledgeVectorStore(store.session("writer"), embedding, labels=["public"])
    assert writer.add_texts(["written by the writer"], ids=["w1"]) == ["w1"]
    with pytest.raises(PermissionDenied):
        writer.add_texts(["into secret"], labels=["secret"])
    reader = KnowledgeVectorStore(store.session("reader"), embedding)
    assert reader.get_by_ids(["w1"])[0].page_content == "written by the writer"


HOSTILE_FILTERS = [None, {}, {"author": "poe"}, {"tags": {"$contains": "secret"}}, {"year": {"$gte": 0}},
                   {"$or": [{"author": {"$exists": True}}, {"author": {"$exists": False}}]},
                   {"$not": {"author": "nobody"}}, {"_labels": {"$contains": "secret"}},
                   lambda doc: True, lambda doc: doc.id in ("s1", "s2")]


@pytest.mark.parametrize("hostile", HOSTILE_FILTERS, ids=lambda f: repr(f)[:40])
def test_a_readers_store_and_retrievers_never_return_a_hidden_chunk(store, hostile):
    embedding = KnowledgeEmbeddings(HashingEmbedder(64))
    _load(store, embedding)
    hidden = {i for i, _, _ in SECRETS}
    reader = KnowledgeVectorStore(store.session("reader"), embedding)
    admin = KnowledgeVectorStore(store.session(), embedding)
    for query in ("raven secret plan hidden chamber", "secret tomatoes garden coordinates"):
        found = [d.id for d in reader.similarity_search(query, k=20, filter=hostile)]
        assert found == [d.id for d in admin.similarity_search(query, k=20, filter=hostile) if d.id not in hidden]
        found += [d.id for d, _ in reader.similarity_search_with_score(query, k=20, filter=hostile)]
        found += [d.id for d in reader.max_marginal_relevance_search(query, k=5, fetch_k=20, filter=hostile)]
        found += [d.id for d in reader.as_retriever(search_kwargs={"k": 20, "filter": hostile}).invoke(query)]
        assert hidden.isdisjoint(found)
        for mode in ("vector", "keyword", "hybrid", "graph"):
            docs = KnowledgeGraphRetriever(session=store.session("reader"), embedding=embedding, mode=mode,
                                           k=20).invoke(query)
            assert docs and not any(d.metadata["doc_id"] in hidden for d in docs)
            assert not any(p["src"].startswith("s") and "#" in p["src"] for d in docs for p in d.metadata["paths"])
    assert reader.get_by_ids(sorted(hidden)) == []
    reader.delete(sorted(hidden))                                   # invisible ids are ignored
    assert {d.id for d in KnowledgeVectorStore(store.session(), embedding).get_by_ids(sorted(hidden))} == hidden


def test_graph_retriever_documents_carry_chunk_document_score_entities_and_paths(store):
    embedder = HashingEmbedder(64)
    docs = [Document("ada", "Ada Lovelace wrote the first program. She worked with Charles Babbage.",
                     title="Ada Lovelace", metadata={"era": "victorian"}, labels=["public"],
                     triples=[["Ada Lovelace", "worked with", "Charles Babbage"]]),
            Document("babbage", "Charles Babbage designed the Analytical Engine.", title="Charles Babbage",
                     labels=["public"], triples=[["Charles Babbage", "designed", "Analytical Engine"]]),
            Document("garden", "Tomatoes grow in warm gardens.", title="Garden", labels=["public"])]
    ingest(store.session(), docs, embedder=embedder)
    retriever = KnowledgeGraphRetriever(session=store.session("reader"), embedding=embedder, k=3)
    found = retriever.invoke("Who worked with Charles Babbage?")
    assert {d.id for d in found} >= {"ada#0", "babbage#0"}
    first = next(d for d in found if d.id == "ada#0")
    assert first.metadata["chunk_id"] == "ada#0" and first.metadata["doc_id"] == "ada"
    assert first.metadata["title"] == "Ada Lovelace" and first.metadata["document_metadata"] == {"era": "victorian"}
    assert first.metadata["mode"] == "graph" and isinstance(first.metadata["score"], float)
    assert {"ada lovelace", "charles babbage"} <= set(first.metadata["entities"])
    paths = first.metadata["paths"]
    assert {"type": "MENTIONS", "src": "ada#0", "dst": "charles babbage"}.items() <= next(
        p for p in paths if p["dst"] == "charles babbage" and p["type"] == "MENTIONS").items()
    assert any(p["type"] == "RELATED" and p["relation"] == "worked with" for p in paths)
    scores = [d.metadata["score"] for d in found]
    assert scores == sorted(scores, reverse=True)
    assert len(retriever.invoke("Who worked with Charles Babbage?", k=1)) == 1
    budget = retriever.invoke("Who worked with Charles Babbage?", token_budget=14)
    assert len(budget) == 1 and len(budget[0].page_content.split()) <= 10      # 14 tokens ~ 10 words, cut
    with pytest.raises(InvalidArgument, match="mode must be one of"):
        retriever.invoke("x", mode="psychic")


def test_graph_retriever_sees_what_the_vector_store_added(store):
    embedding = DeterministicFakeEmbedding(size=16)
    vs = KnowledgeVectorStore(store.session(), embedding, labels=["public"])
    vs.add_documents([LCDocument(page_content="graph retrieval over langchain texts", metadata={"k": 1}, id="t1"),
                      LCDocument(page_content="something else entirely", id="t2")])
    docs = KnowledgeGraphRetriever(session=store.session("reader"), embedding=embedding, mode="vector",
                                   k=1).invoke("graph retrieval over langchain texts")
    assert docs[0].id == "t1#0" and docs[0].metadata["document_metadata"] == {"k": 1}


def test_embedding_wrappers_round_trip():
    embedder = HashingEmbedder(32)
    as_langchain = KnowledgeEmbeddings(embedder)
    back = LangChainEmbedder(as_langchain)
    assert back.dimension == 32 and back.name == embedder.name
    np.testing.assert_allclose(back.embed(["a b"]), embedder.embed(["a b"]), atol=1e-6)
    assert as_langchain.embed_query("a b") == embedder.embed(["a b"])[0].tolist()
    assert LangChainEmbedder(DeterministicFakeEmbedding(size=5)).dimension == 5


def test_filtered_searches_follow_writes_grants_and_revokes_on_one_session(store):
    embedding = KnowledgeEmbeddings(HashingEmbedder(64))
    writer = _load(store, embedding)
    reader = KnowledgeVectorStore(store.session("reader"), embedding)
    poe = {"author": "poe"}
    assert {d.id for d in reader.similarity_search("raven", k=10, filter=poe)} == {"p1", "p3"}
    writer.add_texts(["a new poe poem"], [{"author": "poe"}], ids=["p5"])
    assert {d.id for d in reader.similarity_search("raven", k=10, filter=poe)} == {"p1", "p3", "p5"}
    store.grant("reader", read=["secret"])
    assert {d.id for d in reader.similarity_search("raven", k=10, filter=poe)} == {"p1", "p3", "p5", "s1"}
    store.revoke("reader", read=["public", "secret"])
    assert reader.similarity_search("raven", k=10, filter=poe) == []
    assert reader.similarity_search("raven", k=10, filter=lambda doc: True) == []


@pytest.mark.parametrize("k", [1, 5, 20])
def test_filtered_search_is_exact_whichever_plan_runs(store, k):
    """Broad filters take the unfiltered-then-keep plan, narrow ones the where-filtered search: both
    give the k best matching records (checked against brute force over the same vectors)."""
    embedder = HashingEmbedder(64)
    rng = np.random.default_rng(k)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words, 8)) for _ in range(400)]
    sims = embedder.embed(texts) @ embedder.embed(["w1 w2 w3"])[0]
    far = set(np.argsort(sims)[:100].tolist())     # the quarter least like the first query: the unfiltered
    metadatas = [{"half": i % 2, "tenth": i % 10, "rare": i % 100, "far": i in far}   # pass finds none
                 for i in range(400)]
    vs = KnowledgeVectorStore(store.session(), KnowledgeEmbeddings(embedder), labels=["public"])
    vs.add_texts(texts, metadatas, ids=[f"r{i}" for i in range(400)])
    reader = KnowledgeVectorStore(store.session("reader"), KnowledgeEmbeddings(embedder))
    matrix = embedder.embed(texts)
    for query in ("w1 w2 w3", "w7 w70 w170 w270"):
        vector = embedder.embed([query])[0]
        for field, value in (("half", 1), ("tenth", 3), ("rare", 42), ("far", True)):
            got = reader.similarity_search_with_score_by_vector(vector.tolist(), k, filter={field: value})
            rows = [i for i, m in enumerate(metadatas) if m[field] == value]
            best = sorted((float(matrix[i] @ vector) for i in rows), reverse=True)[:k]
            assert [s for _, s in got] == pytest.approx(best, abs=1e-5)
            assert all(d.metadata[field] == value for d, _ in got)
