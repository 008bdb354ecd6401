"""Which extractor `ingest()` uses when given none, and the names the benchmark and CLI know them by.

    from knowledge.graphrag import default_extractor, extractor_by_name
    default_extractor()            # SpacyExtractor() when the nlp extra is installed, else RuleExtractor()
    extractor_by_name("rules")     # "default", "spacy", "spacy-svo", "rules", "capitalized", "none"
"""

from __future__ import annotations

import functools
from typing import Any

from knowledge.errors import InvalidArgument
from knowledge.graphrag.extract import CapitalizedExtractor, NoExtractor
from knowledge.graphrag.extract_rules import RuleExtractor

NAMES = ("default", "spacy", "spacy-svo", "rules", "capitalized", "none")


@functools.cache
def default_extractor() -> Any:
    """The extractor used when `ingest()` is given none: spaCy NER (SpacyExtractor) when spaCy and its small
    English model are installed (the nlp extra), else the rule-based RuleExtractor. One instance per
    process (spaCy and its worker processes load once)."""
    from knowledge.graphrag.extract_spacy import SpacyExtractor, spacy_available
    return SpacyExtractor() if spacy_available() else RuleExtractor()


def extractor_by_name(name: str) -> Any:
    """An extractor by its short name (see NAMES). Raises InvalidArgument for another name and
    ExtractorUnavailable when spaCy is asked for but not installed."""
    if name == "default":
        return default_extractor()
    if name in ("spacy", "spacy-svo"):
        from knowledge.graphrag.extract_spacy import SpacyExtractor
        return SpacyExtractor(triples=name == "spacy-svo")
    if name == "rules":
        return RuleExtractor()
    if name == "capitalized":
        return CapitalizedExtractor()
    if name == "none":
        return NoExtractor()
    raise InvalidArgument(f"unknown extractor {name!r}; expected one of {NAMES}")


__all__ = ["NAMES", "default_extractor", "extractor_by_name"]
