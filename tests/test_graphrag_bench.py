"""bench/retrieval.py's options and its honest split (no embedding caches needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.fixture(scope="module")
def retrieval():
    sys.path.insert(0, BENCH)
    try:
        import retrieval as module
        yield module
    finally:
        sys.path.remove(BENCH)


def test_split_halves_is_fixed_by_the_seed_and_disjoint(retrieval):
    ids = [f"q{i}" for i in range(100)]
    halves = retrieval.split_halves(ids, 19)
    assert len(halves["tune"]) == len(halves["held-back"]) == 50
    assert halves["tune"].isdisjoint(halves["held-back"]) and halves["tune"] | halves["held-back"] == set(ids)
    assert retrieval.split_halves(list(reversed(ids)), 19) == halves                # order does not matter
    assert retrieval.split_halves(ids, 20) != halves


def test_help_lists_the_extractors_and_results_are_written_only_when_asked():
    out = subprocess.run([sys.executable, os.path.join(BENCH, "retrieval.py"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    for word in ("--extractor", "supplied", "default", "spacy", "rules", "none", "--cache-dir", "--write-results",
                 "--split-seed", "--synonyms"):
        assert word in out
    source = open(os.path.join(BENCH, "retrieval.py")).read()
    assert source.count("common.replace_section(") == 1 and "if args.write_results:" in source
