"""Synonym edges (HippoRAG 2): SYNONYM edges between entities whose name embeddings are close.

Built incrementally at ingest: the entities each batch mentions (new or not) are compared with every
stored entity that has an embedding and with each other; a pair whose cosine similarity is at least `threshold` gets an
undirected SYNONYM edge (stored once, from the smaller key to the larger; property `score`), at most
`neighbours` per entity of the batch, best first. Names with a digit are left out ("1963" and "1964" embed close
together, as do "World War I" and "World War II"). An edge is visible only when both its entities are
(the store's rule for every edge), so the walk never crosses to an entity the reader cannot see.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from knowledge.errors import InvalidArgument
from knowledge.graphrag.schema import ENTITY

THRESHOLD = 0.8
NEIGHBOURS = 10
BLOCK_ROWS = 4096
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class SynonymConfig:
    """When two entities are synonyms: cosine >= `threshold`, among a new entity's `neighbours` best;
    `skip_digits` leaves names with a digit out."""

    threshold: float = THRESHOLD
    neighbours: int = NEIGHBOURS
    skip_digits: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise InvalidArgument(f"synonym threshold must be in (0, 1], got {self.threshold}")
        if self.neighbours < 1:
            raise InvalidArgument(f"synonym neighbours must be >= 1, got {self.neighbours}")

    @property
    def fingerprint(self) -> str:
        return f"syn:{self.threshold}:{self.neighbours}:{int(self.skip_digits)}"


def synonym_config(value: SynonymConfig | float | bool | None) -> SynonymConfig | None:
    """`ingest(synonyms=...)`: a SynonymConfig, a threshold, True (defaults) or None/False (off)."""
    if value is None or value is False:
        return None
    if value is True:
        return SynonymConfig()
    if isinstance(value, SynonymConfig):
        return value
    if isinstance(value, int | float):
        return SynonymConfig(threshold=float(value))
    raise InvalidArgument(f"synonyms must be a SynonymConfig, a threshold, True or None, got {value!r}")


def _eligible(key: str, config: SynonymConfig) -> bool:
    return not (config.skip_digits and _DIGIT.search(key))


def stored_vectors(session: Any, dimension: int) -> tuple[list[str], np.ndarray]:
    """Keys and unit embeddings of the stored entities that have one (visible to the session)."""
    if ENTITY not in session.store.schema.nodes:
        return [], np.zeros((0, dimension), np.float32)
    table = session.scan(ENTITY, columns=["name", "embedding"])
    column = table.column("embedding").combine_chunks()
    present = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    keys = [k for k, ok in zip(table.column("name").to_pylist(), present.tolist(), strict=True) if ok]
    values = column.filter(pa.array(present)).flatten().to_numpy(zero_copy_only=False)
    return keys, np.ascontiguousarray(values, dtype=np.float32).reshape(len(keys), dimension)


class VectorPool:
    """The stored entities' vectors for one ingest() call: read once, then extended with each batch's
    entities (so a batch costs a matrix product, not a scan of every stored entity)."""

    def __init__(self, session: Any, dimension: int) -> None:
        self.session = session
        self.dimension = dimension
        self.keys: list[str] | None = None
        self._parts: list[np.ndarray] = []
        self._known: set[str] = set()

    def get(self) -> tuple[list[str], np.ndarray]:
        if self.keys is None:
            keys, matrix = stored_vectors(self.session, self.dimension)
            self.keys, self._parts, self._known = keys, [matrix], set(keys)
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        return self.keys, self._parts[0]

    def add(self, vectors: Mapping[str, np.ndarray]) -> None:
        self.get()
        assert self.keys is not None
        new = [k for k in vectors if k not in self._known]
        if new:
            self.keys.extend(new)
            self._known.update(new)
            self._parts.append(np.asarray([vectors[k] for k in new], dtype=np.float32).reshape(len(new), -1))


def synonym_edges(fresh: Mapping[str, np.ndarray], stored_keys: list[str], stored: np.ndarray,
                  config: SynonymConfig) -> list[dict[str, Any]]:
    """SYNONYM edge rows {src, dst, score} between the new entities (`fresh`: key -> unit vector) and the
    stored ones plus each other. A pair is listed once (src < dst)."""
    new_keys = [k for k in fresh if _eligible(k, config)]
    if not new_keys:
        return []
    new_set = set(new_keys)
    old = [i for i, k in enumerate(stored_keys) if k not in new_set and _eligible(k, config)]
    keys = [stored_keys[i] for i in old] + new_keys
    dimension = len(next(iter(fresh.values())))
    matrix = np.concatenate([stored[old].reshape(len(old), dimension),
                             np.asarray([fresh[k] for k in new_keys], dtype=np.float32)])
    queries = matrix[len(old):]
    pairs: dict[tuple[str, str], float] = {}
    for start in range(0, len(queries), BLOCK_ROWS):
        sims = queries[start:start + BLOCK_ROWS] @ matrix.T
        block = np.arange(sims.shape[0])
        sims[block, len(old) + start + block] = -1.0            # not a synonym of itself
        rows, cols = np.nonzero(sims >= config.threshold)
        if not len(rows):
            continue
        values = sims[rows, cols]
        order = np.lexsort((-values, rows))                     # by row, best first within a row
        rows, cols, values = rows[order], cols[order], values[order]
        first = np.searchsorted(rows, rows, side="left")
        keep = (np.arange(len(rows)) - first) < config.neighbours
        for row, col, value in zip(rows[keep].tolist(), cols[keep].tolist(), values[keep].tolist(), strict=True):
            a, b = keys[len(old) + start + row], keys[col]
            pair = (a, b) if a < b else (b, a)
            pairs[pair] = max(pairs.get(pair, 0.0), float(value))
    return [{"src": s, "dst": d, "score": round(score, 6)} for (s, d), score in pairs.items()]


__all__ = ["NEIGHBOURS", "THRESHOLD", "SynonymConfig", "VectorPool", "stored_vectors", "synonym_config", "synonym_edges"]
