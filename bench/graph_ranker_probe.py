"""bench/graph_ranker_probe: would a learned linear ranker over graph mode's candidates lift MuSiQue recall?

    python bench/graph_ranker_probe.py [--workdir DIR] [--cache-dir ~/.cache/knowledge-bench] [--c 0.1]

An experiment (issue 19, session 14), not a product path: it builds the MuSiQue store with the default,
rules and supplied extractors (synonym edges 0.8), runs `retrieve(..., "graph")` at the defaults for every
question and records, for each candidate chunk that graph mode scored, 13 features: the cosine, the log
relative PPR mass, the relative BM25, the log ranks in the vector pool and in the PPR ranking, how many
question-named entities the chunk mentions, whether it is the own article of one (or of an entity of the
top vector chunk), the best cosine with a composed query q + vector(bridge) over the top chunk's entities
(at most 20 chunks each), the cosine with the top chunk, the entities shared with it, whether it is that
chunk, and its entity count. A balanced logistic regression (scikit-learn, standardised features) is fitted on the
**tune** half of all three stores pooled (split seed 19, as bench/retrieval.py). The script prints 5-fold
cross-validation on the tune half, the held-back half, and paired bootstrap intervals against the defaults.
It needs the nlp and embed extras (scikit-learn comes with the embed extra: sentence-transformers requires it).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import random
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import retrieval as R  # noqa: E402

from knowledge.graphrag.schema import ENTITY  # noqa: E402

RT = importlib.import_module("knowledge.graphrag.retrieve")
FEATURES = ("cos", "lm", "bm", "vrank", "prank", "named", "named_article", "link1", "comp", "sim_top1",
            "shared_top1", "is_top1", "nents")
EXTRACTORS = ("default", "rules", "supplied")


def _entity_vector(state: Any, view: Any, key: Any) -> np.ndarray | None:
    if key not in view.entity_vectors:
        values = state.session.get_many(ENTITY, [key], ["embedding"]).column("embedding").to_pylist()
        view.entity_vectors[key] = None if not values or values[0] is None else np.asarray(values[0], np.float32)
    return view.entity_vectors[key]


def _features(state: Any, view: Any, mass: np.ndarray, graph_keys: list[str],
              keys: list[str]) -> list[dict[str, Any]]:
    """One feature row per candidate key (graph mode's scored candidates)."""
    q = state.query
    RT._chunk_vectors(state, view, keys)
    cos = {k: float(np.dot(view.embeddings[k], q)) for k in keys if k in view.embeddings}
    pool_rank = {k: r for r, (k, _) in enumerate(sorted(state.cosine.items(), key=lambda p: -p[1]))}
    graph_rank = {k: r for r, k in enumerate(graph_keys)}
    top_mass = float(mass[view.is_chunk].max()) or 1.0
    bm25 = {k: float(s) for _, k, s in state.keyword}
    top_bm25 = max(bm25.values(), default=0.0) or 1.0
    named = {view.entity_by_key[k] for k in view.matcher.find(state.question) if k in view.entity_by_key}
    named_articles = {c for e in named for c in view.articles_of(state.session, e)}
    top = next((view.chunk_by_key[k] for _, k, _ in state.vector[:3] if k in view.chunk_by_key), None)
    top_entities = set(view.entities_of(top).tolist()) - named if top is not None else set()
    linked = {c for e in top_entities for c in view.articles_of(state.session, e)}
    bridges = {}
    for e in top_entities:
        vector = _entity_vector(state, view, view.keys[e]) if view.entity_chunks[e] <= 20 else None
        if vector is not None:
            composed = q + vector
            bridges[e] = composed / (np.linalg.norm(composed) or 1.0)
    top_vector = view.embeddings.get(view.keys[top]) if top is not None else None
    rows = []
    for k in keys:
        node = view.chunk_by_key.get(k)
        relative = float(mass[node]) / top_mass if node is not None else 0.0
        entities = set(view.entities_of(node).tolist()) if node is not None else set()
        emb = view.embeddings.get(k)
        plain = cos.get(k, 0.0)
        rows.append({"key": k, "cos": plain, "lm": math.log(max(relative, 1e-12)), "bm": bm25.get(k, 0.0) / top_bm25,
                     "vrank": math.log1p(pool_rank.get(k, 250)), "prank": math.log1p(graph_rank.get(k, 60)),
                     "named": len(entities & named), "named_article": float(node in named_articles),
                     "link1": float(node in linked),
                     "comp": max((float(np.dot(emb, bridges[e])) for e in entities & set(bridges)), default=plain),
                     "sim_top1": float(np.dot(emb, top_vector)) if emb is not None and top_vector is not None else 0.0,
                     "shared_top1": len(entities & top_entities), "is_top1": float(node == top),
                     "nents": len(entities)})
    return rows


def collect(dataset: str, extractor: str, workdir: str, cache_dir: str) -> list[dict[str, Any]]:
    """Build the store and return, per question, its gold, type, the defaults' ranking and the feature rows."""
    names = R.NameCache(cache_dir)
    data = (R.musique if dataset == "musique" else R.multihop)(extractor, names, cache_dir)
    store, _ = R.build_store(data, os.path.join(workdir, f"{dataset}-{extractor}"), extractor, 0.8)
    names.save()
    original = RT._score_fusion
    captured: dict[str, Any] = {}

    def recording(state: Any, view: Any, mass: np.ndarray, graph_keys: list[str], params: Any) -> Any:
        scores = original(state, view, mass, graph_keys, params)
        captured["rows"] = _features(state, view, mass, graph_keys, [k for k, _ in scores])
        return scores

    RT._score_fusion = recording
    try:
        session = store.session()
        out = []
        for q in data["questions"]:
            captured.clear()
            result = RT.retrieve(session, q["question"], 10, "graph", query_vector=q["vector"])
            hybrid = RT.retrieve(session, q["question"], 10, "hybrid", query_vector=q["vector"])
            out.append({"id": q["id"], "gold": q["gold"], "type": q["type"],
                        "ranked": [R._doc(c.key) for c in result.chunks],
                        "hybrid": [R._doc(c.key) for c in hybrid.chunks], "rows": captured.get("rows", [])})
        return out
    finally:
        RT._score_fusion = original
        store.close()


def _fit(questions: list[dict[str, Any]], c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    x = np.array([[r[f] for f in FEATURES] for o in questions for r in o["rows"]])
    y = np.array([float(R._doc(r["key"]) in set(o["gold"])) for o in questions for r in o["rows"]])
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(scaler.transform(x), y)
    return model, scaler


def _rank(questions: list[dict[str, Any]], fitted: Any) -> list[list[str]]:
    model, scaler = fitted
    ranked = []
    for o in questions:
        s = model.decision_function(scaler.transform(np.array([[r[f] for f in FEATURES] for r in o["rows"]])))
        ranked.append([R._doc(o["rows"][i]["key"]) for i in np.argsort(-s, kind="stable")[:10]])
    return ranked


def _recall(questions: list[dict[str, Any]], ranked: list[list[str]]) -> str:
    q = R.quality(ranked, [o["gold"] for o in questions])
    return f"{q['recall@5']:.3f} / {q['recall@10']:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/graph-ranker-probe")
    parser.add_argument("--cache-dir", default=R.CACHE_DIR)
    parser.add_argument("--c", type=float, default=0.1, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--split-seed", type=int, default=19)
    parser.add_argument("--multihop", action="store_true", help="also rank MultiHop-RAG's queries (438 facts, no "
                        "distractors) with the model fitted on MuSiQue")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    data = {e: collect("musique", e, args.workdir, args.cache_dir) for e in EXTRACTORS}
    halves = R.split_halves([o["id"] for o in data["default"]], args.split_seed)
    part = {e: {h: [o for o in out if o["id"] in ids] for h, ids in halves.items()} for e, out in data.items()}
    ids = sorted(halves["tune"])
    random.Random(1).shuffle(ids)
    folds = [set(ids[i::5]) for i in range(5)]
    cv: dict[str, list[list[str]]] = {e: [] for e in data}
    order: dict[str, list[dict[str, Any]]] = {e: [] for e in data}
    for fold in folds:
        fitted = _fit([o for e in data for o in part[e]["tune"] if o["id"] not in fold], args.c)
        for e in data:
            held_in = [o for o in part[e]["tune"] if o["id"] in fold]
            cv[e] += _rank(held_in, fitted)
            order[e] += held_in
    fitted = _fit([o for e in data for o in part[e]["tune"]], args.c)
    rng = np.random.default_rng(0)
    print("| extractor | defaults tune | learned, 5-fold CV on tune | defaults held-back | learned held-back | "
          "held-back R@5 gain [95% CI], up/down |")
    print("|---|---|---|---|---|---|")
    for e in data:
        held = part[e]["held-back"]
        learned = _rank(held, fitted)
        gain = np.array([(len(set(r[:5]) & set(o["gold"])) - len(set(o["ranked"][:5]) & set(o["gold"])))
                         / len(o["gold"]) for r, o in zip(learned, held, strict=True)])
        boots = [gain[rng.integers(0, len(gain), len(gain))].mean() for _ in range(5000)]
        low, high = np.percentile(boots, [2.5, 97.5])
        print(f"| {e} | {_recall(part[e]['tune'], [o['ranked'] for o in part[e]['tune']])} | "
              f"{_recall(order[e], cv[e])} | {_recall(held, [o['ranked'] for o in held])} | {_recall(held, learned)} | "
              f"{gain.mean():+.3f} [{low:+.3f}, {high:+.3f}], {int((gain > 0).sum())}/{int((gain < 0).sum())} |")
    if args.multihop:       # out of distribution: MultiHop-RAG's 438 facts (no distractors), model from MuSiQue
        R.NO_DISTRACTORS = True
        print("\n| MultiHop-RAG (438 facts), extractor | questions | hybrid | graph defaults | graph, learned |")
        print("|---|---|---|---|---|")
        for e in ("default", "rules"):
            queries = [o for o in collect("multihop", e, args.workdir, args.cache_dir) if o["gold"]]
            learned = _rank(queries, fitted)
            for kind in ("all", "comparison_query", "inference_query", "temporal_query"):
                idx = [i for i, o in enumerate(queries) if kind == "all" or o["type"] == kind]
                sel = [queries[i] for i in idx]
                print(f"| {e} | {kind} ({len(sel)}) | {_recall(sel, [o['hybrid'] for o in sel])} | "
                      f"{_recall(sel, [o['ranked'] for o in sel])} | {_recall(sel, [learned[i] for i in idx])} |")
    model, scaler = fitted
    print("weights (standardised features):",
          ", ".join(f"{f} {w:+.2f}" for f, w in zip(FEATURES, model.coef_[0], strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
