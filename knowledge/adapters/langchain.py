"""LangChain adapters (extra `langchain`: langchain-core >= 1.0), each bound to a knowledge Session, so
the principal's view is all a chain ever sees.

    from knowledge.adapters.langchain import KnowledgeGraphRetriever, KnowledgeVectorStore
    store = KnowledgeVectorStore(session, embeddings, labels=["public"])       # a LangChain VectorStore
    store.add_texts(["Ada wrote the first program."], metadatas=[{"year": 1843}], ids=["ada"])
    store.similarity_search("first program", k=4, filter={"year": {"$lt": 1900}})
    retriever = KnowledgeGraphRetriever(session=reader, embedding=embeddings, mode="graph", k=5)

- `KnowledgeVectorStore`: add_texts / add_documents (metadata, ids; an existing id is replaced),
  similarity_search (with scores, by vector, metadata filters: knowledge.adapters.filters), max marginal
  relevance, delete, get_by_ids, from_texts, as_retriever. Each record is a GraphRAG Document with one
  Chunk (knowledge.adapters._records), so GraphRAG retrieval sees what the store holds.
- `KnowledgeGraphRetriever`: a `BaseRetriever` over `knowledge.graphrag.retrieve` (mode, k, token
  budget); each Document carries the chunk's text and, as metadata, chunk_id, doc_id, score, position,
  title, the document's metadata, the chunk's entities and the paths (MENTIONS / RELATED edges) behind it.
- `KnowledgeEmbeddings` (a knowledge Embedder as LangChain Embeddings) and `LangChainEmbedder` (LangChain
  Embeddings as a knowledge Embedder).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document as LCDocument
    from langchain_core.embeddings import Embeddings
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
    from pydantic import ConfigDict
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"knowledge.adapters.langchain needs the langchain extra: "
                      f"pip install 'knowledge[langchain]' ({e})") from e

import knowledge
from knowledge.adapters._records import (
    Predicate,
    Record,
    delete_records,
    get_records,
    new_ids,
    search_records,
    with_text,
    write_records,
)
from knowledge.adapters.filters import compile_filter
from knowledge.adapters.graph import graph_hits
from knowledge.embed import Embedder, l2_normalize
from knowledge.errors import InvalidArgument
from knowledge.graphrag import Extractor


class KnowledgeEmbeddings(Embeddings):
    """A knowledge `Embedder` (HashingEmbedder, OpenAIEmbedder, SentenceTransformerEmbedder...) as
    LangChain `Embeddings`: documents and queries are embedded alike."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return np.asarray(self.embedder.embed(list(texts)), dtype=np.float32).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class LangChainEmbedder:
    """LangChain `Embeddings` as a knowledge `Embedder` (embed_documents, rows L2-normalised); the
    dimension is learnt from one probe query when not given."""

    def __init__(self, embeddings: Embeddings, *, dimension: int | None = None, name: str | None = None) -> None:
        self.embeddings = embeddings
        self.name: str = name or _model_name(embeddings)
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._dimension = len(self.embeddings.embed_query("dimension probe"))
        return self._dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = list(texts)
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return l2_normalize(np.asarray(self.embeddings.embed_documents(items), dtype=np.float32))


def _model_name(embeddings: Any) -> str:
    for attribute in ("model", "model_name"):
        value = getattr(embeddings, attribute, None)
        if isinstance(value, str) and value:
            return value
    if isinstance(embeddings, KnowledgeEmbeddings):
        return embeddings.embedder.name
    return type(embeddings).__name__


def _embeddings(embedding: Embeddings | Embedder) -> Embeddings:
    if isinstance(embedding, Embeddings):
        return embedding
    if hasattr(embedding, "embed") and hasattr(embedding, "name"):
        return KnowledgeEmbeddings(embedding)
    raise InvalidArgument(f"embedding must be LangChain Embeddings or a knowledge Embedder, got "
                          f"{type(embedding).__name__}")


def _predicate(filter: Any) -> Predicate | None:  # noqa: A002 - LangChain's name
    """A record predicate for a LangChain filter: a dict (knowledge.adapters.filters) or a callable
    taking the LangChain Document."""
    if filter is None:
        return None
    if callable(filter):
        return with_text(lambda id_, text, metadata: bool(filter(LCDocument(page_content=text, metadata=dict(metadata),
                                                                             id=id_))))
    test = compile_filter(filter)
    return None if test is None else (lambda id_, text, metadata: test(metadata))


def _document(record: Record) -> LCDocument:
    return LCDocument(page_content=record.text, metadata=dict(record.metadata), id=record.id)


class KnowledgeVectorStore(VectorStore):
    """A LangChain VectorStore over a knowledge session: writes need the session's write grants on
    `labels` (every record gets them), reads see only what the session's principal may read.

    `extractor` (e.g. knowledge.graphrag.NameMatcher) adds entities to the records, for
    KnowledgeGraphRetriever's graph mode. Scores are cosine similarities (higher is better);
    relevance scores are (1 + cosine) / 2, in [0, 1]."""

    def __init__(self, session: knowledge.Session, embedding: Embeddings | Embedder, *,
                 labels: Iterable[str] = (), extractor: Extractor | None = None) -> None:
        if not isinstance(session, knowledge.Session):
            raise InvalidArgument(f"session must be a knowledge.Session, got {type(session).__name__}")
        self.session = session
        self._embeddings = _embeddings(embedding)
        self.labels = list(labels)
        self.extractor = extractor

    @property
    def embeddings(self) -> Embeddings:
        return self._embeddings

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str | None] | None = None, labels: Iterable[str] | None = None,
                  **kwargs: Any) -> list[str]:
        """Embed and upsert texts; returns their ids (given ones kept, missing ones uuid4). `labels`
        overrides the store's labels for these texts."""
        items = list(texts)
        if metadatas is not None and len(metadatas) != len(items):
            raise InvalidArgument(f"{len(metadatas)} metadatas for {len(items)} texts")
        keys = new_ids(ids, len(items))
        if not items:
            return []
        vectors = self._embeddings.embed_documents(items)
        records = [Record(key, text, dict((metadatas or [{}] * len(items))[i] or {}), np.asarray(vectors[i]))
                   for i, (key, text) in enumerate(zip(keys, items, strict=True))]
        fallback = LangChainEmbedder(self._embeddings, dimension=len(vectors[0])) if self.extractor else None
        return write_records(self.session, records, labels=self.labels if labels is None else labels,
                             model=_model_name(self._embeddings), extractor=self.extractor, fallback=fallback)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the records with these ids (absent or invisible ids are ignored). ids=None deletes
        nothing and raises InvalidArgument (no accidental wipe)."""
        if ids is None:
            raise InvalidArgument("delete() needs the ids to delete")
        delete_records(self.session, list(ids))
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[LCDocument]:
        return [_document(record) for record in get_records(self.session, list(ids))]

    def similarity_search(self, query: str, k: int = 4, filter: Any = None,  # noqa: A002
                          **kwargs: Any) -> list[LCDocument]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: Any = None,  # noqa: A002
                                     **kwargs: Any) -> list[tuple[LCDocument, float]]:
        vector = self._embeddings.embed_query(query)
        return self.similarity_search_with_score_by_vector(vector, k, filter=filter, **kwargs)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: Any = None,  # noqa: A002
                                    **kwargs: Any) -> list[LCDocument]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter=filter)]

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                               filter: Any = None,  # noqa: A002
                                               **kwargs: Any) -> list[tuple[LCDocument, float]]:
        """(Document, cosine similarity) of the k nearest visible records that pass `filter`."""
        hits = search_records(self.session, embedding, k, _predicate(filter))
        return [(_document(hit), float(hit.score or 0.0)) for hit in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda score: (1.0 + score) / 2.0

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: Any = None, **kwargs: Any) -> list[LCDocument]:  # noqa: A002
        vector = self._embeddings.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter=filter)

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: Any = None,  # noqa: A002
                                                **kwargs: Any) -> list[LCDocument]:
        hits = search_records(self.session, embedding, max(fetch_k, k), _predicate(filter), with_vectors=True)
        if not hits:
            return []
        chosen = maximal_marginal_relevance(np.asarray(embedding, dtype=np.float32),
                                            [hit.vector for hit in hits], lambda_mult=lambda_mult, k=k)
        return [_document(hits[i]) for i in chosen]

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, session: knowledge.Session | None = None,
                   path: str | None = None, labels: Iterable[str] = (), **kwargs: Any) -> KnowledgeVectorStore:
        """A store over `session` (or over an admin session of the store at `path`, opened or created),
        holding `texts`."""
        if session is None:
            if path is None:
                raise InvalidArgument("from_texts needs session= (a knowledge.Session) or path= (a store directory)")
            session = knowledge.open(path).session()
        store = cls(session, embedding, labels=labels, extractor=kwargs.pop("extractor", None))
        store.add_texts(texts, metadatas, ids=ids)
        return store


class KnowledgeGraphRetriever(BaseRetriever):
    """GraphRAG retrieval (knowledge.graphrag.retrieve) as a LangChain retriever, bound to a session.

    `embedding`: LangChain Embeddings (the question is embedded with embed_query) or a knowledge
    Embedder; None allows only mode "keyword" (and "auto", keyword-seeded). `k` and `token_budget` may
    also be passed to invoke(). Documents, best first, come while their texts fit the token budget
    (approximate tokens; the first is cut to fit when it alone does not)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    session: Any
    embedding: Any = None
    mode: str = "graph"
    k: int = 4
    token_budget: int = 2000
    params: Any = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[LCDocument]:
        if not isinstance(self.session, knowledge.Session):
            raise InvalidArgument(f"session must be a knowledge.Session, got {type(self.session).__name__}")
        k = kwargs.pop("k", self.k)
        budget = kwargs.pop("token_budget", self.token_budget)
        mode = kwargs.pop("mode", self.mode)
        vector = None
        if self.embedding is not None:
            embeddings = _embeddings(self.embedding)
            vector = embeddings.embed_query(query)
        hits = graph_hits(self.session, query, k=k, mode=mode, query_vector=vector, token_budget=budget,
                          params=self.params)
        return [LCDocument(page_content=hit.text, metadata=hit.metadata, id=hit.id) for hit in hits]


__all__ = ["KnowledgeEmbeddings", "KnowledgeGraphRetriever", "KnowledgeVectorStore", "LangChainEmbedder"]
