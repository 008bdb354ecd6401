"""Embedders: the OpenAI-compatible endpoint (against a real local HTTP server speaking the OpenAI
embeddings JSON), the hashing embedder, model names for sentence-transformers, and the dimension check
at ingest."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import knowledge
from knowledge.embed import (
    Embedder,
    EmbedderUnavailable,
    HashingEmbedder,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    check_dimension,
    vector_dimension,
)
from knowledge.errors import DimensionMismatch, SchemaError
from knowledge.graphrag import Document, ingest, retrieve


class EmbeddingsServer:
    """A local OpenAI-style /v1/embeddings server: vectors from a HashingEmbedder of `width`, answered
    in reversed index order (clients must sort by "index"); `fail` queues (status, body) answers."""

    def __init__(self, width: int = 16) -> None:
        self.width = width
        self.requests: list[dict] = []
        self.fail: list[tuple[int, bytes]] = []
        self.delays: list[float] = []
        self.raw: bytes | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "body": body,
                                       "auth": self.headers.get("Authorization")})
                if owner.delays:
                    time.sleep(owner.delays.pop(0))
                if owner.fail:
                    status, payload = owner.fail.pop(0)
                    self._send(status, payload)
                    return
                if self.path != "/v1/embeddings":
                    self._send(404, b'{"error": {"message": "no such route"}}')
                    return
                if owner.raw is not None:
                    self._send(200, owner.raw)
                    return
                vectors = HashingEmbedder(owner.width).embed(body["input"]) * 3.0   # not unit norm
                data = [{"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)]
                self._send(200, json.dumps({"object": "list", "data": data[::-1], "model": body["model"],
                                            "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode())

            def _send(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except OSError:  # the client timed out and closed the connection
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    running = EmbeddingsServer()
    yield running
    running.close()


def test_openai_embedder_batches_orders_and_normalises(server, monkeypatch):
    monkeypatch.setenv("TEST_EMBED_KEY", "sk-local")
    embedder = OpenAIEmbedder("test-embed-1", base_url=server.base_url, api_key_env="TEST_EMBED_KEY", batch_size=2)
    texts = ["alpha beta", "gamma", "alpha beta gamma", "delta", "epsilon zeta"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (5, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors, HashingEmbedder(16).embed(texts), atol=1e-6)  # order restored
    assert [len(r["body"]["input"]) for r in server.requests] == [2, 2, 1]
    assert all(r["body"]["model"] == "test-embed-1" and r["auth"] == "Bearer sk-local" for r in server.requests)
    assert embedder.dimension == 16 and embedder.name == "test-embed-1"
    assert isinstance(embedder, Embedder) and len(server.requests) == 3   # the width is known: no probe


def test_openai_embedder_learns_dimension_by_one_probe_and_sends_no_key_when_unset(server, monkeypatch):
    monkeypatch.delenv("TEST_EMBED_KEY", raising=False)
    embedder = OpenAIEmbedder("m", base_url=server.base_url, api_key_env="TEST_EMBED_KEY")
    assert embedder.dimension == 16
    assert len(server.requests) == 1 and server.requests[0]["auth"] is None
    assert embedder.dimension == 16 and len(server.requests) == 1


def test_openai_embedder_sends_dimensions_when_asked(server):
    server.width = 8
    embedder = OpenAIEmbedder("m", base_url=server.base_url, dimension=8, send_dimensions=True)
    assert embedder.embed(["x"]).shape == (1, 8)
    assert server.requests[0]["body"]["dimensions"] == 8


def test_openai_embedder_retries_overload_then_succeeds(server):
    server.fail = [(503, b'{"error": {"message": "busy"}}'), (429, b"slow down")]
    embedder = OpenAIEmbedder("m", base_url=server.base_url, retry_delay_s=0.01)
    assert embedder.embed(["a"]).shape == (1, 16)
    assert len(server.requests) == 3


def test_openai_embedder_retries_a_timeout_and_honours_retry_after(server):
    server.delays = [1.5]
    embedder = OpenAIEmbedder("m", base_url=server.base_url, timeout_s=0.3, retry_delay_s=0.01)
    assert embedder.embed(["a"]).shape == (1, 16)
    assert len(server.requests) == 2
    server.delays = [1.5, 1.5]
    with pytest.raises(EmbedderUnavailable, match=r"did not answer within 0.3s \(after 2 attempt\(s\)\)"):
        OpenAIEmbedder("m", base_url=server.base_url, timeout_s=0.3, retries=1, retry_delay_s=0.01).embed(["a"])


def test_openai_embedder_reports_http_errors_with_the_servers_message(server):
    server.fail = [(400, b'{"error": {"message": "input too long for model m"}}')]
    with pytest.raises(EmbedderUnavailable, match="HTTP 400: input too long for model m"):
        OpenAIEmbedder("m", base_url=server.base_url).embed(["a"])
    server.fail = [(500, b"boom")] * 3
    with pytest.raises(EmbedderUnavailable, match="HTTP 500"):
        OpenAIEmbedder("m", base_url=server.base_url, retries=2, retry_delay_s=0.01).embed(["a"])
    assert len(server.requests) == 4
    with pytest.raises(EmbedderUnavailable, match="HTTP 404: no such route"):
        OpenAIEmbedder("m", base_url=server.base_url + "/wrong").embed(["a"])


def test_openai_embedder_rejects_answers_not_of_the_embeddings_shape(server):
    server.raw = b'{"data": [{"index": 0, "embedding": "nope"}]}'
    with pytest.raises(EmbedderUnavailable, match="float 'embedding'"):
        OpenAIEmbedder("m", base_url=server.base_url).embed(["a"])
    server.raw = b'{"object": "list"}'
    with pytest.raises(EmbedderUnavailable, match="'data' list of 1"):
        OpenAIEmbedder("m", base_url=server.base_url).embed(["a"])
    server.raw = b"not json"
    with pytest.raises(EmbedderUnavailable, match="invalid JSON"):
        OpenAIEmbedder("m", base_url=server.base_url).embed(["a"])


def test_openai_embedder_checks_the_width_it_was_promised(server):
    embedder = OpenAIEmbedder("m", base_url=server.base_url, dimension=32)
    with pytest.raises(DimensionMismatch, match="returned 16-d vectors, expected 32") as info:
        embedder.embed(["a"])
    assert (info.value.dimension, info.value.expected) == (16, 32)


def test_openai_embedder_needs_a_key_for_the_openai_api_and_reports_unreachable_hosts(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(EmbedderUnavailable, match="set OPENAI_API_KEY"):
        OpenAIEmbedder("text-embedding-3-small").embed(["a"])
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()
    with pytest.raises(EmbedderUnavailable, match="cannot reach"):
        OpenAIEmbedder("m", base_url=f"http://127.0.0.1:{port}/v1", retries=0, timeout_s=2).embed(["a"])
    with pytest.raises(ValueError):
        OpenAIEmbedder("m", base_url="ftp://x")
    with pytest.raises(ValueError):
        OpenAIEmbedder("")


def test_openai_embedder_ingests_and_retrieves_through_graphrag(server, tmp_path):
    embedder = OpenAIEmbedder("m", base_url=server.base_url)
    with knowledge.open(str(tmp_path / "s.store")) as store:
        docs = [Document("ada", "Ada Lovelace wrote the first program.", labels=["public"]),
                Document("bob", "Bob grows tomatoes in his garden.", labels=["public"])]
        report = ingest(store.session(), docs, embedder=embedder)
        assert report.chunks == 2
        result = retrieve(store.session(), "who wrote the first program", k=1, mode="vector", embedder=embedder)
        assert result.keys == ["ada#0"]
        assert vector_dimension(store) == 16


def test_ingest_refuses_an_embedder_of_another_dimension_naming_both(tmp_path):
    with knowledge.open(str(tmp_path / "s.store")) as store:
        session = store.session()
        ingest(session, [Document("a", "one text")], embedder=HashingEmbedder(8))
        before = session.stats()
        with pytest.raises(DimensionMismatch) as info:
            ingest(session, [Document("b", "another text")], embedder=HashingEmbedder(16))
        message = str(info.value)
        assert "'hashing-16-bigrams' makes 16-d vectors" in message and "Chunk.embedding vector[8]" in message
        assert isinstance(info.value, SchemaError) and isinstance(info.value, knowledge.KnowledgeError)
        assert (info.value.dimension, info.value.expected) == (16, 8)
        assert session.stats() == before          # nothing written
        check_dimension(store, HashingEmbedder(8))
        check_dimension(store, 8)
        with pytest.raises(DimensionMismatch, match="12-d vectors"):
            check_dimension(store, 12)
        assert vector_dimension(store, "Nope") is None


def test_hashing_embedder_is_deterministic_and_lexical():
    embedder = HashingEmbedder(64)
    a, b, c = embedder.embed(["Ada Lovelace wrote programs", "ada lovelace", "tomatoes in a garden"])
    assert float(a @ b) > 0.4 and abs(float(a @ c)) < float(a @ b)
    np.testing.assert_array_equal(embedder.embed(["x y"]), HashingEmbedder(64).embed(["x y"]))
    assert embedder.embed([]).shape == (0, 64)
    assert not embedder.embed([""]).any()
    with pytest.raises(ValueError):
        HashingEmbedder(1)
    with pytest.raises(TypeError):
        embedder.embed("one string")


def test_sentence_transformer_model_name_not_available_offline_is_reported():
    with pytest.raises(EmbedderUnavailable, match="sentence-transformers is not installed|from local files"):
        SentenceTransformerEmbedder("some-org/not-a-cached-model-xyz")
