"""Retention: what deletes and expiry leave behind, measured and given back at checkpoint.

`space(engine)` reports live and dead bytes per structure: the DuckDB tables (deleted rows still held in
their row groups, plus free blocks), the WAL, the vector indexes (tombstoned rows), the keyword indexes
(tombstoned postings), the graph adjacency (edges of deleted nodes and removed edges still in the CSR) and
the snapshot files. Figures for DuckDB and the indexes are estimates from row and posting counts.

`compact(engine)` runs inside `Engine.checkpoint` (commits and reads wait): keyword indexes past
`tombstone_fraction_max` dead postings are rebuilt, TTL stamps of deleted rows are dropped, and when the
tables hold more than that share of dead rows (or free blocks) the DuckDB file is rewritten: the database
is copied into a fresh file (`COPY FROM DATABASE`), which is synced and renamed over `state.duckdb`, so
the space goes back to the file system. DuckDB alone never shrinks its file: a deleted row stays in its
row group and `CHECKPOINT`/`VACUUM` leave the file's size as it was. The vector indexes and the graph
are compacted by the checkpoint itself.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
from typing import Any

import duckdb

from knowledge.errors import CompactionFailed, StorageFull
from knowledge.index.keyword import KeywordIndex
from knowledge.storage.ttl import has_table

log = logging.getLogger("knowledge.store")
POSTING_BYTES = 12  # (doc, tf, generation) int32, as knowledge/index/keyword.py keeps them
TERM_BYTES = 100  # a vocabulary entry (the term, its id, its lists), as keyword.py estimates it
EDGE_BYTES = 16  # an edge in the forward and the reverse CSR (int64 each)
REWRITE_BYTES_MIN = 256 << 10  # below this much dead space (one DuckDB block) a rewrite is not worth it
ROLL_BYTES_MIN = 256 << 10  # a live WAL segment this big on disk is sealed at checkpoint, so it can go
_rename = os.replace  # (a test makes it fail)


def _file_bytes(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(_file_bytes(os.path.join(root, name)) for name in files)
    return total


def table_rows(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """(live rows, rows held including deleted ones) over every table of the database."""
    live = held = 0
    for name, estimated in con.execute("SELECT table_name, estimated_size FROM duckdb_tables()").fetchall():
        count = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
        live += count
        held += max(count, estimated or 0)
    return live, held


def _tables_space(engine: Any) -> dict[str, int]:
    tables = engine.tables
    with tables.lock:
        live_rows, held_rows = table_rows(tables.con)
        size = tables.con.execute("PRAGMA database_size").fetchone()
    block_size, total_blocks, free_blocks = int(size[2]), int(size[3]), int(size[5])
    file_bytes = _file_bytes(tables.path) + _file_bytes(tables.path + ".wal")
    used = max(0, file_bytes - free_blocks * block_size)
    live = int(used * live_rows / held_rows) if held_rows else used
    return {"live_bytes": live, "dead_bytes": max(0, file_bytes - live), "file_bytes": file_bytes,
            "live_rows": live_rows, "dead_rows": held_rows - live_rows, "blocks": total_blocks,
            "free_blocks": free_blocks}


def keyword_space(index: KeywordIndex) -> tuple[int, int]:
    """(live, dead) bytes of a keyword index: postings, and vocabulary entries (a term whose documents are
    all gone keeps its entry until the index is rebuilt)."""
    used, pend, dead_postings = index._used, index._pend, index._dead  # noqa: SLF001 - its own counters
    postings = [u + (len(p) // 3 if p else 0) for u, p in zip(used, pend, strict=True)]
    dead_terms = sum(1 for n in postings if n == 0)
    dead = sum(dead_postings)
    live = (sum(postings) - dead) * POSTING_BYTES + (len(postings) - dead_terms) * TERM_BYTES
    return live, dead * POSTING_BYTES + dead_terms * TERM_BYTES


def tables_space(engine: Any) -> dict[str, int]:
    """Live and dead bytes of the DuckDB tables (takes the tables' lock; not the state lock)."""
    return _tables_space(engine)


def space(engine: Any, *, tables: bool = True) -> dict[str, Any]:
    """Live and dead bytes per structure (call under the state lock; `tables=False` leaves out the DuckDB
    figures, for `tables_space` outside it)."""
    out: dict[str, Any] = {"tables": _tables_space(engine)} if tables else {}
    wal_bytes = _dir_bytes(os.path.join(engine.path, "wal"))
    out["wal"] = {"live_bytes": wal_bytes, "dead_bytes": 0}
    vectors = {}
    for (type_name, prop), index in engine.vectors.items():
        row_bytes = 4 * index.dimension
        vectors[f"{type_name}.{prop}"] = {"live_bytes": index.live_count * row_bytes,
                                          "dead_bytes": (index.rows - index.live_count) * row_bytes}
    out["vectors"] = vectors
    keywords = {}
    for (type_name, prop), index in engine.keywords.items():
        live, dead = keyword_space(index)
        keywords[f"{type_name}.{prop}"] = {"live_bytes": live, "dead_bytes": dead}
    out["keywords"] = keywords
    alive = engine.directory.alive
    graph = {}
    for name, index in engine.edges.items():
        held = len(index.forward.indices)
        src, dst = index.all_pairs()
        n = len(alive)
        live = int(((src < n) & (dst < n)).sum()) if len(src) else 0
        if live:
            keep = (src < n) & (dst < n)
            live = int((alive[src[keep]] & alive[dst[keep]]).sum())
        graph[name] = {"live_bytes": live * EDGE_BYTES, "dead_bytes": max(0, held + index.overlay_edges - live)
                       * EDGE_BYTES}
    out["graph"] = graph
    out["snapshots"] = {"live_bytes": _dir_bytes(os.path.join(engine.path, "snapshots")), "dead_bytes": 0}
    return out


def retire_live_segment(wal: Any) -> None:
    """Have the checkpoint's WAL retention seal the live segment (and begin an empty one) when it holds records
    and takes at least ROLL_BYTES_MIN on disk (its preallocated zeros included), so that the records the
    checkpoint covers leave the disk with it; the WAL rolls
    at retention only once every record of the segment is covered (`WriteAheadLog.remove_segments_before`)."""
    roll = getattr(wal, "roll_next_append", None)  # a WriteAheadLog (replication's test doubles have none)
    if roll is not None:
        roll(ROLL_BYTES_MIN)


def _dead_share(live: int, dead: int) -> float:
    return dead / (live + dead) if live + dead else 0.0


def compact(engine: Any) -> dict[str, Any]:
    """Give back what deletes left (see the module); call from the checkpoint, with commits and reads held
    and every record applied. Returns what it did."""
    limit = engine.config.vectors.tombstone_fraction_max
    done: dict[str, Any] = {"keywords": [], "tables_rewritten": False}
    for key, index in list(engine.keywords.items()):
        live, dead = keyword_space(index)
        if dead and _dead_share(live, dead) >= limit:
            engine.keywords[key] = KeywordIndex.restore(index.snapshot())
            done["keywords"].append(f"{key[0]}.{key[1]}")
    tables = engine.tables
    with tables.lock:
        con = tables.con
        if has_table(con, "_ttl"):  # stamps of deleted nodes (node deletes drop theirs; this catches the rest)
            con.execute("DELETE FROM _ttl WHERE id NOT IN (SELECT id FROM (" + " UNION ALL ".join(
                [f'SELECT _id AS id FROM "n_{name}"' for name in engine.schema.nodes] or ["SELECT NULL::BIGINT"])
                + "))")
        if has_table(con, "_ttl_edges"):
            for name in engine.schema.edges:
                con.execute(f"DELETE FROM _ttl_edges t WHERE t.type = ? AND NOT EXISTS (SELECT 1 FROM \"e_{name}\" e "
                            f"WHERE e._src = t.src AND e._dst = t.dst)", [name])
            con.execute("DELETE FROM _ttl_edges WHERE type NOT IN (SELECT unnest(?::VARCHAR[]))",
                        [list(engine.schema.edges)])
        con.execute("CHECKPOINT")
    usage = _tables_space(engine)
    share = _dead_share(usage["live_bytes"], usage["dead_bytes"])
    wanted = usage["dead_bytes"] >= REWRITE_BYTES_MIN and share >= limit
    readers = _open_snapshots(engine) if wanted else 0
    if readers:  # read views hold DuckDB transactions on this file (versions.py): rewrite at a later checkpoint
        done["tables_rewrite_deferred"] = readers
    elif wanted:
        rewrite_tables(tables)
        done["tables_rewritten"] = True
        done["tables_bytes_before"] = usage["file_bytes"]
        done["tables_bytes_after"] = _file_bytes(tables.path)
    return done


def _open_snapshots(engine: Any) -> int:
    """How many read views hold a DuckDB transaction on the tables (`knowledge/storage/versions.py`); views
    nobody holds any more but a reference cycle keeps are collected first (their transactions end)."""
    def count() -> int:
        return sum(1 for h in list(getattr(engine, "_table_snapshots", ())) if getattr(h, "cursor", None) is not None)

    if count():
        gc.collect()
    return count()


def rewrite_tables(tables: Any) -> None:
    """Copy the DuckDB database into a fresh file and put it in place of the old one (see the module). On
    any failure the old file stays as it was and the fresh one is removed: StorageFull when the disk had no
    room, CompactionFailed otherwise (both name the file)."""
    try:
        _rewrite(tables)
    except (OSError, duckdb.Error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if is_disk_full(exc):
            raise StorageFull(f"no space left on the device holding {tables.path} to rewrite it (the checkpoint "
                              f"kept the old file; free space, then checkpoint again)", path=tables.path) from exc
        raise CompactionFailed(f"rewriting {tables.path} to reclaim space failed ({reason}); the old file is kept",
                               path=tables.path) from exc


def is_disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)


def _rewrite(tables: Any) -> None:
    fresh = tables.path + ".compact"
    with tables.lock:
        for leftover in (fresh, fresh + ".wal"):
            if os.path.exists(leftover):
                os.remove(leftover)
        con = tables.con
        name = con.execute("SELECT current_database()").fetchone()[0]
        try:
            con.execute("CHECKPOINT")
            con.execute(f"ATTACH '{fresh}' AS knowledge_compact")
            try:
                con.execute(f'COPY FROM DATABASE "{name}" TO knowledge_compact')
            finally:
                con.execute("DETACH knowledge_compact")
            with open(fresh, "rb+") as f:
                os.fsync(f.fileno())
        except BaseException:
            for leftover in (fresh, fresh + ".wal"):
                if os.path.exists(leftover):
                    os.remove(leftover)
            raise
        con.close()
        try:
            try:
                _rename(fresh, tables.path)
            except BaseException:
                os.remove(fresh)
                raise
            directory = os.open(os.path.dirname(tables.path) or ".", os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        finally:
            tables.con = duckdb.connect(tables.path)  # the new file, or the old one if the rename failed
            tables.con.execute("SET preserve_insertion_order = true")
    log.info("rewrote %s to reclaim the space of deleted rows", tables.path)


__all__ = ["compact", "retire_live_segment", "rewrite_tables", "space", "tables_space"]
