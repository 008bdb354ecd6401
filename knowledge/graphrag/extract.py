"""Entity and relation extraction: the pluggable `Extractor` protocol and the name matcher used at query time."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

Triple = tuple[str, str, str]
"""(subject, predicate, object), entity names as written."""

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


__all__ = ["CapitalizedExtractor", "Extractor", "NameMatcher", "NoExtractor", "Triple", "clean_triples", "fold",
           "match_key"]
