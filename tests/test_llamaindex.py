"""The LlamaIndex adapters. The vector-store tests follow llama-index-core's own SimpleVectorStore tests
(tests/vector_stores/test_simple.py: the same three nodes, filters, operators and expectations), run
against KnowledgeVectorStore on a real store; then VectorStoreIndex end to end, the GraphRAG retriever
and access control."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core", reason="needs the llamaindex extra: pip install -e '.[llamaindex]'")

from llama_index.core import Document as LIDocument  # noqa: E402
from llama_index.core import StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.schema import NodeRelationship, QueryBundle, RelatedNodeInfo, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    ExactMatchFilter,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

import knowledge  # noqa: E402
from knowledge.adapters.llamaindex import (  # noqa: E402
    KnowledgeEmbedding,
    KnowledgeRetriever,
    KnowledgeVectorStore,
    filters_to_spec,
)
from knowledge.embed import HashingEmbedder  # noqa: E402
from knowledge.errors import DimensionMismatch, InvalidArgument, PermissionDenied  # noqa: E402
from knowledge.graphrag import Document, ingest  # noqa: E402

A = "AF3BE6C4-5F43-4D74-B075-6B0E07900DE8"   # weight 1, rank a
B = "7D9CD555-846C-445C-A9DD-F8924A01411D"   # weight 2, rank c
C = "452D24AB-F185-414C-A352-590B4B9EE51B"   # weight 3, rank c


def _nodes() -> list[TextNode]:
    spec = [(A, [1.0, 0.0], "test-0", 1.0, "a", ["medium", "high"], "6FTR78Yun"),
            (B, [0.0, 1.0], "test-1", 2.0, "c", ["medium"], "6FTR78Ygl"),
            (C, [1.0, 1.0], "test-2", 3.0, "c", ["low", "medium", "high"], "6FTR78Ztl")]
    return [TextNode(text="lorem ipsum", id_=node_id, embedding=embedding,
                     relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=source)},
                     metadata={"weight": weight, "rank": rank, "quality": quality, "identifier": identifier})
            for node_id, embedding, source, weight, rank, quality, identifier in spec]


@pytest.fixture
def knowledge_store(tmp_path):
    with knowledge.open(str(tmp_path / "li.store")) as store:
        store.create_principal("reader", read=["public"])
        yield store


@pytest.fixture
def vector_store(knowledge_store):
    vs = KnowledgeVectorStore(knowledge_store.session(), labels=["public"])
    assert vs.add(_nodes()) == [A, B, C]
    return vs


def _ids(vs, filters=None, k=3, **query):
    return vs.query(VectorStoreQuery(query_embedding=[1.0, 1.0], similarity_top_k=k, filters=filters, **query)).ids


def test_query_without_filters_returns_all_rows_sorted_by_similarity(vector_store):
    ids = _ids(vector_store)
    assert sorted(ids) == sorted([A, B, C]) and ids[0] == C


def test_query_with_filters_returns_multiple_matches_and_applies_top_k(vector_store):
    rank_c = MetadataFilters(filters=[ExactMatchFilter(key="rank", value="c")])
    assert _ids(vector_store, rank_c) == [C, B]
    assert _ids(vector_store, rank_c, k=1) == [C]
    assert _ids(vector_store, rank_c, node_ids=[C]) == [C]
    assert _ids(vector_store, doc_ids=["test-0", "test-1"]) in ([A, B], [B, A])


def test_exact_contradictive_and_unknown_field_filters(vector_store):
    both = MetadataFilters(filters=[ExactMatchFilter(key="rank", value="c"), ExactMatchFilter(key="weight", value=2.0)])
    assert _ids(vector_store, both, k=1) == [B]
    contradiction = MetadataFilters(filters=[ExactMatchFilter(key="weight", value=2),
                                             ExactMatchFilter(key="weight", value=3)])
    assert _ids(vector_store, contradiction) == []
    assert _ids(vector_store, MetadataFilters(filters=[ExactMatchFilter(key="unknown_field", value="c")])) == []


def test_delete_removes_document_from_query_results(vector_store):
    vector_store.delete("test-1")
    assert _ids(vector_store, k=2) == [C, A]


def test_filter_conditions_and_or_not(vector_store):
    pair = [ExactMatchFilter(key="rank", value="c"), ExactMatchFilter(key="weight", value=1.0)]
    assert len(_ids(vector_store, MetadataFilters(filters=pair, condition=FilterCondition.OR))) == 3
    assert _ids(vector_store, MetadataFilters(filters=pair, condition=FilterCondition.AND)) == []
    not_a = MetadataFilters(filters=[MetadataFilter(key="rank", operator=FilterOperator.EQ, value="a")],
                            condition=FilterCondition.NOT)
    assert sorted(_ids(vector_store, not_a)) == sorted([B, C])
    nested = MetadataFilters(filters=[MetadataFilter(key="rank", value="c"),
                                      MetadataFilters(filters=[MetadataFilter(key="weight", value=2.0),
                                                               MetadataFilter(key="weight", value=1.0)],
                                                      condition=FilterCondition.OR)])
    assert _ids(vector_store, nested) == [B]


@pytest.mark.parametrize(("operator", "value", "count"), [
    (FilterOperator.EQ, 1.0, 1), (FilterOperator.NE, 1.0, 2), (FilterOperator.GT, 1.5, 2),
    (FilterOperator.GTE, 1.0, 3), (FilterOperator.LT, 1.1, 1), (FilterOperator.LTE, 1.0, 1)])
def test_comparison_operators_on_weight(vector_store, operator, value, count):
    filters = MetadataFilters(filters=[MetadataFilter(key="weight", operator=operator, value=value)])
    assert len(_ids(vector_store, filters)) == count


@pytest.mark.parametrize(("key", "operator", "value", "count"), [
    ("rank", FilterOperator.IN, ["a", "c"], 3), ("rank", FilterOperator.NIN, ["c"], 1),
    ("quality", FilterOperator.CONTAINS, "high", 2), ("identifier", FilterOperator.TEXT_MATCH, "6FTR78Y", 2),
    ("identifier", FilterOperator.TEXT_MATCH_INSENSITIVE, "6ftr78y", 2),
    ("quality", FilterOperator.ANY, ["high", "low"], 2), ("quality", FilterOperator.ALL, ["medium", "high"], 2),
    ("missing", FilterOperator.IS_EMPTY, None, 3), ("rank", FilterOperator.IS_EMPTY, None, 0)])
def test_list_and_text_operators(vector_store, key, operator, value, count):
    filters = MetadataFilters(filters=[MetadataFilter(key=key, operator=operator, value=value)])
    assert len(_ids(vector_store, filters)) == count


def test_nodes_round_trip_with_their_relationships_and_metadata(vector_store):
    result = vector_store.query(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=1))
    node = result.nodes[0]
    assert node.node_id == A and node.get_content() == "lorem ipsum" and node.ref_doc_id == "test-0"
    assert node.metadata == {"weight": 1.0, "rank": "a", "quality": ["medium", "high"], "identifier": "6FTR78Yun"}
    assert result.similarities[0] == pytest.approx(1.0, abs=1e-5)
    assert [n.node_id for n in vector_store.get_nodes([C, "missing", A])] == [C, A]
    rank_c = MetadataFilters(filters=[ExactMatchFilter(key="rank", value="c")])
    assert sorted(n.node_id for n in vector_store.get_nodes(filters=rank_c)) == sorted([B, C])
    vector_store.delete_nodes(filters=rank_c)
    assert [n.node_id for n in vector_store.get_nodes()] == [A]
    vector_store.clear()
    assert vector_store.get_nodes() == [] and _ids(vector_store) == []


def test_text_search_mode_and_bad_queries(vector_store):
    vector_store.add([TextNode(text="the raven at the chamber door", id_="raven", embedding=[0.5, 0.5])])
    result = vector_store.query(VectorStoreQuery(query_str="raven chamber", similarity_top_k=2,
                                                 mode=VectorStoreQueryMode.TEXT_SEARCH))
    assert result.ids == ["raven"]
    with pytest.raises(InvalidArgument, match="not supported"):
        vector_store.query(VectorStoreQuery(query_embedding=[1.0, 1.0], mode=VectorStoreQueryMode.HYBRID))
    with pytest.raises(InvalidArgument, match="no embedding"):
        vector_store.add([TextNode(text="unembedded")])
    with pytest.raises(DimensionMismatch, match=r"3-d vectors but the store declares Chunk.embedding vector\[2\]"):
        vector_store.add([TextNode(text="three", embedding=[1.0, 2.0, 3.0])])


def test_vector_store_index_end_to_end(knowledge_store):
    embed_model = KnowledgeEmbedding(HashingEmbedder(64))
    vs = KnowledgeVectorStore(knowledge_store.session(), labels=["public"])
    docs = [LIDocument(text="Ada Lovelace wrote the first program.", id_="ada", metadata={"era": "victorian"}),
            LIDocument(text="Tomatoes grow in warm gardens.", id_="garden", metadata={"era": "modern"})]
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=vs),
                                            embed_model=embed_model)
    found = index.as_retriever(similarity_top_k=1).retrieve("who wrote the first program")
    assert found[0].node.ref_doc_id == "ada" and found[0].node.metadata["era"] == "victorian"
    modern = MetadataFilters(filters=[ExactMatchFilter(key="era", value="modern")])
    assert index.as_retriever(similarity_top_k=2, filters=modern).retrieve("first program")[0].node.ref_doc_id \
        == "garden"
    index.delete_ref_doc("ada")
    assert [n.node.ref_doc_id for n in index.as_retriever(similarity_top_k=2).retrieve("program")] == ["garden"]


def test_graph_retriever_nodes_carry_chunk_document_entities_and_paths(knowledge_store):
    embedder = HashingEmbedder(64)
    ingest(knowledge_store.session(), [
        Document("ada", "Ada Lovelace worked with Charles Babbage.", title="Ada", labels=["public"],
                 triples=[["Ada Lovelace", "worked with", "Charles Babbage"]]),
        Document("garden", "Tomatoes grow in warm gardens.", title="Garden", labels=["public"])], embedder=embedder)
    for embedding in (embedder, KnowledgeEmbedding(embedder)):
        retriever = KnowledgeRetriever(knowledge_store.session("reader"), embedding=embedding, similarity_top_k=2)
        found = retriever.retrieve("Who worked with Charles Babbage?")
        assert found[0].node.node_id == "ada#0" and found[0].score == found[0].node.metadata["score"]
        metadata = found[0].node.metadata
        assert metadata["doc_id"] == "ada" and metadata["title"] == "Ada"
        assert {"ada lovelace", "charles babbage"} <= set(metadata["entities"])
        assert any(p["type"] == "RELATED" and p["relation"] == "worked with" for p in metadata["paths"])
        assert "paths" not in found[0].node.get_content(metadata_mode="llm")
    vector = embedder.embed(["Who worked with Charles Babbage?"])[0].tolist()
    by_bundle = KnowledgeRetriever(knowledge_store.session("reader"), similarity_top_k=1, mode="vector").retrieve(
        QueryBundle("Who worked with Charles Babbage?", embedding=vector))
    assert by_bundle[0].node.node_id == "ada#0"


HOSTILE = [None, MetadataFilters(filters=[ExactMatchFilter(key="rank", value="secret")]),
           MetadataFilters(filters=[MetadataFilter(key="weight", operator=FilterOperator.GTE, value=0)]),
           MetadataFilters(filters=[MetadataFilter(key="rank", operator=FilterOperator.IS_EMPTY, value=None)],
                           condition=FilterCondition.NOT),
           MetadataFilters(filters=[MetadataFilter(key="ref_doc_id", operator=FilterOperator.IN,
                                                   value=["hidden-src", "test-0"])]),
           MetadataFilters(filters=[MetadataFilter(key="_labels", operator=FilterOperator.CONTAINS, value="secret")])]


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda f: repr(filters_to_spec(f))[:40])
def test_a_readers_store_and_retriever_never_return_a_hidden_chunk(knowledge_store, hostile):
    KnowledgeVectorStore(knowledge_store.session(), labels=["public"]).add(_nodes())
    secret = TextNode(text="secret lorem ipsum plan", id_="hidden-node", embedding=[1.0, 1.0],
                      relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="hidden-src")},
                      metadata={"weight": 9.0, "rank": "secret", "quality": ["high"], "identifier": "6FTR78Yxx"})
    KnowledgeVectorStore(knowledge_store.session(), labels=["secret"]).add([secret])
    reader = KnowledgeVectorStore(knowledge_store.session("reader"))
    admin = KnowledgeVectorStore(knowledge_store.session())
    for query in (VectorStoreQuery(query_embedding=[1.0, 1.0], similarity_top_k=10, filters=hostile),
                  VectorStoreQuery(query_embedding=[1.0, 1.0], similarity_top_k=10, filters=hostile,
                                   node_ids=["hidden-node", A]),
                  VectorStoreQuery(query_embedding=[1.0, 1.0], similarity_top_k=10, filters=hostile,
                                   doc_ids=["hidden-src"]),
                  VectorStoreQuery(query_str="secret plan lorem", similarity_top_k=10, filters=hostile,
                                   mode=VectorStoreQueryMode.TEXT_SEARCH)):
        ids = reader.query(query).ids
        assert "hidden-node" not in ids
        assert ids == [i for i in admin.query(query).ids if i != "hidden-node"]
    assert "hidden-node" not in [n.node_id for n in reader.get_nodes(["hidden-node"], filters=hostile)]
    reader.delete_nodes(["hidden-node"], filters=hostile)
    reader.delete("hidden-src")
    with pytest.raises(PermissionDenied):         # the reader sees the public nodes but may not delete them
        reader.clear()
    assert [n.node_id for n in admin.get_nodes(["hidden-node", A])] == ["hidden-node", A]   # untouched
    for mode in ("vector", "keyword", "hybrid", "graph"):
        found = KnowledgeRetriever(knowledge_store.session("reader"), embedding=KnowledgeEmbedding(_Fixed()),
                                   mode=mode, similarity_top_k=10).retrieve("secret lorem ipsum plan")
        assert not any(n.node.metadata["doc_id"] == "hidden-node" for n in found)


class _Fixed:
    """A 2-d embedder pointing every text at the secret node's vector."""

    dimension = 2
    name = "fixed-2"

    def embed(self, texts):
        import numpy as np
        return np.tile(np.asarray([[0.70710677, 0.70710677]], dtype=np.float32), (len(texts), 1))
