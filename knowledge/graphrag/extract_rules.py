"""The dependency-free default extractor (`RuleExtractor`) and the sentence splitter extractors share.

    from knowledge.graphrag import RuleExtractor, ingest
    ingest(session, docs, embedder=embedder, extractor=RuleExtractor())

Entities are runs of capitalised words (and numbers), found within one sentence, never across a
sentence end ("Hell. Neither" is two sentences), split at commas, semicolons, brackets and "and"/"or"
("Scarlett Johansson, Michael Caine and Christian Bale" is three names), joined across "of", "the",
"de", "von", ...; a capitalised word that opens a sentence is dropped when its lower-case form also
occurs in the chunk ("Later" vs "later") or it is a function word. The document title is always an
entity of every chunk (type "TITLE"). Relations: every pair of entities named in one sentence is a
co-occurrence relation (predicate `COOCCURS`, weight 1 per sentence, the sentence as provenance); the
title counts as named in a sentence that writes it out.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence

from knowledge.graphrag.extract import (
    COOCCURS,
    NAME_CHARS_MIN,
    SENTENCE_CHARS_MAX,
    ChunkInput,
    Extraction,
    Mention,
    Relation,
    Triple,
    match_key,
)

TITLE_TYPE = "TITLE"
ENTITIES_PER_SENTENCE_MAX = 12
"""Co-occurrence pairs are formed among at most this many entities of a sentence (the first ones)."""
WORDS_PER_NAME_MAX = 8

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr inc ltd co corp no vs etc gen col lt sgt capt rev hon fig vol ed eds jan feb "
    "mar apr jun jul aug sep sept oct nov dec mt ft ave blvd approx dept est govt univ bros".split())
_SENTENCE_CUT = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])|\n\s*\n|\n(?=[A-Z0-9#*-])")
_TOKEN = re.compile(r"[^\W_][\w'’&.\-]*|[,;:()\[\]{}\"“”/!?]|\s[-–—]\s")
_CONNECTORS = frozenset({"of", "the", "de", "del", "della", "da", "di", "do", "dos", "du", "des", "la", "le",
                         "van", "von", "der", "den", "y", "al", "bin", "ibn", "upon", "on", "for", "&"})
_FUNCTION = frozenset(
    "the a an in on at it he she they we i you this that these those his her its their our my your but and "
    "or as if when while after before for from by with to of is was are were be been not no yes also "
    "according both there here what which who whom whose how why where does did do has have had during "
    "since until unlike like although though however however, then thus so some many most one two each "
    "every all any another other such upon into onto over under between among following later today "
    "despite because once often usually neither either nor none instead meanwhile therefore whereas yet "
    "still soon eventually finally originally currently formerly subsequently additionally moreover "
    "furthermore born located known based many several nothing something everything anything everyone "
    "someone nobody".split())
_MONTHS = frozenset("january february march april may june july august september october november "
                    "december".split())
_NUMBER = re.compile(r"\d{4}|\d{1,3}(?:[.,]\d+)*(?:st|nd|rd|th)?")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text`: cut after '.', '!' or '?' followed by
    space and a capital letter or digit (not after an abbreviation such as 'Dr.' or an initial such as
    'J.'), and at blank lines. Spans cover the text without leading/trailing whitespace."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_CUT.finditer(text):
        end = match.end()
        stop = match.start()
        word = re.search(r"(\w+)\W*$", text[start:stop + 1]) if text[stop:stop + 1] == "." else None
        if word is not None:
            token = word.group(1)
            if (len(token) == 1 and token.isupper()) or token.lower() in _ABBREVIATIONS:
                continue
        _add_span(spans, text, start, end)
        start = end
    _add_span(spans, text, start, len(text))
    return spans


def _add_span(spans: list[tuple[int, int]], text: str, start: int, end: int) -> None:
    piece = text[start:end]
    left = len(piece) - len(piece.lstrip())
    right = len(piece.rstrip())
    if right > left:
        spans.append((start + left, start + right))


def split_sentences(text: str) -> list[str]:
    """The sentences of `text` (see `sentence_spans`)."""
    return [text[s:e] for s, e in sentence_spans(text)]


def _clean_name(words: list[str]) -> str | None:
    while words and words[-1].lower() in _CONNECTORS:
        words.pop()
    while words and (words[0].lower() in _CONNECTORS or words[0].lower() in _FUNCTION
                     or (words[0].lower() in _MONTHS and len(words) > 1)):
        words.pop(0)
    if not words or len(words) > WORDS_PER_NAME_MAX:
        return None
    name = re.sub(r"['’]s$", "", " ".join(words)).strip(".-'’&")
    if len(name) < NAME_CHARS_MIN or not any(c.isupper() or c.isdigit() for c in name):
        return None
    if name.lower() in _MONTHS or name.lower() in _FUNCTION:
        return None
    return name


def sentence_names(sentence: str, lower_words: frozenset[str] = frozenset()) -> list[str]:
    """Entity names in one sentence, in order of first occurrence (see the module docstring)."""
    names: dict[str, None] = {}
    run: list[str] = []
    first = True

    def flush() -> None:
        if run:
            name = _clean_name(run[:])
            if name is not None:
                names.setdefault(name, None)
            run.clear()

    for token in _TOKEN.findall(sentence):
        token = token.strip()
        if not token or not (token[0].isalnum()):
            flush()
            first = False
            continue
        word = token.rstrip(".") if not re.fullmatch(r"(?:[A-Z]\.)+", token) else token
        capital = word[:1].isupper()
        if capital and first and (word.lower() in _FUNCTION or word.lower() in lower_words):
            first = False
            continue
        first = False
        if capital or (_NUMBER.fullmatch(word) and (run or len(word) == 4)):
            run.append(word)
        elif word.lower() in _CONNECTORS and run:
            run.append(word)
        else:
            flush()
    flush()
    return list(names)


def cooccurrence(names: Sequence[str], sentence: str) -> Iterator[Relation]:
    """One COOCCURS relation per pair of distinct names (the first ENTITIES_PER_SENTENCE_MAX), with the
    sentence as provenance."""
    shown = sentence[:SENTENCE_CHARS_MAX]
    for a, b in itertools.combinations(list(dict.fromkeys(names))[:ENTITIES_PER_SENTENCE_MAX], 2):
        yield Relation(a, COOCCURS, b, 1.0, shown)


def title_in(title_key: str, sentence: str) -> bool:
    """Whether a sentence writes out the title (match_key comparison on word boundaries)."""
    return bool(title_key) and f" {title_key} " in f" {match_key(sentence)} "


class RuleExtractor:
    """Capitalised-phrase entities per sentence, the title as an entity, sentence co-occurrence relations
    (see the module docstring). Pure Python, no model: about 2,000 passages/s on one core."""

    name = "rules-v1"

    def __init__(self, *, title_entity: bool = True, relations: bool = True) -> None:
        self.title_entity = title_entity
        self.relations = relations
        self.name = f"rules-v1:{int(title_entity)}{int(relations)}"

    def extract(self, chunk_text: str) -> tuple[list[str], list[Triple]]:
        found = self.extract_chunks([ChunkInput(chunk_text)])[0]
        return [m.name for m in found.entities], [(r.subject, r.predicate, r.object) for r in found.relations]

    def extract_chunks(self, chunks: Sequence[ChunkInput]) -> list[Extraction]:
        return [self._one(chunk) for chunk in chunks]

    def _one(self, chunk: ChunkInput) -> Extraction:
        text = chunk.text
        lower_words = frozenset(re.findall(r"\b[a-z][a-z'’-]*\b", text))
        title = chunk.title.strip() if self.title_entity else ""
        title_key = match_key(title)
        out = Extraction()
        seen: dict[str, None] = {}
        if title and len(title) >= NAME_CHARS_MIN:
            out.entities.append(Mention(title, TITLE_TYPE))
            seen[title_key] = None
        for start, end in sentence_spans(text):
            sentence = text[start:end]
            names = sentence_names(sentence, lower_words)
            if title_key and title_in(title_key, sentence) and title not in names:
                names = [title, *(n for n in names if match_key(n) != title_key)]
            for name in names:
                key = match_key(name)
                if key and key not in seen:
                    seen[key] = None
                    out.entities.append(Mention(name, None))
            if self.relations:
                out.relations.extend(cooccurrence(names, sentence))
        return out


__all__ = ["ENTITIES_PER_SENTENCE_MAX", "TITLE_TYPE", "RuleExtractor", "cooccurrence", "sentence_names",
           "sentence_spans", "split_sentences", "title_in"]
