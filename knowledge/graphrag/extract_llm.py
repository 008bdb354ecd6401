"""`LLMExtractor`: OpenIE by prompt (HippoRAG-style named entities + triples) through any
OpenAI-compatible chat-completions endpoint.

    from knowledge.graphrag import LLMExtractor, ingest
    llm = LLMExtractor(model="gpt-4o-mini", base_url="https://api.openai.com/v1",   # or env, see below
                       cache_dir="~/.cache/knowledge-openie", price_per_million=(0.15, 0.60))
    ingest(session, docs, embedder=embedder, extractor=llm)
    print(llm.usage.report())            # requests, tokens, cache hits, retries, cost

Configuration: `base_url` (else $OPENAI_BASE_URL, else https://api.openai.com/v1), `model` (else
$KNOWLEDGE_LLM_MODEL, else gpt-4o-mini), the API key from the environment variable `api_key_env`
(default OPENAI_API_KEY; no key sends no Authorization header, as local servers expect).
Each chunk is one request (its document title and text, `passage_text` form), answered as a JSON object
{"named_entities": [...], "triples": [[subject, predicate, object], ...]}. Up to `batch_size` requests
run at once; a dropped connection, a timeout, a 408, 429 or 5xx, or an answer that is not that JSON is
retried up to `max_retries` times with exponential backoff from `backoff_s` (jittered, Retry-After
honoured up to a minute; knowledge.http_json.post_json); other 4xx fail at once. Answers
are cached by chunk hash (sha256 of prompt version, model, title and text) in `cache_dir`
(openie-cache.jsonl, one line per chunk, appended as answers arrive), so re-running costs nothing.
Raises ExtractionFailed when a chunk still fails after the retries (nothing of the batch is written).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from knowledge.embed import passage_text
from knowledge.errors import ExtractionFailed, InvalidArgument
from knowledge.graphrag.extract import (
    ChunkInput,
    Extraction,
    Mention,
    Relation,
    Triple,
    clean_triples,
)
from knowledge.graphrag.extract_rules import TITLE_TYPE
from knowledge.http_json import post_json

PROMPT_VERSION = "openie-v1"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
CACHE_FILE = "openie-cache.jsonl"
SYSTEM_PROMPT = (
    "You extract a knowledge graph from a passage (open information extraction). Return a JSON object "
    'with two keys: "named_entities", a list of the named entities in the passage (people, places, '
    'organisations, works, dates, ...), and "triples", a list of [subject, predicate, object] lists of '
    "strings, each stating one fact of the passage. Every triple should contain at least one, preferably "
    "two, of the named entities. Resolve pronouns to the entity they refer to. Answer with the JSON "
    "object only.")
EXAMPLE_PASSAGE = ("Radio City\nRadio City is India's first private FM radio station and was started on 3 July "
                   "2001. It plays Hindi, English and regional songs.")
EXAMPLE_ANSWER = json.dumps({
    "named_entities": ["Radio City", "India", "3 July 2001", "Hindi", "English"],
    "triples": [["Radio City", "located in", "India"], ["Radio City", "is", "private FM radio station"],
                ["Radio City", "started on", "3 July 2001"], ["Radio City", "plays songs in", "Hindi"],
                ["Radio City", "plays songs in", "English"]]})
PASSAGE_START = "Passage:\n```\n"
PASSAGE_END = "\n```"


def user_prompt(passage: str) -> str:
    """The user message for one passage (the passage between PASSAGE_START and PASSAGE_END)."""
    return f"{PASSAGE_START}{passage}{PASSAGE_END}"


def messages(passage: str) -> list[dict[str, str]]:
    """The chat messages sent for one passage: instructions, one worked example, the passage."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_prompt(EXAMPLE_PASSAGE)},
            {"role": "assistant", "content": EXAMPLE_ANSWER},
            {"role": "user", "content": user_prompt(passage)}]


def parse_answer(content: str) -> tuple[list[str], list[Triple]]:
    """Entities and triples from a model's answer (JSON object, optionally in a ``` fence). Raises
    ValueError when it is not the requested JSON."""
    text = content.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    entities = data.get("named_entities", data.get("entities", []))
    triples = data.get("triples", [])
    if not isinstance(entities, list) or not isinstance(triples, list):
        raise ValueError("named_entities and triples must be lists")
    names = [e.strip() for e in entities if isinstance(e, str) and e.strip()]
    return names, clean_triples(t for t in triples if isinstance(t, list | tuple))


@dataclass
class LLMUsage:
    """What the extractor spent: requests sent, tokens (from the answers' `usage`), chunks answered from
    the cache, retries, and the cost at `price_per_million` (None when no price was given)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: int = 0
    retries: int = 0
    seconds: float = 0.0
    cost_usd: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def report(self) -> dict[str, Any]:
        """The figures as a dict (with total_tokens)."""
        return {**asdict(self), "total_tokens": self.total_tokens}


class LLMExtractor:
    """OpenIE through an OpenAI-compatible chat endpoint (see the module docstring)."""

    def __init__(self, model: str | None = None, *, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", batch_size: int = 8, max_retries: int = 4,
                 timeout_s: float = 60.0, backoff_s: float = 1.0, cache_dir: str | None = None,
                 price_per_million: tuple[float, float] | None = None, title_entity: bool = True,
                 temperature: float = 0.0) -> None:
        if batch_size < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise InvalidArgument("batch_size >= 1, max_retries >= 0, timeout_s > 0 and backoff_s >= 0 are required")
        self.model = model or os.environ.get("KNOWLEDGE_LLM_MODEL") or DEFAULT_MODEL
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = os.environ.get(api_key_env) or None
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.price_per_million = price_per_million
        self.title_entity = title_entity
        self.temperature = temperature
        self.name = f"llm-{PROMPT_VERSION}:{self.model}:{int(title_entity)}"
        self.usage = LLMUsage(cost_usd=0.0 if price_per_million else None)
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Any]] = {}
        self._cache_path = None
        if cache_dir:
            folder = os.path.expanduser(cache_dir)
            os.makedirs(folder, exist_ok=True)
            self._cache_path = os.path.join(folder, CACHE_FILE)
            self._load_cache()

    def chunk_hash(self, chunk: ChunkInput) -> str:
        """The cache key of a chunk: sha256 over the prompt version, model, title and text."""
        payload = json.dumps([PROMPT_VERSION, self.model, chunk.title, chunk.text])
        return hashlib.sha256(payload.encode()).hexdigest()

    def _load_cache(self) -> None:
        assert self._cache_path is not None
        if not os.path.exists(self._cache_path):
            return
        with open(self._cache_path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    self._cache[entry["key"]] = entry
                except (ValueError, KeyError, TypeError):
                    continue            # a torn last line (killed mid-append) is skipped

    def _remember(self, key: str, entities: list[str], triples: list[Triple]) -> None:
        entry = {"key": key, "model": self.model, "entities": entities, "triples": [list(t) for t in triples]}
        with self._lock:
            self._cache[key] = entry
            if self._cache_path is not None:
                with open(self._cache_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")

    def extract(self, chunk_text: str) -> tuple[list[str], list[Triple]]:
        found = self.extract_chunks([ChunkInput(chunk_text)])[0]
        return [m.name for m in found.entities], [(r.subject, r.predicate, r.object) for r in found.relations]

    def extract_chunks(self, chunks: Sequence[ChunkInput]) -> list[Extraction]:
        started = time.perf_counter()
        keys = [self.chunk_hash(c) for c in chunks]
        todo = {key: chunk for key, chunk in zip(keys, chunks, strict=True) if key not in self._cache}
        with self._lock:
            self.usage.cached += len(chunks) - len(todo)
        if todo:
            with ThreadPoolExecutor(min(self.batch_size, len(todo))) as pool:
                for future in [pool.submit(self._ask, key, chunk) for key, chunk in todo.items()]:
                    future.result()
        with self._lock:
            self.usage.seconds += time.perf_counter() - started
        return [self._extraction(self._cache[key], chunk) for key, chunk in zip(keys, chunks, strict=True)]

    def _extraction(self, entry: dict[str, Any], chunk: ChunkInput) -> Extraction:
        out = Extraction()
        title = chunk.title.strip()
        if self.title_entity and title:
            out.entities.append(Mention(title, TITLE_TYPE))
        out.entities.extend(Mention(name) for name in entry["entities"])
        out.relations.extend(Relation(s, p, o) for s, p, o in clean_triples(entry["triples"]))
        return out

    def _ask(self, key: str, chunk: ChunkInput) -> None:
        passage = passage_text(chunk.title, chunk.text) if chunk.title else chunk.text
        body = {"model": self.model, "messages": messages(passage), "temperature": self.temperature,
                "response_format": {"type": "json_object"}}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

        def read(answer: Any) -> None:
            usage = answer.get("usage") or {}
            self._count(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
            entities, triples = parse_answer(answer["choices"][0]["message"]["content"])
            self._remember(key, entities, triples)

        def failed(message: str, status: int | None) -> ExtractionFailed:
            return ExtractionFailed(f"OpenIE for chunk {key[:12]} (model {self.model!r}) failed: {message}",
                                    chunk=key, status=status)

        post_json(f"{self.base_url}/chat/completions", body, headers=headers, what="chat endpoint",
                  timeout_s=self.timeout_s, retries=self.max_retries, backoff_s=self.backoff_s,
                  read=read, retry_unreadable=True, on_attempt=self._attempt, error=failed)

    def _attempt(self, attempt: int) -> None:
        with self._lock:
            self.usage.requests += 1
            if attempt:
                self.usage.retries += 1

    def _count(self, prompt: int, completion: int) -> None:
        with self._lock:
            self.usage.prompt_tokens += prompt
            self.usage.completion_tokens += completion
            if self.price_per_million is not None:
                price_in, price_out = self.price_per_million
                self.usage.cost_usd = (self.usage.prompt_tokens * price_in
                                       + self.usage.completion_tokens * price_out) / 1e6


__all__ = ["CACHE_FILE", "DEFAULT_BASE_URL", "DEFAULT_MODEL", "PASSAGE_END", "PASSAGE_START", "PROMPT_VERSION",
           "LLMExtractor", "LLMUsage", "messages", "parse_answer", "user_prompt"]
