"""Score arithmetic and 64-bit ranking keys shared by the CPU and GPU paths.

Both paths turn raw float32 dot products into scores with exactly the operations written here
(the CUDA twin is ``finish_score`` / ``score_key`` / ``make_comp`` in ``topk.cu``), so equal dot
products give bit-identical scores, and rank candidates by one unsigned 64-bit *composite*::

    composite = (key << 32) | (0xFFFFFFFF - id)        # 0 means "not eligible"

``key`` is a 32-bit unsigned integer that orders like the score (higher key = better; for l2 the
order is reversed), so "largest composite first" is exactly "best score first, ties broken by lower
id". Composites of eligible rows are unique, which makes top-k selection well defined without a
separate tie-break step. NaN scores (possible only from NaN/inf in base rows) get key 0 and are
never returned. Functions take ``xp`` (numpy or cupy) and work on either library's arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS: tuple[str, ...] = ("cosine", "ip", "l2")
"""Supported metrics: cosine and ip score = similarity (higher is better); l2 score = squared distance."""

MAX_ROWS = 0xFFFFFFFE
"""Largest number of base rows: row ids must fit the low 32 bits of a composite."""

_SIGN = np.uint32(0x80000000)
_LOW = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


def higher_is_better(metric: str) -> bool:
    """True for similarity metrics (cosine, ip); False for l2, where a lower distance is better."""
    return metric != "l2"


def pad_score(metric: str) -> float:
    """Score reported in padding slots: -inf for cosine/ip, +inf for l2."""
    return float("-inf") if higher_is_better(metric) else float("inf")


def finish_scores(xp: Any, dots: Any, bn2: Any | None, qn2: Any | None, metric: str) -> Any:
    """Scores [nq, m] from float32 dot products [nq, m], base squared norms [m], query squared norms [nq].

    ip: dot. cosine (queries already unit length): dot / sqrt(bn2), 0 for zero rows.
    l2: max((qn2 + bn2) - 2 * dot, 0). Every result gets ``+ 0.0`` so -0.0 becomes +0.0.
    """
    f32 = np.float32
    if metric == "ip":
        scores = dots
    elif metric == "cosine":
        norm = xp.sqrt(bn2)[None, :]
        positive = norm > 0
        scores = xp.where(positive, dots / xp.where(positive, norm, f32(1)), f32(0))
    else:
        scores = (qn2[:, None] + bn2[None, :]) - f32(2) * dots
        scores = xp.where(scores < 0, f32(0), scores)
    return (scores + f32(0)).astype(xp.float32, copy=False)


def score_keys(xp: Any, scores: Any, metric: str) -> Any:
    """uint32 keys ordering like the scores (better score = larger key); NaN scores get key 0."""
    bits = xp.ascontiguousarray(scores, dtype=xp.float32).view(xp.uint32)
    ordered = xp.where((bits & _SIGN) != 0, ~bits, bits | _SIGN)
    keys = ordered if higher_is_better(metric) else ~ordered
    return xp.where(xp.isnan(scores), np.uint32(0), keys).astype(xp.uint32, copy=False)


def composites(xp: Any, keys: Any, ids: Any) -> Any:
    """uint64 composites from uint32 keys and row ids (broadcastable); key 0 stays composite 0."""
    comp = (keys.astype(xp.uint64) << _SHIFT) | (_LOW - ids.astype(xp.uint64))
    return xp.where(keys == 0, np.uint64(0), comp)


def decode(xp: Any, comp: Any, metric: str) -> tuple[Any, Any]:
    """(scores float32, ids int64) from composites; composite 0 decodes to the padding (id -1)."""
    keys = (comp >> _SHIFT).astype(xp.uint32)
    ordered = keys if higher_is_better(metric) else ~keys
    bits = xp.where((ordered & _SIGN) != 0, ordered & ~_SIGN, ~ordered).astype(xp.uint32)
    scores = xp.ascontiguousarray(bits).view(xp.float32)
    ids = (_LOW - (comp & _LOW)).astype(xp.int64)
    empty = comp == 0
    scores = xp.where(empty, np.float32(pad_score(metric)), scores).astype(xp.float32)
    ids = xp.where(empty, np.int64(-1), ids)
    return scores, ids
