"""GraphRAG over a knowledge store: ingestion (documents -> chunks -> embeddings -> entities/relations)
and retrieval (vector, keyword, hybrid RRF, personalized-PageRank graph mode), all through a Session.

    from knowledge.graphrag import Document, ingest, retrieve
    ingest(store.session(), docs, embedder=embedder)                  # admin session for writing
    result = store.session(reader).retrieve("question", k=5, embedder=embedder)

Schema (created if absent): Document{doc_id; title, text, metadata, content_hash} -HAS_CHUNK->
Chunk{chunk_id = f"{doc_id}#{i}"; text, title, position, doc_id, embedding} -MENTIONS-> Entity{name
(normalised); display, type, embedding} -RELATED{relation, chunk_id, weight, sentence}-> Entity, and
Entity -SYNONYM{score}-> Entity.

Extractors (what `ingest` turns chunks into entities and relations with): `default_extractor()` (used
when none is given) is `SpacyExtractor` with the nlp extra, else `RuleExtractor`; `LLMExtractor` does
OpenIE through any OpenAI-compatible chat endpoint; `CapitalizedExtractor` is the old heuristic,
`NoExtractor` extracts nothing.

Label rule: chunks carry their document's labels; an entity carries the union of the labels of the
documents that mention it (monotone: labels are not removed when a document changes); a RELATED edge is
used and shown only when the chunk that stated it is visible to the reader. Since an edge is visible
only when both endpoints are, no traversal or PageRank flows through an entity the reader cannot see.
"""

from knowledge.graphrag.chunking import SentenceSplitter, Splitter, approx_tokens
from knowledge.graphrag.extract import (
    COOCCURS,
    CapitalizedExtractor,
    ChunkInput,
    Extraction,
    Extractor,
    Mention,
    NameMatcher,
    NoExtractor,
    Relation,
    Triple,
    run_extractor,
)
from knowledge.graphrag.extract_llm import LLMExtractor, LLMUsage
from knowledge.graphrag.extract_rules import RuleExtractor, split_sentences
from knowledge.graphrag.extract_spacy import SpacyExtractor, spacy_available
from knowledge.graphrag.extractors import default_extractor, extractor_by_name
from knowledge.graphrag.fusion import rrf
from knowledge.graphrag.ingest import Document, IngestReport, delete_documents, ingest
from knowledge.graphrag.ppr import Transition, personalized_pagerank
from knowledge.graphrag.question import is_polar
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
from knowledge.graphrag.synonyms import SynonymConfig

__all__ = ["COOCCURS", "MODES", "CapitalizedExtractor", "ChunkInput", "Document", "Extraction", "Extractor",
           "GraphParams", "IngestReport", "LLMExtractor", "LLMUsage", "Mention", "NameMatcher", "NoExtractor",
           "Relation", "RetrievalResult", "RetrievedChunk", "RetrievedDocument", "RetrievedEdge", "RetrievedEntity",
           "RuleExtractor", "SentenceSplitter", "SpacyExtractor", "Splitter", "SynonymConfig", "Transition",
           "Triple", "approx_tokens", "build_context", "default_extractor", "delete_documents", "ensure_schema",
           "extractor_by_name", "graphrag_schema", "ingest", "is_polar", "personalized_pagerank", "retrieve", "rrf",
           "run_extractor", "spacy_available", "split_sentences"]
