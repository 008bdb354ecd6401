"""Graph-mode options of issue 19, session 9 (knowledge.graphrag.retrieve GraphParams): the second dense hop
through bridge entities (hop_*), title aliases (alias_weight), the question's expected entity types, and the
graph view's own-article lookup. Fast, no torch: the hashing embedder of test_graphrag and a typed extractor."""

from __future__ import annotations

import numpy as np
import pytest
from test_graphrag import EMBED

import knowledge
from knowledge.access.principal import Principal
from knowledge.errors import InvalidArgument
from knowledge.graphrag import Document, GraphParams, ingest, retrieve
from knowledge.graphrag.extract import ChunkInput, Extraction, Mention
from knowledge.graphrag.graphview import graph_view
from knowledge.graphrag.question import expected_types
from knowledge.graphrag.schema import CHUNK, ENTITY

PUBLIC = Principal("reader", read=frozenset({"public"}))
QUESTION = "Who is the spouse of the director of Jump for Glory?"

# doc id -> (title, text, [(entity, type)])
DOCS = {
    "jump": ("Jump for Glory", "Jump for Glory is a 1937 British film directed by Raoul Walsh.",
             [("Jump for Glory", "TITLE"), ("1937", "DATE"), ("British", "NORP"), ("Raoul Walsh", "PERSON")]),
    "betrayed": ("Betrayed (1917 film)", "Betrayed is a silent drama by Raoul Walsh starring Miriam Cooper.",
                 [("Betrayed (1917 film)", "TITLE"), ("Raoul Walsh", "PERSON"), ("Miriam Cooper", "PERSON")]),
    "beethoven": ("Beethoven's Great Love", "Beethoven's Great Love is a 1937 French film about the composer.",
                  [("Beethoven's Great Love", "TITLE"), ("1937", "DATE")]),
    "spouse": ("Spouses", "A spouse of a film director such as Raoul Walsh.",
               [("Spouses", "TITLE"), ("Raoul Walsh", "PERSON")]),
    "tea": ("Tea", "Tea is a drink made from leaves.", [("Tea", "TITLE")]),
}


class TypedExtractor:
    """The entities of DOCS with their types, found by the chunk's title (a real batched extractor's shape)."""

    name = "typed-test-v1"

    def extract_chunks(self, chunks: list[ChunkInput]) -> list[Extraction]:
        by_title = {title: names for title, _, names in DOCS.values()}
        return [Extraction([Mention(n, t) for n, t in by_title.get(c.title, [])]) for c in chunks]


@pytest.fixture
def store(tmp_path):
    docs = [Document(key, text, title=title, labels=["public"]) for key, (title, text, _) in DOCS.items()]
    with knowledge.open(str(tmp_path / "hop.store")) as s:
        ingest(s.session(), docs, embedder=EMBED, extractor=TypedExtractor(), synonyms=None)
        yield s


def _vector(session, node_type, key):
    table = session.get_many(node_type, [key], ["embedding"])
    return np.asarray(table.column("embedding").to_pylist()[0], dtype=np.float64)


def _scores(session, question, params=None):
    result = retrieve(session, question, k=100, mode="graph", embedder=EMBED, params=params)
    return {c.key: c.score for c in result.chunks}, result


def test_the_view_knows_each_entity_s_own_article_types_and_title_aliases(store):
    session = store.session(PUBLIC)
    with session.snapshot() as lsn:
        view = graph_view(session, lsn)
        articles = {view.keys[e]: [view.keys[c] for c in view.articles_of(session, e)] for e in view.entity_by_key.values()}
    assert articles["jump for glory"] == ["jump#0"] and articles["betrayed (1917 film)"] == ["betrayed#0"]
    assert articles["raoul walsh"] == [] and articles["1937"] == []           # no document of that title
    assert view.types["raoul walsh"] == "PERSON" and view.types["1937"] == "DATE"
    assert view.aliases().find("Who starred in Betrayed?") == ["betrayed (1917 film)"]
    assert view.aliases().find("Who directed Jump for Glory?") == []          # no parenthetical: no alias
    assert view.matcher.find("Who starred in Betrayed?") == []               # the plain matcher misses it


def test_hop_scores_the_bridge_s_chunks_with_the_composed_query(store):
    session = store.session(PUBLIC)
    base, result = _scores(session, QUESTION)
    assert result.chunks[0].key == "jump#0"                        # the named entity's own article is on top
    hopped, _ = _scores(session, QUESTION, GraphParams(hop_weight=1.0, hop_named_only=True))
    query = EMBED.embed([QUESTION])[0].astype(np.float64)
    chunk = _vector(session, CHUNK, "betrayed#0")
    cos = float(chunk @ query)
    # bridges: the top chunk's entities the question does not name ('jump for glory' is named); of them,
    # only 'raoul walsh' is mentioned by betrayed#0
    composed = query + _vector(session, ENTITY, "raoul walsh")
    bridge = float(chunk @ (composed / np.linalg.norm(composed)))
    assert bridge > cos
    assert hopped["betrayed#0"] - base["betrayed#0"] == pytest.approx(max(cos, bridge) - cos, abs=1e-5)
    assert hopped["tea#0"] == pytest.approx(base["tea#0"])         # mentions no bridge: unchanged
    half, _ = _scores(session, QUESTION, GraphParams(hop_weight=0.5, hop_named_only=True))
    assert half["betrayed#0"] - base["betrayed#0"] == pytest.approx(0.5 * (max(cos, bridge) - cos), abs=1e-5)


def test_hop_filters_bridges_by_type_and_by_how_many_chunks_mention_them(store):
    session = store.session(PUBLIC)
    base, _ = _scores(session, QUESTION)
    typed, _ = _scores(session, QUESTION, GraphParams(hop_weight=1.0, hop_types=True))
    assert "PERSON" in expected_types(QUESTION) and "DATE" not in expected_types(QUESTION)
    # '1937' (DATE) is no bridge with hop_types, so beethoven#0, which only shares 1937, keeps its score
    assert typed["beethoven#0"] == pytest.approx(base["beethoven#0"])
    assert typed["betrayed#0"] > base["betrayed#0"] + 1e-6
    untyped, _ = _scores(session, QUESTION, GraphParams(hop_weight=1.0))
    assert untyped["beethoven#0"] != pytest.approx(base["beethoven#0"])
    # 'raoul walsh' and '1937' are mentioned by 3 and 2 chunks: with hop_max_chunks=1 the only bridge left
    # is 'british', which only the top chunk itself mentions
    capped, _ = _scores(session, QUESTION, GraphParams(hop_weight=1.0, hop_max_chunks=1))
    assert {k: v for k, v in capped.items() if k != "jump#0"} == pytest.approx(
        {k: v for k, v in base.items() if k != "jump#0"})


def test_hop_named_only_needs_the_top_chunk_to_be_a_named_entity_s_article(store):
    session = store.session(PUBLIC)
    question = "Who is a spouse of a film director?"   # names no entity
    base, result = _scores(session, question)
    assert result.chunks[0].key == "spouse#0"
    gated, _ = _scores(session, question, GraphParams(hop_weight=1.0, hop_named_only=True))
    assert gated == pytest.approx(base)
    ungated, _ = _scores(session, question, GraphParams(hop_weight=1.0))      # bridge 'raoul walsh'
    assert ungated["betrayed#0"] > base["betrayed#0"] + 1e-6


def test_alias_weight_seeds_entities_named_by_a_title_alias(store):
    session = store.session(PUBLIC)
    question = "Who starred in Betrayed?"
    without = {e.name: e.seed for e in retrieve(session, question, k=100, mode="graph", embedder=EMBED).entities}
    with_alias = {e.name: e.seed for e in retrieve(session, question, k=100, mode="graph", embedder=EMBED,
                                                   params=GraphParams(alias_weight=1.0)).entities}
    # 'betrayed (1917 film)' is mentioned by one chunk, so its seed weight grows by alias_weight / 1
    assert with_alias["betrayed (1917 film)"] == pytest.approx(without.get("betrayed (1917 film)", 0.0) + 1.0)
    assert {k: v for k, v in with_alias.items() if k != "betrayed (1917 film)"} == pytest.approx(
        {k: v for k, v in without.items() if k != "betrayed (1917 film)"})


@pytest.mark.parametrize("question, types", [
    ("What is the name of the waterfall in the country where the Bubye River is found?", {"GPE", "LOC"}),
    ("Who is the sibling of the performer of Decade?", {"PERSON"}),
    ("Where did the band form that made the live album Maiden Japan?", {"GPE", "LOC", "ORG", "WORK_OF_ART"}),
    ("What is the boiling point of water?", set())])
def test_expected_types(question, types):
    assert expected_types(question) == types


@pytest.mark.parametrize("bad", [{"hop_weight": 1.5}, {"hop_weight": -0.1}, {"hop_alpha": -1.0},
                                 {"alias_weight": -1.0}, {"hop_chunks": 0}, {"hop_chunks": 1.5},
                                 {"hop_max_chunks": -1}])
def test_bad_hop_params_are_rejected(store, bad):
    with pytest.raises(InvalidArgument, match=next(iter(bad))):
        retrieve(store.session(PUBLIC), "Acme", 5, "graph", embedder=EMBED, params=GraphParams(**bad))
