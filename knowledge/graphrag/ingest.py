"""Ingestion: documents -> chunks -> embeddings -> entities and relations, written through a session.

    from knowledge.graphrag import Document, ingest
    report = ingest(store.session(), [Document("d1", "Ada Lovelace wrote ...", title="Ada",
                                               labels=["public"])], embedder=embedder)

Guarantees:
- The GraphRAG schema (schema.py) is declared if absent (idempotent).
- A document whose content hash (title, text, metadata, labels, supplied entities/triples, splitter,
  extractor and embedder names) equals the stored one is skipped: no write, no WAL record.
- A new or changed document is written in its batch's single transaction: its old chunks are deleted
  (with their HAS_CHUNK and MENTIONS edges), then the Document, its Chunks, their Entities and the
  HAS_CHUNK / MENTIONS / RELATED edges are upserted. A failure leaves the batch unwritten.
- Entities are merged by `normalize_entity_name`; `display` and `type` keep the first form seen.
- With an extractor that has `submit_chunks` (SpacyExtractor), the next `lookahead` batches' changed
  documents are handed to its worker processes before a batch is embedded and written, so extraction
  overlaps the store work; batches still commit in order and what is written is the same. Such a batch's
  content hashes are checked when it is handed over (checked again at its turn when a batch written
  before it names one of its documents).
- Without an `extractor`, `default_extractor()` is used: spaCy NER when the nlp extra is installed,
  else the rule-based extractor; both take the title as an entity and relate entities that share a
  sentence. `synonyms` adds SYNONYM edges between close entity embeddings (synonyms.py) as it goes.

Label rule (also in the package docstring): a chunk carries its document's labels; an entity carries the
union of the labels of every document whose ingestion mentioned it. Since a node is visible when it
shares a label with the reader's grants, a reader sees an entity iff a document the reader may read
mentions it (or mentioned it: labels only grow; re-ingesting or deleting a document takes none away), so
whoever sees a chunk sees every entity it mentions and an entity reveals nothing a readable document
does not. Each chunk stores the relations it states (Chunk.relations, one per entity pair, under the
chunk's labels); retrieval builds its relation graph from the chunks the reader can see (graphview.py),
so a relation stated only in a document the reader cannot see is never used or shown, and one stated
in a visible and in an invisible document reads as if the invisible one did not exist. RELATED edges
are the graph-level summary for traversal: one per pair, from the first stating chunk of a batch (later
batches overwrite), readable by whoever sees both entities (see README, Security model).

Run ingestion with an admin session (or one that can read and write every label involved): entity
labels are merged with what the session can read.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from knowledge.embed import (
    Embedder,
    EmbedderUnavailable,
    check_dimension,
    normalize_entity_name,
    passage_text,
)
from knowledge.errors import InvalidArgument
from knowledge.graphrag.chunking import SentenceSplitter, Splitter
from knowledge.graphrag.extract import (
    COOCCURS,
    ChunkInput,
    Extraction,
    Extractor,
    Relation,
    clean_triples,
    match_key,
    run_extractor,
)
from knowledge.graphrag.extractors import default_extractor
from knowledge.graphrag.schema import (
    CHUNK,
    DOCUMENT,
    ENTITY,
    HAS_CHUNK,
    MENTIONS,
    RELATED,
    SYNONYM,
    ensure_schema,
)
from knowledge.graphrag.synonyms import SynonymConfig, VectorPool, synonym_config, synonym_edges
from knowledge.session import Session

BATCH_SIZE = 256
LOOKAHEAD = 2
"""Batches whose extraction is started before the current one is written (extractors with submit_chunks)."""
PROGRESS_MIN_DOCUMENTS = 500


@dataclass
class Document:
    """A document to ingest. `entities`/`triples`, when given, are used instead of the extractor (e.g. the
    MuSiQue OpenIE file's extracted_entities / extracted_triples); each is attached to the chunks whose
    text names it (to the first chunk when none does)."""

    doc_id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    labels: Sequence[str] = ()
    entities: Sequence[str] | None = None
    triples: Sequence[Sequence[str]] | None = None


@dataclass
class IngestReport:
    """What `ingest` did. `lsns` are the commits' LSNs (empty when nothing changed)."""

    documents: int = 0
    unchanged: int = 0
    written: int = 0
    chunks: int = 0
    chunks_deleted: int = 0
    entities: int = 0
    mentions: int = 0
    relations: int = 0
    synonyms: int = 0
    lsns: list[int] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds


@dataclass
class _Chunk:
    key: str
    doc: Document
    position: int
    text: str
    entities: list[str]          # normalised names (raw names until _chunks normalises them)
    relations: list[Relation]
    display: dict[str, str] = field(default_factory=dict)   # normalised name -> first form seen
    types: dict[str, str] = field(default_factory=dict)     # normalised name -> first type seen


def chunk_key(doc_id: str, position: int) -> str:
    """The key of a document's chunk: f"{doc_id}#{position}"."""
    return f"{doc_id}#{position}"


def content_hash(doc: Document, splitter: Splitter, extractor: Extractor, embedder: Embedder,
                 synonyms: SynonymConfig | None = None) -> str:
    """sha256 over everything that determines what ingestion writes for the document."""
    payload = [doc.title, doc.text, doc.metadata, sorted(doc.labels),
               list(doc.entities) if doc.entities is not None else None,
               [list(t) for t in doc.triples] if doc.triples is not None else None,
               splitter.fingerprint, extractor.name, embedder.name, embedder.dimension]
    if synonyms is not None:
        payload.append(synonyms.fingerprint)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def ingest(session: Session, documents: Iterable[Document], *, embedder: Embedder,
           splitter: Splitter | None = None, extractor: Extractor | None = None,
           batch_size: int = BATCH_SIZE, embed_entities: bool | str = "auto",
           progress: bool | None = None, total: int | None = None,
           synonyms: SynonymConfig | float | bool | None = True, lookahead: int = LOOKAHEAD) -> IngestReport:
    """Ingest documents in batches of `batch_size`, one transaction per batch that has changes.

    `extractor`: None uses `default_extractor()` (spaCy when installed, else RuleExtractor); pass
    NoExtractor() for chunks only. `synonyms`: SYNONYM edges between new entities and close stored
    ones (True: SynonymConfig(); a float: that cosine threshold; None/False: none); they need entity
    embeddings, so nothing is added when entities are not embedded.

    `embed_entities`: True embeds new entity names (normalised) with `embedder`; False stores none;
    "auto" tries and stores none when the embedder cannot (EmbedderUnavailable, e.g. a
    PrecomputedEmbedder without entity vectors). `progress`: tqdm bar (None: only on a TTY and for
    more than 500 documents). `lookahead`: with an extractor that has `submit_chunks` (SpacyExtractor's
    worker processes), the changed documents of the next `lookahead` batches are handed to it before
    this batch is embedded and written, so extraction and store work overlap (0: one after the other;
    the result is the same either way). Raises InvalidArgument (bad document, duplicate doc_id in a batch,
    batch_size < 1, lookahead < 0), DimensionMismatch (the embedder's dimension is not the store's Chunk vector[d]),
    EmbedderUnavailable (no vectors for the chunks), SchemaError, ValidationError,
    PermissionDenied from the store.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgument(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
        raise InvalidArgument(f"lookahead must be an int >= 0, got {lookahead!r}")
    if not isinstance(embedder, Embedder):
        raise InvalidArgument(f"embedder must be an Embedder (dimension, name and embed()), got "
                              f"{type(embedder).__name__}")
    splitter = splitter or SentenceSplitter()
    extractor = extractor if extractor is not None else default_extractor()
    config = synonym_config(synonyms)
    pool = VectorPool(session, embedder.dimension) if config is not None else None
    started = time.perf_counter()
    check_dimension(session.store, embedder)   # DimensionMismatch naming the embedder and Chunk vector[d]
    ensure_schema(session.store, embedder.dimension)
    report = IngestReport()
    items = list(documents) if total is None and not isinstance(documents, Sequence) else documents
    count = total if total is not None else len(items)  # type: ignore[arg-type]
    show = progress if progress is not None else (sys.stderr.isatty() and count > PROGRESS_MIN_DOCUMENTS)
    submit = getattr(extractor, "submit_chunks", None) if lookahead else None
    queued: deque[tuple[list[Document], _Prefetch | None]] = deque()
    batches = _batches(items, batch_size)

    def pull(current: list[Document] | None = None) -> None:
        batch = next(batches, None)
        if batch is not None:
            # the documents of the batches written before this one's turn (its check is redone if it names one)
            unwritten = {d.doc_id for b in [*(q[0] for q in queued), *([current] if current else [])] for d in b
                         if isinstance(d, Document)}
            queued.append((batch, _prefetch(session, batch, splitter, extractor, embedder, config, submit,
                                            unwritten) if submit is not None else None))

    try:
        with tqdm(total=count, unit="doc", disable=not show, desc="ingest") as bar:
            for _ in range(1 + (lookahead if submit is not None else 0)):
                pull()
            while queued:
                batch, prefetched = queued.popleft()
                pull(batch)
                _ingest_batch(session, batch, embedder, splitter, extractor, embed_entities, config, pool, report,
                              prefetched)
                bar.update(len(batch))
    finally:
        for _, prefetched in queued:
            if prefetched is not None:
                prefetched.cancel()
    report.seconds = time.perf_counter() - started
    return report


class _Prefetch:
    """A batch checked ahead (`checked`: its content hashes and stored hashes, None when a batch written
    before its turn names one of its documents, so the check is redone then) and the extractions started
    for its changed documents, keyed by ChunkInput. A chunk found here is used only if it is still to be
    extracted at the batch's turn; the rest are extracted then."""

    def __init__(self, inputs: list[ChunkInput], pending: Any,
                 checked: tuple[dict[str, str], dict[str, str]] | None) -> None:
        self.inputs = inputs
        self.pending = pending
        self.checked = checked

    def results(self) -> dict[ChunkInput, Extraction]:
        if self.pending is None:
            return {}
        return dict(zip(self.inputs, self.pending.result(), strict=True))

    def cancel(self) -> None:
        cancel = getattr(self.pending, "cancel", None) if self.pending is not None else None
        if cancel is not None:
            cancel()


def _prefetch(session: Session, batch: list[Document], splitter: Splitter, extractor: Extractor,
              embedder: Embedder, synonyms: SynonymConfig | None, submit: Any, unwritten: set[str]) -> _Prefetch | None:
    """Hand the chunks of the batch's changed documents (by the store as it is now) to `submit`. None
    when there is nothing to extract or checking the batch fails (its turn raises the error, after the
    batches before it are written, as without the lookahead)."""
    try:
        for doc in batch:
            _check(doc)
        hashes = {doc.doc_id: content_hash(doc, splitter, extractor, embedder, synonyms) for doc in batch}
        stored = session.get_many(DOCUMENT, list(hashes), ["content_hash"])
        existing = dict(zip(_keys_of(session, stored), stored.column("content_hash").to_pylist(), strict=True))
        inputs = [ChunkInput(text, doc.title) for doc in batch
                  if doc.entities is None and doc.triples is None and existing.get(doc.doc_id) != hashes[doc.doc_id]
                  for text in splitter.split(doc.text)]
    except Exception:   # noqa: BLE001 - only a head start: the batch's turn raises it, after the batches before
        return None
    inputs = list(dict.fromkeys(inputs))
    checked = None if unwritten.intersection(hashes) else (hashes, existing)
    return _Prefetch(inputs, submit(inputs) if inputs else None, checked)


def _batches(items: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check(doc: Document) -> None:
    if not isinstance(doc, Document):
        raise InvalidArgument(f"expected a Document, got {type(doc).__name__}")
    if not isinstance(doc.doc_id, str) or not doc.doc_id or "#" in doc.doc_id:
        raise InvalidArgument(f"doc_id must be a non-empty string without '#', got {doc.doc_id!r}")
    if not isinstance(doc.text, str):
        raise InvalidArgument(f"document {doc.doc_id!r}: text must be a string")


def _keys_of(session: Session, table: Any) -> list[Any]:
    return [session.ref(i).key for i in table.column("_id").to_pylist()]


def _ingest_batch(session: Session, batch: list[Document], embedder: Embedder, splitter: Splitter,
                  extractor: Extractor, embed_entities: bool | str, synonyms: SynonymConfig | None,
                  pool: VectorPool | None, report: IngestReport, prefetched: _Prefetch | None = None) -> None:
    tick = time.perf_counter()
    for doc in batch:
        _check(doc)
    ids = [doc.doc_id for doc in batch]
    if len(set(ids)) != len(ids):
        raise InvalidArgument("a batch holds the same doc_id twice")
    report.documents += len(batch)
    if prefetched is not None and prefetched.checked is not None:
        hashes, existing = prefetched.checked       # checked ahead; no batch since wrote one of its documents
    else:
        hashes = {doc.doc_id: content_hash(doc, splitter, extractor, embedder, synonyms) for doc in batch}
        stored = session.get_many(DOCUMENT, ids, ["content_hash"])
        existing = dict(zip(_keys_of(session, stored), stored.column("content_hash").to_pylist(), strict=True))
    changed = [doc for doc in batch if existing.get(doc.doc_id) != hashes[doc.doc_id]]
    report.unchanged += len(batch) - len(changed)
    report.add_time("check", time.perf_counter() - tick)
    if not changed:
        if prefetched is not None:
            prefetched.cancel()
        return
    chunks = _chunks(changed, splitter, extractor, report, prefetched)
    tick = time.perf_counter()
    vectors = embedder.embed([passage_text(c.doc.title, c.text) if c.doc.title else c.text for c in chunks])
    report.add_time("embed_chunks", time.perf_counter() - tick)
    tick = time.perf_counter()
    old = [d for d in changed if d.doc_id in existing]
    old_chunks = (_keys_of(session, session.scan(CHUNK, where={"doc_id": ("in", [d.doc_id for d in old])},
                                                 columns=[])) if old else [])
    entity_rows, batch_vectors = _entity_rows(session, chunks, embedder, embed_entities, report)
    report.add_time("entities", time.perf_counter() - tick)
    tick = time.perf_counter()
    synonym_rows = _synonym_rows(pool, batch_vectors, synonyms)
    report.add_time("synonyms", time.perf_counter() - tick)
    tick = time.perf_counter()
    with session.transaction() as tx:
        if old_chunks:
            tx.delete_nodes(CHUNK, old_chunks)
        tx.upsert_nodes(DOCUMENT, [{"doc_id": d.doc_id, "title": d.title, "text": d.text, "metadata": d.metadata,
                                    "content_hash": hashes[d.doc_id], "_labels": sorted(d.labels)}
                                   for d in changed])
        per_chunk = [_related_rows([c]) for c in chunks]
        if chunks:
            tx.upsert_nodes(CHUNK, _chunk_table(chunks, vectors, per_chunk))
            tx.upsert_edges(HAS_CHUNK, [{"src": c.doc.doc_id, "dst": c.key} for c in chunks])
        if entity_rows is not None:
            tx.upsert_nodes(ENTITY, entity_rows)
        mentions = [{"src": c.key, "dst": name} for c in chunks for name in c.entities]
        if mentions:
            tx.upsert_edges(MENTIONS, mentions)
        related = _merge_related(per_chunk)
        if related:
            tx.upsert_edges(RELATED, related)
        if synonym_rows:
            tx.upsert_edges(SYNONYM, synonym_rows)
    report.lsns.append(int(tx.lsn or 0))
    report.add_time("commit", time.perf_counter() - tick)
    report.written += len(changed)
    report.chunks += len(chunks)
    report.chunks_deleted += len(old_chunks)
    report.mentions += len(mentions)
    report.relations += len(related)
    report.synonyms += len(synonym_rows)


def _chunks(docs: list[Document], splitter: Splitter, extractor: Extractor,
            report: IngestReport, prefetched: _Prefetch | None = None) -> list[_Chunk]:
    """The batch's chunks with their entities (normalised) and relations: supplied ones, or the extractor's
    (run once over every chunk of the batch's documents that supply none, less those `prefetched` has)."""
    tick = time.perf_counter()
    out: list[_Chunk] = []
    extract: list[_Chunk] = []
    for doc in docs:
        chunks = [_Chunk(chunk_key(doc.doc_id, i), doc, i, text, [], [])
                  for i, text in enumerate(splitter.split(doc.text))]
        if doc.entities is not None or doc.triples is not None:
            if chunks:
                _attach_supplied(doc, chunks)
        else:
            extract.extend(chunks)
        out.extend(chunks)
    report.add_time("split", time.perf_counter() - tick)
    tick = time.perf_counter()
    if extract:
        inputs = [ChunkInput(c.text, c.doc.title) for c in extract]
        ready = prefetched.results() if prefetched is not None else {}
        missing = [c for c in dict.fromkeys(inputs) if c not in ready]
        if missing:
            ready.update(zip(missing, run_extractor(extractor, missing), strict=True))
        found = [ready[c] for c in inputs]
        for chunk, extraction in zip(extract, found, strict=True):
            chunk.relations = [r for r in extraction.relations if _named(r.subject) and _named(r.predicate)
                               and _named(r.object)]
            for mention in extraction.entities:
                if isinstance(mention.name, str) and (key := _normal(mention.name)):
                    chunk.display.setdefault(key, mention.name.strip())
                    if mention.type:
                        chunk.types.setdefault(key, mention.type)
    report.add_time("extract", time.perf_counter() - tick)
    for chunk in out:
        names = chunk.display
        for name in [*chunk.entities, *(r.subject for r in chunk.relations), *(r.object for r in chunk.relations)]:
            if isinstance(name, str) and (key := _normal(name)):
                names.setdefault(key, name.strip())
        chunk.entities = list(names)
    return out


def _named(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


@functools.lru_cache(maxsize=65536)
def _normal(name: str) -> str:
    """normalize_entity_name, memoised (extractors repeat names across a batch's relations)."""
    return normalize_entity_name(name)


def _attach_supplied(doc: Document, chunks: list[_Chunk]) -> None:
    """Give each supplied entity / triple to the chunks that name it (the first chunk when none does)."""
    keyed = [match_key(c.text) for c in chunks]

    def owners(*names: str) -> list[_Chunk]:
        if len(chunks) == 1:
            return chunks
        found = [c for c, text in zip(chunks, keyed, strict=True)
                 if any(match_key(n) and f" {match_key(n)} " in f" {text} " for n in names)]
        return found or chunks[:1]

    for name in doc.entities or ():
        if isinstance(name, str) and name.strip():
            for chunk in owners(name):
                chunk.entities.append(name.strip())
    for s, p, o in clean_triples(doc.triples):
        for chunk in owners(s, o):
            chunk.relations.append(Relation(s, p, o))


def _entity_rows(session: Session, chunks: list[_Chunk], embedder: Embedder, embed_entities: bool | str,
                 report: IngestReport) -> tuple[pa.Table | None, dict[str, Any]]:
    """The Entity rows to upsert as one Arrow table (new entities, and existing ones whose labels grow:
    label union; None when there are none) and the embedding of every entity the chunks mention that has
    one (for synonym edges)."""
    wanted: dict[str, tuple[str, set[str]]] = {}
    types: dict[str, str] = {}
    for chunk in chunks:
        for key in chunk.entities:
            display = chunk.display[key]
            wanted.setdefault(key, (display, set()))[1].update(chunk.doc.labels)
            if key in chunk.types:
                types.setdefault(key, chunk.types[key])
    if not wanted:
        return None, {}
    has_type = "type" in session.store.schema.nodes[ENTITY].properties
    stored = session.get_many(ENTITY, list(wanted), ["display", "embedding", *(["type"] if has_type else [])])
    stored_vectors, stored_valid = _vector_matrix(stored.column("embedding"), embedder.dimension)
    current = {key: (display, kind, labels, i) for i, (key, display, kind, labels) in enumerate(zip(
        _keys_of(session, stored), stored.column("display").to_pylist(),
        stored.column("type").to_pylist() if has_type else [None] * stored.num_rows,
        stored.column("_labels").to_pylist(), strict=True))}
    names: list[str] = []
    displays: list[str] = []
    kinds: list[str | None] = []
    label_lists: list[list[str]] = []
    sources: list[int] = []          # the row of `stored` it keeps the embedding of, or -1: new
    fresh: list[str] = []
    for key, (display, labels) in wanted.items():
        row = current.get(key)
        if row is None:
            names.append(key)
            displays.append(display)
            kinds.append(types.get(key))
            label_lists.append(sorted(labels))
            sources.append(-1)
            fresh.append(key)
        elif not labels <= set(row[2] or ()):
            names.append(key)
            displays.append(row[0])
            kinds.append(row[1])
            label_lists.append(sorted(labels | set(row[2] or ())))
            sources.append(row[3])
    vectors_of = {key: stored_vectors[i] for key, (_, _, _, i) in current.items() if stored_valid[i]}
    fresh_vectors: np.ndarray | None = None
    if fresh and embed_entities:
        tick = time.perf_counter()
        found = _embed_names(embedder, fresh, embed_entities == "auto")
        report.add_time("embed_entities", time.perf_counter() - tick)
        if found is not None:
            fresh_vectors = np.asarray(found, dtype=np.float32)
            vectors_of.update(zip(fresh, fresh_vectors, strict=True))
    report.entities += len(fresh)
    if not names:
        return None, vectors_of
    matrix = np.zeros((len(names), embedder.dimension), np.float32)
    present = np.zeros(len(names), bool)
    sources_array = np.asarray(sources, dtype=np.int64)
    kept = np.flatnonzero(sources_array >= 0)
    kept = kept[stored_valid[sources_array[kept]]]
    matrix[kept], present[kept] = stored_vectors[sources_array[kept]], True
    if fresh_vectors is not None:
        new_rows = np.flatnonzero(sources_array < 0)
        matrix[new_rows], present[new_rows] = fresh_vectors, True
    columns = {"name": pa.array(names, pa.string()), "display": pa.array(displays, pa.string()),
               "embedding": _vector_column(matrix, present)}
    if has_type:
        columns["type"] = pa.array(kinds, pa.string())
    columns["_labels"] = pa.array(label_lists, pa.list_(pa.string()))
    return pa.table(columns), vectors_of


def _vector_matrix(column: pa.ChunkedArray, dimension: int) -> tuple[np.ndarray, np.ndarray]:
    """A vector column as a float32 matrix (zero rows where null) and the rows that hold a vector."""
    array = column.combine_chunks()
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    matrix = np.zeros((len(array), dimension), np.float32)
    if valid.any():
        flat = array.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
        matrix[valid] = np.asarray(flat, dtype=np.float32).reshape(-1, dimension)
    return matrix, valid


def _vector_column(matrix: np.ndarray, present: np.ndarray) -> pa.Array:
    """Rows of `matrix` as a vector[d] column (float32 lists of fixed size d), null where `present` is False."""
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1), pa.float32())
    mask = None if present.all() else pa.array(~present)
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1], mask=mask)


def _embed_names(embedder: Embedder, names: list[str], tolerant: bool) -> np.ndarray | None:
    try:
        return embedder.embed(names)
    except EmbedderUnavailable:
        if tolerant:
            return None
        raise


_RELATION_FIELDS = ("src", "dst", "relation", "weight", "sentence")


def _chunk_table(chunks: list[_Chunk], vectors: Any, per_chunk: list[list[dict[str, Any]]]) -> pa.Table:
    """The batch's Chunk rows as one Arrow table (the embeddings as one vector column, no per-row copy)."""
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(chunks), -1)
    relations = [json.dumps([{k: row[k] for k in _RELATION_FIELDS} for row in rows], allow_nan=False,
                            separators=(",", ":")) for rows in per_chunk]
    return pa.table({"chunk_id": pa.array([c.key for c in chunks], pa.string()),
                     "text": pa.array([c.text for c in chunks], pa.string()),
                     "position": pa.array([c.position for c in chunks], pa.int64()),
                     "doc_id": pa.array([c.doc.doc_id for c in chunks], pa.string()),
                     "embedding": _vector_column(matrix, np.ones(len(chunks), bool)),
                     "title": pa.array([c.doc.title for c in chunks], pa.string()),
                     "relations": pa.array(relations, pa.string()),
                     "_labels": pa.array([sorted(c.doc.labels) for c in chunks], pa.list_(pa.string()))})


def chunk_relations(chunk: _Chunk) -> list[dict[str, Any]]:
    """The relations one chunk states, one per entity pair (its Chunk.relations): `src`, `dst`, `relation`,
    `weight`, `sentence`, as `_related_rows` merges them within the chunk."""
    return [{k: row[k] for k in _RELATION_FIELDS} for row in _related_rows([chunk])]


def _merge_related(per_chunk: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """`_related_rows` over a batch from each chunk's own rows (in chunk order): the first chunk relating
    a pair speaks for it."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in per_chunk:
        for row in rows:
            src, dst = row["src"], row["dst"]
            out.setdefault((src, dst) if src < dst else (dst, src), row)
    return list(out.values())


def _related_rows(chunks: list[_Chunk]) -> list[dict[str, Any]]:
    """One RELATED edge per entity pair, from the first chunk relating it: that chunk's predicates joined
    by '; ' (never predicates of another chunk, whose labels may differ), the sum of its relations'
    weights and the first provenance sentence. Co-occurrence is undirected: it merges into a stated
    relation of either direction, and alone it is stored from the smaller name to the larger."""
    pairs: dict[tuple[str, str], list[Any]] = {}        # unordered pair -> [src, dst, preds, chunk, weight, sentence]
    for chunk in chunks:
        for rel in chunk.relations:
            s, o = _normal(rel.subject), _normal(rel.object)
            if not s or not o or s == o:
                continue
            pair = (s, o) if s < o else (o, s)
            entry = pairs.get(pair)
            if entry is None:
                entry = pairs[pair] = [pair[0], pair[1], [], chunk.key, 0.0, rel.sentence]
            if entry[3] != chunk.key:
                continue
            if rel.predicate != COOCCURS:
                if not entry[2]:
                    entry[0], entry[1] = s, o
                if rel.predicate not in entry[2]:
                    entry[2].append(rel.predicate)
            entry[4] += float(rel.weight)
            entry[5] = entry[5] or rel.sentence
    return [{"src": src, "dst": dst, "relation": "; ".join(preds) if preds else COOCCURS, "chunk_id": chunk,
             "weight": weight, "sentence": sentence} for src, dst, preds, chunk, weight, sentence in pairs.values()]


def _synonym_rows(pool: VectorPool | None, batch_vectors: dict[str, Any],
                  config: SynonymConfig | None) -> list[dict[str, Any]]:
    """SYNONYM edges from this batch's new embedded entities to close stored (or new) ones."""
    if config is None:
        return []
    fresh = {key: np.asarray(vector, dtype=np.float32) for key, vector in batch_vectors.items()}
    if not fresh:
        return []
    assert pool is not None
    keys, matrix = pool.get()
    rows = synonym_edges(fresh, keys, matrix, config)
    pool.add(fresh)
    return rows


def delete_documents(session: Session, doc_ids: Iterable[str]) -> int:
    """Delete documents and their chunks (with their HAS_CHUNK / MENTIONS edges) in one transaction.

    Entities stay (other documents may mention them; their labels are not reduced). Absent or invisible
    ids are ignored. Returns the number of documents deleted (0: nothing written).
    """
    ids = list(dict.fromkeys(doc_ids))
    if not ids or DOCUMENT not in session.store.schema.nodes:
        return 0
    found = _keys_of(session, session.get_many(DOCUMENT, ids, []))
    if not found:
        return 0
    chunks = _keys_of(session, session.scan(CHUNK, where={"doc_id": ("in", found)}, columns=[]))
    with session.transaction() as tx:
        if chunks:
            tx.delete_nodes(CHUNK, chunks)
        tx.delete_nodes(DOCUMENT, found)
    return len(found)


__all__ = ["BATCH_SIZE", "LOOKAHEAD", "Document", "IngestReport", "chunk_key", "chunk_relations", "content_hash", "delete_documents", "ingest"]
