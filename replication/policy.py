"""Commit policies: when a commit may be acknowledged, and which replicas an election must hear.

Text forms (case and spaces ignored), options after commas:
    async                 acknowledged once durable on the primary
    sync(n)               ... and on n replicas
    zones(k)              ... and durable in k distinct zones, the primary's zone counted
    all                   ... and on every member
    zones(2),degrade      on a missed deadline fall back to async (with an event) instead of failing
    sync(1),deadline=250ms   the deadline (ms or s; default 5 s)

The election rule is the other half of a policy: a candidate must hear from enough members that
every set of nodes able to acknowledge a commit contains one of them (the members it did not hear
from can never satisfy the policy on their own). The most advanced of those then holds every
acknowledged write. `async` gives no such guarantee; its elections need a majority.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from knowledge.errors import InvalidCommitPolicy

DEADLINE_MS_DEFAULT = 5_000
KINDS = ("async", "sync", "zones", "all")
_HEAD = re.compile(r"(async|all|sync\((\d+)\)|zones\((\d+)\))")
_DEADLINE = re.compile(r"deadline=(\d+)(ms|s)")


@dataclass(frozen=True, slots=True)
class CommitPolicy:
    """A parsed commit policy. `count` is n for sync(n), k for zones(k), else 0."""

    kind: str
    count: int = 0
    degrade: bool = False
    deadline_ms: int = DEADLINE_MS_DEFAULT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidCommitPolicy(f"unknown commit policy kind {self.kind!r}", policy=self.kind)
        if self.kind in ("sync", "zones") and self.count < 1:
            raise InvalidCommitPolicy(f"{self.kind}(n) needs n >= 1, got {self.count}", policy=str(self))
        if self.deadline_ms < 1:
            raise InvalidCommitPolicy(f"deadline must be >= 1 ms, got {self.deadline_ms}", policy=str(self))

    def __str__(self) -> str:
        head = f"{self.kind}({self.count})" if self.kind in ("sync", "zones") else self.kind
        return head + (",degrade" if self.degrade else "") + f",deadline={self.deadline_ms}ms"

    def satisfied(self, durable: Collection[str], primary: str, zones: Mapping[str, str]) -> bool:
        """Whether a record durable on the nodes `durable` meets this policy under `primary`.

        `zones` maps every member to its zone. The primary must itself hold the record.
        """
        if primary not in durable:
            return False
        if self.kind == "async":
            return True
        if self.kind == "sync":
            return sum(1 for node in durable if node != primary and node in zones) >= self.count
        if self.kind == "zones":
            return len({zones[node] for node in durable if node in zones}) >= self.count
        return all(node in durable for node in zones)

    def election_quorum(self, heard: Collection[str], zones: Mapping[str, str]) -> bool:
        """Whether a candidate that heard from the members `heard` may win an election.

        True when the members not heard from cannot acknowledge a commit by themselves under any
        primary among them, so every acknowledged write is held by someone heard.
        """
        heard_members = {node for node in heard if node in zones}
        if self.kind == "async":
            return 2 * len(heard_members) > len(zones)
        silent = [node for node in zones if node not in heard_members]
        return not any(self.satisfied(silent, primary, zones) for primary in silent)

    def check_members(self, zones: Mapping[str, str]) -> None:
        """Raise InvalidCommitPolicy when the members in `zones` could never meet this policy."""
        if self.kind == "sync" and self.count > len(zones) - 1:
            raise InvalidCommitPolicy(f"{self} needs {self.count} replicas but the cluster has "
                                      f"{len(zones) - 1}", policy=str(self))
        if self.kind == "zones" and self.count > len(set(zones.values())):
            raise InvalidCommitPolicy(f"{self} needs {self.count} zones but the members span "
                                      f"{len(set(zones.values()))}", policy=str(self))


def parse_policy(text: str) -> CommitPolicy:
    """Parse a commit policy such as "sync(1)", "zones(2),degrade" or "all,deadline=2s".

    Raises InvalidCommitPolicy naming the text and the part that is wrong.
    """
    if not isinstance(text, str):
        raise InvalidCommitPolicy(f"commit policy must be text, got {type(text).__name__}")
    parts = [part for part in text.replace(" ", "").lower().split(",")]
    head = _HEAD.fullmatch(parts[0]) if parts else None
    if head is None:
        raise InvalidCommitPolicy(f"commit policy {text!r}: expected async, sync(n), zones(k) or all "
                                  f"first, got {parts[0]!r}", policy=text)
    kind = head.group(1).split("(")[0]
    count = int(head.group(2) or head.group(3) or 0)
    degrade, deadline_ms = False, DEADLINE_MS_DEFAULT
    seen: set[str] = set()
    for option in parts[1:]:
        deadline = _DEADLINE.fullmatch(option)
        name = "deadline" if deadline else option
        if name in seen:
            raise InvalidCommitPolicy(f"commit policy {text!r}: option {name!r} given twice", policy=text)
        seen.add(name)
        if option == "degrade":
            degrade = True
        elif deadline:
            deadline_ms = int(deadline.group(1)) * (1000 if deadline.group(2) == "s" else 1)
        else:
            raise InvalidCommitPolicy(f"commit policy {text!r}: unknown option {option!r} (expected "
                                      f"degrade or deadline=<n>ms|s)", policy=text)
    if kind == "async" and degrade:
        raise InvalidCommitPolicy(f"commit policy {text!r}: async cannot degrade further", policy=text)
    try:
        return CommitPolicy(kind, count, degrade, deadline_ms)
    except InvalidCommitPolicy as exc:
        raise InvalidCommitPolicy(f"commit policy {text!r}: {exc}", policy=text) from exc
