"""What both framework adapters store and read: a framework "record" (LangChain Document, LlamaIndex
node) is one GraphRAG Document (doc_id = the record's id, text, metadata as JSON, labels) holding one
Chunk (f"{id}#0", the whole text and the record's vector). It is written by `knowledge.graphrag.ingest`,
so GraphRAG retrieval (and its entity graph, given an extractor) sees the same records, and read only
through the caller's session, so a framework sees nothing the session's principal may not.

Metadata filters are predicates over the visible Documents' metadata: the matching doc_ids become a
where-filter of the vector search, whose mask is ANDed with the session's visibility before ranking (k
results whenever k visible records match). The filter language is `compile_filter`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from knowledge.embed import Embedder, PrecomputedEmbedder, check_dimension
from knowledge.errors import InvalidArgument
from knowledge.graphrag import Document, Extractor, NoExtractor, delete_documents, ingest
from knowledge.graphrag.schema import CHUNK, DOCUMENT

Predicate = Callable[[str, str, dict[str, Any]], bool]
"""(id, text, metadata) -> keep the record."""


class WholeText:
    """The splitter of adapter records: the framework already chunked, so a record is one chunk as is."""

    fingerprint = "whole-text"

    def split(self, text: str) -> list[str]:
        return [text]


SPLITTER = WholeText()


@dataclass
class Record:
    """A framework record: id, text, metadata, and (when written or searched with embeddings) its vector."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None
    score: float | None = None


def new_ids(ids: Sequence[str | None] | None, count: int) -> list[str]:
    """`ids` checked (one per record; None or "" gets a fresh uuid4), or `count` fresh uuid4 strings."""
    if ids is None:
        return [str(uuid.uuid4()) for _ in range(count)]
    out = list(ids)
    if len(out) != count:
        raise InvalidArgument(f"{len(out)} ids for {count} records")
    for i, value in enumerate(out):
        if value is None or value == "":
            out[i] = str(uuid.uuid4())
        elif not isinstance(value, str) or "#" in value:
            raise InvalidArgument(f"ids[{i}] must be a string without '#', got {value!r}")
    return out


def write_records(session: Any, records: Sequence[Record], *, labels: Iterable[str], model: str,
                  extractor: Extractor | None = None, fallback: Embedder | None = None) -> list[str]:
    """Upsert records (each with its vector) through `ingest`, in one transaction per group of records
    with distinct texts; returns their ids. No entities are extracted unless `extractor` is given
    (then `fallback`, when given, embeds the entity names). A record whose id exists is replaced (its old chunk goes);
    one whose content is unchanged writes nothing. Raises DimensionMismatch (vectors of another width
    than the store's Chunk.embedding), InvalidArgument, and the store's errors (PermissionDenied when the
    session may not write `labels`)."""
    if not records:
        return []
    last = {record.id: record for record in records}          # a repeated id: the last one wins
    chosen = list(last.values())
    matrix = np.stack([np.asarray(r.vector, dtype=np.float32).reshape(-1) for r in chosen])
    check_dimension(session.store, int(matrix.shape[1]))
    label_list = sorted(set(labels))
    for group in _distinct_text_groups(chosen, matrix):
        vectors = matrix[group]
        digest = hashlib.sha256(vectors.tobytes()).hexdigest()[:16]
        embedder = PrecomputedEmbedder.from_arrays([chosen[i].text for i in group], vectors, fallback,
                                                   name=f"{model}:{digest}")
        docs = [Document(chosen[i].id, chosen[i].text, metadata=_json_safe(chosen[i].metadata),
                         labels=label_list) for i in group]
        ingest(session, docs, embedder=embedder, splitter=SPLITTER, extractor=extractor or NoExtractor(),
               progress=False)
    return [record.id for record in records]


def _distinct_text_groups(records: list[Record], matrix: np.ndarray) -> list[list[int]]:
    """Indices grouped so that no group holds one text twice with different vectors (a
    PrecomputedEmbedder maps each text to one vector)."""
    groups: list[tuple[list[int], dict[str, int]]] = []
    for i, record in enumerate(records):
        for members, texts in groups:
            seen = texts.get(record.text)
            if seen is None or np.array_equal(matrix[seen], matrix[i]):
                members.append(i)
                texts.setdefault(record.text, i)
                break
        else:
            groups.append(([i], {record.text: i}))
    return [members for members, _ in groups]


def _json_safe(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidArgument(f"metadata must be a mapping, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"metadata must be JSON-serialisable: {e}") from e


def _metadata(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, Mapping) else {}


def get_records(session: Any, ids: Sequence[str]) -> list[Record]:
    """The visible records among `ids`, in that order (absent or invisible ids are skipped)."""
    wanted = [i for i in dict.fromkeys(ids) if isinstance(i, str) and "#" not in i]
    if not wanted or DOCUMENT not in session.store.schema.nodes:
        return []
    table = session.get_many(DOCUMENT, wanted, ["doc_id", "text", "metadata"])
    found = {row["doc_id"]: Record(row["doc_id"], row["text"] or "", _metadata(row["metadata"]))
             for row in table.to_pylist()}
    return [found[i] for i in wanted if i in found]


def delete_records(session: Any, ids: Iterable[str]) -> int:
    """Delete the visible records among `ids` (with their chunks); returns how many were deleted."""
    return delete_documents(session, [i for i in ids if isinstance(i, str) and "#" not in i])


_VISIBLE: weakref.WeakKeyDictionary[Any, tuple[int, bool, list[tuple[str, str, dict[str, Any]]]]] = \
    weakref.WeakKeyDictionary()
"""Per session: (LSN, with texts, the visible Documents' (doc_id, text, decoded metadata)) of its last scan."""


def _visible_rows(session: Any, needs_text: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """The session's visible Documents as (doc_id, text or "", metadata), scanned once per LSN: every
    change of data, labels or grants is a WAL record, so an unchanged LSN means an unchanged view."""
    with session.snapshot() as lsn:
        cached = _VISIBLE.get(session)
        if cached is not None and cached[0] == lsn and (cached[1] or not needs_text):
            return cached[2]
        table = session.scan(DOCUMENT, columns=["doc_id", "metadata", *(["text"] if needs_text else [])])
        keys = table.column("doc_id").to_pylist()
        texts = table.column("text").to_pylist() if needs_text else [""] * len(keys)
        rows = [(key, text or "", _metadata(metadata))
                for key, text, metadata in zip(keys, texts, table.column("metadata").to_pylist(), strict=True)]
        _VISIBLE[session] = (lsn, needs_text, rows)
        return rows


def matching_ids(session: Any, predicate: Predicate) -> list[str]:
    """doc_ids of the visible Documents for which predicate(id, text, metadata) holds (the predicate must
    not change `metadata`). The text is read only for a predicate marked `needs_text` (see `with_text`);
    otherwise it gets "". The decoded metadata is kept per session until its LSN moves."""
    if DOCUMENT not in session.store.schema.nodes:
        return []
    rows = _visible_rows(session, bool(getattr(predicate, "needs_text", False)))
    return [key for key, text, metadata in rows if predicate(key, text, metadata)]


def with_text(predicate: Predicate) -> Predicate:
    """Mark a predicate as reading the record's text (matching_ids then fetches it)."""
    predicate.needs_text = True  # type: ignore[attr-defined]
    return predicate


POST_FILTER_ROWS_MAX = 4096
"""A filtered search first ranks up to this many visible chunks unfiltered and keeps the matching ones
(no table query); when that cannot hold k matches it runs the search with a where-filter instead."""
OVERSAMPLE = 2.0
"""How many times the expected number of rows holding k matches the unfiltered first pass ranks."""


def search_records(session: Any, vector: Any, k: int, predicate: Predicate | None = None, *,
                   with_vectors: bool = False) -> list[Record]:
    """The k visible records nearest `vector` (cosine similarity in `score`, best first) among those
    the predicate keeps (k whenever k visible records match), all read at one LSN. Raises
    InvalidArgument (k, or a vector of the wrong width)."""
    if CHUNK not in session.store.schema.nodes:
        return []
    query = np.asarray(vector, dtype=np.float32)
    with session.snapshot():
        if predicate is None:
            ranked = _ranked(session.search(query, k, type=CHUNK, property="embedding"))
        else:
            ranked = _filtered(session, query, k, predicate)
        return _hydrate(session, ranked, with_vectors)


def _ranked(table: Any) -> list[tuple[str, float]]:
    return list(zip(table.column("_key").to_pylist(), table.column("_score").to_pylist(), strict=True))


def _filtered(session: Any, query: np.ndarray, k: int, predicate: Predicate) -> list[tuple[str, float]]:
    """(chunk key, score) of the k best chunks of matching records: the matching ones among an unfiltered
    top `wanted` when those hold k of them (then they are the k best matching), else a where-filtered
    search."""
    ids = matching_ids(session, predicate)
    if not ids:
        return []
    chunks = session.count(CHUNK)
    wanted = k + math.ceil(OVERSAMPLE * k * chunks / len(ids))
    if wanted < min(chunks, POST_FILTER_ROWS_MAX):
        allowed = set(ids)
        ranked = [(key, score) for key, score in _ranked(session.search(query, wanted, type=CHUNK,
                                                                        property="embedding"))
                  if key.split("#", 1)[0] in allowed]
        if len(ranked) >= k:
            return ranked[:k]
    return _ranked(session.search(query, k, type=CHUNK, property="embedding", where={"doc_id": ("in", ids)}))


def _hydrate(session: Any, ranked: list[tuple[str, float]], with_vectors: bool) -> list[Record]:
    """Records (chunk text, document metadata, score) for ranked chunk keys, in order."""
    if not ranked:
        return []
    columns = ["chunk_id", "text", "doc_id", *(["embedding"] if with_vectors else [])]
    rows = {row["chunk_id"]: row for row in session.get_many(CHUNK, [key for key, _ in ranked], columns).to_pylist()}
    metadata = {r.id: r.metadata for r in get_records(session, [row["doc_id"] for row in rows.values()])}
    out = []
    for key, score in ranked:
        row = rows.get(key)
        if row is None or row["doc_id"] not in metadata:   # hidden or gone: never returned
            continue
        vector = np.asarray(row["embedding"], dtype=np.float32) if with_vectors else None
        out.append(Record(row["doc_id"], row["text"] or "", metadata[row["doc_id"]], vector, float(score)))
    return out


__all__ = ["SPLITTER", "Predicate", "Record", "WholeText", "delete_records", "get_records", "matching_ids",
           "new_ids", "search_records", "with_text", "write_records"]
