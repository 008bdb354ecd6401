"""The demo: a typed graph from 1,890 real MuSiQue passages and their OpenIE triples, then a look at it.

`run_demo()` creates a store (temporary unless a path is given), declares the GraphRAG schema,
ingests the bundled data (knowledge/data, see SOURCE.md there) with one transaction per type,
and prints node/edge counts, ingest rates and, for three bundled questions, the entities named in
the question, their neighbourhoods, the passages that mention them and whether a supporting
(gold) passage is among those. Retrieval here is a plain name match, a baseline for the GraphRAG
retrieval to come.
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

import pyarrow as pa

import knowledge
from knowledge.principal import Principal
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


def answer_question(session: Session, matcher: EntityMatcher, question: dict[str, Any],
                    keys: list[str]) -> dict[str, Any]:
    """Entities named in the question, their graph neighbourhood, the passages mentioning them, gold hits."""
    entities = []
    passages: dict[str, None] = {}
    for name in matcher.find(question["question"]):
        related = session.neighbors("Entity", name, edge_type="RELATED", direction="both")
        reach = session.traverse("Entity", name, edge_type="RELATED", direction="both", depth=2)
        mentioned_in = session.neighbors("Entity", name, edge_type="MENTIONS", direction="in")
        entities.append({"name": name, "neighbors": len(related), "neighbor_sample": [r.key for r in related[:3]],
                         "two_hop_nodes": reach.num_rows - 1, "passages": len(mentioned_in)})
        for ref in mentioned_in:
            passages[ref.key] = None
    gold = [keys[i] for i in question["supporting_idx"]]
    hits = [key for key in gold if key in passages]
    return {"id": question["id"], "question": question["question"], "answer": question["answer"],
            "entities": entities, "passages": list(passages), "supporting": gold, "gold_hits": hits}


def _ingest(session: Session, kind: str, name: str, rows: pa.Table) -> dict[str, float]:
    started = time.perf_counter()
    with session.transaction() as tx:
        if kind == "nodes":
            tx.upsert_nodes(name, rows)
        else:
            tx.upsert_edges(name, rows)
    seconds = time.perf_counter() - started
    return {"rows": rows.num_rows, "seconds": seconds, "rows_per_second": rows.num_rows / max(seconds, 1e-9)}


def _print_question(out: TextIO, number: int, result: dict[str, Any]) -> None:
    print(f"\nQ{number} [{result['id']}] {result['question']}", file=out)
    print(f"    answer: {result['answer']}; supporting passages: "
          f"{', '.join(repr(s) for s in result['supporting'])}", file=out)
    if not result["entities"]:
        print("    no entity of the graph is named in the question", file=out)
    for entity in result["entities"]:
        sample = ", ".join(repr(key) for key in entity["neighbor_sample"])
        more = ", ..." if entity["neighbors"] > len(entity["neighbor_sample"]) else ""
        sample = f" ({sample}{more})" if sample else ""
        print(f"    entity {entity['name']!r}: {entity['neighbors']} RELATED neighbours{sample}, "
              f"{entity['two_hop_nodes']} entities within 2 hops, mentioned in {entity['passages']} passage(s)",
              file=out)
    if result["entities"]:
        print(f"    passages mentioning them: {len(result['passages'])}", file=out)
    hits = result["gold_hits"]
    if hits:
        print(f"    gold hit: yes, {len(hits)} of {len(result['supporting'])} supporting passages among them "
              f"({', '.join(repr(h) for h in hits)})", file=out)
    else:
        print(f"    gold hit: no, none of the {len(result['supporting'])} supporting passages among them", file=out)


def run_demo(path: str | None = None, out: TextIO = sys.stdout) -> dict[str, Any]:
    """Build the demo store at `path` (a temporary directory, removed afterwards, when None) and report.

    Returns what it printed as a dict: path, nodes/edges counts per type, ingest figures per type,
    the shown questions' results and a summary over all bundled questions. Raises KnowledgeError
    (e.g. StoreNotFound when `path` is a non-empty directory that is not a store) and OSError.
    """
    started = time.perf_counter()
    temporary = tempfile.mkdtemp(prefix="knowledge-demo-") if path is None else None
    store_path = f"{temporary}/demo.store" if temporary else str(path)
    try:
        bundle = load_bundle()
        graph = build_graph(bundle)
        keys = graph.passages.column("title").to_pylist()
        print(f"knowledge demo: MuSiQue subset (HippoRAG v1 release), {len(bundle.passages):,} passages, "
              f"{len(bundle.questions)} questions; store at {store_path}", file=out)
        with knowledge.open(store_path) as store:
            store.apply_schema(SCHEMA)
            admin = store.session()
            ingest = {"Passage": _ingest(admin, "nodes", "Passage", graph.passages),
                      "Entity": _ingest(admin, "nodes", "Entity", graph.entities),
                      "MENTIONS": _ingest(admin, "edges", "MENTIONS", graph.mentions),
                      "RELATED": _ingest(admin, "edges", "RELATED", graph.related)}
            print("schema: Passage {key title, text}, Entity {key name}, MENTIONS Passage->Entity, "
                  "RELATED Entity->Entity {relation}", file=out)
            print("ingest (one transaction each):", file=out)
            for name, figures in ingest.items():
                print(f"    {name:<9}{figures['rows']:>8,} rows {figures['seconds']:>7.2f} s "
                      f"{figures['rows_per_second']:>11,.0f} rows/s", file=out)
            reader = store.session(READER)
            stats = reader.stats()
            print(f"visible to {READER.name!r} (reads {LABEL!r}) at LSN {stats['lsn']}: nodes "
                  + ", ".join(f"{n}={c:,}" for n, c in stats["nodes"].items()) + "; edges "
                  + ", ".join(f"{n}={c:,}" for n, c in stats["edges"].items())
                  + f" ({graph.triples_kept:,} OpenIE triples)", file=out)

            matcher = EntityMatcher(graph.entities.column("name").to_pylist())
            results = [answer_question(reader, matcher, q, keys) for q in bundle.questions]
            for number, result in enumerate(results[:SHOWN_QUESTIONS], start=1):
                _print_question(out, number, result)
            with_hit = sum(1 for r in results if r["gold_hits"])
            gold_total = sum(len(r["supporting"]) for r in results)
            recall = sum(len(r["gold_hits"]) for r in results) / max(gold_total, 1)
            mean_passages = sum(len(r["passages"]) for r in results) / max(len(results), 1)
            summary = {"questions": len(results), "with_gold_hit": with_hit, "supporting_recall": recall,
                       "mean_passages": mean_passages}
            print(f"\nall {len(results)} questions (name match baseline): a supporting passage among the "
                  f"passages mentioning the question's entities for {with_hit}; supporting-passage recall "
                  f"{recall:.0%} with {mean_passages:.1f} passages per question on average", file=out)
        seconds = time.perf_counter() - started
        print(f"done in {seconds:.1f} s" + ("" if temporary else f"; store kept at {store_path}"), file=out)
        return {"path": store_path, "seconds": seconds, "nodes": stats["nodes"], "edges": stats["edges"],
                "ingest": ingest, "questions": results[:SHOWN_QUESTIONS], "summary": summary}
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


__all__ = ["SCHEMA", "Bundle", "EntityMatcher", "build_graph", "load_bundle", "passage_keys", "run_demo"]
