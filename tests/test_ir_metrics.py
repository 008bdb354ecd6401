"""bench/ir_metrics.py (recall@k, nDCG@k, MRR from ir-measures) agrees with bench/retrieval.py's
hand-written `quality` (read from the file as it is, so a change there is checked too), and gives nDCG
values worked out by hand."""

from __future__ import annotations

import ast
import math
import os
import random
import statistics
import sys

import pytest

pytest.importorskip("ir_measures", reason="needs the bench extra: pip install -e '.[bench]'")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from ir_metrics import measure  # noqa: E402


def _hand_written():
    """bench/retrieval.py's CUTS and quality(), compiled alone (the module itself loads data sets)."""
    with open(os.path.join(ROOT, "bench", "retrieval.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    wanted = [node for node in tree.body
              if (isinstance(node, ast.FunctionDef) and node.name == "quality")
              or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "CUTS" for t in node.targets))]
    assert len(wanted) == 2, "bench/retrieval.py no longer defines CUTS and quality()"
    namespace = {"statistics": statistics, "Any": object}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "bench/retrieval.py", "exec"), namespace)
    return namespace["CUTS"], namespace["quality"]


def test_library_recall_and_mrr_match_the_hand_written_ones():
    cuts, quality = _hand_written()
    rng = random.Random(17)
    corpus = [f"d{i}" for i in range(40)]
    ranked, golds = [], []
    for _ in range(300):
        ranked.append(rng.sample(corpus, rng.randint(0, 10)))          # distinct ids, 0..10 of them
        golds.append(rng.sample(corpus, rng.choice([0, 1, 2, 2, 3, 4])))
    hand = quality(ranked, golds)
    library = measure(ranked, golds, cuts)
    assert library["questions"] == hand["questions"] > 200
    for cut in cuts:
        assert library[f"recall@{cut}"] == pytest.approx(hand[f"recall@{cut}"], abs=1e-9)
    assert library["mrr"] == pytest.approx(hand["mrr"], abs=1e-9)
    assert 0 < library["ndcg@10"] < 1


def test_ndcg_by_hand_and_duplicates_count_once():
    got = measure([["x", "g1", "y", "g2"]], [["g1", "g2", "g3"]], cuts=(4,))
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg@4"] == pytest.approx(dcg / ideal, abs=1e-9)
    assert got["recall@4"] == pytest.approx(2 / 3) and got["mrr"] == pytest.approx(0.5)
    assert measure([["g", "g", "x"]], [["g"]], cuts=(1,))["recall@1"] == 1.0
    assert measure([[]], [[]]) == {"questions": 0}
    with pytest.raises(ValueError):
        measure([["a"]], [])
