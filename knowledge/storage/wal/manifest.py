"""The WAL manifest: a durable record of which segments the log holds, so that a missing segment or a
segment shorter than it was sealed is found on open instead of being read as a shorter log.

`wal/MANIFEST` (JSON) lists the log's retained start LSN and every segment's first LSN, with the last
LSN of each sealed segment (the live one has none, unless the log was closed cleanly). It is rewritten
(temp file, fsync, rename, fsync of the directory) only when a segment is created, sealed by a roll,
dropped by retention, or at open and close: never per commit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from knowledge.errors import CorruptionError

MANIFEST_NAME = "MANIFEST"
FORMAT_VERSION = 1


@dataclass(slots=True)
class SegmentEntry:
    """One segment as the manifest knows it: its first LSN, and its last once sealed (or closed)."""

    first_lsn: int
    last_lsn: int | None = None


@dataclass(slots=True)
class Manifest:
    """What the log holds: segments from `start_lsn` on, oldest first."""

    start_lsn: int = 1
    segments: list[SegmentEntry] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"format": "knowledge-wal-manifest", "version": FORMAT_VERSION,
                           "start_lsn": self.start_lsn,
                           "segments": [[s.first_lsn, s.last_lsn] for s in self.segments]})

    @classmethod
    def from_json(cls, text: str, path: str) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != "knowledge-wal-manifest" or data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unknown manifest format {data.get('format')!r} v{data.get('version')!r}")
            segments = [SegmentEntry(int(first), None if last is None else int(last))
                        for first, last in data["segments"]]
            return cls(int(data["start_lsn"]), segments)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptionError(f"WAL manifest {path} is unreadable: {exc}; restore from a backup or open "
                                  f"with allow_data_loss=True to rebuild it from the segments",
                                  segment=MANIFEST_NAME, offset=0) from exc

    def entry(self, first_lsn: int) -> SegmentEntry | None:
        for entry in self.segments:
            if entry.first_lsn == first_lsn:
                return entry
        return None


def manifest_path(directory: str) -> str:
    return os.path.join(directory, MANIFEST_NAME)


def read_manifest(directory: str) -> Manifest | None:
    """The manifest in `directory`, or None where the log has none yet (a new or older store)."""
    path = manifest_path(directory)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    return Manifest.from_json(text, path)


def write_manifest(directory: str, manifest: Manifest, *, fsync: bool = True) -> None:
    """Replace the manifest atomically (and durably when `fsync`)."""
    path = manifest_path(directory)
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(temporary, path)
    if fsync:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
