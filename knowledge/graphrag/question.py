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


def is_polar(question: str) -> bool:
    """Whether `question` is a yes/no question: its first word is an auxiliary or modal verb."""
    return bool(_POLAR.match(question))


__all__ = ["is_polar"]
