"""Every failure the store reports: one exception class per failure, all under KnowledgeError.

Each carries structured fields (operation, path, position, row, field) so callers and the
server can map them without parsing messages. Programmer bugs go through invariant(), which
raises InvariantViolation and, unlike `assert`, survives `python -O`.
"""

from __future__ import annotations

from typing import Any


class KnowledgeError(Exception):
    """Root of every error raised by knowledge."""


class StoreClosed(KnowledgeError):
    """The store (or session) was used after close()."""


class StoreLocked(KnowledgeError):
    """Another process holds the store directory."""

    def __init__(self, path: str, holder_pid: int | None) -> None:
        self.path = path
        self.holder_pid = holder_pid
        who = f"process {holder_pid}" if holder_pid else "another process"
        super().__init__(f"store {path!r} is locked by {who}; one process owns a store directory "
                         f"(use the server for shared access)")


class StoreNotFound(KnowledgeError):
    """open() was pointed at a directory that holds no store (and create=False)."""


class NotADirectory(StoreNotFound):
    """open() was pointed at a path that exists and is not a directory (a file): a store is a directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"{path!r} is not a directory; a store is a directory: pass a new path or an "
                         f"existing store directory")


class StorePoisoned(KnowledgeError):
    """A write failed after its WAL record was durable; the store must be reopened to recover."""


class CorruptionError(KnowledgeError):
    """A WAL record before the tail, a missing or shortened segment, or a damaged data file: the store
    refuses to open (unless opened with allow_data_loss=True) and names the file, offset and LSNs."""

    def __init__(self, message: str, *, segment: str | None = None, offset: int | None = None,
                 lsn: int | None = None, lsn_range: tuple[int, int | None] | None = None) -> None:
        self.segment = segment
        self.offset = offset
        self.lsn_range = lsn_range
        self.lsn = lsn if lsn is not None else (lsn_range[0] if lsn_range is not None else None)
        parts = []
        if segment is not None:
            parts.append(f"segment {segment}")
        if offset is not None:
            parts.append(f"offset {offset}")
        if lsn_range is not None:
            last = "end" if lsn_range[1] is None else lsn_range[1]
            parts.append(f"LSN {lsn_range[0]}..{last}")
        elif self.lsn is not None:
            parts.append(f"LSN {self.lsn}")
        where = f" ({', '.join(parts)})" if parts else ""
        super().__init__(message + where)


class EncryptionKeyError(KnowledgeError):
    """A file of an encrypted store cannot be read with the keys given; nothing was changed. `path` names
    the file, `key_id` the key it is under (from its plaintext header)."""

    def __init__(self, message: str, *, path: str | None = None, key_id: str | None = None) -> None:
        self.path = path
        self.key_id = key_id
        super().__init__(message)


class EncryptionKeyMissing(EncryptionKeyError):
    """The file is encrypted under a key id the store was not given (or no key was given at all)."""


class EncryptionKeyWrong(EncryptionKeyError):
    """A key was given under the file's key id, but it is not the key the file was written with."""


class StorageFull(KnowledgeError):
    """The file system holding the store has no room for a write: the commit was refused whole (nothing
    of it is acknowledged); reads go on, and writes are accepted again once space is freed."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class CompactionFailed(KnowledgeError):
    """A checkpoint could not rewrite the table file to reclaim space (`knowledge/storage/retention.py`): the
    old file is kept as it was, nothing is lost, and a later checkpoint tries again."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class SchemaError(KnowledgeError):
    """A schema declaration or change is invalid or incompatible with the stored data."""


class ValidationError(KnowledgeError):
    """A transaction was rejected as a whole; names the offending type, row and field."""

    def __init__(self, message: str, *, type_name: str | None = None, row: int | None = None,
                 field: str | None = None, value: Any = None) -> None:
        self.detail = message
        self.type_name = type_name
        self.row = row
        self.field = field
        self.value = value
        parts = []
        if type_name is not None:
            parts.append(f"type {type_name!r}")
        if row is not None:
            parts.append(f"row {row}")
        if field is not None:
            parts.append(f"field {field!r}")
        where = f" [{', '.join(parts)}]" if parts else ""
        super().__init__(message + where)


class UnknownType(ValidationError):
    """A node or edge type that the schema does not declare."""


class TypeMismatch(ValidationError):
    """A property value of the wrong type."""


class MissingKey(ValidationError):
    """A node row without its key property (or with a null key)."""


class MissingEndpoint(ValidationError):
    """An edge whose source or target node does not exist (or is not visible)."""


class WrongEndpointType(ValidationError):
    """An edge whose endpoint is of a node type the edge type does not allow."""


class ValueTooLarge(ValidationError):
    """A value or a transaction beyond the configured size caps."""


class ApplyError(KnowledgeError):
    """A durable WAL record could not be applied to the tables: a bug or damaged table file."""

    def __init__(self, message: str, *, lsn: int | None = None) -> None:
        self.lsn = lsn
        super().__init__(message)


class NotFound(KnowledgeError):
    """No such node or edge for this session: absent and invisible read the same."""

    def __init__(self, type_name: str, key: Any) -> None:
        self.type_name = type_name
        self.key = key
        super().__init__(f"no {type_name} node with key {key!r}")


class NodeIdNotFound(NotFound):
    """No node with this dense id for this session (`Session.ref`): absent and invisible read the same,
    so the message names only the id, never a type or key."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.type_name = None  # type: ignore[assignment]
        self.key = None
        KnowledgeError.__init__(self, f"no node with id {node_id}")


class PermissionDenied(KnowledgeError):
    """The session's principal lacks a grant the operation needs."""


class InvalidArgument(KnowledgeError):
    """An API argument is out of range or malformed (k <= 0, unknown direction, ...)."""


class InvalidQuery(InvalidArgument):
    """A read's filter does not fit the schema (a `where` clause comparing an int property with text,
    an unknown operator, ...): `property`, `operator` and `value` name the clause."""

    def __init__(self, message: str, *, property: str | None = None, operator: str | None = None,
                 value: Any = None) -> None:
        self.property = property
        self.operator = operator
        self.value = value
        super().__init__(message)


class TransactionClosed(KnowledgeError):
    """A transaction was used after commit(), rollback() or an error that voided it: start a new one."""


class EmbedderUnavailable(KnowledgeError, RuntimeError):
    """No embedder can produce the vectors asked for: the model (or its packages) is not installed, a
    vector mode was asked for without an embedder, or a `PrecomputedEmbedder` without a fallback was
    asked for a text it holds no vector for (also a RuntimeError, as it was before it joined this tree)."""


class UnreadableFile(InvalidArgument):
    """An input file that cannot be read in the format it claims (or its name implies)."""

    def __init__(self, message: str, *, path: str | None = None, format: str | None = None) -> None:
        self.path = path
        self.format = format
        super().__init__(message)


class BackupError(KnowledgeError):
    """A backup or restore could not be completed; the destination is left untouched."""


class InvariantViolation(KnowledgeError):
    """An internal invariant failed: a bug in knowledge, never the caller's fault."""


# -- raised by the server and the remote client (knowledge.server, knowledge.remote) ------------------
class Unauthenticated(PermissionDenied):
    """A server call without a valid bearer token (missing, malformed, unknown or revoked)."""


class ResourceExhausted(KnowledgeError):
    """The server refused a call: too many in flight for this principal, or a message over its size cap."""


class MessageTooLarge(ResourceExhausted, ValueTooLarge):
    """A request (or reply) over a message size cap: the server's `--message-bytes-max`, or the client's
    `knowledge.connect(message_bytes_max=...)`; the message names the cap, the size and the option."""


class DeadlineExceeded(KnowledgeError):
    """A server call ran past its deadline; a write's outcome is unknown (read it back to know)."""


class Unavailable(KnowledgeError):
    """The server cannot be reached, is shutting down, or its store is closed; retrying may succeed."""


class NotAvailableRemotely(KnowledgeError, AttributeError):
    """An embedded-only Store attribute (the engine's in-process state: its tables, WAL, indexes, caches,
    locks, config) asked of a `knowledge.connect()` client; the message says why and names the remote way,
    if there is one. Also an AttributeError, so `hasattr()` and `getattr(store, name, default)` see the
    attribute as absent."""


class SnapshotMoved(Unavailable):
    """A read inside a remote session's snapshot() block was answered after a commit moved the store past
    the block's LSN; run the block again."""


class SnapshotTransferFailed(Unavailable):
    """A replication snapshot could not be taken, streamed or verified (a chunk or file checksum, a size,
    a stream cut short); nothing of it was installed, and the replica asks again."""


class WalTailGone(Unavailable):
    """A follower of another process's WAL files (`knowledge/storage/wal/tail.py`) needs a record that is no
    longer in any segment (retention removed it): it must copy the store again and follow from the copy's LSN.
    `lsn` names the record, `directory` the WAL directory."""

    def __init__(self, message: str, *, lsn: int | None = None, directory: str | None = None) -> None:
        self.lsn = lsn
        self.directory = directory
        super().__init__(message)


class NotPrimary(Unavailable):
    """A write reached a server that is not the primary; `primary` is the primary's address when known."""

    def __init__(self, message: str, *, primary: str | None = None) -> None:
        self.primary = primary
        super().__init__(message)


# -- raised by replication (knowledge.replication) ----------------------------------------------------
class InvalidCommitPolicy(InvalidArgument):
    """A commit policy that does not parse (``async``, ``sync(n)``, ``zones(k)``, ``all``, with options
    ``degrade`` and ``deadline=<n>ms|s``) or that the cluster's members can never meet; `policy` is the text."""

    def __init__(self, message: str, *, policy: str | None = None) -> None:
        self.policy = policy
        super().__init__(message)


class CommitOutcomeUnknown(KnowledgeError):
    """A commit's record is in the primary's WAL but its commit policy was not met by the deadline (or
    the primary lost its role first): it may yet survive or be discarded by a failover. `lsn`/`epoch`
    name the record, `policy` the policy it missed."""

    def __init__(self, message: str, *, lsn: int | None = None, epoch: int | None = None,
                 policy: str | None = None) -> None:
        self.lsn = lsn
        self.epoch = epoch
        self.policy = policy
        super().__init__(message)


# -- raised by embedders and the framework adapters (knowledge.embed, knowledge.adapters) --------------
class DimensionMismatch(SchemaError):
    """Vectors of one width met a vector property (or an expected width) of another: names the embedder,
    its dimension, the target (e.g. "Chunk.embedding vector[384]") and the dimension expected there."""

    def __init__(self, message: str, *, embedder: str | None = None, dimension: int | None = None,
                 target: str | None = None, expected: int | None = None) -> None:
        self.embedder = embedder
        self.dimension = dimension
        self.target = target
        self.expected = expected
        super().__init__(message)

# -- raised by the GraphRAG extractors (knowledge.graphrag) ------------------------------------------
class ExtractorUnavailable(InvalidArgument):
    """An extractor's optional dependency is missing (e.g. spaCy or its English model: the nlp extra)."""


class ExtractionFailed(KnowledgeError):
    """An extractor could not produce its result (e.g. the LLM endpoint kept failing or answered with
    something that is not the requested JSON); `chunk` names the chunk's hash when known, `status` the
    last HTTP status."""

    def __init__(self, message: str, *, chunk: str | None = None, status: int | None = None) -> None:
        self.chunk = chunk
        self.status = status
        super().__init__(message)


# -- raised by the SLO check (knowledge.slo) -------------------------------------------------------------
class SloError(InvalidArgument):
    """An SLO file, or the results or metrics it is checked against, is malformed: `path` names the file
    (or URL), `objective` the objective and `field` the field that is wrong, when known."""

    def __init__(self, message: str, *, path: str | None = None, objective: str | None = None,
                 field: str | None = None) -> None:
        self.path = path
        self.objective = objective
        self.field = field
        super().__init__(message)

def invariant(condition: bool, message: str) -> None:
    """Raise InvariantViolation when condition is false (works under python -O)."""
    if not condition:
        raise InvariantViolation(message)


# -- the status an error answers over gRPC (knowledge/server/status.py) and is counted under (metrics) ---
# Most specific first: the first class an error is an instance of decides its code.
STATUS_CODES: tuple[tuple[type[KnowledgeError], str], ...] = (
    (Unauthenticated, "UNAUTHENTICATED"),
    (PermissionDenied, "PERMISSION_DENIED"),
    (NotFound, "NOT_FOUND"),
    (NotPrimary, "FAILED_PRECONDITION"),
    (ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (Unavailable, "UNAVAILABLE"),
    (StoreClosed, "UNAVAILABLE"),
    (StorePoisoned, "UNAVAILABLE"),
    (ValidationError, "INVALID_ARGUMENT"),
    (InvalidArgument, "INVALID_ARGUMENT"),
    (SchemaError, "INVALID_ARGUMENT"),
    (EmbedderUnavailable, "FAILED_PRECONDITION"),
    (BackupError, "FAILED_PRECONDITION"),
    (StoreLocked, "FAILED_PRECONDITION"),
    (StoreNotFound, "FAILED_PRECONDITION"),
    (EncryptionKeyError, "FAILED_PRECONDITION"),
    (CorruptionError, "DATA_LOSS"),
)


def status_of(error: BaseException) -> str:
    """The gRPC status code name `error` answers with: that of the first class of STATUS_CODES it is an
    instance of, else INTERNAL."""
    for cls, code in STATUS_CODES:
        if isinstance(error, cls):
            return code
    return "INTERNAL"
