"""What kind of question graph mode is answering: polar (yes/no) questions are told apart.

    is_polar("Did the TechCrunch article ..., while The Verge ...?")   # True
    is_polar("Who is the spouse of the director of Jump for Glory?")    # False

A polar question opens with an auxiliary or modal verb ("Did", "Does", "Is", "Were", "Can", ...). Such a
question usually checks a claim about each of the things it names ("Do both articles from Sporting News
...", "Did X report ..., while Y ..."): the evidence for each sits in its own documents, often in another
part of the graph than the other's, so a walk from all the named seeds at once favours the better-connected
one. Graph mode therefore caps the walk's penalty for polar questions (`GraphParams.polar_mass_floor`).
Wh-questions ("Who", "What", "Where", "When", "Which", "How") are not polar; multi-hop questions are almost
always wh-questions (none of MuSiQue's 100 is polar; 194 of MultiHop-RAG's 429 answerable queries are:
all 154 comparison queries and 40 of 114 temporal ones).
"""

from __future__ import annotations

import re

_POLAR = re.compile(r"^\W*(?:did|does|do|is|are|was|were|has|have|had|can|could|will|would|should)\b", re.IGNORECASE)


_TYPE_CUES: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = (
    (frozenset({"GPE", "LOC"}), re.compile(
        r"\b(?:country|countries|state|states|city|cities|town|village|county|province|region|capital|continent|"
        r"nation|birthplace|place|located|born|where)\b", re.IGNORECASE)),
    (frozenset({"PERSON"}), re.compile(
        r"\b(?:who|whom|whose|director|author|performer|singer|composer|father|mother|spouse|wife|husband|"
        r"sibling|son|daughter|founder|president|creator|producer|actor|actress|player|writer|artist|king|"
        r"queen|leader|person|member)\b", re.IGNORECASE)),
    (frozenset({"ORG"}), re.compile(
        r"\b(?:band|company|team|association|organization|organisation|university|college|school|party|"
        r"group|label|club|league|publisher|network|agency)\b", re.IGNORECASE)),
    (frozenset({"WORK_OF_ART"}), re.compile(
        r"\b(?:book|film|movie|album|song|novel|series|show|work|play)\b", re.IGNORECASE)),
)


def expected_types(question: str) -> frozenset[str]:
    """The spaCy entity types of the things a question's relation words ask about: "the country where ..."
    GPE/LOC, "the director of ..." PERSON, "the band that ..." ORG, "the book ..." WORK_OF_ART; the union
    over every cue found (empty when there is none)."""
    out: set[str] = set()
    for types, cue in _TYPE_CUES:
        if cue.search(question):
            out |= types
    return frozenset(out)


def is_polar(question: str) -> bool:
    """Whether `question` is a yes/no question: its first word is an auxiliary or modal verb."""
    return bool(_POLAR.match(question))


__all__ = ["expected_types", "is_polar"]
