"""Retrieval quality from a maintained IR-evaluation library: recall@k, nDCG@k and MRR computed by
ir-measures (over pytrec_eval, trec_eval's C code), for ranked document ids against gold sets.

    from ir_metrics import measure
    measure([["d3", "d1", "d7"]], [["d1", "d9"]], cuts=(2, 5))
    # {"recall@2": 0.5, ..., "ndcg@2": 0.387..., ..., "mrr": 0.5, "questions": 1}

Conventions (those of bench/retrieval.py's hand-written `quality`, which tests/test_ir_metrics.py checks
this against): questions without gold are left out; every other question counts, one with nothing
retrieved scoring 0 (trec_eval would skip it); relevance is binary; a document retrieved twice counts at
its first rank only (trec_eval takes one score per document). MRR is trec_eval's reciprocal rank
(`RR`, no cut-off) averaged over the questions. Needs the bench extra: pip install 'knowledge[bench]'.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

CUTS = (2, 5, 10)


def _library():
    try:
        import ir_measures
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"bench/ir_metrics.py needs ir-measures: pip install 'knowledge[bench]' ({e})") from e
    return ir_measures


def measure(ranked: Sequence[Sequence[str]], golds: Sequence[Iterable[str]],
            cuts: Sequence[int] = CUTS) -> dict[str, float]:
    """{"recall@k", "ndcg@k" for k in cuts, "mrr", "questions"} averaged over the questions with gold;
    ranked[i] is question i's ranking, best first. Raises ValueError when the lists differ in length."""
    if len(ranked) != len(golds):
        raise ValueError(f"{len(ranked)} rankings for {len(golds)} gold sets")
    ir = _library()
    questions = [(str(i), list(r), set(g)) for i, (r, g) in enumerate(zip(ranked, golds, strict=True)) if g]
    if not questions:
        return {"questions": 0}
    qrels = [ir.Qrel(qid, doc, 1) for qid, _, gold in questions for doc in sorted(gold)]
    run = []
    for qid, ranking, _ in questions:
        first = list(dict.fromkeys(ranking))
        run.extend(ir.ScoredDoc(qid, doc, float(len(first) - rank)) for rank, doc in enumerate(first))
    names = {**{ir.R @ k: f"recall@{k}" for k in cuts}, **{ir.nDCG @ k: f"ndcg@{k}" for k in cuts}, ir.RR: "mrr"}
    per_question: dict[str, dict[str, float]] = {qid: {} for qid, _, _ in questions}
    for metric in ir.iter_calc(list(names), qrels, run):
        per_question[metric.query_id][names[metric.measure]] = float(metric.value)
    out = {name: statistics.mean(values.get(name, 0.0) for values in per_question.values())
           for name in names.values()}
    out["questions"] = len(questions)
    return out


__all__ = ["CUTS", "measure"]
