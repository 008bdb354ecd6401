"""Splitting documents into chunks, and the approximate token count used for budgets.

Tokens are counted approximately as ceil(whitespace-separated words * 1.3) (`approx_tokens`): close to
what BPE/WordPiece tokenizers give for English prose, with no tokenizer dependency.
"""

from __future__ import annotations

import math
import re
from typing import Protocol, runtime_checkable

TOKENS_PER_WORD = 1.3
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def approx_tokens(text: str) -> int:
    """Approximate token count: ceil(words * 1.3), words split on whitespace (0 for blank text)."""
    words = len(text.split())
    return math.ceil(words * TOKENS_PER_WORD) if words else 0


@runtime_checkable
class Splitter(Protocol):
    """Turns a document's text into chunk texts, in order. `fingerprint` names the configuration (it is
    part of a document's content hash, so changing the splitter re-chunks documents on re-ingest)."""

    fingerprint: str

    def split(self, text: str) -> list[str]:
        ...


class SentenceSplitter:
    """Paragraphs, then sentences, packed greedily into chunks of at most `max_tokens` (approximate),
    with about `overlap_tokens` of trailing sentences repeated at the start of the next chunk.

    Guarantees: a text of at most `max_tokens` is one chunk, unchanged (so precomputed vectors match); no chunk is
    empty; a single sentence longer than the limit is cut on word boundaries. Blank text gives no chunk.
    """

    def __init__(self, max_tokens: int = 256, overlap_tokens: int = 32) -> None:
        if max_tokens < 8:
            raise ValueError(f"max_tokens must be >= 8, got {max_tokens}")
        if not 0 <= overlap_tokens < max_tokens // 2:
            raise ValueError(f"overlap_tokens must be in 0..{max_tokens // 2 - 1}, got {overlap_tokens}")
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.fingerprint = f"sentences:{max_tokens}:{overlap_tokens}"

    def split(self, text: str) -> list[str]:
        stripped = text.strip()
        if not stripped:
            return []
        if approx_tokens(stripped) <= self.max_tokens:
            return [text]
        units: list[str] = []
        for paragraph in re.split(r"\n\s*\n", stripped):
            for sentence in _SENTENCE_END.split(paragraph.strip()):
                units.extend(self._cut(sentence.strip()))
        return self._pack([u for u in units if u])

    def _cut(self, sentence: str) -> list[str]:
        if approx_tokens(sentence) <= self.max_tokens:
            return [sentence]
        words = sentence.split()
        step = max(1, int(self.max_tokens / TOKENS_PER_WORD))
        return [" ".join(words[i:i + step]) for i in range(0, len(words), step)]

    def _pack(self, units: list[str]) -> list[str]:
        chunks: list[str] = []
        current: list[str] = []
        size = 0
        for unit in units:
            cost = approx_tokens(unit)
            if current and size + cost > self.max_tokens:
                chunks.append(" ".join(current))
                current, size = self._overlap(current, cost)
            current.append(unit)
            size += cost
        if current:
            chunks.append(" ".join(current))
        return chunks

    def _overlap(self, previous: list[str], incoming: int) -> tuple[list[str], int]:
        kept: list[str] = []
        size = 0
        for unit in reversed(previous):
            cost = approx_tokens(unit)
            if size + cost > self.overlap_tokens or size + cost + incoming > self.max_tokens:
                break
            kept.insert(0, unit)
            size += cost
        return kept, size


__all__ = ["TOKENS_PER_WORD", "SentenceSplitter", "Splitter", "approx_tokens"]
