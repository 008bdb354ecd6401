"""Keyword candidates for retrieval: BM25 over chunk text plus BM25 over the document title.

The title is its own keyword index (Chunk.title, a text property), so a question naming a document's
title finds its chunks even when their text does not repeat it. A chunk's keyword score is its text BM25
score plus `title_weight` times its title BM25 score. Stores ingested before Chunk.title existed have
an empty title index and give text scores only.
"""

from __future__ import annotations

from typing import Any

from knowledge.graphrag.schema import CHUNK

TITLE_WEIGHT = 1.0


def _rows(table: Any) -> list[tuple[int, str, float]]:
    return list(zip(table.column("_id").to_pylist(), table.column("_key").to_pylist(),
                    table.column("_score").to_pylist(), strict=True))


def keyword_rows(session: Any, question: str, k: int, title_weight: float = TITLE_WEIGHT
                 ) -> list[tuple[int, str, float]]:
    """(id, key, score) of the k best visible chunks by text BM25 + title_weight * title BM25, best first."""
    rows = _rows(session.keyword_search(question, k, type=CHUNK, property="text"))
    chunk_type = session.store.schema.nodes.get(CHUNK)
    if not title_weight or chunk_type is None or "title" not in chunk_type.properties:
        return rows
    titles = _rows(session.keyword_search(question, k, type=CHUNK, property="title"))
    if not titles:
        return rows
    scores: dict[str, list[Any]] = {key: [node, float(score)] for node, key, score in rows}
    for node, key, score in titles:
        entry = scores.setdefault(key, [node, 0.0])
        entry[1] += title_weight * float(score)
    merged = sorted(((node, key, score) for key, (node, score) in scores.items()), key=lambda r: -r[2])
    return merged[:k]


__all__ = ["TITLE_WEIGHT", "keyword_rows"]
