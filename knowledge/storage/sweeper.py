"""The TTL sweeper: expired rows deleted as ordinary WAL records, in the background.

Each sweep record holds DELETE_NODES ops for expired nodes (the tables drop their edges with them, as for
any node delete), DELETE_EDGES ops for expired edges of edge types with a policy, and DELETE_NODES for
the GraphRAG entities (`Entity`) that no live chunk mentions (`MENTIONS`) any more once the expired
chunks are gone. So replicas, backups and every index see the same deletes at the same LSN. Records are
batched (`ttl_sweep_batch_rows` rows each) and rate-limited (`ttl_sweep_rows_per_s`). Only a store that
may write sweeps: a replica's sweep is refused (NotPrimary) and skipped; it reads expired rows as absent
all the same (`knowledge/storage/ttl.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa

from knowledge.access.principal import ADMIN
from knowledge.errors import KnowledgeError
from knowledge.storage.ops import Op, OpKind
from knowledge.storage.resolve import Resolver
from knowledge.storage.tables import edge_table, quote
from knowledge.storage.ttl import has_table

log = logging.getLogger("knowledge.store")
ENTITY, CHUNK, MENTIONS = "Entity", "Chunk", "MENTIONS"  # knowledge/graphrag/schema.py (checked by a test)


def _expired_edges(engine: Any, now: float, limit: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(edge type, src, dst) of edges past their type's deadline, from the tables (call with them applied)."""
    out: list[tuple[str, np.ndarray, np.ndarray]] = []
    cursor = engine.tables.cursor()
    try:
        stamped = has_table(cursor, "_ttl_edges")
        for name, policy in sorted(engine.ttl.policies.items()):
            if policy.kind != "edge" or name not in engine.schema.edges or limit <= 0:
                continue
            table = edge_table(name)
            if policy.on is not None:
                prop = engine.schema.edges[name].properties[policy.on]
                base = f"epoch_us(e.{quote(policy.on)}) / 1e6" if prop.type == "timestamp" else \
                    f"CAST(e.{quote(policy.on)} AS DOUBLE)"
                sql = f"SELECT e._src, e._dst FROM {table} e WHERE {base} + ? <= ? ORDER BY 1, 2 LIMIT ?"
                params = [policy.expire_after_s, now, limit]
            elif stamped:
                sql = (f"SELECT e._src, e._dst FROM {table} e LEFT JOIN _ttl_edges t ON t.type = ? AND "
                       f"t.src = e._src AND t.dst = e._dst WHERE greatest(coalesce(t.written_at, ?), ?) + ? <= ? "
                       f"ORDER BY 1, 2 LIMIT ?")  # the later of the last write and the policy's setting
                params = [name, policy.set_at, policy.set_at, policy.expire_after_s, now, limit]
            else:
                sql = f"SELECT e._src, e._dst FROM {table} e WHERE ? + ? <= ? ORDER BY 1, 2 LIMIT ?"
                params = [policy.set_at, policy.expire_after_s, now, limit]
            found = cursor.execute(sql, params).fetchnumpy()
            if len(found["_src"]):
                src = np.asarray(found["_src"], dtype=np.int64)
                out.append((name, src, np.asarray(found["_dst"], dtype=np.int64)))
                limit -= len(src)
    finally:
        cursor.close()
    return out


def _orphaned_entities(engine: Any, gone: np.ndarray) -> np.ndarray:
    """Entities mentioned by the chunks among `gone` that no other live chunk mentions."""
    mentions = engine.edges.get(MENTIONS)
    if mentions is None or ENTITY not in engine.schema.nodes or not len(gone):
        return np.zeros(0, dtype=np.int64)
    directory = engine.directory
    dead = np.zeros(directory.capacity, dtype=bool)
    dead[gone[gone < directory.capacity]] = True
    alive = directory.alive & ~dead
    _, candidates = mentions.expand(gone, True)
    out = []
    for entity in np.unique(candidates).tolist():
        if not (entity < directory.capacity and alive[entity]):
            continue
        chunks = mentions.neighbours(entity, False)
        chunks = chunks[chunks < directory.capacity]
        if not alive[chunks].any():
            out.append(entity)
    return np.array(out, dtype=np.int64)


def sweep_once(engine: Any, now: float | None = None, rows_max: int | None = None) -> dict[str, int]:
    """Delete up to `rows_max` (default `ttl_sweep_batch_rows`) expired rows in one WAL record; return what
    it deleted: {"nodes", "entities", "edges", "lsn"} (lsn 0 when nothing was due)."""
    tracker = engine.ttl
    now = tracker.clock() if now is None else now
    rows_max = engine.config.ttl_sweep_batch_rows if rows_max is None else rows_max
    done = {"nodes": 0, "entities": 0, "edges": 0, "lsn": 0}
    if not tracker.policies and not tracker.explicit_types:
        return done
    if engine.replicator is not None:
        engine.replicator.writable_epoch()  # NotPrimary on a replica: its primary sweeps, it reads expiry alone
    with engine.stage_lock:
        engine.check_open()
        last = engine.wal.last_lsn
        engine.wait_memory(last)  # every logged write is in memory: a node rewritten since is not expired
        edge_policies = any(p.kind == "edge" for p in tracker.policies.values())
        if edge_policies:
            engine.wait_applied(last)
        with engine.state_lock:
            directory = engine.directory
            expired = tracker.expired_ids(directory, engine.columns, now)[:rows_max]
            resolver = Resolver(engine.schema, directory, engine.edges, ADMIN, None, engine.inflight_edge_types())
            ops: list[Op] = []
            chunk_code = directory.type_codes.get(CHUNK)
            gone_chunks = expired[directory.type_of[expired] == chunk_code] if chunk_code is not None else expired[:0]
            orphans = _orphaned_entities(engine, gone_chunks)
            for group, kind in ((expired, "nodes"), (orphans[~np.isin(orphans, expired)], "entities")):
                if not len(group):
                    continue
                codes = directory.type_of[group]
                for code in np.unique(codes).tolist():
                    type_name = directory.type_names[code]
                    keys = directory.key_of[group[codes == code]].tolist()
                    op = resolver.delete_nodes(type_name, keys)
                    if op is not None:
                        ops.append(op)
                        done[kind] += op.table.num_rows
        edges = _expired_edges(engine, now, rows_max - done["nodes"]) if edge_policies else []
        for name, src, dst in edges:
            ops.append(Op(OpKind.DELETE_EDGES, name, table=pa.table({"_src": src, "_dst": dst})))
            done["edges"] += len(src)
        if not ops:
            tracker.last_sweep_at = now
            return done
        staged = engine.append(ops, resolver)
    done["lsn"] = engine.finish(*staged)
    tracker.swept_nodes += done["nodes"] + done["entities"]
    tracker.swept_edges += done["edges"]
    tracker.last_sweep_at = now
    return done


def sweep_all(engine: Any, now: float | None = None, rows_max: int | None = None,
              records_max: int = 1_000_000) -> dict[str, int]:
    """sweep_once until nothing is due (at most `records_max` records); totals, with `records`."""
    total = {"nodes": 0, "entities": 0, "edges": 0, "lsn": 0, "records": 0}
    for _ in range(records_max):
        done = sweep_once(engine, now, rows_max)
        if not done["lsn"]:
            break
        for name in ("nodes", "entities", "edges"):
            total[name] += done[name]
        total["lsn"] = done["lsn"]
        total["records"] += 1
    return total


class Sweeper:
    """A daemon thread that sweeps every `ttl_sweep_interval_s`, at most `ttl_sweep_rows_per_s` rows a second."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="knowledge-ttl-sweeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        config = self.engine.config
        while not self._stop.wait(config.ttl_sweep_interval_s):
            try:
                while not self._stop.is_set():
                    started = time.monotonic()
                    done = sweep_once(self.engine)
                    rows = done["nodes"] + done["entities"] + done["edges"]
                    if not done["lsn"]:
                        break
                    pause = rows / config.ttl_sweep_rows_per_s - (time.monotonic() - started)
                    if pause > 0 and self._stop.wait(pause):
                        return
            except KnowledgeError as exc:  # a replica (NotPrimary), a full disk, a closing store: try later
                self.errors += 1
                log.debug("ttl sweep skipped: %s", exc)
            except Exception:  # noqa: BLE001 - the sweeper must not die; the next round retries
                self.errors += 1
                log.warning("ttl sweep failed", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)


__all__ = ["Sweeper", "sweep_all", "sweep_once"]
