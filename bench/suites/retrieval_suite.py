"""retrieval: GraphRAG retrieval over the bundled MuSiQue passages (1,890, with their OpenIE triples and
MiniLM vectors): latency per mode (vector, keyword, hybrid, graph), per-stage time (embed, vector, keyword,
graph, fetch), supporting-passage recall@5, requests and errors, through a non-admin session.

Baseline, same run, same question vectors: numpy brute-force cosine over the same passage vectors, outside
the store (vector-only retrieval with no store, no access control)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from bench import measure
from bench.suites import Context

NAME = "retrieval"
MODES = ("vector", "keyword", "hybrid", "graph")
K = 5


def run(context: Context) -> dict[str, Any]:
    # knowledge.demo holds the bundled data set and its reader principal (imported lazily: not core API)
    import knowledge
    from knowledge import demo
    from knowledge.graphrag import ingest
    from knowledge.metrics import STAGE_OF

    bundle = demo.load_bundle()
    embedder = demo.load_embedder(bundle)
    questions = bundle.questions[:context.pick(len(bundle.questions), 40, 8)]
    golds = [{demo.doc_id(i) for i in q["supporting_idx"]} for q in questions]
    docs = demo.documents(bundle)
    if context.smoke:  # the gold passages of the few questions plus a few hundred others
        keep = set().union(*golds) | {d.doc_id for d in docs[:300]}
        docs = [d for d in docs if d.doc_id in keep]
    store = knowledge.open(os.path.join(context.workdir, "retrieval"))
    try:
        started = time.perf_counter()
        report = ingest(store.session(), docs, embedder=embedder, splitter=demo.SPLITTER,
                        embed_entities=False)
        ingest_s = time.perf_counter() - started
        reader = store.session(demo.READER)
        out: dict[str, Any] = {
            "baseline": {"name": "numpy brute-force cosine", "description": "vector-only top-5 over the same "
                         "passage vectors with the same question vectors, outside the store"},
            "questions": len(questions), "k": K, "ingest_s": ingest_s, "documents": report.documents,
            "latency": {}, "recall": {}, "stages_ms": {}, "ratios": {}}
        errors = requests = 0
        for mode in MODES:
            reader.retrieve(questions[0]["question"], k=K, mode=mode, embedder=embedder)  # warm-up
            latencies, found, stages = [], [], {}
            for q in measure.progress(questions, f"retrieval: {mode}"):
                requests += 1
                t0 = time.perf_counter()
                try:
                    result = reader.retrieve(q["question"], k=K, mode=mode, embedder=embedder)
                except Exception:  # counted against availability; the run goes on
                    errors += 1
                    found.append(set())
                    continue
                latencies.append((time.perf_counter() - t0) * 1e3)
                found.append({c.doc_id for c in result.chunks})
                for step, seconds in result.timings.items():
                    if step in STAGE_OF:
                        stages.setdefault(STAGE_OF[step], []).append(seconds * 1e3)
            out["latency"][mode] = measure.series_ms(latencies)
            out["recall"][mode] = _recall(found, golds)
            out["stages_ms"][mode] = {stage: float(np.median(v)) for stage, v in stages.items()}
        base_latency, base_recall = _baseline(bundle, embedder, questions, golds, demo)
        out["latency"]["numpy brute force (baseline)"] = base_latency
        out["recall"]["numpy brute force (baseline)"] = base_recall
        out["requests"] = {"requests": requests, "errors": errors}
        for mode in MODES:
            out["ratios"][f"{mode}_latency_vs_numpy"] = measure.ratio(out["latency"][mode].get("p50_ms", 0.0),
                                                                       base_latency["p50_ms"])
            out["ratios"][f"{mode}_recall_vs_numpy"] = measure.ratio(out["recall"][mode], base_recall)
        return out
    finally:
        store.close()


def _recall(found: list[set[str]], golds: list[set[str]]) -> float:
    hits = sum(len(f & g) for f, g in zip(found, golds, strict=True))
    return hits / max(1, sum(len(g) for g in golds))


def _baseline(bundle: Any, embedder: Any, questions: list, golds: list, demo: Any) -> tuple[dict, float]:
    from knowledge.embed import passage_text

    passages = np.asarray(embedder.embed([passage_text(p["title"], p["text"]) for p in bundle.passages]),
                          dtype=np.float32)
    passages /= np.linalg.norm(passages, axis=1, keepdims=True)
    latencies, found = [], []
    for q in measure.progress(questions, "retrieval: numpy baseline"):
        t0 = time.perf_counter()
        vector = np.asarray(embedder.embed([q["question"]])[0], dtype=np.float32)
        top = np.argpartition(-(passages @ vector), K)[:K]
        latencies.append((time.perf_counter() - t0) * 1e3)
        found.append({demo.doc_id(int(i)) for i in top})
    return measure.series_ms(latencies), _recall(found, golds)


def render(result: dict[str, Any]) -> str:
    lines = [f"{result['documents']:,} MuSiQue passages ingested in {result['ingest_s']:.1f} s; {result['questions']} "
             f"questions, k={result['k']}, non-admin reader; {result['requests']['errors']} errors in "
             f"{result['requests']['requests']} calls.", "",
             "| mode | p50 | p99 | recall@5 | latency vs numpy | recall vs numpy | stages p50 (ms) |",
             "|---|---|---|---|---|---|---|"]
    for mode, series in result["latency"].items():
        stages = ", ".join(f"{s} {v:.2f}" for s, v in result["stages_ms"].get(mode, {}).items())
        lat = result["ratios"].get(f"{mode}_latency_vs_numpy")
        rec = result["ratios"].get(f"{mode}_recall_vs_numpy")
        lines.append(f"| {mode} | {series['p50_ms']:.2f} ms | {series['p99_ms']:.2f} ms | {result['recall'][mode]:.3f} | "
                     f"{'1.00x' if lat is None else f'{lat:.2f}x'} | {'1.00x' if rec is None else f'{rec:.2f}x'} | "
                     f"{stages} |")
    return "\n".join(lines)
