"""GraphRAG over a knowledge store: ingestion (documents -> chunks -> embeddings -> entities/relations)
and retrieval (vector, keyword, hybrid RRF, personalized-PageRank graph mode), all through a Session.

    from knowledge.graphrag import Document, ingest, retrieve
    ingest(store.session(), docs, embedder=embedder)                  # admin session for writing
    result = store.session(reader).retrieve("question", k=5, embedder=embedder)

Schema (created if absent): Document{doc_id; title, text, metadata, content_hash} -HAS_CHUNK->
Chunk{chunk_id = f"{doc_id}#{i}"; text, position, doc_id, embedding} -MENTIONS-> Entity{name
(normalised); display, embedding} -RELATED{relation, chunk_id}-> Entity.

Label rule: chunks carry their document's labels; an entity carries the union of the labels of the
documents that mention it (monotone: labels are not removed when a document changes); a RELATED edge is
used and shown only when the chunk that stated it is visible to the reader. Since an edge is visible
only when both endpoints are, no traversal or PageRank flows through an entity the reader cannot see.
"""

from knowledge.graphrag.chunking import SentenceSplitter, Splitter, approx_tokens
from knowledge.graphrag.extract import Extractor, NameMatcher, NoExtractor, Triple
from knowledge.graphrag.fusion import rrf
from knowledge.graphrag.ingest import Document, IngestReport, delete_documents, ingest
from knowledge.graphrag.ppr import Transition, personalized_pagerank
from knowledge.graphrag.retrieve import (
    MODES,
    GraphParams,
    RetrievalResult,
    RetrievedChunk,
    RetrievedDocument,
    RetrievedEdge,
    RetrievedEntity,
    build_context,
    retrieve,
)
from knowledge.graphrag.schema import ensure_schema, graphrag_schema

__all__ = ["MODES", "Document", "Extractor", "GraphParams", "IngestReport", "NameMatcher", "NoExtractor",
           "RetrievalResult", "RetrievedChunk", "RetrievedDocument", "RetrievedEdge", "RetrievedEntity",
           "SentenceSplitter", "Splitter", "Transition", "Triple", "approx_tokens", "build_context",
           "delete_documents", "ensure_schema", "graphrag_schema", "ingest", "personalized_pagerank", "retrieve",
           "rrf"]
