"""The demo: GraphRAG over 1,890 real MuSiQue passages and their OpenIE triples, end to end.

`run_demo()` creates a store (temporary unless a path is given), ingests the bundled data
(knowledge/data, see SOURCE.md and EMBEDDINGS.md there) through `knowledge.graphrag.ingest`
(Document -> Chunk -> Entity graph, with the bundled passage vectors served by a PrecomputedEmbedder,
so no torch is needed), then answers three bundled questions with `session.retrieve(mode="graph")`
through a non-admin session, printing the retrieved passages, the entity paths behind them, per-stage
timings and whether the supporting (gold) passages were found, and ends with recall@5 over all 100
questions for vector-only and graph retrieval. Re-running it on a kept store writes nothing.
`EntityMatcher` and `build_graph` (the earlier name-match baseline's graph rows) are kept for reuse.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, TextIO

import numpy as np
import pyarrow as pa

import knowledge
from knowledge.access.principal import Principal
from knowledge.embed import DEFAULT_MODEL_NAME, PrecomputedEmbedder, passage_text
from knowledge.graphrag import Document, SentenceSplitter, ingest
from knowledge.session import Session

SCHEMA: dict[str, Any] = {
    "nodes": {
        "Passage": {"key": "title", "properties": {"text": "text"}},
        "Entity": {"key": "name", "properties": {}},
    },
    "edges": {
        "MENTIONS": {"source": "Passage", "target": "Entity", "properties": {}},
        "RELATED": {"source": "Entity", "target": "Entity", "properties": {"relation": "str"}},
    },
}
LABEL = "public"
READER = Principal("demo-reader", read=frozenset({LABEL}))
SHOWN_QUESTIONS = 3
SHOWN_CHUNKS = 5
SUMMARY_K = 5
SPLITTER = SentenceSplitter(max_tokens=512, overlap_tokens=0)
"""Every bundled passage (at most ~390 approximate tokens) is one chunk."""
ENTITY_NAME_CHARS_MIN = 3
RELATION_SEPARATOR = "; "


@dataclass(frozen=True, slots=True)
class Bundle:
    """The bundled MuSiQue subset: passages (title, text), questions, OpenIE records per passage."""

    passages: list[dict[str, Any]]
    questions: list[dict[str, Any]]
    openie: list[dict[str, Any]]


def _jsonl_gz(name: str) -> Iterator[dict[str, Any]]:
    source = resources.files("knowledge") / "data" / name
    with source.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def load_bundle() -> Bundle:
    """The bundled data (raises FileNotFoundError when the package was installed without it)."""
    return Bundle(list(_jsonl_gz("musique_corpus.jsonl.gz")), list(_jsonl_gz("musique_questions.jsonl.gz")),
                  list(_jsonl_gz("musique_openie.jsonl.gz")))


def passage_keys(passages: list[dict[str, Any]]) -> list[str]:
    """One unique key per passage: its title, with ` (2)`, ` (3)`... for later passages of a repeated title.

    (The corpus holds 1,890 passages under 1,764 titles: several paragraphs of one article.)
    """
    seen: set[str] = set()
    keys = []
    for passage in passages:
        key, copy = passage["title"], 1
        while key in seen:
            copy += 1
            key = f"{passage['title']} ({copy})"
        seen.add(key)
        keys.append(key)
    return keys


@dataclass
class Graph:
    """The rows the demo ingests, built from the bundle."""

    passages: pa.Table
    entities: pa.Table
    mentions: pa.Table
    related: pa.Table
    triples_kept: int


def build_graph(bundle: Bundle) -> Graph:
    """Passage, Entity, MENTIONS and RELATED rows; RELATED keeps one edge per (subject, object) pair,
    its `relation` the distinct predicates joined by '; '. Self-relations are dropped."""
    keys = passage_keys(bundle.passages)
    entities: dict[str, None] = {}
    mention_src: list[str] = []
    mention_dst: list[str] = []
    relations: dict[tuple[str, str], list[str]] = {}
    triples = 0
    for record in bundle.openie:
        key = keys[record["idx"]]
        named: dict[str, None] = {}
        for name in record["entities"]:
            named[name.strip()] = None
        for subject, predicate, obj in record["triples"]:
            subject, obj = subject.strip(), obj.strip()
            named[subject] = None
            named[obj] = None
            if subject != obj:
                triples += 1
                found = relations.setdefault((subject, obj), [])
                if predicate.strip() not in found:
                    found.append(predicate.strip())
        for name in named:
            if name:
                entities[name] = None
                mention_src.append(key)
                mention_dst.append(name)
    labels = [LABEL]
    return Graph(
        passages=pa.table({"title": keys, "text": [p["text"] for p in bundle.passages],
                           "_labels": [labels] * len(keys)}),
        entities=pa.table({"name": list(entities), "_labels": [labels] * len(entities)}),
        mentions=pa.table({"src": mention_src, "dst": mention_dst}),
        related=pa.table({"src": [s for s, _ in relations], "dst": [o for _, o in relations],
                          "relation": [RELATION_SEPARATOR.join(r) for r in relations.values()]}),
        triples_kept=triples,
    )


class EntityMatcher:
    """Entities whose names occur in a text, on word boundaries, longest names kept.

    A baseline, not retrieval: names of several words match case-insensitively; one-word names
    count only when they look like a proper noun or a number (an upper-case letter or a digit:
    'Publix', '1963', not 'state') and match with their case (the entity 'President' is not
    found in 'the first president'); a name inside a longer matched name is dropped ('Paris'
    inside 'Paris Hilton'); names shorter than 3 characters are ignored.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = [(name.lower(), name) for name in names if len(name) >= ENTITY_NAME_CHARS_MIN
                      and (" " in name or any(c.isupper() or c.isdigit() for c in name))]

    def find(self, text: str) -> list[str]:
        lowered = text.lower()
        hits = []
        for low, name in self.names:
            if low not in lowered:
                continue
            several_words = " " in name
            pattern = rf"(?<!\w){re.escape(low if several_words else name)}(?!\w)"
            if re.search(pattern, lowered if several_words else text):
                hits.append((low, name))
        hits.sort(key=lambda hit: -len(hit[0]))
        kept: list[tuple[str, str]] = []
        for low, name in hits:
            if not any(low in longer for longer, _ in kept):
                kept.append((low, name))
        return [name for _, name in kept]


def load_embedder(bundle: Bundle) -> PrecomputedEmbedder:
    """The bundled vectors (knowledge/data/musique_embeddings.npz) for passages (title\\ntext) and questions."""
    source = resources.files("knowledge") / "data" / "musique_embeddings.npz"
    with source.open("rb") as raw, np.load(raw, allow_pickle=False) as arrays:
        passages, questions = arrays["passages"], arrays["questions"]
        question_ids = [str(i) for i in arrays["question_ids"]]
    if question_ids != [q["id"] for q in bundle.questions] or len(passages) != len(bundle.passages):
        raise ValueError("musique_embeddings.npz does not match the bundled corpus/questions")
    texts = [passage_text(p["title"], p["text"]) for p in bundle.passages] + [q["question"] for q in bundle.questions]
    return PrecomputedEmbedder.from_arrays(texts, np.concatenate([passages, questions]), name=DEFAULT_MODEL_NAME)


def documents(bundle: Bundle) -> list[Document]:
    """One Document per passage (doc_id `musique-NNNN`, the corpus line), with its OpenIE entities and triples."""
    return [Document(doc_id(i), p["text"], title=p["title"], labels=[LABEL], entities=list(o["entities"]),
                     triples=[list(t) for t in o["triples"]])
            for i, (p, o) in enumerate(zip(bundle.passages, bundle.openie, strict=True))]


def doc_id(index: int) -> str:
    return f"musique-{index:04d}"


def answer_question(session: Session, embedder: PrecomputedEmbedder, question: dict[str, Any],
                    titles: dict[str, str]) -> dict[str, Any]:
    """Graph retrieval for one bundled question, with what supports it and whether the gold passages were found."""
    result = session.retrieve(question["question"], k=SHOWN_CHUNKS, mode="graph", embedder=embedder)
    gold = [doc_id(i) for i in question["supporting_idx"]]
    found = [c.doc_id for c in result.chunks]
    return {"id": question["id"], "question": question["question"], "answer": question["answer"],
            "chunks": [{"doc_id": c.doc_id, "title": titles.get(c.doc_id), "score": c.score, "ranks": c.ranks,
                        "text": c.text, "gold": c.doc_id in gold} for c in result.chunks],
            "seeds": [e.name for e in sorted(result.entities, key=lambda e: -e.seed) if e.seed > 0][:5],
            "paths": [(e.src, e.relation, e.dst) for e in result.edges if e.type == "RELATED"][:4],
            "timings": result.timings, "lsn": result.lsn, "context_tokens": result.context_tokens,
            "supporting": [titles.get(g) for g in gold], "gold_hits": [titles.get(g) for g in gold if g in found]}


def recall_at(session: Session, embedder: PrecomputedEmbedder, questions: list[dict[str, Any]], mode: str,
              k: int = SUMMARY_K) -> float:
    """Share of supporting passages among the top k, over all questions."""
    found = total = 0
    for question in questions:
        keys = {c.doc_id for c in session.retrieve(question["question"], k=k, mode=mode, embedder=embedder).chunks}
        gold = [doc_id(i) for i in question["supporting_idx"]]
        found += sum(1 for g in gold if g in keys)
        total += len(gold)
    return found / max(total, 1)


def _print_question(out: TextIO, number: int, result: dict[str, Any]) -> None:
    print(f"\nQ{number} [{result['id']}] {result['question']}", file=out)
    print(f"    answer: {result['answer']}; supporting passages: "
          f"{', '.join(repr(s) for s in result['supporting'])}", file=out)
    if result["seeds"]:
        print(f"    seed entities: {', '.join(result['seeds'])}", file=out)
    for rank, chunk in enumerate(result["chunks"], start=1):
        text = chunk["text"] if len(chunk["text"]) <= 90 else chunk["text"][:87] + "..."
        marker = "*" if chunk["gold"] else " "
        via = ",".join(f"{name}#{r}" for name, r in chunk["ranks"].items())
        print(f"   {marker}{rank}. {chunk['score']:+.3f} {chunk['title']!r} [{via}] {text}", file=out)
    for subject, relation, obj in result["paths"]:
        print(f"    path: {subject} -[{relation}]-> {obj}", file=out)
    stages = ", ".join(f"{name} {1e3 * seconds:.1f}" for name, seconds in result["timings"].items())
    print(f"    timings (ms): {stages}; snapshot LSN {result['lsn']}; context {result['context_tokens']} tokens",
          file=out)
    hits = result["gold_hits"]
    if hits:
        print(f"    gold hit: yes, {len(hits)} of {len(result['supporting'])} supporting passages in the top "
              f"{SHOWN_CHUNKS} (marked *)", file=out)
    else:
        print(f"    gold hit: no, none of the {len(result['supporting'])} supporting passages in the top {SHOWN_CHUNKS}",
              file=out)


def run_demo(path: str | None = None, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Build the demo store at `path` (a temporary directory, removed afterwards, when None) and report.

    Returns what it printed as a dict: path, seconds, visible node/edge counts per type, the ingest
    report, the shown questions' results and a summary (recall@5 of vector and graph retrieval over all
    bundled questions). Raises KnowledgeError (e.g. StoreNotFound when `path` is a non-empty directory
    that is not a store), OSError, ValueError (bundled vectors out of step with the data).
    """
    started = time.perf_counter()
    temporary = tempfile.mkdtemp(prefix="knowledge-demo-") if path is None else None
    store_path = f"{temporary}/demo.store" if temporary else str(path)
    try:
        bundle = load_bundle()
        embedder = load_embedder(bundle)
        docs = documents(bundle)
        titles = {d.doc_id: d.title for d in docs}
        print(f"knowledge demo: MuSiQue subset (HippoRAG v1 release), {len(bundle.passages):,} passages, "
              f"{len(bundle.questions)} questions, bundled {DEFAULT_MODEL_NAME} vectors; store at {store_path}",
              file=out)
        with knowledge.open(store_path) as store:
            report = ingest(store.session(), docs, embedder=embedder, splitter=SPLITTER, embed_entities=False)
            print("schema: Document -HAS_CHUNK-> Chunk -MENTIONS-> Entity -RELATED{relation}-> Entity", file=out)
            rate = report.documents / max(report.seconds, 1e-9)
            print(f"ingest: {report.documents:,} documents ({report.written:,} written, {report.unchanged:,} "
                  f"unchanged), {report.chunks:,} chunks, {report.entities:,} new entities, {report.mentions:,} "
                  f"MENTIONS, {report.relations:,} RELATED in {report.seconds:.1f} s ({rate:,.0f} rows/s, "
                  f"{len(report.lsns)} transactions)", file=out)
            reader = store.session(READER)
            stats = reader.stats()
            print(f"visible to {READER.name!r} (reads {LABEL!r}) at LSN {stats['lsn']}: nodes "
                  + ", ".join(f"{n}={c:,}" for n, c in stats["nodes"].items()) + "; edges "
                  + ", ".join(f"{n}={c:,}" for n, c in stats["edges"].items()), file=out)
            results = [answer_question(reader, embedder, q, titles) for q in bundle.questions[:SHOWN_QUESTIONS]]
            for number, result in enumerate(results, start=1):
                _print_question(out, number, result)
            vector = recall_at(reader, embedder, bundle.questions, "vector")
            graph = recall_at(reader, embedder, bundle.questions, "graph")
            summary = {"questions": len(bundle.questions), "with_gold_hit": sum(1 for r in results if r["gold_hits"]),
                       f"vector_recall@{SUMMARY_K}": vector, f"graph_recall@{SUMMARY_K}": graph}
            print(f"\nall {len(bundle.questions)} questions: supporting-passage recall@{SUMMARY_K} "
                  f"vector {vector:.2f}, graph {graph:.2f}", file=out)
        seconds = time.perf_counter() - started
        print(f"done in {seconds:.1f} s" + ("" if temporary else f"; store kept at {store_path}"), file=out)
        return {"path": store_path, "seconds": seconds, "nodes": stats["nodes"], "edges": stats["edges"],
                "ingest": report, "questions": results, "summary": summary}
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


__all__ = ["SCHEMA", "Bundle", "EntityMatcher", "answer_question", "build_graph", "documents", "load_bundle",
           "load_embedder", "passage_keys", "recall_at", "run_demo"]
