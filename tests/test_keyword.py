"""Keyword index (BM25): exact scores, incremental updates, visibility masks, snapshots, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from knowledge.index.keyword import K_MAX, KeywordIndex, KeywordIndexError, tokenize


def build(docs: dict[int, str], **kwargs) -> KeywordIndex:
    index = KeywordIndex(**kwargs)
    ids = sorted(docs)
    index.upsert(ids, [docs[i] for i in ids])
    return index


def reference(docs: dict[int, str], query: str, k1: float = 1.2, b: float = 0.75) -> dict[int, float]:
    """Plain-Python Lucene BM25 over the given docs (the definition, written out)."""
    toks = {d: tokenize(t) for d, t in docs.items()}
    toks = {d: t for d, t in toks.items() if t}
    n = len(toks)
    if n == 0:
        return {}
    avgdl = sum(len(t) for t in toks.values()) / n
    out: dict[int, float] = {}
    for term in dict.fromkeys(tokenize(query)):
        df = sum(term in t for t in toks.values())
        if df == 0:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for d, t in toks.items():
            tf = t.count(term)
            if tf:
                out[d] = out.get(d, 0.0) + idf * tf / (tf + k1 * (1 - b + b * len(t) / avgdl))
    return out


def as_list(result: tuple[np.ndarray, np.ndarray]) -> list[tuple[int, float]]:
    ids, scores = result
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and len(ids) == len(scores)
    return list(zip(ids.tolist(), scores.tolist(), strict=True))


def assert_ordered(result: tuple[np.ndarray, np.ndarray]) -> None:
    pairs = as_list(result)
    assert pairs == sorted(pairs, key=lambda p: (-p[1], p[0]))
    assert len({d for d, _ in pairs}) == len(pairs)


# -- scores and ranking ---------------------------------------------------------------------------
HAND = {0: "cat dog", 1: "cat cat mouse", 2: "bird"}


def test_exact_scores_hand_computed():
    # N = 3, lengths 2, 3, 1 -> avgdl = 2; k1 = 1.2, b = 0.75.
    # "cat": df = 2, idf = ln(1 + 1.5/2.5) = ln 1.6 = 0.4700036292
    #   doc 0: tf 1, len 2: 1 / (1 + 1.2 * (0.25 + 0.75 * 2/2)) = 1/2.2   -> 0.2136380133
    #   doc 1: tf 2, len 3: 2 / (2 + 1.2 * (0.25 + 0.75 * 3/2)) = 2/3.65  -> 0.2575362352
    # "mouse": df = 1, idf = ln(1 + 2.5/1.5) = 0.9808292530; doc 1: 1/2.65 -> 0.3701242464
    index = build(HAND)
    ids, scores = index.search("cat", 10)
    assert ids.tolist() == [1, 0]
    np.testing.assert_allclose(scores, [0.2575362352, 0.2136380133], rtol=1e-6)
    ids, scores = index.search("cat mouse", 10)
    assert ids.tolist() == [1, 0]
    np.testing.assert_allclose(scores, [0.2575362352 + 0.3701242464, 0.2136380133], rtol=1e-6)
    # a repeated query term counts once; unknown terms and stopwords add nothing
    assert as_list(index.search("cats CAT the zebra", 10)) == as_list(index.search("cat", 10))
    assert as_list(index.search("zebra", 10)) == []
    assert as_list(index.search("the of and", 10)) == []
    assert as_list(index.search("", 10)) == []


def test_parameters_change_scores_as_defined():
    for k1, b in [(0.9, 0.4), (2.0, 1.0), (0.0, 0.0)]:
        index = build(HAND, k1=k1, b=b)
        got = dict(as_list(index.search("cat mouse bird", 10)))
        want = reference(HAND, "cat mouse bird", k1, b)
        assert got.keys() == want.keys()
        for d in want:
            assert got[d] == pytest.approx(want[d], rel=1e-6)


def test_ranking_sanity():
    docs = {
        10: "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
        11: "Paris is the capital of France and its largest city.",
        12: "The Tower of London is a historic castle in London.",
        13: "Berlin is the capital of Germany.",
    }
    index = build(docs)
    assert index.search("eiffel tower paris", 1)[0].tolist() == [10]
    assert index.search("capital of germany", 1)[0].tolist() == [13]
    assert index.search("london castle", 1)[0].tolist() == [12]
    ids, _ = index.search("capital", 10)
    assert sorted(ids.tolist()) == [11, 13]


def test_ties_break_by_lower_id_and_k_cuts():
    index = KeywordIndex()
    index.upsert([7, 3, 9, 1, 5], ["alpha"] * 5)
    ids, scores = index.search("alpha", 3)
    assert ids.tolist() == [1, 3, 5]
    assert len(set(scores.tolist())) == 1
    assert index.search("alpha", 100)[0].tolist() == [1, 3, 5, 7, 9]


def test_matches_reference_on_random_corpus():
    rng = np.random.default_rng(5)
    vocab = [f"w{i}" for i in range(40)]
    docs = {int(i): " ".join(rng.choice(vocab, size=rng.integers(1, 30))) for i in range(0, 600, 2)}
    index = build(docs)
    for _ in range(20):
        query = " ".join(rng.choice(vocab, size=3))
        result = index.search(query, 50)
        assert_ordered(result)
        want = reference(docs, query)
        top = sorted(want.items(), key=lambda p: (-p[1], p[0]))[:50]
        got = as_list(result)
        np.testing.assert_allclose([s for _, s in got], [s for _, s in top], rtol=1e-5)
        for d, s in got:
            assert want[d] == pytest.approx(s, rel=1e-5)


def test_sparse_id_space_matches_reference():
    # few postings over a large id space: the sort-based accumulation path
    rng = np.random.default_rng(8)
    vocab = ["north", "south", "east", "west", "up", "down"]
    ids = rng.choice(200_000, size=60, replace=False)
    docs = {int(d): " ".join(rng.choice(vocab, size=rng.integers(1, 6))) for d in ids}
    index = build(docs)
    mask = np.zeros(200_000, dtype=bool)
    mask[ids[::2]] = True
    visible = {d: t for d, t in docs.items() if mask[d]}
    for q in ["north south", "east west up", "down north east south"]:
        want = sorted(reference(docs, q).items(), key=lambda p: (-p[1], p[0]))[:20]
        got = as_list(index.search(q, 20))
        assert [d for d, _ in got] == [d for d, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)
        assert as_list(index.search(q, 20, mask)) == as_list(build(visible).search(q, 20))


def test_same_scores_as_bm25s_when_given_our_tokens():
    bm25s = pytest.importorskip("bm25s")
    rng = np.random.default_rng(11)
    vocab = [f"t{i}" for i in range(25)]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(1, 15))) for _ in range(200)]
    index = KeywordIndex()
    index.upsert(np.arange(200), texts)
    retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    retriever.index([tokenize(t) for t in texts], show_progress=False)
    for q in ["t1", "t2 t3", "t4 t5 t6 t7"]:
        want = retriever.get_scores(tokenize(q))
        ids, scores = index.search(q, 200)
        np.testing.assert_allclose(scores, want[ids], rtol=1e-5)
        assert np.count_nonzero(want) == len(ids)


# -- incremental updates --------------------------------------------------------------------------
def test_upsert_replaces_old_text():
    index = build({1: "apple banana", 2: "banana cherry"})
    index.upsert([1], ["durian"])
    assert len(index) == 2
    assert index.search("apple", 10)[0].tolist() == []
    assert index.search("banana", 10)[0].tolist() == [2]
    assert index.search("durian", 10)[0].tolist() == [1]
    assert as_list(index.search("banana durian", 10)) == as_list(
        build({1: "durian", 2: "banana cherry"}).search("banana durian", 10))


def test_remove_and_none_text_remove():
    index = build({1: "apple", 2: "apple pie", 3: "apple tart"})
    index.remove([2, 99, 2_000_000])          # absent ids are ignored
    assert len(index) == 2
    assert index.search("apple pie", 10)[0].tolist() == [1, 3]
    index.upsert([3], [None])
    assert len(index) == 1
    assert index.search("tart", 10)[0].tolist() == []
    index.upsert([1], ["  the of "])         # only stopwords: no tokens -> removed
    assert len(index) == 0
    assert index.search("apple", 10)[0].tolist() == []
    index.remove(np.array([], dtype=np.int64))
    index.remove([])
    index.upsert([], [])
    assert as_list(index.search("apple", 10)) == as_list(KeywordIndex().search("apple", 10))


def test_last_text_wins_within_a_batch():
    index = KeywordIndex()
    index.upsert([4, 4, 4], ["one", "two", "three"])
    assert len(index) == 1
    assert index.search("one two", 10)[0].tolist() == []
    assert index.search("three", 10)[0].tolist() == [4]


def test_many_replacements_compact_postings():
    index = KeywordIndex()
    index.upsert(np.arange(50), ["common"] * 50)
    for round_ in range(200):
        index.upsert([round_ % 50], [f"common rare{round_}"])
    tid = index._vocab["common"]
    assert index._postings(tid).shape[1] <= 2 * 50 + 8  # tombstones are reclaimed, not accumulated
    fresh = build({i: f"common rare{150 + i if i < 50 else i}" for i in range(50)})
    assert as_list(index.search("common", 50)) == as_list(fresh.search("common", 50))
    index.remove(np.arange(50))
    assert len(index) == 0 and index._postings(tid).shape[1] == 0


# -- visibility masks -----------------------------------------------------------------------------
def test_mask_filters_results_and_counts():
    index = build({0: "red", 1: "red", 2: "red", 3: "red blue", 5: "red"})
    mask = np.array([True, False, True, False])   # ids >= 4 are invisible
    ids, _ = index.search("red", 10, mask)
    assert ids.tolist() == [0, 2]                 # fewer than k
    assert index.search("blue", 10, mask)[0].tolist() == []
    assert index.search("red", 10, np.zeros(0, dtype=bool))[0].tolist() == []
    assert index.search("red", 10, np.ones(100, dtype=bool))[0].tolist() == [0, 1, 2, 5, 3]


def test_invisible_documents_do_not_change_visible_scores():
    index = build({0: "red green", 1: "red", 2: "green"})
    mask = np.array([True, False, True])
    before = as_list(index.search("red green", 10, mask))
    index.upsert([1, 7, 8], ["red red red green", "red", "green green"])   # invisible churn
    index.remove([1])
    assert as_list(index.search("red green", 10, mask)) == before
    assert before == as_list(build({0: "red green", 2: "green"}).search("red green", 10))


VOCAB = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]
texts_st = st.one_of(st.none(), st.lists(st.sampled_from(VOCAB), min_size=0, max_size=8).map(" ".join))
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.lists(st.tuples(st.integers(0, 30), texts_st), min_size=1, max_size=6)),
        st.tuples(st.just("remove"), st.lists(st.integers(0, 40), min_size=1, max_size=4)),
    ),
    min_size=1, max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_st, mask_bits=st.lists(st.booleans(), max_size=36),
       query=st.lists(st.sampled_from(VOCAB + ["zzz"]), min_size=1, max_size=4).map(" ".join),
       k=st.integers(1, 12))
def test_masked_search_equals_index_of_visible_docs_only(ops, mask_bits, query, k):
    index = KeywordIndex()
    state: dict[int, str] = {}
    for kind, arg in ops:
        if kind == "upsert":
            index.upsert([d for d, _ in arg], [t for _, t in arg])
            for d, t in arg:
                if t and tokenize(t):
                    state[d] = t
                else:
                    state.pop(d, None)
        else:
            index.remove(arg)
            for d in arg:
                state.pop(d, None)
    assert len(index) == len(state)
    mask = np.array(mask_bits, dtype=bool)
    visible = {d: t for d, t in state.items() if d < len(mask) and mask[d]}
    got = index.search(query, k, mask)
    want = build(visible).search(query, k)
    assert_ordered(got)
    assert got[0].tolist() == want[0].tolist()
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    # and both agree with the definition
    ref = reference(visible, query)
    assert len(got[0]) == min(k, len(ref))
    for d, s in as_list(got):
        assert ref[d] == pytest.approx(s, rel=1e-5)
    # unmasked search over the incrementally built index equals a batch build of the final state
    full = index.search(query, k)
    batch = build(state).search(query, k)
    assert full[0].tolist() == batch[0].tolist()
    np.testing.assert_allclose(full[1], batch[1], rtol=1e-5, atol=1e-6)


def test_masked_equivalence_with_churn_on_a_larger_corpus():
    # enough postings per term that both the numpy and the pending parts, tombstones and
    # compaction are all in play
    rng = np.random.default_rng(21)
    vocab = [f"v{i}" for i in range(15)]
    index = KeywordIndex()
    state: dict[int, str] = {}
    for _ in range(30):
        ids = rng.choice(500, size=40, replace=False).tolist()
        texts = [" ".join(rng.choice(vocab, size=rng.integers(0, 12))) for _ in ids]
        index.upsert(ids, texts)
        state.update({d: t for d, t in zip(ids, texts, strict=True) if t})
        for d, t in zip(ids, texts, strict=True):
            if not t:
                state.pop(d, None)
        gone = rng.choice(500, size=10, replace=False).tolist()
        index.remove(gone)
        for d in gone:
            state.pop(d, None)
    assert len(index) == len(state)
    for _ in range(10):
        mask = rng.random(int(rng.integers(100, 600))) < rng.random()
        visible = {d: t for d, t in state.items() if d < len(mask) and mask[d]}
        fresh = build(visible)
        for q in [" ".join(rng.choice(vocab, size=int(rng.integers(1, 5)))) for _ in range(5)]:
            got, want = index.search(q, 25, mask), fresh.search(q, 25)
            assert got[0].tolist() == want[0].tolist()
            np.testing.assert_allclose(got[1], want[1], rtol=1e-5)


# -- snapshot -------------------------------------------------------------------------------------
def test_snapshot_round_trip():
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(30)] + ["ünïcode", "日本"]
    index = KeywordIndex(k1=1.5, b=0.6)
    index.upsert(np.arange(300), [" ".join(rng.choice(vocab, size=rng.integers(1, 20))) for _ in range(300)])
    index.upsert(np.arange(0, 300, 3), [" ".join(rng.choice(vocab, size=5)) for _ in range(100)])
    index.remove(np.arange(0, 300, 7))
    data = index.snapshot()
    restored = KeywordIndex.restore(data)
    assert restored.snapshot() == data
    assert len(restored) == len(index) and restored.k1 == 1.5 and restored.b == 0.6
    mask = rng.random(400) < 0.5
    for q in ["w1", "w2 w3 w4", "ünïcode 日本 w5", "nothing"]:
        for m in (None, mask):
            assert as_list(restored.search(q, 40, m)) == as_list(index.search(q, 40, m))
    # the restored index keeps working incrementally
    for ix in (index, restored):
        ix.upsert([1, 500], ["w1 w1 fresh", "fresh"])
        ix.remove([2, 4])
    assert restored.snapshot() == index.snapshot()
    assert KeywordIndex.restore(KeywordIndex().snapshot()).search("w1", 5)[0].tolist() == []


def test_snapshot_rejects_garbage_and_needs_custom_tokenizer():
    index = build({1: "a b c"}, tokenizer=str.split)
    data = index.snapshot()
    with pytest.raises(KeywordIndexError, match="custom tokenizer"):
        KeywordIndex.restore(data)
    assert KeywordIndex.restore(data, tokenizer=str.split).search("a", 5)[0].tolist() == [1]
    good = build({1: "apple", 2: "pear"}).snapshot()
    for bad in [b"", b"nonsense", good[:-3], good + b"x", good.replace(b'"b":0.75', b'"b":7.5')]:
        with pytest.raises(KeywordIndexError):
            KeywordIndex.restore(bad)


# -- bad input ------------------------------------------------------------------------------------
def test_bad_input_raises_value_errors_and_changes_nothing():
    index = build({1: "apple"})
    before = index.snapshot()
    cases = [
        (lambda: index.search("apple", 0), "k must be in"),
        (lambda: index.search("apple", -1), "k must be in"),
        (lambda: index.search("apple", K_MAX + 1), "k must be in"),
        (lambda: index.search("apple", 2.5), "k must be an int"),
        (lambda: index.search("apple", True), "k must be an int"),
        (lambda: index.search(b"apple", 3), "query must be str"),
        (lambda: index.search("apple", 3, np.ones(4, dtype=np.int64)), "mask must be a 1-D numpy bool"),
        (lambda: index.search("apple", 3, [True, True]), "mask must be a 1-D numpy bool"),
        (lambda: index.search("apple", 3, np.ones((2, 2), dtype=bool)), "mask must be a 1-D numpy bool"),
        (lambda: index.upsert([1, 2], ["x"]), "2 doc ids but 1 texts"),
        (lambda: index.upsert([-1], ["x"]), "non-negative"),
        (lambda: index.upsert([2, 3], ["x", 5]), "must be str or None"),
        (lambda: index.upsert([1.5], ["x"]), "must be integers"),
        (lambda: index.upsert([2**40], ["x"]), "above the maximum"),
        (lambda: index.upsert([1], "x"), "not a single string"),
        (lambda: index.remove([3, -2]), "non-negative"),
        (lambda: index.remove([[1, 2]]), "one-dimensional"),
        (lambda: KeywordIndex(k1=-1), "k1 must be"),
        (lambda: KeywordIndex(b=1.5), "b must be"),
        (lambda: KeywordIndex(tokenizer=3), "tokenizer must be callable"),
        (lambda: KeywordIndex.restore("text"), "must be bytes"),
    ]
    for call, message in cases:
        with pytest.raises(KeywordIndexError, match=message) as info:
            call()
        assert isinstance(info.value, ValueError)
    assert index.snapshot() == before
    assert index.search("apple", K_MAX)[0].tolist() == [1]
    assert index.search("apple", np.int64(3))[0].tolist() == [1]


def test_tokenizer_must_return_strings():
    index = KeywordIndex(tokenizer=lambda text: [1, 2])
    with pytest.raises(KeywordIndexError, match="tokenizer must return"):
        index.upsert([1], ["x"])
    assert len(index) == 0


def test_tokenize():
    assert tokenize("The Cats and the DOGS") == ["cat", "dog"]
    assert tokenize("studies glass virus boxes is a") == ["study", "glass", "virus", "boxe"]
    assert tokenize("Café Zürich, 1875; e-mail") == ["café", "zürich", "1875", "e", "mail"]
    assert tokenize("") == []
