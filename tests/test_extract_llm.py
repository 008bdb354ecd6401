"""LLMExtractor against a real local HTTP server that plays an OpenAI-compatible chat endpoint, answering
with the recorded GPT-3.5 OpenIE output of the HippoRAG MuSiQue release (so the client, the prompt
parsing, the retries, the cache and the merge into the store all run for real)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import knowledge
from knowledge.errors import ExtractionFailed
from knowledge.graphrag import Document, LLMExtractor, SentenceSplitter, ingest
from knowledge.graphrag.extract import ChunkInput
from knowledge.graphrag.extract_llm import PASSAGE_END, PASSAGE_START, parse_answer

REPO = Path(__file__).resolve().parents[1]
SHARED = [Path(os.environ.get("KNOWLEDGE_BENCH_DATA", REPO.parent / "shared" / "data")), Path("/work/shared/data")]
OPENIE = "musique-hipporag/openie_musique_train_results_ner_gpt-3.5-turbo-1106_1890.json"
PASSAGES = 24
WHOLE = SentenceSplitter(max_tokens=2048, overlap_tokens=0)
"""Every passage is one chunk, so each request carries a recorded passage."""


def recorded() -> list[dict]:
    """The recorded OpenIE docs: the shared data set's file, else the copy bundled in knowledge/data."""
    for root in SHARED:
        path = root / OPENIE
        if path.exists():
            return json.loads(path.read_text())["docs"]
    rows = [json.loads(line) for line in gzip.open(REPO / "knowledge" / "data" / "musique_openie.jsonl.gz", "rt")]
    corpus = [json.loads(line) for line in gzip.open(REPO / "knowledge" / "data" / "musique_corpus.jsonl.gz", "rt")]
    return [{"title": c["title"], "text": c["text"], "passage": f"{c['title']}\n{c['text']}",
             "extracted_entities": r["entities"], "extracted_triples": r["triples"]} for r, c in zip(rows, corpus, strict=True)]


DOCS = recorded()[:PASSAGES]


class Endpoint:
    """A local OpenAI-compatible /v1/chat/completions that answers from the recorded OpenIE output.
    `fail[passage_title] = [status or "garbage", ...]` makes the first requests for a passage fail."""

    def __init__(self) -> None:
        self.by_passage = {d["passage"]: d for d in DOCS}
        self.fail: dict[str, list] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    endpoint.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                              "body": body})
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                user = body["messages"][-1]["content"]
                passage = user[user.index(PASSAGE_START) + len(PASSAGE_START):user.rindex(PASSAGE_END)]
                doc = endpoint.by_passage.get(passage)
                if doc is None:
                    return self._send(400, {"error": {"message": "unknown passage"}})
                with endpoint.lock:
                    plan = endpoint.fail.get(doc["title"], [])
                    failure = plan.pop(0) if plan else None
                if isinstance(failure, int):
                    return self._send(failure, {"error": {"message": "injected"}}, {"Retry-After": "0"})
                answer = {"named_entities": doc["extracted_entities"],
                          "triples": [t for t in doc["extracted_triples"] if isinstance(t, list)]}
                content = "not json {" if failure == "garbage" else f"```json\n{json.dumps(answer)}\n```"
                prompt_words = sum(len(m["content"].split()) for m in body["messages"])
                self._send(200, {"id": "chatcmpl-test", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": content}}],
                                 "usage": {"prompt_tokens": prompt_words, "completion_tokens": len(content.split()),
                                           "total_tokens": prompt_words + len(content.split())}})

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class WordEmbedder:
    name = "words"
    dimension = 32

    def embed(self, texts):
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, hashlib.sha256(word.encode()).digest()[0] % self.dimension] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1)


@pytest.fixture
def endpoint():
    with Endpoint() as e:
        yield e


def documents():
    return [Document(f"p{i}", d["text"], title=d["title"], labels=["public"]) for i, d in enumerate(DOCS)]


def test_llm_extractor_ingests_the_recorded_openie_graph(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-local-test")
    llm = LLMExtractor("gpt-3.5-turbo-1106", base_url=endpoint.url, api_key_env="TEST_LLM_KEY", batch_size=4,
                       cache_dir=str(tmp_path / "cache"), price_per_million=(1.0, 2.0), backoff_s=0.0)
    with knowledge.open(str(tmp_path / "s")) as store:
        report = ingest(store.session(), documents(), embedder=WordEmbedder(), extractor=llm, synonyms=None,
                        splitter=WHOLE)
        assert report.written == PASSAGES
        session = store.session()
        names = set(session.scan("Entity", columns=["name"]).column("name").to_pylist())
        related = session.edges("RELATED").to_pylist()
        relations = {r["relation"] for r in related}
    for doc in DOCS:
        assert {e.lower() for e in doc["extracted_entities"]} <= names, doc["title"]
        assert doc["title"].lower() in names                      # the title is an entity of its chunk
    stated = {t[1] for d in DOCS for t in d["extracted_triples"] if isinstance(t, list) and len(t) == 3}
    assert len({p for r in relations for p in r.split("; ")} & stated) > 0.8 * len(relations)
    assert len(endpoint.requests) == PASSAGES
    assert {r["auth"] for r in endpoint.requests} == {"Bearer sk-local-test"}
    assert {r["body"]["model"] for r in endpoint.requests} == {"gpt-3.5-turbo-1106"}
    usage = llm.usage.report()
    assert usage["requests"] == PASSAGES and usage["cached"] == 0 and usage["retries"] == 0
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6)

    again = LLMExtractor("gpt-3.5-turbo-1106", base_url=endpoint.url, cache_dir=str(tmp_path / "cache"))
    chunks = [ChunkInput(d["text"], d["title"]) for d in DOCS]
    results = again.extract_chunks(chunks)
    assert len(endpoint.requests) == PASSAGES                     # every answer came from the cache
    assert again.usage.cached == PASSAGES and again.usage.requests == 0
    assert [m.name for m in results[0].entities][1:] == DOCS[0]["extracted_entities"]
    other_model = LLMExtractor("another-model", base_url=endpoint.url, cache_dir=str(tmp_path / "cache"))
    assert other_model.chunk_hash(chunks[0]) != again.chunk_hash(chunks[0])


def test_retries_on_429_5xx_and_malformed_answers(endpoint):
    endpoint.fail = {DOCS[0]["title"]: [429, 503], DOCS[1]["title"]: ["garbage"]}
    llm = LLMExtractor("gpt-3.5-turbo-1106", base_url=endpoint.url, max_retries=3, backoff_s=0.0)
    results = llm.extract_chunks([ChunkInput(d["text"], d["title"]) for d in DOCS[:3]])
    assert llm.usage.retries == 3 and llm.usage.requests == 6
    assert {m.name for m in results[0].entities} >= set(DOCS[0]["extracted_entities"])


def test_permanent_failure_raises_and_writes_nothing(endpoint, tmp_path):
    endpoint.fail = {DOCS[2]["title"]: [400]}
    llm = LLMExtractor("m", base_url=endpoint.url, max_retries=3, backoff_s=0.0)
    with knowledge.open(str(tmp_path / "s")) as store:
        with pytest.raises(ExtractionFailed) as caught:
            ingest(store.session(), documents()[:4], embedder=WordEmbedder(), extractor=llm, splitter=WHOLE)
        assert caught.value.status == 400 and "after 1 attempt(s)" in str(caught.value)
        assert "Document" not in store.schema.nodes or store.session().scan("Document").num_rows == 0
    endpoint.fail = {DOCS[0]["title"]: [500, 500, 500]}
    flaky = LLMExtractor("m", base_url=endpoint.url, max_retries=1, backoff_s=0.0)
    with pytest.raises(ExtractionFailed, match="after 2 attempt"):
        flaky.extract_chunks([ChunkInput(DOCS[0]["text"], DOCS[0]["title"])])


def test_4xx_other_than_408_and_429_are_not_retried(endpoint):
    endpoint.fail = {DOCS[0]["title"]: [409], DOCS[1]["title"]: [408]}
    llm = LLMExtractor("m", base_url=endpoint.url, max_retries=3, backoff_s=0.0)
    with pytest.raises(ExtractionFailed, match="HTTP 409: injected") as caught:
        llm.extract_chunks([ChunkInput(DOCS[0]["text"], DOCS[0]["title"])])
    assert caught.value.status == 409 and "after 1 attempt(s)" in str(caught.value)
    llm.extract_chunks([ChunkInput(DOCS[1]["text"], DOCS[1]["title"])])
    assert llm.usage.requests == 3 and llm.usage.retries == 1


def test_unreachable_endpoint_is_a_typed_error():
    llm = LLMExtractor("m", base_url="http://127.0.0.1:9/v1", max_retries=1, backoff_s=0.0, timeout_s=2)
    with pytest.raises(ExtractionFailed, match="connection failed"):
        llm.extract_chunks([ChunkInput("Some text.", "T")])


def test_parse_answer_accepts_fenced_json_and_rejects_other_shapes():
    names, triples = parse_answer('```json\n{"named_entities": ["A"], "triples": [["A", "is", "B"], ["bad"]]}\n```')
    assert names == ["A"] and triples == [("A", "is", "B")]
    for bad in ("[]", "no json", '{"named_entities": "A", "triples": []}'):
        with pytest.raises(ValueError):
            parse_answer(bad)
