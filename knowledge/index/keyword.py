"""Keyword index: BM25 over documents keyed by dense node id, filtered by a visibility mask.

Design note (why this implementation)
-------------------------------------
Requirements: (1) incremental add / replace / remove of one document as WAL records are applied,
never O(corpus) per change; (2) rebuilt after a crash by re-feeding documents (the store rebuilds
it at open from its DuckDB text columns, then feeds the WAL-replayed ops), so it needs no
durability of its own beyond an optional snapshot; (3) every query filtered by the caller's
boolean visibility mask over node ids, such that an invisible document never contributes a
result, a score or a count.

Candidates considered:

- DuckDB's ``fts`` extension: not bundled with the wheel (``LOAD fts`` asks for ``INSTALL fts``,
  a download), so not installable offline here; and ``PRAGMA create_fts_index`` rebuilds the
  whole index (no incremental update).
- ``bm25s``: fast bulk scoring from a sparse matrix, but the index is immutable: any add, replace
  or remove means re-indexing the whole corpus. Its ``weight_mask`` filters results, but corpus
  statistics stay global (so scores leak invisible documents).
- ``tantivy``: incremental through its writer, but it assigns its own doc addresses (we would
  keep a mapping both ways), changes become visible only at segment commits with background
  merges, a numpy mask cannot be applied inside its collector cheaply (it would be a term query
  on an id field, or a post-filter that breaks top-k), and its BM25 statistics are index-global.
- Postings kept in memory with numpy scoring (chosen). No extra dependency, exact control over
  the formula and the statistics, and the mask is applied where the postings are read.

How it works:

- per term, an int32 (3, capacity) numpy array of postings (doc id, tf, generation), doubled
  when full; the most recent postings of a term wait in a small flat tuple (at most 32 postings)
  and move to the array in one block, which keeps a one-document upsert at O(its tokens) with a
  few list appends per token instead of numpy calls;
- per doc id, numpy arrays of length, liveness and generation, plus each live doc's term ids;
- replace/remove bumps the doc's generation: its old postings become tombstones (a posting is
  live iff its generation equals the doc's), counted per term; a term is compacted when more
  than half of its postings are dead (amortised O(1) per removed posting);
- a query reads the postings of its terms only, plus, with a mask, one vectorised O(id space)
  pass for the visible N and total length; per term, df is ``count_nonzero(visible[docs] &
  live)``. Postings that don't count are scored and multiplied by 0 (branch-free, cheaper than
  compressing on a random mask; adding 0.0 changes no sum). Scores are summed with bincount, into
  a dense accumulator when the postings are many relative to the id space, else after a sort.

Measured (bench/keyword.py, CPU time, 2 cores shared under a load average near 200, so
rough): 2Wiki passages (6,119 docs) build at ~11-13k docs/s in one call and ~8-9k docs/s one
upsert at a time (bm25s ~10-12k docs/s, and it can only rebuild); query p50 ~0.1-0.15 ms (bm25s
~0.08 ms). Repeated x16 (98k docs): query p50 ~0.25-0.5 ms, p99 ~1-1.5 ms with or without a 50%
mask (bm25s p50 ~0.7 ms); replacing one doc ~0.1 ms.

Scoring (Lucene-style BM25, the same as ``bm25s``' default ``method="lucene"``)::

    idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(d, q) = sum over distinct terms t of q present in d:
                  idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * len(d) / avgdl))

The ``(k1 + 1)`` numerator factor of classic Okapi is left out, as Lucene does since 8.0: it is
a constant factor and changes no ranking. A term repeated in the query counts once.

Access control: when ``search`` is given a mask, N, df and avgdl are computed over the
*visible* live documents only, so the scores equal, bit for bit in practice and within float
rounding by contract, those of an index that only ever held the visible documents. Adding,
changing or removing an invisible document changes no visible result, score or count. Without a
mask the statistics are over every live document.

Not thread-safe for writes: the caller serialises ``upsert``/``remove`` (the store applies WAL
ops under its write lock). ``search`` does not mutate the index, so concurrent searches are fine
while no write runs.

The default tokenizer, limits and error type are in `keyword_text.py`; the snapshot format is in
`keyword_snapshot.py`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from knowledge.index.keyword_snapshot import restore_index, snapshot_bytes
from knowledge.index.keyword_text import DOC_ID_MAX, K_MAX, STOPWORDS, KeywordIndexError, tokenize

__all__ = ["KeywordIndex", "KeywordIndexError", "tokenize", "STOPWORDS", "K_MAX", "DOC_ID_MAX"]

_PENDING_MAX = 3 * 32  # pending postings (3 ints each) kept in a list before moving to numpy
_COMPACT_MIN = 8  # don't bother compacting a term with fewer postings than this
_EMPTY_POSTINGS = np.zeros((3, 0), dtype=np.int32)
_EMPTY_POSTINGS.setflags(write=False)
_NO_TOKENS: Counter[str] = Counter()


def _as_ids(doc_ids: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    """Validate doc ids: a 1-D sequence of non-negative integers <= DOC_ID_MAX -> int64 array."""
    if isinstance(doc_ids, (str, bytes)):
        raise KeywordIndexError(f"{what}: doc_ids must be a sequence of integers, got {type(doc_ids).__name__}")
    try:
        ids = np.asarray(doc_ids)
    except (TypeError, ValueError) as exc:
        raise KeywordIndexError(f"{what}: doc_ids must be a sequence of integers ({exc})") from None
    if ids.ndim != 1:
        raise KeywordIndexError(f"{what}: doc_ids must be one-dimensional, got shape {ids.shape}")
    if ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
        raise KeywordIndexError(f"{what}: doc_ids must be integers, got dtype {ids.dtype}")
    if ids.dtype == np.uint64 and int(ids.max()) > DOC_ID_MAX:
        raise KeywordIndexError(f"{what}: doc id {int(ids.max())} is above the maximum {DOC_ID_MAX}")
    ids = ids.astype(np.int64, copy=False)
    low = int(ids.min())
    if low < 0:
        raise KeywordIndexError(f"{what}: doc ids must be non-negative, got {low}")
    high = int(ids.max())
    if high > DOC_ID_MAX:
        raise KeywordIndexError(f"{what}: doc id {high} is above the maximum {DOC_ID_MAX}")
    return ids


class KeywordIndex:
    """BM25 keyword index over documents identified by non-negative int ids (dense node ids).

    Guarantees: `search` returns only live documents, each at most once, best score first, ties
    by lower id; with a mask, only ids with ``mask[id]`` True and with statistics computed over
    those documents alone (see the module docstring). Writes validate all their input before
    changing anything, so a write that raises leaves the index unchanged.

    Memory: ~12 bytes per posting plus 13 bytes per id up to the largest id seen (per-id arrays
    are dense, as node ids are); the vocabulary keeps an entry (~100 bytes) for a term whose
    documents are all gone, until the index is rebuilt or restored from a snapshot.
    """

    def __init__(self, k1: float = 1.2, b: float = 0.75,
                 tokenizer: Callable[[str], list[str]] | None = None) -> None:
        """Raises KeywordIndexError if k1 is negative or not finite, or b is outside [0, 1]."""
        if isinstance(k1, bool) or not isinstance(k1, (int, float)) or not math.isfinite(k1) or k1 < 0:
            raise KeywordIndexError(f"k1 must be a finite number >= 0, got {k1!r}")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or not 0 <= b <= 1:
            raise KeywordIndexError(f"b must be a number in [0, 1], got {b!r}")
        if tokenizer is not None and not callable(tokenizer):
            raise KeywordIndexError("tokenizer must be callable (str -> list[str]) or None")
        self.k1 = float(k1)
        self.b = float(b)
        self._custom_tokenizer = tokenizer is not None
        self._tokenize: Callable[[str], list[str]] = tokenizer if tokenizer is not None else tokenize
        # vocabulary and per-term postings: rows (doc id, tf, generation) of an int32 (3, cap) array
        self._vocab: dict[str, int] = {}
        self._terms: list[str] = []
        # (3, capacity) int32 arrays, or None; recent postings wait in a flat Python list per term
        # ([doc, tf, gen, doc, tf, gen, ...]) and move to the array in blocks (cheap single upserts)
        self._post: list[np.ndarray | None] = []
        self._pend: list[tuple[int, ...] | None] = []
        self._used: list[int] = []   # postings in the array (live + dead) per term
        self._dead: list[int] = []   # tombstoned postings (array + pending) per term
        # per doc id
        self._len = np.zeros(0, dtype=np.float64)  # token count (0 when absent), exact in float64
        self._live = np.zeros(0, dtype=np.bool_)
        self._gen = np.zeros(0, dtype=np.int32)    # bumped on every replace/remove
        self._doc_terms: dict[int, list[int]] = {}  # live doc id -> its distinct term ids
        self._count = 0
        self._total_len = 0

    # -- sizes ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of live documents."""
        return self._count

    def __repr__(self) -> str:
        return f"KeywordIndex(docs={self._count}, terms={len(self._terms)}, k1={self.k1}, b={self.b})"

    def _grow_docs(self, needed: int) -> None:
        cap = len(self._len)
        if needed <= cap:
            return
        new = max(needed, 2 * cap, 64)
        for name in ("_len", "_live", "_gen"):
            old = getattr(self, name)
            arr = np.zeros(new, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def _new_term(self, term: str) -> int:
        tid = len(self._terms)
        self._vocab[term] = tid
        self._terms.append(term)
        self._post.append(None)
        self._pend.append(None)
        self._used.append(0)
        self._dead.append(0)
        return tid

    # -- writes ---------------------------------------------------------------------------------
    def upsert(self, doc_ids: Sequence[int] | np.ndarray, texts: Sequence[str | None]) -> None:
        """Set each doc's text, replacing any previous text; a None or token-less text removes it.

        Within one call a repeated id takes its last text. Cost: O(tokens of the given texts),
        amortised, independent of the corpus size. Raises KeywordIndexError (before any change)
        when ids and texts differ in length, an id is negative, above DOC_ID_MAX or not an
        integer, a text is neither str nor None, or the tokenizer returns something else than a
        list of str.
        """
        ids = _as_ids(doc_ids, "upsert")
        if isinstance(texts, (str, bytes)):
            raise KeywordIndexError("upsert: texts must be a sequence of str/None, not a single string")
        try:
            n_texts = len(texts)
        except TypeError:
            raise KeywordIndexError(f"upsert: texts must be a sequence, got {type(texts).__name__}") from None
        if n_texts != len(ids):
            raise KeywordIndexError(f"upsert: got {len(ids)} doc ids but {n_texts} texts")
        # tokenize everything first: a failure leaves the index untouched
        last: dict[int, Counter[str]] = {}
        tokenizer = self._tokenize
        for doc, text in zip(ids.tolist(), texts, strict=True):
            if text is None:
                last[doc] = _NO_TOKENS
                continue
            if not isinstance(text, str):
                raise KeywordIndexError(f"upsert: text for doc {doc} must be str or None, "
                                        f"got {type(text).__name__}")
            tokens = tokenizer(text)
            if self._custom_tokenizer and (not isinstance(tokens, list)
                                           or not all(isinstance(t, str) for t in tokens)):
                raise KeywordIndexError("upsert: tokenizer must return a list of str")
            last[doc] = Counter(tokens)
        if not last:
            return
        self._grow_docs(max(last) + 1)
        self._drop(list(last))
        vocab, pend, doc_terms = self._vocab, self._pend, self._doc_terms
        gens, lens, live = self._gen, self._len, self._live
        for doc, counts in last.items():
            if not counts:
                continue
            gen = int(gens[doc])
            tids = []
            for term, tf in counts.items():
                tid = vocab.get(term)
                if tid is None:
                    tid = self._new_term(term)
                block = pend[tid]
                if block is None:
                    pend[tid] = (doc, tf, gen)
                else:  # a new tuple: a read view's fork may share the old block (storage/versions.py)
                    block += (doc, tf, gen)
                    pend[tid] = block
                    if len(block) >= _PENDING_MAX:
                        self._flush(tid)
                tids.append(tid)
            length = sum(counts.values())
            lens[doc] = length
            live[doc] = True
            doc_terms[doc] = tids
            self._count += 1
            self._total_len += length

    def remove(self, doc_ids: Sequence[int] | np.ndarray) -> None:
        """Remove documents; ids not in the index are ignored. Cost: O(terms of the removed docs),
        amortised. Raises KeywordIndexError for negative, too large or non-integer ids."""
        ids = _as_ids(doc_ids, "remove")
        if ids.size:
            self._drop(ids.tolist())

    def _drop(self, ids: list[int]) -> None:
        """Tombstone the postings of those of `ids` that are live (each counted once)."""
        doc_terms, dead, used, pend = self._doc_terms, self._dead, self._used, self._pend
        touched: set[int] = set()
        for doc in ids:
            tids = doc_terms.pop(doc, None)
            if tids is None:
                continue
            self._gen[doc] += 1
            self._live[doc] = False
            self._count -= 1
            self._total_len -= int(self._len[doc])
            self._len[doc] = 0
            for tid in tids:
                dead[tid] += 1
            touched.update(tids)
        for tid in touched:
            total = used[tid] + (len(pend[tid]) // 3 if pend[tid] else 0)
            if dead[tid] == total or (2 * dead[tid] > total and total >= _COMPACT_MIN):
                self._compact(tid)

    def _flush(self, tid: int) -> None:
        """Move a term's pending postings into its numpy array (doubling capacity as needed)."""
        block = self._pend[tid]
        if not block:
            return
        rows = np.array(block, dtype=np.int32).reshape(-1, 3).T
        arr, n = self._post[tid], self._used[tid]
        need = n + rows.shape[1]
        if arr is None or need > arr.shape[1]:
            grown = np.empty((3, max(need, 2 * n)), dtype=np.int32)
            if arr is not None:
                grown[:, :n] = arr[:, :n]
            self._post[tid] = arr = grown
        arr[:, n:need] = rows
        self._used[tid] = need
        self._pend[tid] = None

    def _compact(self, tid: int) -> None:
        """Drop a term's dead postings."""
        self._flush(tid)
        kept = self._live_postings(tid)
        self._post[tid] = np.ascontiguousarray(kept) if kept.shape[1] else None
        self._used[tid] = kept.shape[1]
        self._dead[tid] = 0

    # -- reads ----------------------------------------------------------------------------------
    def _parts(self, tid: int) -> list[np.ndarray]:
        """A term's postings, live and dead, as (3, n) int32 arrays (doc, tf, generation): the
        numpy part and, if any, the pending part. Read-only; nothing is copied from the array."""
        arr, block = self._post[tid], self._pend[tid]
        parts = [arr[:, : self._used[tid]]] if arr is not None else []
        if block:
            parts.append(np.array(block, dtype=np.int32).reshape(-1, 3).T)
        return parts

    def _postings(self, tid: int) -> np.ndarray:
        """All postings of a term, live and dead, as one (3, n) int32 array."""
        parts = self._parts(tid)
        if not parts:
            return _EMPTY_POSTINGS
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def _live_postings(self, tid: int) -> np.ndarray:
        arr = self._postings(tid)
        if self._dead[tid]:
            arr = arr[:, arr[2] == self._gen[arr[0]]]
        return arr

    def search(self, query: str, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents for `query` as (doc_ids int64, scores float32), best first, ties by lower id.

        With `mask` (a 1-D numpy bool array over doc ids), only docs with ``mask[id]`` True are
        scored, returned or counted, and N, df and avgdl are computed over them alone; ids at or
        beyond ``len(mask)`` count as invisible. Returns fewer than k rows when fewer documents
        match (possibly none). Raises KeywordIndexError if query is not a str, k is not an int in
        [1, K_MAX], or mask is not a 1-D bool numpy array.
        """
        if not isinstance(query, str):
            raise KeywordIndexError(f"search: query must be str, got {type(query).__name__}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise KeywordIndexError(f"search: k must be an int, got {type(k).__name__}")
        if not 1 <= k <= K_MAX:
            raise KeywordIndexError(f"search: k must be in [1, {K_MAX}], got {k}")
        if mask is not None:
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 1:
                got = f"{mask.dtype}, shape {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
                raise KeywordIndexError(f"search: mask must be a 1-D numpy bool array over doc ids, got {got}")
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        tokens = self._tokenize(query)
        terms_known = len(self._post)  # a term added after a read view's fork is absent from it
        tids = list(dict.fromkeys(t for t in (self._vocab.get(tok) for tok in tokens)
                                  if t is not None and t < terms_known))
        if not tids or self._count == 0:
            return empty
        # Corpus statistics, and per query term its postings plus which of them count (live and
        # visible). Postings that don't count are scored too and then multiplied by 0: that is
        # branch-free (cheaper than compressing on a random mask), and adding 0.0 leaves every
        # visible doc's sum bit-identical to an index holding only the visible docs.
        lens = self._len
        terms: list[tuple[list[np.ndarray], list[np.ndarray | None], int]] = []
        if mask is None:
            n_docs, total = self._count, self._total_len
            for t in tids:
                parts = self._parts(t)
                if self._dead[t]:
                    keeps = [p[2] == self._gen[p[0]] for p in parts]
                    terms.append((parts, keeps, sum(int(np.count_nonzero(x)) for x in keeps)))
                else:
                    terms.append((parts, [None] * len(parts), sum(p.shape[1] for p in parts)))
        else:
            cap = len(self._live)
            if len(mask) >= cap:
                visible = mask[:cap] & self._live
            else:
                visible = np.zeros(cap, dtype=np.bool_)
                np.logical_and(mask, self._live[: len(mask)], out=visible[: len(mask)])
            n_docs = int(np.count_nonzero(visible))
            if n_docs == 0:
                return empty
            total = int(np.multiply(lens, visible).sum())   # exact: integer lengths in float64
            for t in tids:
                parts = self._parts(t)
                keeps = [visible[p[0]] for p in parts]
                if self._dead[t]:
                    for p, keep in zip(parts, keeps, strict=True):
                        keep &= p[2] == self._gen[p[0]]
                terms.append((parts, keeps, sum(int(np.count_nonzero(x)) for x in keeps)))
        c0 = self.k1 * (1.0 - self.b)
        c1 = self.k1 * self.b / (total / n_docs)
        ids_parts, score_parts = [], []
        postings = 0
        for parts, keeps, df in terms:
            if df == 0:
                continue
            idf = math.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))
            for arr, keep in zip(parts, keeps, strict=True):
                docs = arr[0]
                tf = arr[1].astype(np.float64)
                part = tf * idf / (tf + (c0 + c1 * lens[docs]))
                if keep is not None:
                    part *= keep
                score_parts.append(part)
                ids_parts.append(docs)
                postings += len(docs)
        if not ids_parts:
            return empty
        if 32 * postings >= len(self._live) and len(ids_parts) > 1:
            # dense accumulator over the id space; a doc that counts scores > 0 (idf > 0, tf > 0)
            acc = np.bincount(np.concatenate(ids_parts), weights=np.concatenate(score_parts))
            ids = np.flatnonzero(acc > 0)
            scores = acc[ids]
        else:
            all_ids = np.concatenate(ids_parts) if len(ids_parts) > 1 else ids_parts[0]
            all_scores = np.concatenate(score_parts) if len(score_parts) > 1 else score_parts[0]
            hit = all_scores > 0
            all_ids, all_scores = all_ids[hit], all_scores[hit]
            if len(ids_parts) == 1:   # one part of one term: each doc counts at most once
                ids, scores = all_ids.astype(np.int64), all_scores
            else:                     # sparse: sort-based accumulation
                ids, inverse = np.unique(all_ids, return_inverse=True)
                scores = np.bincount(inverse, weights=all_scores)
                ids = ids.astype(np.int64)
        scores32 = scores.astype(np.float32)
        if len(ids) > k:
            # keep everything that ties with the k-th best so that ties break by lower id
            kth = np.partition(scores32, len(ids) - k)[len(ids) - k]
            sel = scores32 >= kth
            ids, scores32 = ids[sel], scores32[sel]
        order = np.lexsort((ids, -scores32))[:k]
        return ids[order].astype(np.int64, copy=False), scores32[order]

    # -- snapshot -------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Serialise the live content (vocabulary, postings, doc lengths, k1, b) to bytes.

        Deterministic: equal contents give equal bytes. The tokenizer itself is not stored, only
        whether it was the default one; `restore` needs the same custom tokenizer passed again.
        """
        return snapshot_bytes(self)

    @classmethod
    def restore(cls, data: bytes, tokenizer: Callable[[str], list[str]] | None = None) -> KeywordIndex:
        """Rebuild an index from `snapshot()` bytes; it searches exactly as the original did.

        Pass the same `tokenizer` the original used when it was a custom one. Raises
        KeywordIndexError when the bytes are not a valid snapshot, or a custom tokenizer is
        missing.
        """
        return restore_index(cls, data, tokenizer)
