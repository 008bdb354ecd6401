"""Entity and relation extraction: the pluggable `Extractor` protocol, what an extractor returns
(`Extraction`: typed entity mentions and weighted relations with their sentence) and the name matcher
used at query time.

An extractor has a `name` (part of a document's content hash) and either
- `extract(chunk_text) -> (names, triples)` (the simple form), or
- `extract_chunks(chunks: Sequence[ChunkInput]) -> list[Extraction]` (batched, sees the document title),
or both; `run_extractor` calls whichever is there.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Triple = tuple[str, str, str]
"""(subject, predicate, object), entity names as written."""

COOCCURS = "co-occurs"
"""The predicate of a relation found by co-occurrence within a sentence (not shown as a fact in contexts)."""
SENTENCE_CHARS_MAX = 400
"""A relation's provenance sentence is cut to this many characters."""


@dataclass(frozen=True)
class ChunkInput:
    """What a batched extractor sees of a chunk: its text and its document's title."""

    text: str
    title: str = ""


@dataclass(frozen=True)
class Mention:
    """An entity found in a chunk: the name as written and its type (e.g. spaCy's 'PERSON', 'TITLE' for
    the document title, None when unknown)."""

    name: str
    type: str | None = None


@dataclass(frozen=True)
class Relation:
    """A (subject, predicate, object) relation between two entity names, with a weight (how many times it
    was seen, for co-occurrence) and the sentence that states it (provenance; None when unknown)."""

    subject: str
    predicate: str
    object: str
    weight: float = 1.0
    sentence: str | None = None


@dataclass
class Extraction:
    """The entities and relations of one chunk."""

    entities: list[Mention] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)

    @classmethod
    def from_simple(cls, names: Iterable[str], triples: Iterable[Sequence[str]] | None) -> Extraction:
        """From the simple form: names and (s, p, o) triples (invalid triples dropped)."""
        return cls([Mention(n) for n in names if isinstance(n, str) and n.strip()],
                   [Relation(s, p, o) for s, p, o in clean_triples(triples)])

NAME_CHARS_MIN = 3
NGRAM_WORDS_MAX = 8
_WORD = re.compile(r"\w+")


@runtime_checkable
class Extractor(Protocol):
    """Finds entity names and (subject, predicate, object) triples in a chunk of text.

    `name` identifies the extractor (it is part of a document's content hash)."""

    name: str

    def extract(self, chunk_text: str) -> tuple[list[str], list[Triple]]:
        ...


class NoExtractor:
    """Extracts nothing: chunks only (vector / keyword retrieval; the graph has no entities)."""

    name = "none"

    def extract(self, chunk_text: str) -> tuple[list[str], list[Triple]]:
        return [], []


def run_extractor(extractor: Any, chunks: Sequence[ChunkInput]) -> list[Extraction]:
    """One Extraction per chunk, in order: `extractor.extract_chunks` when it has one, else `extract` per
    chunk text. Raises InvalidArgument when the extractor returns the wrong number of results."""
    batched = getattr(extractor, "extract_chunks", None)
    if batched is not None:
        out = list(batched(list(chunks)))
        if len(out) != len(chunks):
            from knowledge.errors import InvalidArgument
            raise InvalidArgument(f"extractor {getattr(extractor, 'name', extractor)!r} returned {len(out)} "
                                  f"extractions for {len(chunks)} chunks")
        return out
    results = []
    for chunk in chunks:
        names, triples = extractor.extract(chunk.text)
        results.append(Extraction.from_simple(names, triples))
    return results


def clean_triples(triples: Iterable[Sequence[str]] | None) -> list[Triple]:
    """Keep triples that are three non-empty strings (whitespace stripped); drop the rest."""
    out: list[Triple] = []
    for triple in triples or ():
        if len(triple) == 3 and all(isinstance(t, str) and t.strip() for t in triple):
            out.append((triple[0].strip(), triple[1].strip(), triple[2].strip()))
    return out


def fold(text: str) -> str:
    """Accents removed (NFKD, combining marks dropped): 'Aschenbrödel' -> 'Aschenbrodel'."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def match_key(text: str) -> str:
    """Lower-cased, accent-folded words joined by single spaces: how names and texts are compared."""
    return " ".join(_WORD.findall(fold(text).lower()))


class NameMatcher:
    """Entity names that occur in a text on word boundaries, longest first, contained names dropped.

    A name counts only when its display form looks like a proper noun or a number (has an upper-case
    letter or a digit: 'Publix', '1963', 'Bubye River', not 'state' or 'the waterfall'). Names of several
    words match case-insensitively, accents and punctuation ignored; one-word names must occur with
    their exact case (accents ignored). Names shorter than 3 characters are ignored. Matching hashes the
    text's word n-grams (up to 8 words), so it costs O(words), not O(names).
    """

    def __init__(self, names: Iterable[tuple[str, str]]) -> None:
        """`names`: (entity key, display form) pairs."""
        self._multi: dict[str, list[str]] = {}
        self._single: dict[str, list[str]] = {}
        for key, display in names:
            display = display or key
            if len(display) < NAME_CHARS_MIN or not any(c.isupper() or c.isdigit() for c in display):
                continue
            words = _WORD.findall(fold(display))
            if not words or len(words) > NGRAM_WORDS_MAX:
                continue
            if len(words) == 1:
                self._single.setdefault(words[0], []).append(key)
            else:
                self._multi.setdefault(" ".join(w.lower() for w in words), []).append(key)

    def find(self, text: str) -> list[str]:
        """Keys of the entities named in `text`, longest match first, no name inside a longer match."""
        words = _WORD.findall(fold(text))
        lowered = [w.lower() for w in words]
        spans: list[tuple[int, int, list[str]]] = []
        for start in range(len(words)):
            for length in range(min(NGRAM_WORDS_MAX, len(words) - start), 0, -1):
                if length == 1:
                    keys = self._single.get(words[start])
                else:
                    keys = self._multi.get(" ".join(lowered[start:start + length]))
                if keys:
                    spans.append((start, start + length, keys))
        spans.sort(key=lambda s: (-(s[1] - s[0]), s[0]))
        taken = [False] * len(words)
        found: dict[str, None] = {}
        for start, end, keys in spans:
            if any(taken[start:end]):
                continue
            taken[start:end] = [True] * (end - start)
            for key in keys:
                found.setdefault(key, None)
        return list(found)


_CAP_TOKEN = re.compile(r"[A-Z][\w'’&.-]*|\d{4}")
_CONNECTORS = frozenset({"of", "the", "de", "and", "for", "&"})
_CAP_STOP = frozenset({"The", "A", "An", "In", "On", "At", "It", "He", "She", "They", "We", "I", "This", "That",
                       "These", "Those", "His", "Her", "Its", "Their", "But", "And", "Or", "As", "If", "When",
                       "While", "After", "Before", "For", "From", "By", "With", "To", "Of", "Is", "Was",
                       "There", "Here", "What", "Which", "Who", "How", "Why", "Does", "Did", "Do", "Has",
                       "Have", "Had", "Are", "Were", "Be", "Not", "No", "Yes", "Also", "According", "Both"})


class CapitalizedExtractor:
    """A dependency-free heuristic extractor: runs of capitalised words (and four-digit years) are entity
    names, joined across 'of', 'the', 'de', 'and', 'for'; function words that start a sentence ('The',
    'In', 'He') are not names on their own. No triples: the graph links chunks through shared entities."""

    name = "capitalized-v1"

    def extract(self, chunk_text: str) -> tuple[list[str], list[Triple]]:
        tokens = re.findall(r"[\w'’&.-]+", chunk_text)
        names: dict[str, None] = {}
        run: list[str] = []

        def flush() -> None:
            while run and run[-1] in _CONNECTORS:
                run.pop()
            while run and (run[0] in _CAP_STOP or run[0] in _CONNECTORS):
                run.pop(0)
            if run:
                name = re.sub(r"['’]s$", "", " ".join(run)).strip(".-'’")
                if len(name) >= NAME_CHARS_MIN:
                    names.setdefault(name, None)
            run.clear()

        for token in tokens:
            if _CAP_TOKEN.fullmatch(token):
                run.append(token)
            elif token in _CONNECTORS and run:
                run.append(token)
            else:
                flush()
        flush()
        return list(names), []


__all__ = ["COOCCURS", "CapitalizedExtractor", "ChunkInput", "Extraction", "Extractor", "Mention", "NameMatcher",
           "NoExtractor", "Relation", "Triple", "clean_triples", "fold", "match_key", "run_extractor"]
