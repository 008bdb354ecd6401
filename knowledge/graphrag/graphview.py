"""The visible chunk–entity graph of one (store, LSN, principal), built through Session reads and cached.

Nodes are the chunks and entities the session can see that take part in a visible MENTIONS, relation or
SYNONYM edge. Relations come from the visible chunks' `relations` (one per entity pair and chunk; for a
pair stated by several visible chunks, the first by chunk key speaks for it), so what a reader cannot see
never shapes them; chunks written before Chunk.relations existed fall back to their RELATED edges (kept
only when the chunk that stated them, `chunk_id`, is visible, and only for admins once RELATED is hidden:
re-ingest such documents, e.g. with a new splitter or metadata, to give their chunks `relations`). SYNONYM edges are visible when both their
entities are. Walk weights: MENTIONS 1, RELATED
`related_weight` * its weight (1 when unset), SYNONYM `synonym_weight` * its score.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from knowledge.embed import normalize_entity_name
from knowledge.graphrag.extract import NameMatcher
from knowledge.graphrag.ppr import Transition
from knowledge.graphrag.schema import CHUNK, DOCUMENT, ENTITY, MENTIONS, RELATED, SYNONYM
from knowledge.session import Session

CACHE_SIZE = 8
_PAREN = re.compile(r"^(.*\S)\s*\([^()]*\)$")
_cache: OrderedDict[tuple[Any, ...], GraphView] = OrderedDict()
_lock = threading.Lock()


@dataclass
class GraphView:
    """Local numbering: 0..n-1 over `ids` (global node ids, sorted)."""

    ids: np.ndarray                 # global ids, sorted
    is_chunk: np.ndarray            # bool per local node
    keys: list[Any]                 # key per local node
    transition: Transition
    mention_chunk: np.ndarray       # local chunk per MENTIONS edge (sorted by chunk)
    mention_entity: np.ndarray      # local entity per MENTIONS edge
    chunk_offsets: np.ndarray       # CSR offsets into mention_* by local node id
    entity_chunks: np.ndarray       # number of chunks mentioning each local node (entities)
    related: dict[tuple[int, int], tuple[str, str]]   # (local s, local o) -> (relation, chunk_id)
    related_by_node: dict[int, list[int]]            # local node -> neighbours via RELATED
    matcher: NameMatcher
    entity_by_key: dict[Any, int]
    chunk_by_key: dict[Any, int]
    embeddings: dict[Any, np.ndarray] = field(default_factory=dict)   # chunk vectors read so far
    entity_vectors: dict[Any, np.ndarray | None] = field(default_factory=dict)   # entity vectors read so far
    synonyms: int = 0               # SYNONYM edges in the walk
    displays: dict[Any, str] = field(default_factory=dict)   # entity key -> display name, where stored
    types: dict[Any, str] = field(default_factory=dict)      # entity key -> type (spaCy label, 'TITLE'), where stored
    alias_matcher: NameMatcher | None = None        # aliases(), built on first use
    articles: dict[int, list[int]] | None = None    # articles_of(), read on first use

    @property
    def entities(self) -> int:
        return int((~self.is_chunk).sum())

    @property
    def size(self) -> int:
        return len(self.ids)

    def local(self, global_ids: np.ndarray) -> np.ndarray:
        """Local ids of global ids (-1 where not in the graph)."""
        global_ids = np.asarray(global_ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(len(global_ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, global_ids), len(self.ids) - 1)
        return np.where(self.ids[pos] == global_ids, pos, -1)

    def entities_of(self, chunk: int) -> np.ndarray:
        return self.mention_entity[self.chunk_offsets[chunk]:self.chunk_offsets[chunk + 1]]

    def aliases(self) -> NameMatcher:
        """A matcher of title aliases: an entity whose name ends in a parenthetical disambiguator, as
        encyclopedia titles do ('Brother (Pearl Jam song)', 'Siege of Cassel (1761)'), is also named by
        the name without it ('Brother', 'Siege of Cassel'; NameMatcher's rules apply). Built on first use."""
        if self.alias_matcher is None:
            pairs = []
            for key in self.entity_by_key:
                found = _PAREN.match(self.displays.get(key) or str(key))
                if found:
                    pairs.append((key, found.group(1)))
            self.alias_matcher = NameMatcher(pairs)
        return self.alias_matcher

    def articles_of(self, session: Session, entity: int) -> list[int]:
        """The local chunks of the entity's own article: the visible documents whose title is the entity's
        name, where the chunk mentions it. Read through `session` once per view, on first use (every
        chunk's doc_id and every document's title)."""
        if self.articles is None:
            self.articles = _articles(session, self)
        return self.articles.get(entity, [])


def cache_key(session: Session, lsn: int, weights: tuple[float, float] = (1.0, 1.0)) -> tuple[Any, ...]:
    principal = session.principal
    store = session.store  # inside a snapshot a per-read wrapper: its engine names the open store
    return (id(getattr(store, "engine", store)), store.path if hasattr(store, "path") else None, lsn,
            principal.name, principal.admin, frozenset(principal.read), weights)


def graph_view(session: Session, lsn: int, related_weight: float = 1.0,
               synonym_weight: float = 1.0) -> GraphView | None:
    """The cached view for this session at `lsn` (call inside `session.snapshot()`); None when the GraphRAG
    edge types are not declared."""
    edges = session.store.schema.edges
    if MENTIONS not in edges or RELATED not in edges:
        return None
    key = cache_key(session, lsn, (related_weight, synonym_weight))
    with _lock:
        view = _cache.get(key)
        if view is not None:
            _cache.move_to_end(key)
            return view
    view = build_view(session, related_weight, synonym_weight)
    with _lock:
        _cache[key] = view
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return view


def clear_cache() -> None:
    """Forget every cached view (they are keyed by LSN, so this is only needed to free memory)."""
    with _lock:
        _cache.clear()


def _edge_floats(table: Any, name: str, default: float) -> np.ndarray:
    if name not in table.column_names:
        return np.full(table.num_rows, default)
    values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
    return np.where(np.isnan(values), default, values)


def build_view(session: Session, related_weight: float = 1.0, synonym_weight: float = 1.0) -> GraphView:
    """Read the visible MENTIONS and SYNONYM edges and the visible chunks' relations through the session and
    build the walk matrix."""
    m_src, m_dst, _ = session.adjacency([MENTIONS])
    chunk_ids = np.unique(m_src)
    chunk_keys = _keys(session, chunk_ids)
    s_src = s_dst = np.zeros(0, np.int64)
    s_weight = np.zeros(0)
    if SYNONYM in session.store.schema.edges and synonym_weight > 0:
        syn = session.edges(SYNONYM)
        s_src = syn.column("_src").to_numpy().astype(np.int64)
        s_dst = syn.column("_dst").to_numpy().astype(np.int64)
        s_weight = _edge_floats(syn, "score", 1.0)
    ids = np.unique(np.concatenate([m_src, m_dst, s_src, s_dst]).astype(np.int64))
    n = len(ids)
    is_chunk = np.isin(ids, chunk_ids)
    keys: list[Any] = [None] * n
    entity_pos = np.flatnonzero(~is_chunk)
    entity_keys = _keys(session, ids[entity_pos])
    for pos, k in zip(np.flatnonzero(is_chunk).tolist(), chunk_keys, strict=True):
        keys[pos] = k
    for pos, k in zip(entity_pos.tolist(), entity_keys, strict=True):
        keys[pos] = k
    ms, md = np.searchsorted(ids, m_src), np.searchsorted(ids, m_dst)
    order = np.lexsort((md, ms))
    ms, md = ms[order], md[order]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(ms, minlength=n), out=offsets[1:])
    rs, rd, r_weight, r_relation, r_chunk = _relations(session, ids, keys, is_chunk, ms, md, offsets)
    ss, sd = np.searchsorted(ids, s_src), np.searchsorted(ids, s_dst)
    weights = np.concatenate([np.ones(len(ms)), related_weight * r_weight, synonym_weight * s_weight])
    transition = Transition(n, np.concatenate([ms, rs, ss]), np.concatenate([md, rd, sd]), weights)
    related: dict[tuple[int, int], tuple[str, str]] = {}
    by_node: dict[int, list[int]] = {}
    for s, o, relation, chunk in zip(rs.tolist(), rd.tolist(), r_relation, r_chunk, strict=True):
        related[(s, o)] = (relation, chunk)
        by_node.setdefault(s, []).append(o)
        by_node.setdefault(o, []).append(s)
    displays, types = _displays(session, entity_keys)
    matcher = NameMatcher((k, displays.get(k) or str(k)) for k in entity_keys)
    return GraphView(ids=ids, is_chunk=is_chunk, keys=keys, transition=transition, mention_chunk=ms,
                     mention_entity=md, chunk_offsets=offsets, entity_chunks=np.bincount(md, minlength=n),
                     related=related, related_by_node=by_node, matcher=matcher,
                     entity_by_key={keys[p]: p for p in entity_pos.tolist()},
                     chunk_by_key={keys[p]: p for p in np.flatnonzero(is_chunk).tolist()}, synonyms=len(ss),
                     displays=displays, types=types)


def _relations(session: Session, ids: np.ndarray, keys: list[Any], is_chunk: np.ndarray, ms: np.ndarray,
               md: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """The visible relations in local ids as (src, dst, weights, relation texts, stating chunk keys): one per
    unordered entity pair, from the first visible stating chunk by key (Chunk.relations), plus legacy
    RELATED edges whose stating chunk is visible and has no Chunk.relations."""
    chunks = np.flatnonzero(is_chunk).tolist()
    stored: dict[int, Any] = {}
    if "relations" in session.store.schema.nodes[CHUNK].properties and chunks:
        table = session.get_many(CHUNK, [keys[c] for c in chunks], ["relations"])
        local = np.searchsorted(ids, table.column("_id").to_numpy()).tolist()
        stored = dict(zip(local, table.column("relations").to_pylist(), strict=True))
    best: dict[frozenset[int], tuple[str, int, int, float, str]] = {}
    for chunk in sorted(chunks, key=lambda c: str(keys[c])):
        rows = _as_list(stored.get(chunk))
        if not rows:
            continue
        named = {keys[e]: e for e in md[offsets[chunk]:offsets[chunk + 1]].tolist()}  # the chunk's entities
        for row in rows:
            s, o = named.get(row.get("src")), named.get(row.get("dst"))
            if s is None or o is None or s == o or frozenset((s, o)) in best:
                continue
            weight = row.get("weight")
            best[frozenset((s, o))] = (str(keys[chunk]), s, o, 1.0 if weight is None else float(weight),
                                       str(row.get("relation") or ""))
    out = [(s, o, weight, relation, key) for key, s, o, weight, relation in best.values()]
    legacy = {keys[c] for c in chunks if stored.get(c) is None}
    if legacy and (session.principal.admin or not session.store.schema.edges[RELATED].hidden):
        rel = session.edges(RELATED)
        src, dst = rel.column("_src").to_numpy(), rel.column("_dst").to_numpy()
        ls, ld = np.minimum(np.searchsorted(ids, src), len(ids) - 1), np.minimum(np.searchsorted(ids, dst), len(ids) - 1)
        present = ((ids[ls] == src) & (ids[ld] == dst)).tolist() if len(ids) else [False] * len(src)
        for s, o, ok, chunk, relation, weight in zip(ls.tolist(), ld.tolist(), present, rel.column("chunk_id").to_pylist(),
                                                     rel.column("relation").to_pylist(),
                                                     _edge_floats(rel, "weight", 1.0).tolist(), strict=True):
            if ok and chunk in legacy and frozenset((s, o)) not in best:
                out.append((s, o, weight, relation, chunk))
    return (np.asarray([r[0] for r in out], dtype=np.int64), np.asarray([r[1] for r in out], dtype=np.int64),
            np.asarray([r[2] for r in out], dtype=np.float64), [r[3] for r in out], [r[4] for r in out])


def _articles(session: Session, view: GraphView) -> dict[int, list[int]]:
    """Local entity -> the local chunks of the documents titled by its name (that mention it)."""
    chunks = np.flatnonzero(view.is_chunk).tolist()
    if not chunks or DOCUMENT not in session.store.schema.nodes:
        return {}
    table = session.get_many(CHUNK, [view.keys[c] for c in chunks], ["doc_id"])
    local = np.searchsorted(view.ids, table.column("_id").to_numpy()).tolist()
    doc_of = dict(zip(local, table.column("doc_id").to_pylist(), strict=True))
    docs = sorted({d for d in doc_of.values() if d is not None})
    titles = session.get_many(DOCUMENT, docs, ["title"])
    title_of = dict(zip(_keys(session, titles.column("_id").to_numpy()), titles.column("title").to_pylist(),
                        strict=True))
    out: dict[int, list[int]] = {}
    for chunk, doc in sorted(doc_of.items()):
        title = title_of.get(doc)
        entity = view.entity_by_key.get(normalize_entity_name(title)) if isinstance(title, str) else None
        if entity is not None and entity in view.entities_of(chunk).tolist():
            out.setdefault(entity, []).append(chunk)
    return out


def _keys(session: Session, ids: np.ndarray) -> list[Any]:
    """The keys of node ids the session has just read as visible (edge endpoints): from the store's directory
    as the session reads it (one gather), else one `ref` each."""
    directory = getattr(session.store, "directory", None)
    if directory is None or not hasattr(directory, "key_of"):
        return [session.ref(int(i)).key for i in ids]
    return directory.key_of[np.asarray(ids, dtype=np.int64)].tolist()


def _as_list(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        value = json.loads(value)
    return [row for row in value if isinstance(row, dict)] if isinstance(value, list) else []


def _displays(session: Session, entity_keys: list[Any]) -> tuple[dict[Any, str], dict[Any, str]]:
    """The entities' display names and types (where the schema has them and they are set)."""
    properties = session.store.schema.nodes[ENTITY].properties
    wanted = [name for name in ("display", "type") if name in properties]
    if not entity_keys or not wanted:
        return {}, {}
    table = session.get_many(ENTITY, entity_keys, wanted)
    keys = _keys(session, table.column("_id").to_numpy())
    columns = {name: dict(zip(keys, table.column(name).to_pylist(), strict=True)) for name in wanted}
    return columns.get("display", {}), {key: value for key, value in columns.get("type", {}).items() if value}


__all__ = ["CHUNK", "GraphView", "build_view", "clear_cache", "graph_view"]
