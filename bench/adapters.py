"""What the framework adapters cost over the store's own search: LangChain's similarity_search_by_vector
and LlamaIndex's query, unfiltered and with a metadata filter keeping 10% of the records, against
session.search of the same vector (the baseline, measured in the same run). The query vector is given,
so no embedding time is counted; every query runs through every case once before timing, so all cases
read rows from a warm row cache.

    python bench/adapters.py [--records 5000] [--queries 200] [--repeat 3] [--write]

Needs the langchain and llamaindex extras. Prints p50 latency per call (median over the repeats) and
the ratio to the baseline; --write saves bench/results/adapters.json and the RESULTS.md section.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
from llama_index.core.vector_stores.types import ExactMatchFilter, MetadataFilters, VectorStoreQuery  # noqa: E402

import knowledge  # noqa: E402
from knowledge.adapters import langchain as lc  # noqa: E402
from knowledge.adapters import llamaindex as li  # noqa: E402
from knowledge.embed import HashingEmbedder  # noqa: E402

GROUPS = 10
K = 10


def build(path: str, records: int) -> tuple[knowledge.Store, lc.KnowledgeVectorStore]:
    store = knowledge.open(path)
    embeddings = lc.KnowledgeEmbeddings(HashingEmbedder(384))
    vs = lc.KnowledgeVectorStore(store.session(), embeddings, labels=["public"])
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(2000)]
    for start in range(0, records, 1000):
        count = min(1000, records - start)
        texts = [" ".join(rng.choice(words, 12)) for _ in range(count)]
        vs.add_texts(texts, [{"group": (start + i) % GROUPS, "n": start + i} for i in range(count)],
                     ids=[f"r{start + i}" for i in range(count)])
    store.create_principal("reader", read=["public"])
    return store, vs


def one_run(store: knowledge.Store, queries: np.ndarray) -> dict[str, float]:
    session = store.session("reader")
    langchain = lc.KnowledgeVectorStore(session, lc.KnowledgeEmbeddings(HashingEmbedder(384)))
    llama = li.KnowledgeVectorStore(session)
    group = MetadataFilters(filters=[ExactMatchFilter(key="group", value=3)])
    cases = {
        "session.search (baseline)": lambda q: session.search(q, K, type="Chunk", property="embedding",
                                                              columns=["text", "doc_id"]),
        "langchain similarity_search_by_vector": lambda q: langchain.similarity_search_with_score_by_vector(q, K),
        "langchain, filter {group: 3} (10%)": lambda q: langchain.similarity_search_with_score_by_vector(
            q, K, filter={"group": 3}),
        "llamaindex query": lambda q: llama.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=K)),
        "llamaindex query, MetadataFilters group == 3": lambda q: llama.query(
            VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=K, filters=group)),
    }
    for call in cases.values():          # one pass over every query first: each case then reads warm rows
        for query in queries:
            call(query)
    out = {}
    for name, call in cases.items():
        values = common.latencies_us(lambda i, call=call: call(queries[i % len(queries)]), len(queries), warmup=0)
        out[name] = statistics.median(values)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as workdir:
        store, _ = build(os.path.join(workdir, "adapters.store"), args.records)
        with store:
            queries = HashingEmbedder(384).embed([f"w{i} w{i + 1} w{i + 7}" for i in range(args.queries)])
            runs = [one_run(store, queries) for _ in range(args.repeat)]
    names = list(runs[0])
    p50 = {name: statistics.median(run[name] for run in runs) for name in names}
    base = p50[names[0]]
    results = {"records": args.records, "queries": args.queries, "repeat": args.repeat, "k": K,
               "load_1min": load, "machine": common.machine(), "p50_us": p50,
               "ratio_to_baseline": {name: p50[name] / base for name in names}}
    lines = [f"`python bench/adapters.py --records {args.records} --queries {args.queries} --repeat {args.repeat}`"
             f" ({args.records} one-chunk records, 384-d, k={K}, reader principal; p50 per call, median of "
             f"{args.repeat} runs, warm row cache; 1-min load {load:.1f} on {os.cpu_count()} CPUs)", "",
             "| call | p50 (us) | / session.search |", "|---|---:|---:|"]
    lines += [f"| {name} | {p50[name]:.0f} | {p50[name] / base:.2f}x |" for name in names]
    lines += ["", "A filter is evaluated in Python over the visible records' metadata (decoded once per "
              "LSN), then an oversampled unfiltered ranking keeps the matches (a where-filtered search when "
              "too few): its cost grows with the records the session sees. The adapters' own cost is the "
              "rows they fetch (chunk text, document metadata; LlamaIndex rebuilds its nodes)."]
    common.publish("adapters", "Framework adapters (LangChain, LlamaIndex)", results, "\n".join(lines), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
