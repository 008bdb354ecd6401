"""Principals: who a session reads and writes as. A node is visible iff the principal is admin or
shares a label with the principal's read grants (nodes with no labels: admins only)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    """A reader/writer identity with read and write grants (label sets) and an admin flag."""

    name: str
    read: frozenset[str] = field(default_factory=frozenset)
    write: frozenset[str] = field(default_factory=frozenset)
    admin: bool = False

    def can_write_labels(self, labels: set[str] | frozenset[str]) -> bool:
        return self.admin or labels <= self.write


ADMIN = Principal("admin", admin=True)
