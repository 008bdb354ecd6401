"""LlamaIndex adapters (extra `llamaindex`: llama-index-core), each bound to a knowledge Session, so the
principal's view is all a query engine ever sees.

    from knowledge.adapters.llamaindex import KnowledgeEmbedding, KnowledgeRetriever, KnowledgeVectorStore
    vector_store = KnowledgeVectorStore(session, labels=["public"])            # BasePydanticVectorStore
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(
        vector_store=vector_store), embed_model=KnowledgeEmbedding(HashingEmbedder()))
    retriever = KnowledgeRetriever(reader_session, embedding=embedder, mode="graph", similarity_top_k=5)

- `KnowledgeVectorStore`: add (nodes with their embeddings), query (VectorStoreQuery: embedding, top k,
  MetadataFilters with every FilterOperator and AND / OR / NOT, nested; doc_ids, node_ids; DEFAULT and
  TEXT_SEARCH modes), delete (by ref_doc_id), get_nodes, delete_nodes, clear. A node is a GraphRAG
  Document with one Chunk (knowledge.adapters._records); its LlamaIndex fields travel in the Document's
  metadata as llama-index's own `node_to_metadata_dict` writes them.
- `KnowledgeRetriever`: GraphRAG retrieval (knowledge.graphrag.retrieve) as a LlamaIndex BaseRetriever:
  NodeWithScore per chunk, metadata as in knowledge.adapters.graph (chunk, document, score, entities,
  paths).
- `KnowledgeEmbedding`: a knowledge Embedder as a LlamaIndex BaseEmbedding.

No PropertyGraphStore: see the README (what of its interface maps onto the typed graph, and what not).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

try:
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.schema import BaseNode, NodeWithScore, QueryBundle, TextNode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
    from pydantic import PrivateAttr
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(f"knowledge.adapters.llamaindex needs the llamaindex extra: "
                      f"pip install 'knowledge[llamaindex]' ({e})") from e

import knowledge
from knowledge.adapters._records import (
    Predicate,
    Record,
    delete_records,
    get_records,
    matching_ids,
    search_records,
    write_records,
)
from knowledge.adapters.filters import compile_filter
from knowledge.adapters.graph import Hit, graph_hits
from knowledge.embed import Embedder
from knowledge.errors import InvalidArgument
from knowledge.graphrag import Extractor
from knowledge.graphrag.schema import CHUNK

_OPERATORS = {FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt",
              FilterOperator.GTE: "$gte", FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte",
              FilterOperator.IN: "$in", FilterOperator.NIN: "$nin", FilterOperator.ANY: "$any",
              FilterOperator.ALL: "$all", FilterOperator.TEXT_MATCH: "$text",
              FilterOperator.TEXT_MATCH_INSENSITIVE: "$itext", FilterOperator.CONTAINS: "$contains"}
GRAPH_METADATA_HIDDEN = ("ranks", "paths", "lsn", "mode", "score", "document_metadata", "position")
"""Retriever metadata left out of what the LLM and the embedder see of a node (kept on the node)."""


def filters_to_spec(filters: MetadataFilters | MetadataFilter | None) -> dict[str, Any] | None:
    """LlamaIndex MetadataFilters (nested, AND / OR / NOT: none of them holds) as a
    knowledge.adapters.filters spec."""
    if filters is None:
        return None
    if isinstance(filters, MetadataFilter):
        if filters.operator == FilterOperator.IS_EMPTY:
            return {filters.key: {"$empty": True}}
        operator = _OPERATORS.get(filters.operator)
        if operator is None:
            raise InvalidArgument(f"unsupported LlamaIndex filter operator {filters.operator!r}")
        return {filters.key: {operator: filters.value}}
    parts = [part for part in (filters_to_spec(f) for f in filters.filters) if part]
    if not parts:
        return None
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return {"$and": parts}
    if condition == FilterCondition.OR:
        return {"$or": parts}
    return {"$not": {"$or": parts}}


def _predicate(filters: MetadataFilters | None, node_ids: Iterable[str] | None = None,
               doc_ids: Iterable[str] | None = None) -> Predicate | None:
    test = compile_filter(filters_to_spec(filters))
    # An empty list restricts nothing: VectorStoreIndex.as_retriever() passes node_ids=[] for stores
    # that keep the text (its index struct then lists no nodes).
    nodes = set(node_ids) if node_ids else None
    docs = set(doc_ids) if doc_ids else None
    if test is None and nodes is None and docs is None:
        return None

    def keep(id_: str, text: str, metadata: dict[str, Any]) -> bool:
        return ((nodes is None or id_ in nodes) and (docs is None or metadata.get("ref_doc_id") in docs)
                and (test is None or test(metadata)))
    return keep


def _node(record: Record) -> BaseNode:
    if "_node_content" in record.metadata:
        node = metadata_dict_to_node(record.metadata, text=record.text)
    else:       # a document ingested by knowledge.graphrag, not through this adapter
        node = TextNode(id_=record.id, text=record.text, metadata=dict(record.metadata))
    return node


class KnowledgeVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over a knowledge session: nodes are written with the session's write
    grants on `labels`; queries see only what the session's principal may read. Similarities are
    cosine (TEXT_SEARCH mode: BM25 scores). Filters are evaluated over the visible nodes only."""

    stores_text: bool = True
    flat_metadata: bool = False
    labels: list[str] = []
    model_name: str = "llamaindex"
    _session: Any = PrivateAttr()
    _extractor: Any = PrivateAttr(default=None)

    def __init__(self, session: knowledge.Session, *, labels: Iterable[str] = (),
                 extractor: Extractor | None = None, **kwargs: Any) -> None:
        if not isinstance(session, knowledge.Session):
            raise InvalidArgument(f"session must be a knowledge.Session, got {type(session).__name__}")
        super().__init__(labels=list(labels), **kwargs)
        self._session = session
        self._extractor = extractor

    @classmethod
    def class_name(cls) -> str:
        return "KnowledgeVectorStore"

    @property
    def client(self) -> Any:
        """The knowledge Session the store reads and writes through."""
        return self._session

    def add(self, nodes: list[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert nodes (each must carry its embedding); `labels=` overrides the store's labels."""
        records = []
        for node in nodes:
            embedding = node.embedding
            if embedding is None:
                raise InvalidArgument(f"node {node.node_id!r} has no embedding: embed it first (an index does)")
            metadata = node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
            records.append(Record(node.node_id, node.get_content(), metadata, np.asarray(embedding)))
        labels = add_kwargs.get("labels", self.labels)
        return write_records(self._session, records, labels=labels, model=self.model_name, extractor=self._extractor)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every visible node whose ref_doc_id is `ref_doc_id`."""
        ids = matching_ids(self._session, lambda id_, text, metadata: metadata.get("ref_doc_id") == ref_doc_id)
        delete_records(self._session, ids)

    def get_nodes(self, node_ids: list[str] | None = None,
                  filters: MetadataFilters | None = None) -> list[BaseNode]:
        """The visible nodes among node_ids (all visible nodes when None) that pass `filters`."""
        if node_ids is not None and filters is None:
            ids = list(node_ids)
        else:
            ids = matching_ids(self._session, _predicate(filters, node_ids) or (lambda *_: True))
        return [_node(record) for record in get_records(self._session, ids)]

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        """Delete the visible nodes among node_ids (all visible when None) that pass `filters`."""
        predicate = _predicate(filters, node_ids) or (lambda *_: True)
        delete_records(self._session, matching_ids(self._session, predicate))

    def clear(self) -> None:
        """Delete every node (every GraphRAG document) the session can see."""
        delete_records(self._session, matching_ids(self._session, lambda *_: True))

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        predicate = _predicate(query.filters, query.node_ids, query.doc_ids)
        k = query.similarity_top_k
        if query.mode == VectorStoreQueryMode.TEXT_SEARCH:
            hits = self._keyword(query.query_str or "", k, predicate)
        elif query.mode == VectorStoreQueryMode.DEFAULT:
            if query.query_embedding is None:
                raise InvalidArgument("a DEFAULT-mode query needs query_embedding")
            hits = search_records(self._session, query.query_embedding, k, predicate)
        else:
            raise InvalidArgument(f"query mode {query.mode.value!r} is not supported (default, text_search); "
                                  f"use KnowledgeRetriever for hybrid and graph retrieval")
        return VectorStoreQueryResult(nodes=[_node(h) for h in hits], similarities=[float(h.score or 0) for h in hits],
                                      ids=[h.id for h in hits])

    def _keyword(self, text: str, k: int, predicate: Predicate | None) -> list[Record]:
        session = self._session
        if CHUNK not in session.store.schema.nodes or not text.strip():
            return []
        where = None
        if predicate is not None:
            ids = matching_ids(session, predicate)
            if not ids:
                return []
            where = {"doc_id": ("in", ids)}
        table = session.keyword_search(text, k, type=CHUNK, property="text", where=where, columns=["doc_id"])
        rows = table.to_pylist()
        found = {r.id: r for r in get_records(session, [row["doc_id"] for row in rows])}
        return [Record(row["doc_id"], found[row["doc_id"]].text, found[row["doc_id"]].metadata,
                       score=float(row["_score"])) for row in rows if row["doc_id"] in found]


class KnowledgeEmbedding(BaseEmbedding):
    """A knowledge Embedder (HashingEmbedder, OpenAIEmbedder, SentenceTransformerEmbedder...) as a
    LlamaIndex embedding model: queries and texts are embedded alike."""

    _embedder: Any = PrivateAttr()

    def __init__(self, embedder: Embedder, **kwargs: Any) -> None:
        kwargs.setdefault("model_name", embedder.name)
        super().__init__(**kwargs)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "KnowledgeEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embeddings([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return np.asarray(self._embedder.embed(list(texts)), dtype=np.float32).tolist()


class KnowledgeRetriever(BaseRetriever):
    """GraphRAG retrieval through a session as a LlamaIndex retriever (knowledge.graphrag.retrieve: mode,
    similarity_top_k, token_budget). `embedding`: a knowledge Embedder or a LlamaIndex BaseEmbedding (a
    QueryBundle's own embedding is used when it has one); None allows only mode "keyword" (and "auto")."""

    def __init__(self, session: knowledge.Session, *, embedding: Embedder | BaseEmbedding | None = None,
                 mode: str = "graph", similarity_top_k: int = 4, token_budget: int = 2000, params: Any = None,
                 **kwargs: Any) -> None:
        if not isinstance(session, knowledge.Session):
            raise InvalidArgument(f"session must be a knowledge.Session, got {type(session).__name__}")
        super().__init__(**kwargs)
        self.session = session
        self.embedding = embedding
        self.mode = mode
        self.similarity_top_k = similarity_top_k
        self.token_budget = token_budget
        self.params = params

    def _query_vector(self, query: QueryBundle) -> Any:
        if query.embedding is not None:
            return query.embedding
        if isinstance(self.embedding, BaseEmbedding):
            return self.embedding.get_query_embedding(query.query_str)
        if self.embedding is not None:
            return np.asarray(self.embedding.embed([query.query_str]), dtype=np.float32)[0]
        return None

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = graph_hits(self.session, query_bundle.query_str, k=self.similarity_top_k, mode=self.mode,
                          query_vector=self._query_vector(query_bundle), token_budget=self.token_budget,
                          params=self.params)
        return [_scored(hit) for hit in hits]


def _scored(hit: Hit) -> NodeWithScore:
    hidden = [key for key in GRAPH_METADATA_HIDDEN if key in hit.metadata]
    node = TextNode(id_=hit.id, text=hit.text, metadata=dict(hit.metadata), excluded_llm_metadata_keys=hidden,
                    excluded_embed_metadata_keys=list(hit.metadata))
    return NodeWithScore(node=node, score=hit.score)


__all__ = ["GRAPH_METADATA_HIDDEN", "KnowledgeEmbedding", "KnowledgeRetriever", "KnowledgeVectorStore",
           "filters_to_spec"]
