"""bench/retrieval: GraphRAG retrieval quality and latency on real data, per mode, against a plain
vector-only baseline (numpy brute force over the same embeddings, outside the store) from the same run.

    python bench/retrieval.py [--only musique,multihop,2wiki] [--extractor default] [--synonyms 0.8]
                              [--repeat 3] [--cache-dir DIR] [--split-seed 19] [--ingest-runs 3] [--write-results]

Data in KNOWLEDGE_BENCH_DATA (default /work/shared/data); passage and question embeddings from
bench/embed_cache.py caches in --cache-dir (~/.cache/knowledge-bench); entity names that the caches do
not hold (the extractors' own names) are embedded once with the embed extra and kept in
--cache-dir/entity_names_<model>.npz, so reruns embed nothing.
`--extractor`: supplied (the data set's own entities/triples: MuSiQue's GPT-3.5 OpenIE output, MultiHop-RAG's
capitalised phrases + source), default (knowledge.graphrag.default_extractor(): spaCy with the nlp extra,
else rules), spacy, spacy-svo (with dependency-parse triples), rules, capitalized, none.
- MuSiQue (HippoRAG release): 100 questions, 1,890-passage corpus; gold = the `is_supporting` paragraphs of
  each question, matched by (title, text) to the corpus. The questions are split in two halves by a fixed
  seed (--split-seed): graph parameters are tuned on the "tune" half only; both halves are reported.
- MultiHop-RAG 500-query sample: corpus = the 438 unique evidence facts (title\\nfact) plus the 6,119
  2Wiki passages as distractors; gold = the query's evidence facts; per question type too (comparison).
- 2wiki: the 6,119 2Wiki passages alone, no questions (none ship): ingestion throughput and graph shape.
Writes bench/results/retrieval.json (unless --no-write) and, only with --write-results, the "GraphRAG
retrieval (bench/retrieval.py)" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import common  # noqa: E402
import embed_cache  # noqa: E402
import ir_metrics  # noqa: E402  (recall@k, nDCG@k, MRR from ir-measures: the bench extra)

import knowledge  # noqa: E402
from knowledge import Principal  # noqa: E402
from knowledge.embed import DEFAULT_MODEL_NAME, PrecomputedEmbedder  # noqa: E402
from knowledge.graphrag import (  # noqa: E402
    CapitalizedExtractor,
    Document,
    GraphParams,
    SentenceSplitter,
    default_extractor,
    extractor_by_name,
    ingest,
    retrieve,
)

DATA = embed_cache.DATA_DIR
MODES = ("vector", "keyword", "hybrid", "graph")
CUTS = (2, 5, 10)
LABEL = "public"
READER = Principal("bench-reader", read=frozenset({LABEL}))
SECTION = "GraphRAG retrieval (bench/retrieval.py)"
SPLITTER = SentenceSplitter(max_tokens=2048, overlap_tokens=0)
"""Passage-level corpora: every passage is one chunk (the longest is ~1,400 approximate tokens)."""


CACHE_DIR = embed_cache.DEFAULT_CACHE_DIR
NO_DISTRACTORS = False
"""--no-distractors: MultiHop-RAG's corpus is its 438 evidence facts alone (a reduced run)."""
EXTRACTORS = ("supplied", "default", "spacy", "spacy-svo", "rules", "capitalized", "none")


def _read(relative: str) -> Any:
    with open(os.path.join(DATA, relative), encoding="utf-8") as f:
        return json.load(f)


class NameCache:
    """An Embedder for texts outside the embed_cache caches (the extractors' entity names): vectors kept in
    `cache_dir`/entity_names_<model>.npz, the rest embedded with the default embedder (the embed extra) and
    added there on `save()`."""

    def __init__(self, cache_dir: str) -> None:
        self.name = DEFAULT_MODEL_NAME
        self.dimension = 384
        self.path = os.path.join(os.path.expanduser(cache_dir), "entity_names_all-MiniLM-L6-v2.npz")
        self.vectors: dict[str, np.ndarray] = {}
        self.added = 0
        self.seconds = 0.0
        if os.path.exists(self.path):
            data = np.load(self.path, allow_pickle=False)
            self.vectors = dict(zip(data["texts"].tolist(), data["vectors"], strict=True))
        self._model: Any = None

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.vectors))
        if missing:
            start = time.perf_counter()
            if self._model is None:
                from knowledge.embed import default_embedder
                self._model = default_embedder()
            for text, vector in zip(missing, self._model.embed(missing), strict=True):
                self.vectors[text] = vector
            self.added += len(missing)
            self.seconds += time.perf_counter() - start
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32) if texts else \
            np.zeros((0, self.dimension), np.float32)

    def save(self) -> None:
        if not self.added:
            return
        texts = list(self.vectors)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp.npz"
        np.savez(tmp, texts=np.array(texts), vectors=np.stack([self.vectors[t] for t in texts]))
        os.replace(tmp, self.path)
        self.added = 0


def split_halves(ids: list[str], seed: int) -> dict[str, set[str]]:
    """Question ids in two halves by a fixed seed: "tune" (parameters chosen on it) and "held-back"."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return {"tune": set(order[:half]), "held-back": set(order[half:])}


# -- data sets ------------------------------------------------------------------------------------
def musique(extractor: str, names: NameCache, cache_dir: str | None) -> dict[str, Any]:
    """Documents, questions (id, text, vector, gold doc ids) and the embedder for the MuSiQue store."""
    corpus = _read(embed_cache.MUSIQUE_CORPUS)
    questions = _read(embed_cache.MUSIQUE_QUESTIONS)
    openie = _read(embed_cache.MUSIQUE_OPENIE)["docs"]
    where = {}
    for i, passage in enumerate(corpus):
        where.setdefault((passage["title"], passage["text"]), i)
    supplied = extractor == "supplied"
    docs = [Document(f"p{i}", p["text"], title=p["title"], labels=[LABEL],
                     entities=list(o["extracted_entities"]) if supplied else None,
                     triples=[t for t in o["extracted_triples"] if isinstance(t, list)] if supplied else None)
            for i, (p, o) in enumerate(zip(corpus, openie, strict=True))]
    _, passage_vectors = embed_cache.load("musique_passages", cache_dir)
    q_ids, q_vectors = embed_cache.load("musique_questions", cache_dir)
    e_names, e_vectors = embed_cache.load("musique_entities", cache_dir)
    q_vector = dict(zip(q_ids, q_vectors, strict=True))
    items = []
    for q in questions:
        gold = [f"p{where[(p['title'], p['paragraph_text'])]}" for p in q["paragraphs"] if p["is_supporting"]]
        items.append({"id": q["id"], "question": q["question"], "vector": q_vector[q["id"]], "gold": gold,
                      "type": q["id"].split("__")[0]})
    texts = [f"{p['title']}\n{p['text']}" for p in corpus] + list(e_names)
    embedder = PrecomputedEmbedder.from_arrays(texts, np.concatenate([passage_vectors, e_vectors]), names,
                                               name=DEFAULT_MODEL_NAME)
    return {"name": "musique", "docs": docs, "questions": items, "embedder": embedder,
            "corpus_keys": [d.doc_id for d in docs], "corpus_vectors": passage_vectors}


def multihop(extractor: str, names: NameCache, cache_dir: str | None) -> dict[str, Any]:
    """MultiHop-RAG 500: facts + 2Wiki distractors as documents; queries with their gold facts."""
    truth = _read(embed_cache.MULTIHOP_TRUTH)
    queries = _read(embed_cache.MULTIHOP_QUERIES)["queries"]
    fact_ids, fact_vectors = embed_cache.load("multihop_facts", cache_dir)
    wiki_ids, wiki_vectors = embed_cache.load("2wiki_passages", cache_dir)
    q_ids, q_vectors = embed_cache.load("multihop_questions", cache_dir)
    facts: dict[str, dict[str, Any]] = {}
    for t in truth.values():
        for e in t["evidence_list"]:
            facts.setdefault(e["fact"], e)
    fact_key = {fact: f"f{i}" for i, fact in enumerate(fact_ids)}
    supplied = extractor == "supplied"
    cap = CapitalizedExtractor()
    docs = [Document(fact_key[fact], fact, title=facts[fact]["title"], labels=[LABEL],
                     metadata={"source": facts[fact]["source"], "url": facts[fact]["url"]},
                     entities=[facts[fact]["source"], *cap.extract(f"{facts[fact]['title']}. {fact}")[0]]
                     if supplied else None, triples=[] if supplied else None)
            for fact in fact_ids]
    wiki = [] if NO_DISTRACTORS else _read(embed_cache.TWOWIKI_CORPUS)
    docs += [Document(f"w{i}", w["text"], title=w["title"], labels=[LABEL],
                      entities=cap.extract(f"{w['title']}. {w['text']}")[0] if supplied else None,
                      triples=[] if supplied else None)
             for i, w in enumerate(wiki)]
    q_vector = dict(zip(q_ids, q_vectors, strict=True))
    items = []
    for q in queries:
        gold = [fact_key[e["fact"]] for e in truth[q["id"]]["evidence_list"]]
        items.append({"id": q["id"], "question": q["question"], "vector": q_vector[q["id"]],
                      "gold": list(dict.fromkeys(gold)), "type": q["question_type"]})
    texts = [f"{facts[f]['title']}\n{f}" for f in fact_ids] + [f"{w['title']}\n{w['text']}" for w in wiki]
    vectors = np.concatenate([fact_vectors, wiki_vectors[:len(wiki)]])
    assert NO_DISTRACTORS or len(wiki_ids) == len(wiki)
    embedder = PrecomputedEmbedder.from_arrays(texts, vectors, names, name=DEFAULT_MODEL_NAME)
    return {"name": "multihop", "docs": docs, "questions": items, "embedder": embedder,
            "corpus_keys": [d.doc_id for d in docs], "corpus_vectors": vectors}


def twowiki(extractor: str, names: NameCache, cache_dir: str | None) -> dict[str, Any]:
    """The 2Wiki passages alone (no questions ship): ingestion throughput and graph shape only."""
    wiki = _read(embed_cache.TWOWIKI_CORPUS)
    _, vectors = embed_cache.load("2wiki_passages", cache_dir)
    cap = CapitalizedExtractor()
    supplied = extractor == "supplied"
    docs = [Document(f"w{i}", w["text"], title=w["title"], labels=[LABEL],
                     entities=cap.extract(f"{w['title']}. {w['text']}")[0] if supplied else None,
                     triples=[] if supplied else None) for i, w in enumerate(wiki)]
    texts = [f"{w['title']}\n{w['text']}" for w in wiki]
    embedder = PrecomputedEmbedder.from_arrays(texts, vectors, names, name=DEFAULT_MODEL_NAME)
    return {"name": "2wiki", "docs": docs, "questions": [], "embedder": embedder,
            "corpus_keys": [d.doc_id for d in docs], "corpus_vectors": vectors}


# -- measuring ------------------------------------------------------------------------------------
def _doc(chunk_key: str) -> str:
    return chunk_key.split("#", 1)[0]


def quality(ranked: list[list[str]], golds: list[list[str]]) -> dict[str, float]:
    """recall@k (share of gold found in top k, averaged over questions with gold), Hits@k (any gold in
    top k), MRR (first gold) over the questions that have gold."""
    pairs = [(r, g) for r, g in zip(ranked, golds, strict=True) if g]
    out: dict[str, float] = {}
    if not pairs:
        return {"questions": 0}
    for cut in CUTS:
        out[f"recall@{cut}"] = statistics.mean(len(set(r[:cut]) & set(g)) / len(g) for r, g in pairs)
        out[f"hits@{cut}"] = statistics.mean(float(bool(set(r[:cut]) & set(g))) for r, g in pairs)
    out["mrr"] = statistics.mean(next((1 / (i + 1) for i, d in enumerate(r) if d in g), 0.0) for r, g in pairs)
    out["questions"] = len(pairs)
    return out


def grouped(data: dict[str, Any], ranked: list[list[str]], halves: dict[str, set[str]] | None) -> dict[str, Any]:
    """quality() over all questions, each half (MuSiQue) and each question type (MultiHop-RAG)."""
    questions = data["questions"]
    golds = [q["gold"] for q in questions]
    out: dict[str, Any] = quality(ranked, golds)
    out["ir_measures"] = ir_metrics.measure(ranked, golds)   # the same figures from a library, and nDCG
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        if halves is not None:
            groups.setdefault("half:" + next(h for h, ids in halves.items() if q["id"] in ids), []).append(i)
        if data["name"] == "multihop":
            groups.setdefault("type:" + q["type"], []).append(i)
    out["groups"] = {name: quality([ranked[i] for i in idx], [golds[i] for i in idx])
                     for name, idx in sorted(groups.items())}
    return out


def baseline(data: dict[str, Any], k: int) -> tuple[list[list[str]], list[float]]:
    """Plain numpy brute force over the same corpus vectors, outside the store."""
    matrix = np.ascontiguousarray(data["corpus_vectors"], dtype=np.float32)
    keys = data["corpus_keys"]
    ranked, times = [], []
    for q in data["questions"]:
        start = time.perf_counter()
        scores = matrix @ q["vector"]
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
        times.append(time.perf_counter() - start)
        ranked.append([keys[i] for i in top])
    return ranked, times


def build_store(data: dict[str, Any], path: str, extractor: str, synonyms: float | None) -> tuple[Any, dict]:
    """Open a store at `path` and ingest the data set's documents with the chosen extractor."""
    store = knowledge.open(path)
    chosen = None if extractor in ("supplied", "default") else extractor_by_name(extractor)
    start = time.perf_counter()
    report = ingest(store.session(), data["docs"], embedder=data["embedder"], embed_entities="auto",
                    splitter=SPLITTER, extractor=chosen, synonyms=synonyms, progress=False)
    seconds = time.perf_counter() - start
    embedding = report.timings.get("embed_chunks", 0.0) + report.timings.get("embed_entities", 0.0)
    second = ingest(store.session(), data["docs"], embedder=data["embedder"], splitter=SPLITTER,
                    extractor=chosen, synonyms=synonyms, progress=False)
    info = {"seconds": seconds, "seconds_excluding_embedding": seconds - embedding,
            "passages_per_s_excluding_embedding": report.documents / max(seconds - embedding, 1e-9),
            "documents": report.documents, "chunks": report.chunks, "entities": report.entities,
            "mentions": report.mentions, "relations": report.relations, "synonyms": report.synonyms,
            "reingest_writes": second.written, "timings": report.timings,
            "extractor": getattr(chosen, "name", "supplied" if extractor == "supplied" else
                                 getattr(default_extractor(), "name", "?"))}
    return store, info


def _worker_cpu(extractor: Any) -> float:
    """CPU seconds used so far by the extractor's worker processes (SpacyExtractor's pool; 0 without)."""
    pool = getattr(extractor, "_pool", None)
    total = 0.0
    for process in (getattr(pool, "_processes", None) or {}).values():
        try:
            with open(f"/proc/{process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def ingest_ab(data: dict[str, Any], workdir: str, extractor: str, synonyms: float | None, runs: int) -> dict:
    """Ingest throughput, lookahead 2 (the default: extraction of the next batches overlaps the store work)
    against lookahead 0 (one after the other), alternating, `runs` each, into throwaway stores; wall clock
    excluding embedding, this process's CPU and the extractor's worker processes' CPU per run."""
    chosen = None if extractor in ("supplied", "default") else extractor_by_name(extractor)
    used = chosen if chosen is not None else default_extractor()
    out: dict[str, list[dict[str, float]]] = {"lookahead=2": [], "lookahead=0": []}
    for run in range(runs):
        for lookahead in ((2, 0) if run % 2 == 0 else (0, 2)):
            path = os.path.join(workdir, f"ab-{run}-{lookahead}.store")
            store = knowledge.open(path)
            load = os.getloadavg()[0]
            cpu, workers, start = time.process_time(), _worker_cpu(used), time.perf_counter()
            report = ingest(store.session(), data["docs"], embedder=data["embedder"], splitter=SPLITTER,
                            extractor=chosen, synonyms=synonyms, progress=False, lookahead=lookahead)
            seconds = time.perf_counter() - start
            cpu, workers = time.process_time() - cpu, _worker_cpu(used) - workers
            store.close()
            shutil.rmtree(path, ignore_errors=True)
            embedding = report.timings.get("embed_chunks", 0.0) + report.timings.get("embed_entities", 0.0)
            out[f"lookahead={lookahead}"].append({
                "passages_per_s_excluding_embedding": report.documents / max(seconds - embedding, 1e-9),
                "seconds": seconds, "main_cpu_s": cpu, "worker_cpu_s": workers,
                "load_before": load, "load_after": os.getloadavg()[0]})
    summary = {}
    cores = os.cpu_count() or 1
    workers = max(1, getattr(used, "processes", 1))
    for name, rows in out.items():
        main = statistics.median(r["main_cpu_s"] for r in rows)
        work = statistics.median(r["worker_cpu_s"] for r in rows)
        if name == "lookahead=0" or not work:   # extraction, then store work: one after the other
            seconds, model = work / min(workers, cores) + main, "workers' CPU / their number + this process's CPU"
        else:                                   # both at once: bounded by all the CPU over the cores
            seconds = max((work + main) / cores, main, work / min(workers, cores))
            model = "max(all CPU / cores, this process's CPU, workers' CPU / their number)"
        summary[name] = {"median_passages_per_s": statistics.median(r["passages_per_s_excluding_embedding"]
                                                                    for r in rows),
                         "median_main_cpu_s": main, "median_worker_cpu_s": work, "runs": rows,
                         "idle_passages_per_s": len(data["docs"]) / max(seconds, 1e-9), "idle_model": model}
    return summary


def evaluate(session: Any, data: dict[str, Any], mode: str, params: GraphParams | None = None,
             k: int = 10) -> list[list[str]]:
    """Ranked doc ids per question."""
    return [[_doc(c.key) for c in retrieve(session, q["question"], k, mode, query_vector=q["vector"],
                                           params=params).chunks] for q in data["questions"]]


def run_dataset(data: dict[str, Any], workdir: str, repeat: int, options: dict[str, Any]) -> dict[str, Any]:
    path = os.path.join(workdir, f"{data['name']}.store")
    store, info = build_store(data, path, options["extractor"], options["synonyms"])
    if options.get("ingest_runs"):
        info["lookahead_ab"] = ingest_ab(data, workdir, options["extractor"], options["synonyms"],
                                         options["ingest_runs"])
    halves = split_halves([q["id"] for q in data["questions"]], options["seed"]) \
        if data["name"] == "musique" else None
    with store:
        session = store.session(READER)
        out: dict[str, Any] = {"ingest": info, "store": session.stats(), "modes": {}}
        if not data["questions"]:
            return out
        ranked, times = baseline(data, 10)
        out["modes"]["baseline (numpy vector)"] = {**grouped(data, ranked, halves),
                                                   "latency_ms": _latency({"total": times[1:]})}
        notes = 0
        for mode in MODES:
            runs: list[dict[str, float]] = []
            cpu: list[float] = []
            ranked = []
            for attempt in range(repeat):
                for i, q in enumerate(data["questions"]):
                    tick = time.thread_time()
                    result = retrieve(session, q["question"], 10, mode, query_vector=q["vector"])
                    tick = time.thread_time() - tick
                    if attempt == 0:
                        ranked.append([_doc(c.key) for c in result.chunks])
                        notes += bool(result.notes)
                    # timed: passes after the first (which fills the row cache; the cold case is measured
                    # below), or with --repeat 1 every call but the first (it builds the per-LSN graph cache)
                    if attempt or (repeat == 1 and i):
                        runs.append(result.timings)
                        cpu.append(tick)
            stages = {s: [r.get(s, 0.0) for r in runs] for s in runs[0]} if runs else {}
            if stages:
                stages["total_excl_embed"] = [r["total"] - r.get("embed", 0.0) for r in runs]
                stages["thread_cpu"] = cpu      # CPU time of the calling thread: what load does not add
            out["modes"][mode] = {**grouped(data, ranked, halves), "latency_ms": _latency(stages)}
        out["results_with_notes"] = notes
        cold: list[float] = []  # the row cache is warm above (repeated questions); here it starts empty
        cold_cpu: list[float] = []
        for _ in range(repeat):
            for q in data["questions"]:
                store.row_cache.clear()
                tick = time.thread_time()
                result = retrieve(session, q["question"], 10, "graph", query_vector=q["vector"])
                cold_cpu.append(time.thread_time() - tick)
                cold.append(result.timings["total"] - result.timings.get("embed", 0.0))
        cold_latency = _latency({"total_excl_embed": cold, "thread_cpu": cold_cpu})
        out["graph_cold_row_cache_ms"] = cold_latency["total_excl_embed"]
        out["graph_cold_row_cache_thread_cpu_ms"] = cold_latency["thread_cpu"]
        out["sweep"] = {name: grouped(data, evaluate(session, data, "graph", params), halves)
                        for name, params in SWEEP.items()}
        return out


SWEEP = {
    "defaults": GraphParams(),
    "keyword_weight=0": GraphParams(keyword_weight=0.0),
    "keyword_weight=0.1": GraphParams(keyword_weight=0.1),
    "keyword_weight=0.3": GraphParams(keyword_weight=0.3),
    "graph_weight=0.03": GraphParams(graph_weight=0.03),
    "graph_weight=0.1": GraphParams(graph_weight=0.1),
    "seed_chunks=2": GraphParams(seed_chunks=2),
    "synonym_weight=0 (no synonym edges)": GraphParams(synonym_weight=0.0),
    "title_weight=0 (no title BM25)": GraphParams(title_weight=0.0),
    "name_weight=0 (no question-named seeds)": GraphParams(name_weight=0.0),
    "graph_weight=0 (no PPR: vector+BM25 score sum)": GraphParams(graph_weight=0.0),
    "passage_seeds=5 (HippoRAG 2 dense passage seeds)": GraphParams(passage_seeds=5),
    "hybrid_weight=0.5 (RRF with the hybrid ranking)": GraphParams(hybrid_weight=0.5),
    "mass_floor=0.05 (walk penalty capped)": GraphParams(mass_floor=0.05),
    "keyword_floor=0.01, keyword_floor_top=3": GraphParams(keyword_floor=0.01, keyword_floor_top=3),
}


def _latency(stages: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {stage: {"p50": 1e3 * statistics.median(v), "p95": 1e3 * common.percentile(v, 0.95),
                    "p99": 1e3 * common.percentile(v, 0.99)} for stage, v in stages.items() if v}


def _row(name: str, m: dict[str, Any]) -> str:
    return (f"| {name} | {m.get('recall@2', 0):.3f} | {m.get('recall@5', 0):.3f} | {m.get('recall@10', 0):.3f} | "
            f"{m.get('hits@10', 0):.3f} | {m.get('mrr', 0):.3f} |")


def markdown(results: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"Machine: {results['machine']}. Embeddings: {DEFAULT_MODEL_NAME} from bench/embed_cache.py "
             "caches (questions too, so latencies exclude the query embedding). Latency is per "
             "`retrieve()` call through a non-admin session (one snapshot each), warm graph cache. "
             f"Extractor: {results['extractor']}; synonym edges: {results['synonyms'] or 'off'}; MuSiQue halves by "
             f"seed {results['seed']} (the graph defaults were tuned on the 'tune' half only).", ""]
    for name, data in results["datasets"].items():
        ing = data["ingest"]
        lines += [f"### {name}", "",
                  f"Ingest ({ing['extractor']}): {ing['documents']:,} documents, {ing['chunks']:,} chunks, "
                  f"{ing['entities']:,} entities, {ing['mentions']:,} mentions, {ing['relations']:,} relations, "
                  f"{ing['synonyms']:,} synonym edges in {ing['seconds']:.1f} s "
                  f"({ing['passages_per_s_excluding_embedding']:.0f} passages/s excluding embedding); "
                  f"re-ingest wrote {ing['reingest_writes']} documents. 1-minute load average before/after: "
                  f"{data['load_average_1min'][0]:.1f} / {data['load_average_1min'][1]:.1f} on {os.cpu_count()} CPUs.",
                  ""]
        for variant, ab in ing.get("lookahead_ab", {}).items():
            lines += [f"Ingest with {variant}: median {ab['median_passages_per_s']:.0f} passages/s excluding embedding "
                      "(runs: " + ", ".join(f"{r['passages_per_s_excluding_embedding']:.0f} at load {r['load_before']:.1f}"
                                            for r in ab["runs"]) +
                      f"); CPU: this process {ab['median_main_cpu_s']:.1f} s, extractor workers "
                      f"{ab['median_worker_cpu_s']:.1f} s; on {os.cpu_count()} idle cores "
                      f"{ab['idle_passages_per_s']:.0f} passages/s ({ab['idle_model']}).", ""]
        if not data.get("modes"):
            continue
        lines += ["| mode | R@2 | R@5 | R@10 | Hits@10 | MRR | total p50 ms | p95 | p99 | p99 excl. embed |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for mode, m in data["modes"].items():
            total = m["latency_ms"].get("total", {})
            excl = m["latency_ms"].get("total_excl_embed", total).get("p99", float("nan"))
            lines.append(f"{_row(mode, m)} {total.get('p50', 0):.2f} | {total.get('p95', 0):.2f} | "
                         f"{total.get('p99', 0):.2f} | {excl:.2f} |")
        groups = sorted({g for m in data["modes"].values() for g in m.get("groups", {})})
        if groups:
            lines += ["", "By group (R@5 / R@10):", "", "| mode | " + " | ".join(groups) + " |",
                      "|---|" + "---|" * len(groups)]
            for mode, m in data["modes"].items():
                cells = [f"{m['groups'][g].get('recall@5', 0):.3f} / {m['groups'][g].get('recall@10', 0):.3f}"
                         if g in m["groups"] else "" for g in groups]
                lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        if data.get("sweep"):
            lines += ["", "Graph-mode variants (quality only; R@5 on all / tune half / held-back half):", "",
                      "| graph params | R@5 all | R@5 tune | R@5 held-back | R@10 held-back |", "|---|---|---|---|---|"]
            for variant, m in data["sweep"].items():
                g = m.get("groups", {})
                tune, held = g.get("half:tune", {}), g.get("half:held-back", {})
                lines.append(f"| {variant} | {m.get('recall@5', 0):.3f} | {tune.get('recall@5', 0):.3f} | "
                             f"{held.get('recall@5', 0):.3f} | {held.get('recall@10', 0):.3f} |")
        graph = data["modes"].get("graph", {}).get("latency_ms", {})
        if graph:
            lines += ["", "Graph mode per stage (ms, p50 / p95 / p99): " + "; ".join(
                f"{s} {v['p50']:.2f} / {v['p95']:.2f} / {v['p99']:.2f}" for s, v in graph.items())]
        cold = data.get("graph_cold_row_cache_ms")
        if cold:
            lines += ["", "Graph mode with the row cache emptied before every call: "
                      f"p50 {cold['p50']:.2f} ms, p95 {cold['p95']:.2f} ms, p99 {cold['p99']:.2f} ms "
                      "(excluding the query embedding)."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="musique,multihop")
    parser.add_argument("--extractor", default="supplied", choices=EXTRACTORS)
    parser.add_argument("--synonyms", type=float, default=0.8,
                        help="SYNONYM edges between entity names with cosine >= this (ingest's default 0.8; 0: none)")
    parser.add_argument("--cache-dir", default=CACHE_DIR, help="embedding caches (bench/embed_cache.py) and "
                        "the entity-name vectors this script adds")
    parser.add_argument("--split-seed", type=int, default=19, help="seed of the MuSiQue tune/held-back split")
    parser.add_argument("--repeat", type=int, default=3, help="passes over the questions per mode (the first gives "
                        "the quality figures and fills the row cache, the others are timed; with 1, every call but "
                        "the first is timed)")
    parser.add_argument("--no-distractors", action="store_true", help="MultiHop-RAG without the 6,119 2Wiki "
                        "distractor passages (its 438 evidence facts alone: a reduced run)")
    parser.add_argument("--ingest-runs", type=int, default=0, help="after the first ingest, ingest each data set "
                        "this many more times with lookahead 2 and with lookahead 0 (alternating, throwaway stores): "
                        "passages/s excluding embedding, CPU of this process and of the extractor's workers")
    parser.add_argument("--no-write", action="store_true", help="print only; write no JSON")
    parser.add_argument("--write-results", action="store_true", help="also rewrite the RESULTS.md section")
    args = parser.parse_args(argv)
    args.synonyms = args.synonyms or None
    global NO_DISTRACTORS
    NO_DISTRACTORS = args.no_distractors
    cache_dir = os.path.expanduser(args.cache_dir)
    loaders = {"musique": musique, "multihop": multihop, "2wiki": twowiki}
    names = NameCache(cache_dir)
    workdir = tempfile.mkdtemp(prefix="knowledge-bench-retrieval-")
    results: dict[str, Any] = {"machine": common.machine(), "extractor": args.extractor, "synonyms": args.synonyms,
                               "seed": args.split_seed, "datasets": {}}
    options = {"extractor": args.extractor, "synonyms": args.synonyms, "seed": args.split_seed,
               "ingest_runs": args.ingest_runs}
    try:
        for name in [n.strip() for n in args.only.split(",") if n.strip()]:
            data = loaders[name](args.extractor, names, cache_dir)
            load_before = os.getloadavg()[0]
            results["datasets"][name] = out = run_dataset(data, workdir, args.repeat, options)
            names.save()
            out["load_average_1min"] = [load_before, os.getloadavg()[0]]
            ing = out["ingest"]
            print(f"{name:9} ingest {ing['documents']} docs {ing['entities']} entities {ing['relations']} relations "
                  f"{ing['synonyms']} synonyms, {ing['passages_per_s_excluding_embedding']:.0f} passages/s "
                  f"excl. embedding", flush=True)
            for variant, ab in ing.get("lookahead_ab", {}).items():
                print(f"{name:9} ingest {variant}: median {ab['median_passages_per_s']:.0f} passages/s excl. embedding "
                      f"(runs: " + ", ".join(f"{r['passages_per_s_excluding_embedding']:.0f} at load "
                                             f"{r['load_before']:.1f}" for r in ab["runs"]) +
                      f"); CPU: this process {ab['median_main_cpu_s']:.1f} s, extractor workers "
                      f"{ab['median_worker_cpu_s']:.1f} s; on {os.cpu_count()} idle cores that is "
                      f"{ab['idle_passages_per_s']:.0f} passages/s ({ab['idle_model']})", flush=True)
            for mode, m in out["modes"].items():
                total = m["latency_ms"].get("total_excl_embed", m["latency_ms"].get("total", {}))
                halves = " ".join(f"{g.split(':')[1]} {v['recall@5']:.3f}/{v['recall@10']:.3f}"
                                  for g, v in m["groups"].items() if g.startswith("half:") or "comparison" in g)
                thread = m["latency_ms"].get("thread_cpu", {})
                print(f"{name:9} {mode:26} R@5 {m['recall@5']:.3f} R@10 {m['recall@10']:.3f} "
                      f"Hits@10 {m['hits@10']:.3f} {halves} p50 {total.get('p50', 0):.2f} p99 {total.get('p99', 0):.2f} "
                      f"ms excl. embedding (thread CPU p50 {thread.get('p50', 0):.2f} p99 {thread.get('p99', 0):.2f})",
                      flush=True)
            if out.get("graph_cold_row_cache_ms"):
                cold, cold_cpu = out["graph_cold_row_cache_ms"], out["graph_cold_row_cache_thread_cpu_ms"]
                print(f"{name:9} graph, row cache emptied before each call: p50 {cold['p50']:.2f} p99 {cold['p99']:.2f} "
                      f"ms excl. embedding (thread CPU p50 {cold_cpu['p50']:.2f} p99 {cold_cpu['p99']:.2f}); "
                      f"1-minute load {out['load_average_1min'][0]:.1f} -> {out['load_average_1min'][1]:.1f}", flush=True)
            for variant, m in out.get("sweep", {}).items():
                groups = " ".join(f"{g.split(':')[1]} {v['recall@5']:.3f}/{v['recall@10']:.3f}"
                                  for g, v in m["groups"].items() if g.startswith("half:") or "comparison" in g)
                print(f"{name:9} graph {variant:48} R@5 {m['recall@5']:.3f} R@10 {m['recall@10']:.3f} {groups}",
                      flush=True)
    finally:
        names.save()
        shutil.rmtree(workdir, ignore_errors=True)
    command = "python bench/retrieval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    tag = "" if args.extractor == "supplied" and args.synonyms is None else \
        f"-{args.extractor}" + (f"-synonyms{args.synonyms}" if args.synonyms else "")
    if not args.no_write:
        print(common.write_json("retrieval" + tag, results))
    if args.write_results:
        section = SECTION if not tag else (f"GraphRAG retrieval, --extractor {args.extractor} --synonyms "
                                           f"{args.synonyms or 0} (bench/retrieval.py)")
        common.replace_section(os.path.join(HERE, "RESULTS.md"), section, markdown(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
