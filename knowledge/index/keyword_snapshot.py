"""Keyword index snapshots: the live content of a `KeywordIndex` as deterministic bytes, and back.

Layout: magic, the JSON header's length (u64 LE), the JSON header (k1, b, whether the tokenizer was
custom, the terms, each array's dtype and length), then the arrays (postings pointer per term, doc
ids, term frequencies, live doc ids, their lengths), little-endian. `restore_index` checks every
array against the others before building anything, so a damaged snapshot raises KeywordIndexError.

Both functions work on a `knowledge/index/keyword.py:KeywordIndex` (its internals: they are its
`snapshot` and `restore`, kept apart for size), passed in rather than imported so that the import goes
one way only (keyword -> keyword_snapshot).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from knowledge.index.keyword_text import DOC_ID_MAX, KeywordIndexError

_SNAPSHOT_MAGIC = b"KWIDX\x00\x01\n"


def snapshot_bytes(self: Any) -> bytes:
    """Serialise the live content (vocabulary, postings, doc lengths, k1, b) to bytes.

    Deterministic: equal contents give equal bytes. The tokenizer itself is not stored, only
    whether it was the default one; `restore` needs the same custom tokenizer passed again.
    """
    terms_out: list[str] = []
    ptr = [0]
    doc_parts, tf_parts = [], []
    for tid, term in enumerate(self._terms):
        arr = self._live_postings(tid)
        if arr.shape[1] == 0:
            continue
        arr = arr[:, np.argsort(arr[0], kind="stable")]
        terms_out.append(term)
        doc_parts.append(arr[0])
        tf_parts.append(arr[1])
        ptr.append(ptr[-1] + arr.shape[1])
    docs = np.concatenate(doc_parts) if doc_parts else np.zeros(0, dtype=np.int32)
    tfs = np.concatenate(tf_parts) if tf_parts else np.zeros(0, dtype=np.int32)
    live_ids = np.flatnonzero(self._live).astype(np.int64)
    arrays = {
        "ptr": np.asarray(ptr, dtype=np.int64),
        "docs": docs.astype("<i4"),
        "tfs": tfs.astype("<i4"),
        "live_ids": live_ids.astype("<i8"),
        "lengths": self._len[live_ids].astype("<i8"),
    }
    header: dict[str, Any] = {
        "k1": self.k1, "b": self.b, "custom_tokenizer": self._custom_tokenizer, "terms": terms_out,
        "arrays": {name: [str(a.dtype.str), len(a)] for name, a in arrays.items()},
    }
    head = json.dumps(header, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    body = b"".join(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in arrays.values())
    return _SNAPSHOT_MAGIC + struct.pack("<Q", len(head)) + head + body


def restore_index(cls: Any, data: bytes, tokenizer: Callable[[str], list[str]] | None = None) -> Any:
    """Rebuild an index from `snapshot()` bytes; it searches exactly as the original did.

    Pass the same `tokenizer` the original used when it was a custom one. Raises
    KeywordIndexError when the bytes are not a valid snapshot, or a custom tokenizer is
    missing.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise KeywordIndexError(f"restore: data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    m = len(_SNAPSHOT_MAGIC)
    if data[:m] != _SNAPSHOT_MAGIC or len(data) < m + 8:
        raise KeywordIndexError("restore: not a keyword index snapshot (bad magic)")
    (head_len,) = struct.unpack_from("<Q", data, m)
    try:
        header = json.loads(data[m + 8: m + 8 + head_len].decode("utf-8"))
        arrays: dict[str, np.ndarray] = {}
        offset = m + 8 + head_len
        for name in ("ptr", "docs", "tfs", "live_ids", "lengths"):
            dtype, count = header["arrays"][name]
            dt = np.dtype(dtype)
            size = dt.itemsize * int(count)
            if offset + size > len(data):
                raise ValueError("truncated")
            arrays[name] = np.frombuffer(data, dtype=dt, count=int(count), offset=offset).astype(
                np.int64 if dt.itemsize == 8 else np.int32)
            offset += size
        if offset != len(data):
            raise ValueError("trailing bytes")
        terms = header["terms"]
        if header["custom_tokenizer"] and tokenizer is None:
            raise KeywordIndexError("restore: the snapshot was taken with a custom tokenizer; pass it again")
        index = cls(header["k1"], header["b"], tokenizer)
    except KeywordIndexError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise KeywordIndexError(f"restore: corrupt snapshot ({exc})") from None
    ptr, docs, tfs = arrays["ptr"], arrays["docs"], arrays["tfs"]
    live_ids, lengths = arrays["live_ids"], arrays["lengths"]
    ok = (len(ptr) == len(terms) + 1 and ptr[0] == 0 and ptr[-1] == len(docs) == len(tfs)
          and bool(np.all(np.diff(ptr) > 0)) and len(live_ids) == len(lengths)
          and len(set(terms)) == len(terms)
          and (len(docs) == 0 or (docs.min() >= 0 and bool(np.all(tfs > 0))))
          and (len(live_ids) == 0 or (live_ids.min() >= 0 and live_ids.max() <= DOC_ID_MAX
                                      and bool(np.all(np.diff(live_ids) > 0)))))
    if ok and len(docs):
        same_term = np.repeat(np.arange(len(terms)), np.diff(ptr))
        same_term = same_term[1:] == same_term[:-1]
        ok = bool(np.all(np.isin(docs, live_ids))) and bool(np.all(np.diff(docs)[same_term] > 0))
    if not ok:
        raise KeywordIndexError("restore: corrupt snapshot (inconsistent arrays)")
    index._grow_docs(int(live_ids.max()) + 1 if len(live_ids) else 0)
    index._live[live_ids] = True
    index._len[live_ids] = lengths
    index._count = len(live_ids)
    index._total_len = int(lengths.sum())
    index._terms = list(terms)
    index._vocab = {t: i for i, t in enumerate(terms)}
    n_terms = len(terms)
    index._used = np.diff(ptr).tolist()
    index._dead = [0] * n_terms
    index._pend = [None] * n_terms
    index._post = []
    for tid in range(n_terms):
        lo, hi = int(ptr[tid]), int(ptr[tid + 1])
        arr = np.zeros((3, hi - lo), dtype=np.int32)
        arr[0] = docs[lo:hi]
        arr[1] = tfs[lo:hi]
        index._post.append(arr)
    # forward index: each doc's distinct term ids
    term_of = np.repeat(np.arange(n_terms, dtype=np.int64), np.diff(ptr))
    order = np.argsort(docs, kind="stable")
    sorted_docs, sorted_terms = docs[order].tolist(), term_of[order].tolist()
    for doc, tid in zip(sorted_docs, sorted_terms, strict=True):
        tids = index._doc_terms.get(doc)
        if tids is None:
            index._doc_terms[doc] = [tid]
        else:
            tids.append(tid)
    if len(index._doc_terms) != index._count:
        raise KeywordIndexError("restore: corrupt snapshot (live document without terms)")
    lens = np.zeros(len(index._len), dtype=np.int64)
    np.add.at(lens, docs, tfs)
    if not np.array_equal(lens, index._len):
        raise KeywordIndexError("restore: corrupt snapshot (document lengths disagree with postings)")
    return index
