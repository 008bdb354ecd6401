"""Keyword text: the default tokenizer of the keyword index, its limits and its error type."""

from __future__ import annotations

import re

K_MAX = 1_000_000
"""Largest `k` accepted by `KeywordIndex.search`."""

DOC_ID_MAX = 2**31 - 1
"""Largest document id accepted (ids are stored as int32 in postings)."""

# Lucene's classic English stop set (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET).
STOPWORDS: frozenset[str] = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with".split()
)

_WORD = re.compile(r"\w+")
_TOKEN_CACHE: dict[str, str] = {}  # word -> token ("" for a stopword); a pure function's memo
_TOKEN_CACHE_MAX = 500_000

class KeywordIndexError(ValueError):
    """Bad input to the keyword index (arguments, ids, texts, masks, snapshot bytes)."""


def _stem(word: str) -> str:
    """Harman's 'S' stemmer (plural stripping), applied to words longer than three characters."""
    if len(word) <= 3 or word[-1] != "s":
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith(("us", "ss")):
        return word
    return word[:-1]


def _normalize(word: str) -> str:
    """A lowercased word -> its token, or "" for a stopword."""
    return "" if word in STOPWORDS else _stem(word)


def tokenize(text: str) -> list[str]:
    """Default tokenizer: lowercase, runs of Unicode word characters (``\\w+``), Lucene's English
    stopwords dropped, plurals stripped with Harman's S stemmer ("studies" -> "study",
    "cats" -> "cat"; "glass", "virus" kept). Deterministic and locale-independent."""
    cache = _TOKEN_CACHE
    if len(cache) > _TOKEN_CACHE_MAX:
        cache.clear()
    out = []
    for word in _WORD.findall(text.lower()):
        token = cache.get(word)
        if token is None:
            token = cache[word] = _normalize(word)
        if token:
            out.append(token)
    return out
