"""GraphRAG retrieval: vector, keyword, hybrid (RRF) and graph (personalized PageRank) modes.

    result = retrieve(session, "Who founded the company that makes X?", k=5, mode="graph", embedder=emb)
    print(result.context)                         # prompt-ready, cut to token_budget (approximate tokens)

Every read goes through the session (its visibility bitmap filters chunks, documents, entities and
edges) inside one `session.snapshot()`, whose LSN the result reports.

Graph mode (HippoRAG-style; the defaults are GraphParams()):
1. seeds: entities named in the question (NameMatcher: proper-noun-looking names on word boundaries)
   and the entities mentioned by the top vector chunk, each weighted by its specificity
   1/(number of visible chunks mentioning it); the top chunk itself with a small weight. Optionally the
   entities nearest the question embedding (off by default: noisy seeds lowered recall on MuSiQue).
2. expansion: personalized PageRank (damping 0.5) on the undirected graph of visible chunks and
   entities (MENTIONS edges, and RELATED edges whose stating chunk is visible), numpy power iteration
   over the whole visible graph (cached per principal and LSN).
3. ranking: over the vector, BM25 and PPR candidates, score = cosine(question, chunk) + 0.05 * ln(PPR
   mass relative to the best chunk's) + 0.2 * BM25 relative to the best BM25 score: question similarity,
   boosted by closeness to the seeds (a chunk the walk does not reach is pushed below the reached ones)
   and by literal term matches. Without a query vector: RRF of the BM25 and PPR rankings. Opt-in
   (GraphParams): a softer floor on the walk's penalty (`mass_floor`, `keyword_floor` for the best BM25
   chunks) and RRF with the hybrid ranking (`hybrid_weight`), for keyword-heavy corpora such as news.
   Polar (yes/no) questions (question.py) get the floor `polar_mass_floor` (0.05: the penalty is capped
   at 0.05 * ln 0.05 = -0.15): they check a claim about each thing they name, whose evidence the walk from
   all the seeds at once seldom reaches (MultiHop-RAG comparison queries).

Why one module of ~500 lines: the modes share one pipeline state (`_State`: candidates, scores,
timings, notes) and one snapshot, and the result assembly (chunks, documents, entities, edges, the
budgeted context) reads all of it; its self-contained parts are apart already (fusion.py, ppr.py,
graphview.py, bm25.py, chunking.py). Splitting the pipeline further would pass that state around.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from knowledge.embed import Embedder, EmbedderUnavailable
from knowledge.errors import InvalidArgument, UnknownType
from knowledge.graphrag.bm25 import keyword_rows
from knowledge.graphrag.chunking import approx_tokens
from knowledge.graphrag.extract import COOCCURS
from knowledge.graphrag.fusion import K_RRF, rrf
from knowledge.graphrag.graphview import GraphView, graph_view
from knowledge.graphrag.ppr import DAMPING, personalized_pagerank
from knowledge.graphrag.question import expected_types, is_polar
from knowledge.graphrag.schema import CHUNK, DOCUMENT, ENTITY
from knowledge.session import Session

log = logging.getLogger(__name__)

MODES = ("auto", "vector", "keyword", "hybrid", "graph")
K_MAX = 100
TOKEN_BUDGET = 2000
CANDIDATES = 50
MASS_FLOOR = 1e-12
POLAR_MASS_FLOOR = 0.05
GRAPH_ONLY_MAX = 20
VECTOR_POOL = 200
"""Graph mode asks vector search for this many chunks, so most PPR/BM25 candidates already have a cosine."""
"""PPR (and BM25) candidates outside the vector candidates whose cosine is computed, best first."""
ENTITIES_PER_CHUNK = 8
EDGES_MAX = 64
NO_ENTITIES = "no_entities"
"""`RetrievalResult.fallback` when graph (or auto) mode found no visible entities and ranked as hybrid."""
NO_ENTITIES_NOTE = ("graph mode found no entities the session can see (documents ingested without an extractor?): "
                    "ranked as hybrid (vector + keyword fusion)")


@dataclass(frozen=True)
class GraphParams:
    """Tuning of graph mode (defaults checked on the 'tune' half of the MuSiQue questions, split by seed 19,
    with the default extractor; the held-back half is reported apart: bench/retrieval.py, bench/RESULTS.md).

    Seeds: `seed_chunks` top vector chunks (keyword chunks without a query vector) give their entities
    weight `chunk_entity_weight` / rank and themselves `chunk_seed_weight` / rank; an entity named in the
    question gets `name_weight`; the `entity_top` entities nearest the question embedding get
    `entity_vector_weight` * similarity (0 by default: it adds noisy seeds on MuSiQue). Entity seed
    weights are divided by (#chunks mentioning the entity) ** `specificity`. PPR follows an edge with
    probability `damping`. Final score of a chunk (with a query vector): cosine(question, chunk) +
    `graph_weight` * ln(PPR mass / max mass, floored at 1e-12) + `keyword_weight` * BM25 / max BM25,
    over the union of the vector and PPR candidates. Without a query vector: RRF of BM25 and PPR ranks.
    Walk weights: RELATED edges `related_weight` * their weight, SYNONYM edges `synonym_weight` * their
    score (0 leaves them out), MENTIONS 1. BM25 = text score + `title_weight` * title score. The
    `passage_seeds` top vector chunks also seed the walk, each with `passage_seed_weight` * cosine /
    passage_seeds (HippoRAG 2's dense passage seeds; 0: off). `hybrid_weight` > 0: the final ranking is the
    RRF of that score ranking (weight 1) and hybrid mode's ranking (weight `hybrid_weight`), so BM25 and
    the plain cosine keep their say on keyword-heavy questions (0: the score ranking alone). The relative
    PPR mass is floored at `mass_floor` (1e-12: a chunk the walk does not reach falls below every reached
    one; e.g. 0.05 caps the walk's penalty at graph_weight * ln 0.05 = -0.15), and at `keyword_floor` for
    the `keyword_floor_top` best BM25 chunks (0: none), so a strong literal match is not buried by the walk.
    For a polar (yes/no) question (question.is_polar) the floor is at least `polar_mass_floor` (1e-12: no
    difference): such questions check a claim about each thing they name, and a walk from all their seeds
    at once seldom reaches the evidence for each (chosen on MultiHop-RAG's comparison queries, which are all
    polar; no MuSiQue question is, so its figures do not move).

    Opt-in, off by default (measured on the MuSiQue tune half, bench/RESULTS.md "Session 9"):
    `alias_weight` > 0 seeds the entities the question names by a title alias (an entity 'Brother (Pearl
    Jam song)' is named by "Brother": GraphView.aliases) with that weight. `hop_weight` > 0 adds a second
    dense hop without an LLM: each entity e of the top `hop_chunks` vector chunks that the question does not
    name is a candidate bridge (at most `hop_max_chunks` visible chunks mention it, 0: no limit; with
    `hop_types` only entities of the types the question's relation words ask for, question.expected_types;
    with `hop_named_only` only when that top chunk is the own article of an entity the question names), and
    each chunk that mentions a bridge gets the bridge score b = its cosine with the composed query
    normalise(q + `hop_alpha` * vector(e)), best over the bridges; its cosine in the score becomes
    (1 - hop_weight) * cos + hop_weight * max(cos, b). Such chunks join the candidates.
    """

    seed_chunks: int = 1
    chunk_entity_weight: float = 0.5
    chunk_seed_weight: float = 0.05
    name_weight: float = 1.0
    entity_top: int = 5
    entity_vector_weight: float = 0.0
    specificity: float = 1.0
    damping: float = DAMPING
    graph_weight: float = 0.05
    keyword_weight: float = 0.2
    related_weight: float = 1.0
    synonym_weight: float = 1.0
    title_weight: float = 1.0
    passage_seeds: int = 0
    passage_seed_weight: float = 0.05
    hybrid_weight: float = 0.0
    mass_floor: float = MASS_FLOOR
    keyword_floor: float = MASS_FLOOR
    keyword_floor_top: int = 0
    polar_mass_floor: float = POLAR_MASS_FLOOR
    alias_weight: float = 0.0
    hop_weight: float = 0.0
    hop_alpha: float = 1.0
    hop_chunks: int = 1
    hop_max_chunks: int = 0
    hop_named_only: bool = False
    hop_types: bool = False


@dataclass
class RetrievedChunk:
    """A ranked chunk. `ranks`: its 1-based rank in each stage that found it (vector, keyword, graph)."""

    id: int
    key: str
    doc_id: str
    text: str
    score: float
    position: int | None = None
    ranks: dict[str, int] = field(default_factory=dict)
    entities: list[str] = field(default_factory=list)


@dataclass
class RetrievedDocument:
    doc_id: str
    title: str | None
    metadata: Any
    score: float


@dataclass
class RetrievedEntity:
    """An entity mentioned by a returned chunk; `score` is its PPR mass (0 outside graph mode); `seed`
    its seed weight (0 when not a seed)."""

    name: str
    score: float
    seed: float = 0.0


@dataclass
class RetrievedEdge:
    """A MENTIONS (chunk -> entity) or RELATED (entity -> entity) edge that supports a returned chunk."""

    type: str
    src: str
    dst: str
    score: float
    relation: str | None = None
    chunk_id: str | None = None


@dataclass
class RetrievalResult:
    """What `retrieve` found, at one snapshot `lsn`. `timings` are seconds per stage (plus "total").
    `notes` say, in words, what the caller may not expect; `fallback` names why the result was ranked
    another way than `mode` says (NO_ENTITIES: graph mode over a visible graph without entities ranked as
    hybrid; the server counts it in knowledge_retrieve_fallbacks_total), else None."""

    question: str
    mode: str
    chunks: list[RetrievedChunk]
    documents: list[RetrievedDocument]
    entities: list[RetrievedEntity]
    edges: list[RetrievedEdge]
    timings: dict[str, float]
    lsn: int
    context: str
    context_tokens: int
    notes: list[str] = field(default_factory=list)
    fallback: str | None = None

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.chunks]


@dataclass
class _State:
    session: Session
    question: str
    k: int
    candidates: int
    timings: dict[str, float]
    vector: list[tuple[int, str, float]] = field(default_factory=list)     # (id, key, score)
    keyword: list[tuple[int, str, float]] = field(default_factory=list)
    query: np.ndarray | None = None
    cosine: dict[str, float] = field(default_factory=dict)   # every vector hit (graph mode: VECTOR_POOL)
    notes: list[str] = field(default_factory=list)
    found: dict[str, int] = field(default_factory=dict)      # chunk key -> node id of candidates added late
    fallback: str | None = None

    def timed(self, stage: str, started: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started


def _check_args(question: Any, k: Any, mode: Any, token_budget: Any) -> None:
    if not isinstance(question, str) or not question.strip():
        raise InvalidArgument("question must be a non-empty string")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= K_MAX:
        raise InvalidArgument(f"k must be an int in 1..{K_MAX}, got {k!r}")
    if mode not in MODES:
        raise InvalidArgument(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1:
        raise InvalidArgument(f"token_budget must be a positive int, got {token_budget!r}")


def _check_params(params: GraphParams) -> None:
    for name in ("mass_floor", "keyword_floor", "polar_mass_floor"):
        value = getattr(params, name)
        if not (isinstance(value, (int, float)) and 0 < value <= 1):
            raise InvalidArgument(f"GraphParams.{name} must be in (0, 1], got {value!r}")
    if not (isinstance(params.hybrid_weight, (int, float)) and params.hybrid_weight >= 0):
        raise InvalidArgument(f"GraphParams.hybrid_weight must be >= 0, got {params.hybrid_weight!r}")
    if isinstance(params.keyword_floor_top, bool) or not isinstance(params.keyword_floor_top, int) \
            or params.keyword_floor_top < 0:
        raise InvalidArgument(f"GraphParams.keyword_floor_top must be an int >= 0, got {params.keyword_floor_top!r}")
    if not (isinstance(params.hop_weight, (int, float)) and 0 <= params.hop_weight <= 1):
        raise InvalidArgument(f"GraphParams.hop_weight must be in [0, 1], got {params.hop_weight!r}")
    for name in ("alias_weight", "hop_alpha"):
        value = getattr(params, name)
        if not (isinstance(value, (int, float)) and value >= 0):
            raise InvalidArgument(f"GraphParams.{name} must be >= 0, got {value!r}")
    for name, least in (("hop_chunks", 1), ("hop_max_chunks", 0)):
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidArgument(f"GraphParams.{name} must be an int >= {least}, got {value!r}")


def retrieve(session: Session, question: str, k: int = 10, mode: str = "auto", embedder: Embedder | None = None,
             token_budget: int = TOKEN_BUDGET, *, query_vector: Any = None, candidates: int = CANDIDATES,
             params: GraphParams | None = None) -> RetrievalResult:
    """Retrieve the k best visible chunks for `question` (see the module docstring for the modes).

    `embedder` embeds the question (or pass `query_vector`, e.g. a precomputed one). `candidates`: how
    many chunks each stage (vector, keyword, graph) ranks before fusion. `params`: graph-mode tuning.
    mode "auto" is "graph" when a query vector can be had, else keyword-seeded graph retrieval with a
    warning (warnings.warn and the module logger; also in `result.notes`). The embedder is never loaded
    implicitly: pass `embedder=knowledge.embed.default_embedder()` for the packaged model.
    Guarantees: every chunk, document, entity and edge returned is visible to the session at `result.lsn`;
    at most k chunks, best first; `approx_tokens(result.context) <= token_budget`.
    Raises InvalidArgument (empty question, k outside 1..100, unknown mode, bad token_budget),
    EmbedderUnavailable (a vector mode with neither embedder nor query_vector), UnknownType (the
    GraphRAG schema is not declared: ingest first).
    """
    _check_args(question, k, mode, token_budget)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise InvalidArgument(f"candidates must be a positive int, got {candidates!r}")
    if params is not None and not isinstance(params, GraphParams):
        raise InvalidArgument(f"params must be a GraphParams or None, got {type(params).__name__}")
    if params is not None:
        _check_params(params)
    if embedder is not None and not callable(getattr(embedder, "embed", None)):
        raise InvalidArgument(f"embedder must be an Embedder (with embed(texts)), got {type(embedder).__name__}")
    if CHUNK not in session.store.schema.nodes:
        raise UnknownType(f"no {CHUNK!r} node type: ingest documents with knowledge.graphrag.ingest first",
                          type_name=CHUNK)
    notes: list[str] = []
    has_vector = embedder is not None or query_vector is not None
    if mode == "auto":
        mode = "graph"
        if not has_vector:
            message = "retrieve(mode='auto') without an embedder: keyword-seeded graph retrieval only"
            warnings.warn(message, stacklevel=2)
            log.warning(message)
            notes.append(message)
    elif mode in ("vector", "hybrid", "graph") and not has_vector:
        raise EmbedderUnavailable(f"mode {mode!r} needs an embedder (or query_vector) to embed the question")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    state = _State(session, question, k, max(candidates, k), timings, notes=notes)
    if has_vector:
        tick = time.perf_counter()
        state.query = _query_vector(question, embedder, query_vector)
        state.timed("embed", tick)
    with session.snapshot() as lsn:
        chunks, entities, edges = _run(state, mode, lsn, params or GraphParams())
        tick = time.perf_counter()
        documents = _documents(session, chunks)
        state.timed("fetch", tick)
    tick = time.perf_counter()
    context, tokens = build_context(chunks, documents, edges, token_budget)
    state.timed("context", tick)
    timings["total"] = time.perf_counter() - started
    return RetrievalResult(question, mode, chunks, documents, entities, edges, timings, lsn, context, tokens, notes,
                           state.fallback)


def _query_vector(question: str, embedder: Embedder | None, query_vector: Any) -> np.ndarray:
    if query_vector is not None:
        vector = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    else:
        assert embedder is not None
        vector = np.asarray(embedder.embed([question]), dtype=np.float32)[0]
    if not np.isfinite(vector).all():
        raise InvalidArgument("the query vector has NaN or infinite components")
    return vector


def _run(state: _State, mode: str, lsn: int, params: GraphParams
         ) -> tuple[list[RetrievedChunk], list[RetrievedEntity], list[RetrievedEdge]]:
    session = state.session
    if state.query is not None and mode in ("vector", "hybrid", "graph"):
        tick = time.perf_counter()
        pool = max(state.candidates, VECTOR_POOL) if mode == "graph" else state.candidates
        table = session.search(state.query, pool, type=CHUNK, property="embedding")
        state.cosine = {key: float(score) for _, key, score in _rows(table)}
        state.vector = _rows(table)[:state.candidates]
        state.timed("vector", tick)
    need_keyword = mode in ("keyword", "hybrid") or (mode == "graph" and (
        state.query is None or params.keyword_weight > 0 or params.hybrid_weight > 0 or params.keyword_floor_top > 0))
    if need_keyword:
        tick = time.perf_counter()
        state.keyword = keyword_rows(session, state.question, state.candidates, params.title_weight)
        state.timed("keyword", tick)
    rankings: dict[str, list[str]] = {}
    if state.vector:
        rankings["vector"] = [key for _, key, _ in state.vector]
    if state.keyword:
        rankings["keyword"] = [key for _, key, _ in state.keyword]
    ids = {key: node for node, key, _ in [*state.vector, *state.keyword]}
    mass: np.ndarray | None = None
    seeds: dict[int, float] = {}
    view: GraphView | None = None
    if mode == "vector":
        fused = [(key, score) for _, key, score in state.vector]
    elif mode == "keyword":
        fused = [(key, score) for _, key, score in state.keyword]
    else:
        tick = time.perf_counter()
        fused = [(str(key), score) for key, score in rrf(rankings, K_RRF)]
        state.timed("fuse", tick)
        if mode == "graph":
            tick = time.perf_counter()
            view = graph_view(session, lsn, params.related_weight, params.synonym_weight)
            state.timed("graph_view", tick)
            if view is not None and view.entities:
                fused, mass, seeds = _graph(state, view, rankings, ids, params)
            else:
                state.notes.append(NO_ENTITIES_NOTE)
                state.fallback = NO_ENTITIES
    tick = time.perf_counter()
    ranks = {name: {key: r for r, key in enumerate(ranking, start=1)} for name, ranking in rankings.items()}
    top = fused[:state.k]
    chunks = _chunks(session, top, ranks, ids, view)
    entities, edges = _support(view, chunks, mass, seeds)
    state.timed("assemble", tick)
    return chunks, entities, edges


def _rows(table: Any) -> list[tuple[int, str, float]]:
    return list(zip(table.column("_id").to_pylist(), table.column("_key").to_pylist(),
                    table.column("_score").to_pylist(), strict=True))


def _graph(state: _State, view: GraphView, rankings: dict[str, list[str]], ids: dict[str, int],
           params: GraphParams) -> tuple[list[tuple[str, float]], np.ndarray | None, dict[int, float]]:
    """PPR from the seeds; returns the fused ranking, the PPR mass per local node and entity seed weights."""
    tick = time.perf_counter()
    seeds = _entity_seeds(state, view, rankings, params)
    personalization = np.zeros(view.size)
    for node, weight in seeds.items():
        personalization[node] += weight
    total = personalization.sum()
    if total > 0:
        personalization /= total
    primary = rankings.get("vector", rankings.get("keyword", []))
    for rank, key in enumerate(primary[:params.seed_chunks], start=1):
        node = view.chunk_by_key.get(key)
        if node is not None:
            personalization[node] += params.chunk_seed_weight / rank
    for _, key, score in state.vector[:params.passage_seeds]:      # HippoRAG 2: dense scores seed passages
        node = view.chunk_by_key.get(key)
        if node is not None and score > 0:
            personalization[node] += params.passage_seed_weight * float(score) / params.passage_seeds
    state.timed("seeds", tick)
    if personalization.sum() <= 0:
        return [(str(k), s) for k, s in rrf(rankings, K_RRF)], None, seeds
    tick = time.perf_counter()
    mass = personalized_pagerank(view.transition, personalization, params.damping)
    state.timed("ppr", tick)
    tick = time.perf_counter()
    chunk_nodes = np.flatnonzero(view.is_chunk & (mass > 0))
    best = chunk_nodes[np.argsort(-mass[chunk_nodes], kind="stable")][:state.candidates]
    rankings["graph"] = [view.keys[n] for n in best.tolist()]      # the caller reports these ranks
    for node in best.tolist():
        ids.setdefault(view.keys[node], int(view.ids[node]))
    if state.query is None:
        fused = [(str(key), score) for key, score in rrf(rankings, K_RRF)]
    else:
        fused = _score_fusion(state, view, mass, rankings["graph"], params)
        for key, node in state.found.items():
            ids.setdefault(key, node)
        if params.hybrid_weight > 0:
            hybrid = {name: rankings[name] for name in ("vector", "keyword") if name in rankings}
            fused = [(str(key), score) for key, score in rrf(
                {"graph": [key for key, _ in fused], "hybrid": [key for key, _ in rrf(hybrid, K_RRF)]},
                K_RRF, {"graph": 1.0, "hybrid": params.hybrid_weight})]
    state.timed("rank", tick)
    return fused, mass, seeds


def _score_fusion(state: _State, view: GraphView, mass: np.ndarray, graph_keys: list[str],
                  params: GraphParams) -> list[tuple[str, float]]:
    """cosine + graph_weight * ln(relative PPR mass) (+ keyword_weight * relative BM25), best first."""
    cosine = dict(state.cosine)
    wanted = [key for key in dict.fromkeys([*graph_keys[:GRAPH_ONLY_MAX],
                                            *(key for _, key, _ in state.keyword[:GRAPH_ONLY_MAX])])
              if key not in cosine]
    missing = [key for key in wanted if key not in view.embeddings]
    if missing:                     # chunk vectors, read through the session once per view
        table = state.session.get_many(CHUNK, missing, ["embedding"])
        for node, vector in zip(table.column("_id").to_pylist(), table.column("embedding").to_pylist(),
                                strict=True):
            if vector is not None:
                view.embeddings[state.session.ref(node).key] = np.asarray(vector, dtype=np.float32)
    for key in wanted:
        if key in view.embeddings:
            cosine[key] = float(np.dot(view.embeddings[key], state.query))
    bridge = _bridge_scores(state, view, cosine, params) if params.hop_weight > 0 else {}
    top_mass = float(mass[view.is_chunk].max()) or 1.0
    bm25 = {key: float(score) for _, key, score in state.keyword}
    top_bm25 = max(bm25.values(), default=0.0) or 1.0
    lexical = {key for _, key, _ in state.keyword[:params.keyword_floor_top]}
    base_floor = max(params.mass_floor, params.polar_mass_floor) if is_polar(state.question) else params.mass_floor
    scores = []
    for key, cos in cosine.items():
        node = view.chunk_by_key.get(key)
        relative = float(mass[node]) / top_mass if node is not None else 0.0
        floor = max(base_floor, params.keyword_floor) if key in lexical else base_floor
        if key in bridge:
            cos = (1 - params.hop_weight) * cos + params.hop_weight * max(cos, bridge[key])
        score = cos + params.graph_weight * math.log(max(relative, floor))
        if params.keyword_weight:
            score += params.keyword_weight * bm25.get(key, 0.0) / top_bm25
        scores.append((key, score))
    scores.sort(key=lambda pair: -pair[1])
    return scores


def _bridge_scores(state: _State, view: GraphView, cosine: dict[str, float],
                   params: GraphParams) -> dict[str, float]:
    """Second-hop dense retrieval without an LLM (GraphParams.hop_*): chunk key -> its best cosine with a
    composed query normalise(q + hop_alpha * vector(bridge)), over the bridges it mentions. Chunks that are
    not candidates yet join `cosine` (updated in place, with their plain cosine) and `state.found`."""
    assert state.query is not None
    if not _has_entity_vectors(state.session, len(state.query)):
        return {}
    named = set(view.matcher.find(state.question))
    sources = [view.chunk_by_key[key] for _, key, _ in state.vector[:params.hop_chunks] if key in view.chunk_by_key]
    if params.hop_named_only:
        articles = {c for key in named if key in view.entity_by_key
                    for c in view.articles_of(state.session, view.entity_by_key[key])}
        sources = [c for c in sources if c in articles]
    wanted = expected_types(state.question) if params.hop_types else None
    bridges: dict[Any, int] = {}
    for chunk in sources:
        for entity in view.entities_of(chunk).tolist():
            key = view.keys[entity]
            if key in named or (params.hop_max_chunks and view.entity_chunks[entity] > params.hop_max_chunks):
                continue
            if wanted is not None and view.types.get(key) not in wanted:
                continue
            bridges.setdefault(key, entity)
    missing = [key for key in bridges if key not in view.entity_vectors]
    if missing:
        table = state.session.get_many(ENTITY, missing, ["embedding"])
        for node, vector in zip(table.column("_id").to_pylist(), table.column("embedding").to_pylist(),
                                strict=True):
            view.entity_vectors[state.session.ref(node).key] = None if vector is None else \
                np.asarray(vector, dtype=np.float32)
    out: dict[str, float] = {}
    for key, entity in bridges.items():
        vector = view.entity_vectors.get(key)
        if vector is None:
            continue
        query = state.query + params.hop_alpha * vector
        query = query / (float(np.linalg.norm(query)) or 1.0)
        chunks = [view.keys[c] for c in view.mention_chunk[view.mention_entity == entity].tolist()]
        _chunk_vectors(state, view, chunks)
        for chunk in chunks:
            embedding = view.embeddings.get(chunk)
            if embedding is None:
                continue
            out[chunk] = max(out.get(chunk, -1.0), float(np.dot(embedding, query)))
            if chunk not in cosine:
                cosine[chunk] = float(np.dot(embedding, state.query))
                state.found.setdefault(chunk, int(view.ids[view.chunk_by_key[chunk]]))
    return out


def _chunk_vectors(state: _State, view: GraphView, keys: list[str]) -> None:
    """Read the vectors of the chunks in `keys` that the view does not hold yet (once per view)."""
    missing = [key for key in dict.fromkeys(keys) if key not in view.embeddings]
    if not missing:
        return
    table = state.session.get_many(CHUNK, missing, ["embedding"])
    for node, vector in zip(table.column("_id").to_pylist(), table.column("embedding").to_pylist(), strict=True):
        if vector is not None:
            view.embeddings[state.session.ref(node).key] = np.asarray(vector, dtype=np.float32)


def _entity_seeds(state: _State, view: GraphView, rankings: dict[str, list[str]],
                  params: GraphParams) -> dict[int, float]:
    """Seed entity -> weight (before normalisation), each divided by (#chunks mentioning it) ** specificity."""
    raw: dict[int, float] = {}
    if params.name_weight:
        for key in view.matcher.find(state.question):
            node = view.entity_by_key.get(key)
            if node is not None:
                raw[node] = raw.get(node, 0.0) + params.name_weight
    if params.alias_weight:
        for key in view.aliases().find(state.question):
            node = view.entity_by_key.get(key)
            if node is not None:
                raw[node] = raw.get(node, 0.0) + params.alias_weight
    top = rankings.get("vector", rankings.get("keyword", []))[:params.seed_chunks]
    for rank, key in enumerate(top if params.chunk_entity_weight else [], start=1):
        node = view.chunk_by_key.get(key)
        if node is None:
            continue
        for entity in view.entities_of(node).tolist():
            raw[entity] = raw.get(entity, 0.0) + params.chunk_entity_weight / rank
    if (params.entity_top and params.entity_vector_weight and state.query is not None
            and _has_entity_vectors(state.session, len(state.query))):
        table = state.session.search(state.query, params.entity_top, type=ENTITY, property="embedding")
        local = view.local(np.asarray(table.column("_id").to_pylist(), dtype=np.int64))
        for node, score in zip(local.tolist(), table.column("_score").to_pylist(), strict=True):
            if node >= 0 and score > 0:
                raw[node] = raw.get(node, 0.0) + params.entity_vector_weight * float(score)
    degree = np.maximum(view.entity_chunks, 1).astype(np.float64)  # specificity (HippoRAG node specificity)
    return {node: weight / degree[node] ** params.specificity for node, weight in raw.items()}


def _has_entity_vectors(session: Session, dimension: int) -> bool:
    node_type = session.store.schema.nodes.get(ENTITY)
    return node_type is not None and any(p.name == "embedding" and p.dimension == dimension
                                         for p in node_type.vector_properties)


def _chunks(session: Session, top: list[tuple[str, float]], ranks: dict[str, dict[str, int]],
            ids: dict[str, int], view: GraphView | None) -> list[RetrievedChunk]:
    if not top:
        return []
    keys = [key for key, _ in top]
    table = session.get_many(CHUNK, keys, ["text", "position", "doc_id"])
    rows = {row["_id"]: row for row in table.to_pylist()}
    out = []
    for key, score in top:
        node = ids.get(key)
        row = rows.get(node)
        if row is None:        # not visible any more (cannot happen inside one snapshot)
            continue
        entities: list[str] = []
        if view is not None and key in view.chunk_by_key:
            entities = [view.keys[e] for e in view.entities_of(view.chunk_by_key[key]).tolist()]
        out.append(RetrievedChunk(int(node), key, row["doc_id"], row["text"], float(score), row["position"],
                                  {name: r[key] for name, r in ranks.items() if key in r}, entities))
    return out


def _support(view: GraphView | None, chunks: list[RetrievedChunk], mass: np.ndarray | None,
             seeds: dict[int, float]) -> tuple[list[RetrievedEntity], list[RetrievedEdge]]:
    """The entities of the returned chunks (best PPR mass first, at most 8 a chunk) and the edges linking
    them: MENTIONS chunk -> entity, and RELATED between two of them, scored by the geometric mean of
    their masses."""
    if view is None:
        return [], []

    def score(entity: int) -> float:
        return float(mass[entity]) if mass is not None else 0.0

    chosen: dict[int, float] = {}
    edges: list[RetrievedEdge] = []
    for chunk in chunks:
        node = view.chunk_by_key.get(chunk.key)
        if node is None:
            continue
        mentioned = view.entities_of(node).tolist()
        mentioned.sort(key=lambda e: -(score(e) + seeds.get(e, 0.0)))
        for entity in mentioned[:ENTITIES_PER_CHUNK]:
            chosen[entity] = score(entity)
            edges.append(RetrievedEdge("MENTIONS", chunk.key, str(view.keys[entity]), chosen[entity]))
    pairs: dict[tuple[int, int], tuple[str, str]] = {}
    for s in chosen:    # the RELATED pairs among the chosen entities: a hub's neighbours are not walked
        neighbours = view.related_by_node.get(s, ())
        for o in (neighbours if len(neighbours) < len(chosen) else chosen):
            found = view.related.get((s, o))
            if found is not None and o in chosen:
                pairs[(s, o)] = found
    for (s, o), (relation, chunk_id) in pairs.items():
        edges.append(RetrievedEdge("RELATED", str(view.keys[s]), str(view.keys[o]),
                                   math.sqrt(chosen[s] * chosen[o]), relation, chunk_id))
    edges.sort(key=lambda e: (-e.score, e.type, e.src, e.dst))
    entities = [RetrievedEntity(str(view.keys[e]), value, seeds.get(e, 0.0)) for e, value in chosen.items()]
    entities.sort(key=lambda e: (-e.score, -e.seed))
    return entities, edges[:EDGES_MAX]


def _documents(session: Session, chunks: list[RetrievedChunk]) -> list[RetrievedDocument]:
    if not chunks or DOCUMENT not in session.store.schema.nodes:
        return []
    best: dict[str, float] = {}
    for chunk in chunks:
        best.setdefault(chunk.doc_id, chunk.score)
    table = session.get_many(DOCUMENT, list(best), ["title", "metadata"])
    found = {}
    for row in table.to_pylist():
        key = session.ref(row["_id"]).key
        metadata = row["metadata"]
        found[key] = RetrievedDocument(key, row["title"], json.loads(metadata) if isinstance(metadata, str)
                                       else metadata, best[key])
    return [found[d] for d in best if d in found]


def build_context(chunks: list[RetrievedChunk], documents: list[RetrievedDocument], edges: list[RetrievedEdge],
                  token_budget: int) -> tuple[str, int]:
    """The prompt text: numbered chunks (with their document title), best first, then the RELATED facts
    among their entities, while the approximate token count (chunking.approx_tokens) stays within the
    budget; the first chunk is cut to the budget on word boundaries if it alone exceeds it."""
    titles = {d.doc_id: d.title for d in documents}
    parts: list[str] = []
    used = 0
    for number, chunk in enumerate(chunks, start=1):
        title = titles.get(chunk.doc_id)
        block = f"[{number}] {title}\n{chunk.text}" if title else f"[{number}]\n{chunk.text}"
        cost = approx_tokens(block)
        if used + cost > token_budget:
            if not parts:
                words = block.split()
                keep = max(0, int((token_budget - used) / 1.3))
                while keep and approx_tokens(" ".join(words[:keep])) > token_budget - used:
                    keep -= 1
                if keep:
                    block = " ".join(words[:keep])
                    parts.append(block)
                    used += approx_tokens(block)
            break
        parts.append(block)
        used += cost
    facts = [f"- {e.src} -[{e.relation}]-> {e.dst}" for e in edges
             if e.type == "RELATED" and e.relation and e.relation != COOCCURS]
    if facts and len(parts) == len(chunks):
        lines = ["Facts:"]
        cost = approx_tokens(lines[0])
        for fact in facts:
            if used + cost + approx_tokens(fact) > token_budget:
                break
            lines.append(fact)
            cost += approx_tokens(fact)
        if len(lines) > 1:
            parts.append("\n".join(lines))
            used += cost
    text = "\n\n".join(parts)
    return text, approx_tokens(text)


__all__ = ["K_MAX", "MODES", "GraphParams", "RetrievalResult", "RetrievedChunk", "RetrievedDocument", "RetrievedEdge",
           "RetrievedEntity", "build_context", "retrieve"]
