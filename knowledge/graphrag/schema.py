"""The default GraphRAG schema: Document -HAS_CHUNK-> Chunk -MENTIONS-> Entity -RELATED-> Entity, and
Entity -SYNONYM-> Entity (close name embeddings).

Chunk.title (text) holds the document title, so the keyword index covers titles; Entity.type is the
extractor's entity type (first seen); RELATED.weight counts how often the stating chunk related the two
(co-occurring sentences), RELATED.sentence is the first sentence that did; SYNONYM.score is the cosine
similarity of the two names' embeddings. Chunk.relations (json) lists the relations the chunk states, one
`{src, dst, relation, weight, sentence}` per entity pair: it carries the chunk's labels, so retrieval
builds the relation graph from the chunks the reader can see (RELATED edges hold one chunk's statement
per pair, see ingest.py). RELATED is a hidden edge type: one edge per pair summarises chunks of
possibly different labels, so only admins read it; everyone else reads relations through the chunks
that state them (Chunk.relations) and retrieval. Stores made before these properties existed get them added
(optional properties) by `ensure_schema`."""

from __future__ import annotations

from typing import Any

from knowledge.embed import DEFAULT_DIMENSION

DOCUMENT = "Document"
CHUNK = "Chunk"
ENTITY = "Entity"
HAS_CHUNK = "HAS_CHUNK"
MENTIONS = "MENTIONS"
RELATED = "RELATED"
SYNONYM = "SYNONYM"


def graphrag_schema(dimension: int = DEFAULT_DIMENSION) -> dict[str, Any]:
    """The schema change (for `Store.apply_schema`) that declares the GraphRAG types with `dimension`-d vectors."""
    vector = {"type": f"vector[{dimension}]", "metric": "cosine"}
    return {
        "nodes": {
            DOCUMENT: {"key": "doc_id", "properties": {"title": "str", "text": "text", "metadata": "json",
                                                       "content_hash": "str"}},
            CHUNK: {"key": "chunk_id", "properties": {"text": "text", "position": "int", "doc_id": "str",
                                                      "embedding": vector, "title": "text",
                                                      "relations": "json"}},
            ENTITY: {"key": "name", "properties": {"display": "str", "embedding": vector, "type": "str"}},
        },
        "edges": {
            HAS_CHUNK: {"source": DOCUMENT, "target": CHUNK, "properties": {}},
            MENTIONS: {"source": CHUNK, "target": ENTITY, "properties": {}},
            RELATED: {"source": ENTITY, "target": ENTITY, "hidden": True,
                      "properties": {"relation": "str", "chunk_id": "str", "weight": "float", "sentence": "str"}},
            SYNONYM: {"source": ENTITY, "target": ENTITY, "properties": {"score": "float"}},
        },
    }


def ensure_schema(store: Any, dimension: int = DEFAULT_DIMENSION) -> int:
    """Declare the GraphRAG schema if absent (idempotent: no WAL record when it is already there).

    Returns the schema's LSN. Raises SchemaError when an incompatible schema of the same names exists
    (e.g. another vector dimension).
    """
    return int(store.apply_schema(graphrag_schema(dimension)))


__all__ = ["CHUNK", "DOCUMENT", "ENTITY", "HAS_CHUNK", "MENTIONS", "RELATED", "SYNONYM", "ensure_schema", "graphrag_schema"]
