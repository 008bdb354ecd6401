"""The langchain-tests standard integration suites, unmodified, against the LangChain adapters: every
VectorStoreIntegrationTests test (sync and async, get_by_ids included) on a fresh store per test, and
RetrieversIntegrationTests on the GraphRAG retriever over a small ingested corpus. None is skipped."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core", reason="needs the langchain extra: pip install -e '.[langchain]'")
pytest.importorskip("langchain_tests", reason="needs langchain-tests (the langchain extra's test part)")

from langchain_tests.integration_tests import (  # noqa: E402
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)

import knowledge  # noqa: E402
from knowledge.adapters.langchain import KnowledgeGraphRetriever, KnowledgeVectorStore  # noqa: E402
from knowledge.embed import HashingEmbedder  # noqa: E402
from knowledge.graphrag import Document, ingest  # noqa: E402

# The suites' async tests run on pytest-asyncio (a langchain-tests dependency) in its default strict mode;
# the module-wide mark also lands on the sync tests, which pytest-asyncio then only warns about.
pytestmark = [pytest.mark.asyncio,
              pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio'")]

CORPUS = [
    ("ada", "Ada Lovelace", "Ada Lovelace wrote the first computer program for the Analytical Engine."),
    ("babbage", "Charles Babbage", "Charles Babbage designed the Analytical Engine, a mechanical computer."),
    ("turing", "Alan Turing", "Alan Turing described the universal machine and broke the Enigma cipher."),
    ("hopper", "Grace Hopper", "Grace Hopper wrote the first compiler and popularised the word bug."),
    ("tomato", "Tomatoes", "Tomatoes grow best in warm gardens with plenty of sun."),
]


class TestKnowledgeVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path):
        """An empty store per test (a fresh directory), closed afterwards."""
        store = knowledge.open(str(tmp_path / "lc.store"))
        try:
            yield KnowledgeVectorStore(store.session(), self.get_embeddings(), labels=["public"])
        finally:
            store.close()


class TestKnowledgeGraphRetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _corpus(self, tmp_path):
        store = knowledge.open(str(tmp_path / "rag.store"))
        self.embedder = HashingEmbedder(64)
        ingest(store.session(), [Document(d, text, title=title, labels=["public"]) for d, title, text in CORPUS],
               embedder=self.embedder)
        store.create_principal("reader", read=["public"])
        self.session = store.session("reader")
        yield
        store.close()

    @property
    def retriever_constructor(self) -> type[KnowledgeGraphRetriever]:
        return KnowledgeGraphRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"session": self.session, "embedding": self.embedder, "mode": "graph"}

    @property
    def retriever_query_example(self) -> str:
        return "Who wrote the first program for the Analytical Engine?"
