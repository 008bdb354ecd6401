"""Opening the log: the segments on disk checked against the manifest, torn tails truncated and
reported, and any missing or shortened stretch of the log refused (or, when the operator allows
data loss, set aside in wal/quarantine/ and reported) instead of being read as a shorter log."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from dataclasses import dataclass, field

from knowledge.errors import CorruptionError
from knowledge.storage import crypto
from knowledge.storage.wal import record as frames
from knowledge.storage.wal.manifest import Manifest, SegmentEntry, read_manifest, write_manifest
from knowledge.storage.wal.scan import Segment, list_segments, scan_segment
from knowledge.storage.wal.segments import segment_name

log = logging.getLogger("knowledge.wal")
QUARANTINE_DIR = "quarantine"  # segments set aside by an open with allow_data_loss=True


@dataclass(slots=True)
class RecoveryReport:
    """What opening the log dropped: torn tails truncated and LSN ranges found missing."""

    truncated_count: int = 0
    truncated_bytes: int = 0
    truncated_lsn_ranges: list[list[int]] = field(default_factory=list)
    lsn_ranges_lost: list[list[int | None]] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"truncated": {"count": self.truncated_count, "bytes": self.truncated_bytes,
                              "lsn_ranges": [list(r) for r in self.truncated_lsn_ranges]},
                "lsn_ranges_lost": [list(r) for r in self.lsn_ranges_lost],
                "quarantined": list(self.quarantined)}


@dataclass(frozen=True, slots=True)
class Loss:
    """A stretch of the log that should be there and is not."""

    first_lsn: int
    last_lsn: int | None  # None: to the end of the log
    segment: str
    reason: str
    offset: int | None = None  # where in the segment its records stop

    def describe(self) -> str:
        last = "the end of the log" if self.last_lsn is None else str(self.last_lsn)
        return f"WAL segment {self.segment} {self.reason}: records LSN {self.first_lsn}..{last} are lost"


@dataclass(slots=True)
class RecoveredLog:
    """The log as opened: segments kept, its last record, the live segment's valid bytes."""

    segments: list[Segment]
    last_lsn: int
    last_epoch: int
    live_bytes: int
    report: RecoveryReport


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` is the file system running out of space (or quota)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(slots=True)
class _Scanned:
    segment: Segment
    valid_bytes: int
    size: int
    last_lsn: int  # first_lsn - 1 when the segment holds no record
    last_epoch: int
    tail: bytes  # the bytes past the valid prefix


def recover_log(directory: str, *, allow_data_loss: bool = False, fsync: bool = True,
                keyring: crypto.Keyring | None = None) -> RecoveredLog:
    """Check and open the log in `directory`; raise CorruptionError on a loss unless `allow_data_loss`.
    A segment under a key the keyring lacks (or any encrypted one without a keyring) raises
    EncryptionKeyMissing / EncryptionKeyWrong before anything in the directory is changed."""
    crypto.check_files([seg.path for seg in list_segments(directory)], keyring)
    manifest = read_manifest(directory)
    segments = _drop_retired(list_segments(directory), manifest)
    losses = _missing_segments(segments, manifest)
    scanned = [_scan(seg, keyring) for seg in segments]
    losses += _short_or_gapped(scanned, manifest)
    losses.sort(key=lambda loss: loss.first_lsn)
    report = RecoveryReport()
    if losses:
        if not allow_data_loss:
            first = losses[0]
            raise CorruptionError(
                f"{first.describe()}; restore from a backup, rebuild with `knowledge recover`, or open with "
                f"allow_data_loss=True to keep the records before LSN {first.first_lsn}",
                segment=first.segment, offset=first.offset, lsn_range=(first.first_lsn, first.last_lsn))
        scanned = _quarantine_after(directory, scanned, losses[0].first_lsn, report)
        for loss in losses:
            log.warning("%s (opened with allow_data_loss=True)", loss.describe())
            report.lsn_ranges_lost.append([loss.first_lsn, loss.last_lsn])
    live_bytes = _truncate_tail(scanned[-1], report, fsync) if scanned else 0
    start_lsn = manifest.start_lsn if manifest is not None else (segments[0].first_lsn if segments else 1)
    if scanned:
        start_lsn = min(start_lsn, scanned[0].segment.first_lsn)
    _write_if_changed(directory, manifest, start_lsn, scanned, fsync=fsync)
    if scanned:
        last = scanned[-1]
        last_epoch = next((s.last_epoch for s in reversed(scanned) if s.last_epoch), 0)
        return RecoveredLog([s.segment for s in scanned], last.last_lsn, last_epoch, live_bytes, report)
    return RecoveredLog([], start_lsn - 1, 0, 0, report)


def _drop_retired(segments: list[Segment], manifest: Manifest | None) -> list[Segment]:
    """Remove segments a retention pass retired (the manifest moved past them) but did not unlink."""
    if manifest is None:
        return segments
    kept = []
    for index, seg in enumerate(segments):
        next_first = segments[index + 1].first_lsn if index + 1 < len(segments) else None
        if next_first is not None and next_first <= manifest.start_lsn and manifest.entry(seg.first_lsn) is None:
            os.unlink(seg.path)
            continue
        kept.append(seg)
    return kept


def _missing_segments(segments: list[Segment], manifest: Manifest | None) -> list[Loss]:
    if manifest is None:
        return []
    on_disk = {seg.first_lsn for seg in segments}
    losses = []
    for index, entry in enumerate(manifest.segments):
        if entry.first_lsn in on_disk or entry.first_lsn < manifest.start_lsn:
            continue
        following = manifest.segments[index + 1].first_lsn - 1 if index + 1 < len(manifest.segments) else None
        last = entry.last_lsn if entry.last_lsn is not None else following
        losses.append(Loss(entry.first_lsn, last, segment_name(entry.first_lsn), "is missing"))
    return losses


def _scan(segment: Segment, keyring: crypto.Keyring | None) -> _Scanned:
    # damage at a file's end is judged below
    records, valid_bytes = scan_segment(segment, is_last=True, keyring=keyring)
    with open(segment.path, "rb") as f:
        f.seek(valid_bytes)
        tail = f.read()
    last_lsn = records[-1][1].lsn if records else segment.first_lsn - 1
    last_epoch = records[-1][1].epoch if records else 0
    return _Scanned(segment, valid_bytes, valid_bytes + len(tail), last_lsn, last_epoch, tail)


def _short_or_gapped(scanned: list[_Scanned], manifest: Manifest | None) -> list[Loss]:
    """Segments that end before the next begins, or before the LSN they were sealed (or closed) at."""
    losses = []
    known_missing = set() if manifest is None else {e.first_lsn for e in manifest.segments}
    for index, item in enumerate(scanned):
        name = os.path.basename(item.segment.path)
        entry = manifest.entry(item.segment.first_lsn) if manifest is not None else None
        if index + 1 < len(scanned):
            next_first = scanned[index + 1].segment.first_lsn
            sealed_last = next_first - 1
            if manifest is not None:  # a manifest-listed segment in between is reported as missing
                listed = [f for f in known_missing if item.segment.first_lsn < f < next_first]
                if listed:
                    sealed_last = min(listed) - 1
            if item.last_lsn < sealed_last:
                reason = "is shorter than when it was sealed" if item.tail or entry else "is followed by a gap"
                losses.append(Loss(item.last_lsn + 1, sealed_last, name, reason, item.valid_bytes))
        elif entry is not None and entry.last_lsn is not None and item.last_lsn < entry.last_lsn:
            losses.append(Loss(item.last_lsn + 1, entry.last_lsn, name, "is shorter than when it was sealed",
                               item.valid_bytes))
    return losses


def _quarantine_after(directory: str, scanned: list[_Scanned], cut_lsn: int,
                      report: RecoveryReport) -> list[_Scanned]:
    """Move the segments from the first lost LSN on into wal/quarantine/; keep the prefix."""
    kept = [s for s in scanned if s.segment.first_lsn < cut_lsn]
    report.quarantined += set_aside(directory, [s.segment for s in scanned if s.segment.first_lsn >= cut_lsn])
    return kept


def set_aside(directory: str, segments: list[Segment]) -> list[str]:
    """Move `segments` into wal/quarantine/ (kept for the operator, never read again); their names."""
    names = []
    if segments:
        target = os.path.join(directory, QUARANTINE_DIR)
        os.makedirs(target, exist_ok=True)
        for seg in segments:
            name = os.path.basename(seg.path)
            shutil.move(seg.path, os.path.join(target, name))
            names.append(name)
            log.warning("WAL segment %s moved to %s: the records it holds are not read again", name, target)
    return names


def _truncate_tail(item: _Scanned, report: RecoveryReport, fsync: bool) -> int:
    """Cut the live segment back to its valid prefix, reporting any data (not zeros) dropped."""
    if item.size == item.valid_bytes:
        return item.valid_bytes
    with open(item.segment.path, "r+b") as f:
        f.truncate(item.valid_bytes)
        if fsync:
            os.fsync(f.fileno())
    name = os.path.basename(item.segment.path)
    if item.valid_bytes == 0 and crypto.is_encrypted(item.tail):  # no record was ever written after it
        log.info("WAL segment %s: cut a segment header that was never completed (%d bytes)", name, len(item.tail))
    elif item.tail.strip(b"\x00"):
        magic = frames.HEADER.pack(frames.MAGIC, 0, 0, 0, 0)[:4]
        frames_dropped = max(1, item.tail.count(magic))
        first, last = item.last_lsn + 1, item.last_lsn + frames_dropped
        report.truncated_count += 1
        report.truncated_bytes += len(item.tail)
        report.truncated_lsn_ranges.append([first, last])
        log.warning("WAL segment %s: truncated a torn tail of %d bytes at offset %d (LSN %d..%d dropped)",
                    name, len(item.tail), item.valid_bytes, first, last)
    else:
        log.info("WAL segment %s: cut %d preallocated zero bytes", name, len(item.tail))
    return item.valid_bytes


def _write_if_changed(directory: str, manifest: Manifest | None, start_lsn: int, scanned: list[_Scanned],
                      *, fsync: bool) -> None:
    entries = [SegmentEntry(item.segment.first_lsn,
                            scanned[index + 1].segment.first_lsn - 1 if index + 1 < len(scanned) else None)
               for index, item in enumerate(scanned)]
    fresh = Manifest(start_lsn, entries)
    if manifest is None or fresh.to_json() != manifest.to_json():
        write_manifest(directory, fresh, fsync=fsync)
