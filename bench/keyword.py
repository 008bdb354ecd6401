"""bench/keyword: BM25 keyword index build rate and query latency, vs bm25s as a baseline.

    python bench/keyword.py [--scale 1] [--queries 500] [--k 10]

Corpus: the 2Wiki passages (6,119 {title, text}); --scale N repeats them N times under new ids
(to see 100k-doc behaviour). Queries: passage titles plus 4-word snippets of random passages.
Measures, for knowledge.index.keyword.KeywordIndex:
- bulk build (one upsert call) and incremental build (one upsert per document) in docs/s;
- query latency p50/p99 unmasked and with a random 50% visibility mask (statistics over the
  visible docs only);
and for bm25s (if installed) on the same tokens: index build and single-query latency, unmasked
and with its `weight_mask` (which filters results but keeps global statistics).
Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import latencies_us, percentile  # noqa: E402

from knowledge.index.keyword import KeywordIndex, tokenize  # noqa: E402

CORPUS = "/work/shared/data/2wikimultihopqa-corpus-hipporag/2wikimultihopqa_corpus.json"


def load(scale: int) -> list[str]:
    with open(CORPUS) as f:
        passages = json.load(f)
    texts = [f"{p['title']}\n{p['text']}" for p in passages]
    return texts * scale


def make_queries(count: int, seed: int = 0) -> list[str]:
    with open(CORPUS) as f:
        passages = json.load(f)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        p = passages[int(rng.integers(len(passages)))]
        if i % 2 == 0:
            out.append(p["title"])
        else:
            words = p["text"].split()
            start = int(rng.integers(max(1, len(words) - 4)))
            out.append(" ".join(words[start: start + 4]))
    return out


def cpu_latencies_us(function, count: int, warmup: int = 20) -> list[float]:
    """Like common.latencies_us but in CPU time of this thread (robust to a loaded machine)."""
    for i in range(warmup):
        function(i)
    out = []
    for i in range(count):
        start = time.thread_time()
        function(i)
        out.append((time.thread_time() - start) * 1e6)
    return out


def timed(function, count: int) -> tuple[list[float], list[float]]:
    return latencies_us(function, count), cpu_latencies_us(function, count)


def row(name: str, build: str, lat: tuple[list[float], list[float]] | None = None) -> str:
    if lat is None:
        return f"| {name} | {build} | | |"
    wall, cpu = lat
    return (f"| {name} | {build} | {statistics.median(wall):.0f} / {percentile(wall, 0.99):.0f} "
            f"| {statistics.median(cpu):.0f} / {percentile(cpu, 0.99):.0f} |")


def rate(count: int, function) -> str:
    """docs/s of function() by wall clock and by process CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return f"{count / wall:,.0f} ({count / cpu:,.0f} CPU)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    texts = load(args.scale)
    n = len(texts)
    ids = np.arange(n)
    queries = make_queries(args.queries)
    mask = np.random.default_rng(1).random(n) < 0.5
    rows = []

    index = KeywordIndex()
    rows.append(row("KeywordIndex: build, one upsert call", rate(n, lambda: index.upsert(ids, texts))))
    incr_n = min(n, 6119)

    def one_by_one() -> None:
        one = KeywordIndex()
        for i in range(incr_n):
            one.upsert([i], [texts[i]])

    rows.append(row("KeywordIndex: build, one upsert per doc", rate(incr_n, one_by_one)))
    rows.append(row("KeywordIndex: query, no mask", "",
                    timed(lambda i: index.search(queries[i % len(queries)], args.k), len(queries))))
    rows.append(row("KeywordIndex: query, 50% mask (visible stats)", "",
                    timed(lambda i: index.search(queries[i % len(queries)], args.k, mask), len(queries))))
    # replace one doc (same text) in the full index: cost must not grow with the corpus
    rows.append(row("KeywordIndex: replace one doc", "", timed(lambda i: index.upsert([i % n], [texts[i % n]]), 500)))

    try:
        import bm25s
    except ImportError:
        bm25s = None
    if bm25s is not None:
        retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
        bm_build = rate(n, lambda: retriever.index([tokenize(t) for t in texts], show_progress=False))
        weights = mask.astype(np.float32)

        def bm_query(i: int, weight_mask: np.ndarray | None = None) -> None:
            tokens = [t for t in tokenize(queries[i % len(queries)]) if t in retriever.vocab_dict]
            if tokens:
                scores = retriever.get_scores(tokens, weight_mask=weight_mask)
                top = np.argpartition(-scores, args.k)[: args.k]
                top[np.argsort(-scores[top], kind="stable")]

        rows.append(row("bm25s (same tokens): build (any change = rebuild)", bm_build))
        rows.append(row("bm25s: query, no mask", "", timed(bm_query, len(queries))))
        rows.append(row("bm25s: query, 50% weight_mask (global stats)", "",
                        timed(lambda i: bm_query(i, weights), len(queries))))
        # agreement: same formula and tokens -> the same top-k ids (ties aside)
        agree = []
        for q in queries[:100]:
            tokens = [t for t in tokenize(q) if t in retriever.vocab_dict]
            if not tokens:
                continue
            scores = retriever.get_scores(tokens)
            ours_ids, ours_scores = index.search(q, args.k)
            agree.append(np.allclose(scores[ours_ids], ours_scores, rtol=1e-4))
        rows.append(f"| top-{args.k} scores equal to bm25s' | {sum(agree)}/{len(agree)} queries | | |")
    else:
        rows.append("| bm25s | not installed (baseline skipped) | | |")

    print(f"\n{n:,} docs (2Wiki passages x{args.scale}), {len(index._terms):,} terms, "
          f"{len(queries)} queries, k={args.k}, {os.cpu_count()} CPUs\n")
    print(f"load average {os.getloadavg()[0]:.1f}; CPU time columns are less sensitive to load\n")
    print("| what | build docs/s wall (CPU) | p50 / p99 us, wall | p50 / p99 us, CPU |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
