"""GraphRAG retrieval shaped for the framework retrievers: one hit per returned chunk, with its text, its
score and, as metadata, where it comes from and the entities and paths behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from knowledge.graphrag import RetrievalResult, approx_tokens, retrieve
from knowledge.graphrag.chunking import TOKENS_PER_WORD


@dataclass
class Hit:
    """A retrieved chunk: `id` its key (f"{doc_id}#{position}"), `text` (cut to the token budget when it
    is the first hit and alone exceeds it), `score`, and JSON-serialisable `metadata`."""

    id: str
    text: str
    score: float
    metadata: dict[str, Any]


def graph_hits(session: Any, question: str, *, k: int, mode: str, query_vector: Any = None,
               embedder: Any = None, token_budget: int = 2000, params: Any = None) -> list[Hit]:
    """`knowledge.graphrag.retrieve` through `session`, as hits, best first, while their texts fit
    `token_budget` (approximate tokens). Metadata: chunk_id, doc_id, score, position, ranks (per stage),
    title and document_metadata (of its document), entities (names the chunk mentions, best PPR mass
    first), paths (the MENTIONS and RELATED edges among them that support it: type, src, dst, relation,
    chunk_id, score), mode and lsn. Raises what retrieve raises (InvalidArgument, EmbedderUnavailable,
    UnknownType)."""
    result = retrieve(session, question, k, mode, embedder, token_budget, query_vector=query_vector,
                      params=params)
    return _hits(result, token_budget)


def _hits(result: RetrievalResult, token_budget: int) -> list[Hit]:
    documents = {d.doc_id: d for d in result.documents}
    ranked = [e.name for e in result.entities]
    out: list[Hit] = []
    used = 0
    for chunk in result.chunks:
        text = chunk.text
        cost = approx_tokens(text)
        if used + cost > token_budget:
            if out:
                break
            text = _cut(text, token_budget)
            cost = approx_tokens(text)
        used += cost
        mine = set(chunk.entities)
        entities = [name for name in ranked if name in mine] + [n for n in chunk.entities if n not in ranked]
        paths = [{"type": e.type, "src": e.src, "dst": e.dst, "relation": e.relation, "chunk_id": e.chunk_id,
                  "score": e.score}
                 for e in result.edges
                 if (e.type == "MENTIONS" and e.src == chunk.key)
                 or (e.type == "RELATED" and e.src in mine and e.dst in mine)]
        document = documents.get(chunk.doc_id)
        metadata = {"chunk_id": chunk.key, "doc_id": chunk.doc_id, "score": chunk.score,
                    "position": chunk.position, "ranks": dict(chunk.ranks),
                    "title": document.title if document else None,
                    "document_metadata": document.metadata if document else None,
                    "entities": entities, "paths": paths, "mode": result.mode, "lsn": result.lsn}
        out.append(Hit(chunk.key, text, chunk.score, metadata))
    return out


def _cut(text: str, token_budget: int) -> str:
    words = text.split()
    keep = max(0, int(token_budget / TOKENS_PER_WORD))
    while keep and approx_tokens(" ".join(words[:keep])) > token_budget:
        keep -= 1
    return " ".join(words[:keep])


__all__ = ["Hit", "graph_hits"]
