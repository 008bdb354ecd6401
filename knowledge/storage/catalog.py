"""The principal catalog: principals, their grants and hashed tokens, replicated as WAL META records.

Each change is a META op named `principal:<name>` whose document is the principal's complete new
state (or {"dropped": true}); applying it is idempotent. Tokens are shown once at issue time and
stored only as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from typing import Any

from knowledge.access.principal import Principal
from knowledge.errors import InvalidArgument, PermissionDenied
from knowledge.storage.schema import NAME_PATTERN

PREFIX = "principal:"
TOKEN_PREFIX = "kn_"
TOKENS_PER_PRINCIPAL_MAX = 16


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_labels(kind: str, labels: Iterable[str]) -> list[str]:
    """`labels` sorted and deduplicated; InvalidArgument unless it is a list of non-empty str."""
    if isinstance(labels, str | bytes) or not isinstance(labels, Iterable):
        raise InvalidArgument(f"{kind} grants must be a list of labels, got {type(labels).__name__} {labels!r}")
    labels = list(labels)  # read once: a generator would be empty on the second pass
    if not all(isinstance(label, str) for label in labels):
        bad = next(label for label in labels if not isinstance(label, str))
        raise InvalidArgument(f"{kind} label {bad!r} must be a non-empty str of at most 256 characters")
    out = sorted(set(labels))
    for label in out:
        if not isinstance(label, str) or not label or len(label) > 256:
            raise InvalidArgument(f"{kind} label {label!r} must be a non-empty str of at most 256 characters")
    return out


class Catalog:
    """In-memory view of the principals; `document_*` build the META documents, `apply` applies one."""

    def __init__(self) -> None:
        self.principals: dict[str, Principal] = {}
        self.token_hashes: dict[str, list[str]] = {}
        self._by_digest: dict[str, str] = {}

    # -- documents (what a change will write) -------------------------------------------------
    def _document(self, principal: Principal, hashes: list[str]) -> dict[str, Any]:
        return {"name": principal.name, "read": sorted(principal.read), "write": sorted(principal.write),
                "admin": principal.admin, "tokens": hashes}

    def document_create(self, name: str, read: Iterable[str], write: Iterable[str], admin: bool) -> dict[str, Any]:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise InvalidArgument(f"principal name {name!r} must match {NAME_PATTERN.pattern}")
        if name in self.principals:
            raise InvalidArgument(f"principal {name!r} already exists")
        principal = Principal(name, frozenset(check_labels("read", read)), frozenset(check_labels("write", write)),
                              bool(admin))
        return self._document(principal, [])

    def document_grants(self, name: str, *, add_read: Iterable[str] = (), add_write: Iterable[str] = (),
                        remove_read: Iterable[str] = (), remove_write: Iterable[str] = (),
                        admin: bool | None = None) -> dict[str, Any]:
        current = self.get(name)
        read = (current.read | set(check_labels("read", add_read))) - set(remove_read)
        write = (current.write | set(check_labels("write", add_write))) - set(remove_write)
        principal = Principal(name, frozenset(read), frozenset(write), current.admin if admin is None else admin)
        return self._document(principal, self.token_hashes.get(name, []))

    def document_token(self, name: str) -> tuple[str, dict[str, Any]]:
        principal = self.get(name)
        hashes = self.token_hashes.get(name, [])
        if len(hashes) >= TOKENS_PER_PRINCIPAL_MAX:
            raise InvalidArgument(f"principal {name!r} already has {TOKENS_PER_PRINCIPAL_MAX} tokens; revoke one")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        return token, self._document(principal, [*hashes, token_digest(token)])

    def document_revoke_tokens(self, name: str) -> dict[str, Any]:
        return self._document(self.get(name), [])

    def document_drop(self, name: str) -> dict[str, Any]:
        self.get(name)
        return {"name": name, "dropped": True}

    # -- state ----------------------------------------------------------------------------------
    def apply(self, document: dict[str, Any]) -> None:
        name = document["name"]
        for digest in self.token_hashes.pop(name, []):
            self._by_digest.pop(digest, None)
        self.principals.pop(name, None)
        if document.get("dropped"):
            return
        self.principals[name] = Principal(name, frozenset(document["read"]), frozenset(document["write"]),
                                          bool(document["admin"]))
        self.token_hashes[name] = list(document["tokens"])
        for digest in document["tokens"]:
            self._by_digest[digest] = name

    def get(self, name: str) -> Principal:
        principal = self.principals.get(name)
        if principal is None:
            raise InvalidArgument(f"no principal named {name!r}")
        return principal

    def authenticate(self, token: str) -> Principal:
        """The principal holding `token`; PermissionDenied for an unknown or revoked token."""
        name = self._by_digest.get(token_digest(token)) if isinstance(token, str) else None
        if name is None:
            raise PermissionDenied("unknown or revoked token")
        return self.principals[name]
