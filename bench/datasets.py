"""Data sets for the suites: the real MiniLM passages (bundled with the package, or the larger bench cache
when bench/embed_cache.py has built it) and a clustered synthetic set, plus the labels and the where-able
column that give each selectivity.

The synthetic set is a mixture of a few hundred Gaussian clusters with Zipf-skewed sizes and varied
spreads, normalised: queries land near dense and sparse clusters alike, and HNSW's recall on it is far
from trivial (low-rank-plus-noise data is easier)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

SELECTIVITIES = (1.0, 0.1, 0.01, 0.001)
"""Shares of the rows a filtered search may return: 100%, 10%, 1%, 0.1%."""
BUCKETS = 1000
"""The `bucket` column is uniform over 0..BUCKETS-1, so `bucket < s * BUCKETS` selects a share s."""


@dataclass(frozen=True)
class DataSet:
    """Base rows (unit vectors, float32), queries, and where the set came from."""

    name: str
    base: np.ndarray
    queries: np.ndarray
    source: str

    @property
    def dimension(self) -> int:
        return int(self.base.shape[1])


def clustered(rows: int, queries: int, dimension: int = 384, clusters: int = 300, zipf: float = 1.1,
              seed: int = 7) -> DataSet:
    """A mixture of `clusters` Gaussian clusters of Zipf(`zipf`)-skewed sizes and spreads between 0.35 and
    1.0 of the centre's norm, normalised; queries are fresh draws from the same mixture."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dimension)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) ** zipf
    weights /= weights.sum()
    spread = rng.uniform(0.35, 1.0, size=clusters).astype(np.float32) / np.sqrt(dimension)
    total = rows + queries
    member = rng.choice(clusters, size=total, p=weights)
    data = centres[member] + rng.normal(size=(total, dimension)).astype(np.float32) * spread[member, None]
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    data = data[rng.permutation(total)].astype(np.float32)
    return DataSet(f"clustered synthetic ({clusters} clusters, zipf {zipf})", np.ascontiguousarray(data[:rows]),
                   np.ascontiguousarray(data[rows:]), "synthetic")


def minilm(rows_max: int | None = None, queries_max: int | None = None) -> DataSet:
    """Real all-MiniLM-L6-v2 embeddings: the bench cache (MuSiQue + 2Wiki passages, MultiHop-RAG facts; built by
    bench/embed_cache.py) when present, else the MuSiQue passages and questions bundled in knowledge/data."""
    base, queries, source = _cached() or _bundled()
    if rows_max is not None:
        base = base[:rows_max]
    if queries_max is not None:
        queries = queries[:queries_max]
    return DataSet(f"real MiniLM passages ({source})", np.ascontiguousarray(base, dtype=np.float32),
                   np.ascontiguousarray(queries, dtype=np.float32), source)


def _bundled() -> tuple[np.ndarray, np.ndarray, str]:
    import knowledge

    path = os.path.join(os.path.dirname(knowledge.__file__), "data", "musique_embeddings.npz")
    with np.load(path) as bundle:
        base = _unit(bundle["passages"].astype(np.float32))
        queries = _unit(bundle["questions"].astype(np.float32))
    return base, queries, "bundled MuSiQue 1,890 passages, 100 questions"


def _cached() -> tuple[np.ndarray, np.ndarray, str] | None:
    try:
        from bench import embed_cache
        base = np.concatenate([embed_cache.load(n)[1] for n in ("musique_passages", "2wiki_passages",
                                                                "multihop_facts")])
        queries = np.concatenate([embed_cache.load(n)[1] for n in ("musique_questions", "multihop_questions")])
    except (FileNotFoundError, ImportError, OSError, ValueError):
        return None
    except Exception as error:  # StaleCache and the like: fall back to the bundle, say why
        print(f"bench: embedding cache not used ({error})")
        return None
    return base, queries, "bench cache: MuSiQue + 2Wiki passages, MultiHop-RAG facts"


def _unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def selectivity_columns(rows: int, seed: int = 2) -> tuple[list[list[str]], np.ndarray, dict[float, np.ndarray]]:
    """(labels per row, bucket per row, mask per selectivity). A row carries label `s<share>` for every
    selectivity its random draw falls under (nested), and `bucket` = its draw's permille, so the principal
    filter and the where-filter select the same rows at each share."""
    draw = np.random.default_rng(seed).random(rows)
    bucket = np.minimum((draw * BUCKETS).astype(np.int64), BUCKETS - 1)
    masks = {s: bucket < round(s * BUCKETS) for s in SELECTIVITIES}
    labels = [[label(s) for s in SELECTIVITIES if masks[s][i]] for i in range(rows)]
    return labels, bucket, masks


def label(selectivity: float) -> str:
    """The read label that makes `selectivity` of the rows visible."""
    return f"s{selectivity:g}"


def where(selectivity: float) -> dict:
    """The where-filter selecting `selectivity` of the rows."""
    return {"bucket": ("<", round(selectivity * BUCKETS))}
