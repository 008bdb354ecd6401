"""Segment file names: fixed-width hex of the first LSN a segment holds, made and parsed here only."""

from __future__ import annotations

import re

_NAME = re.compile(r"([0-9a-f]{16})\.wal")


def segment_name(first_lsn: int) -> str:
    """The file name of the segment whose first record has `first_lsn`."""
    if first_lsn < 1:
        raise ValueError(f"segment first LSN must be >= 1, got {first_lsn}")
    return f"{first_lsn:016x}.wal"


def parse_segment_name(name: str) -> int | None:
    """The first LSN encoded in `name`, or None when `name` is not a segment file."""
    match = _NAME.fullmatch(name)
    if not match:
        return None
    first = int(match.group(1), 16)
    return first if first >= 1 else None
