"""Reciprocal-rank fusion."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

K_RRF = 60


def rrf(rankings: Mapping[str, Sequence[Hashable]], k: int = K_RRF,
        weights: Mapping[str, float] | None = None) -> list[tuple[Hashable, float]]:
    """Fuse ranked lists: score(item) = sum over lists of weight / (k + rank), rank from 1.

    Returns (item, score) best first; ties keep first-seen order (lists in the order given). Raises
    ValueError for k < 1 or a negative weight.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores: dict[Hashable, float] = {}
    for name, ranking in rankings.items():
        weight = 1.0 if weights is None else float(weights.get(name, 1.0))
        if weight < 0:
            raise ValueError(f"weight of {name!r} is negative")
        if weight == 0:
            continue
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


__all__ = ["K_RRF", "rrf"]
