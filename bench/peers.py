"""Embedded peers a user would otherwise pick, on the same data, queries and selectivities as the vectors
suite: raw faiss (HNSW with an IDSelectorBitmap), hnswlib (HNSW with a filter callback), chromadb
(persistent client, metadata `where`), lancedb (prefiltered `where`) and LadybugDB (Kùzu's successor; a
Cypher exact scan, its vector index being a download-only extension). Each is measured the way its
documentation suggests, with its own filter syntax on the `bucket` column; HNSW peers are swept over ef.

None of them can enforce per-node access control inside search: each takes a filter the application
builds and must be trusted to build (a metadata predicate or an id set), and nothing ties a caller's
identity to what the index may return. The store filters by the session's principal inside the search."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import datasets, measure

EF_SWEEP = (32, 64, 128, 256, 512)
QUICK_EF_SWEEP = (32, 128, 512)
QUICK_QUERIES = 20


@dataclass(frozen=True)
class Peer:
    """A peer: `build(data, bucket, directory)` returns a handle; `search(handle, q, k, s, param)` the row
    numbers found; `params` are swept (None: one setting); `acl` says what it can filter on."""

    name: str
    build: Callable[[datasets.DataSet, np.ndarray, str], Any]
    search: Callable[[Any, np.ndarray, int, float, Any], list[int]]
    params: tuple[Any, ...]
    acl: str


def _limit(s: float) -> int:
    return round(s * datasets.BUCKETS)


# -- raw faiss ---------------------------------------------------------------------------------------------
def _faiss_build(data: datasets.DataSet, bucket: np.ndarray, directory: str) -> Any:
    import faiss

    index = faiss.IndexHNSWFlat(data.dimension, 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.add(data.base)
    selectors = {}
    for s in datasets.SELECTIVITIES:
        bits = np.packbits(bucket < _limit(s), bitorder="little")
        selectors[s] = (bits, faiss.IDSelectorBitmap(len(bucket), faiss.swig_ptr(bits)))
    return index, selectors


def _faiss_search(handle: Any, q: np.ndarray, k: int, s: float, ef: int) -> list[int]:
    import faiss

    index, selectors = handle
    params = faiss.SearchParametersHNSW()
    params.efSearch = ef
    if s < 1.0:
        params.sel = selectors[s][1]
    _, ids = index.search(q[None, :], k, params=params)
    return [int(i) for i in ids[0] if i >= 0]


# -- hnswlib -----------------------------------------------------------------------------------------------
def _hnswlib_build(data: datasets.DataSet, bucket: np.ndarray, directory: str) -> Any:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=data.dimension)
    index.init_index(max_elements=len(data.base), ef_construction=80, M=32)
    index.add_items(data.base, np.arange(len(data.base)))
    allowed = {s: int((bucket < _limit(s)).sum()) for s in datasets.SELECTIVITIES}
    return index, bucket, allowed


def _hnswlib_search(handle: Any, q: np.ndarray, k: int, s: float, ef: int) -> list[int]:
    index, bucket, allowed = handle
    index.set_ef(max(ef, k))
    limit = _limit(s)
    keep = None if s >= 1.0 else (lambda i: bucket[i] < limit)
    try:  # hnswlib raises unless k rows qualify: ask for no more than the application knows exist
        labels, _ = index.knn_query(q, k=min(k, allowed[s]), filter=keep)
    except RuntimeError:  # the walk reached fewer than that
        return []
    return [int(i) for i in labels[0]]


# -- chromadb ----------------------------------------------------------------------------------------------
def _chroma_build(data: datasets.DataSet, bucket: np.ndarray, directory: str) -> Any:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=os.path.join(directory, "chroma"),
                                       settings=Settings(anonymized_telemetry=False))
    collection = client.create_collection("docs", metadata={"hnsw:space": "ip"}, embedding_function=None)
    step = min(5000, client.get_max_batch_size())
    for start in measure.progress(range(0, len(data.base), step), "peers: chromadb ingest"):
        end = min(len(data.base), start + step)
        collection.add(ids=[str(i) for i in range(start, end)], embeddings=data.base[start:end],
                       metadatas=[{"bucket": int(b)} for b in bucket[start:end]])
    return client, collection


def _chroma_search(handle: Any, q: np.ndarray, k: int, s: float, param: Any) -> list[int]:
    _, collection = handle
    where = None if s >= 1.0 else {"bucket": {"$lt": _limit(s)}}
    found = collection.query(query_embeddings=[q], n_results=k, where=where, include=[])
    return [int(i) for i in found["ids"][0]]


# -- lancedb -----------------------------------------------------------------------------------------------
def _lance_build(data: datasets.DataSet, bucket: np.ndarray, directory: str) -> Any:
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(os.path.join(directory, "lance"))
    table = db.create_table("docs", data=pa.table({
        "id": pa.array(np.arange(len(data.base))), "bucket": pa.array(bucket),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(data.base.ravel()), data.dimension)}))
    return db, table


def _lance_search(handle: Any, q: np.ndarray, k: int, s: float, param: Any) -> list[int]:
    _, table = handle
    query = table.search(q).distance_type("dot").limit(k)
    if s < 1.0:
        query = query.where(f"bucket < {_limit(s)}", prefilter=True)
    return [int(i) for i in query.to_arrow().column("id").to_pylist()]


# -- LadybugDB ---------------------------------------------------------------------------------------------
def _ladybug_build(data: datasets.DataSet, bucket: np.ndarray, directory: str) -> Any:
    import ladybug
    import pyarrow as pa

    database = ladybug.Database(os.path.join(directory, "ladybug.db"))
    connection = ladybug.Connection(database)
    connection.execute(f"CREATE NODE TABLE Doc(id INT64 PRIMARY KEY, bucket INT64, emb FLOAT[{data.dimension}])")
    rows = pa.table({"id": pa.array(np.arange(len(data.base))), "bucket": pa.array(bucket),  # noqa: F841
                     "emb": pa.FixedSizeListArray.from_arrays(pa.array(data.base.ravel()), data.dimension)})
    connection.execute("COPY Doc FROM rows")
    return database, connection, data.dimension


def _ladybug_search(handle: Any, q: np.ndarray, k: int, s: float, param: Any) -> list[int]:
    _, connection, dimension = handle
    where = "" if s >= 1.0 else "WHERE d.bucket < $n "
    found = connection.execute(
        f"MATCH (d:Doc) {where}RETURN d.id ORDER BY array_cosine_similarity(d.emb, CAST($q AS FLOAT[{dimension}])) "
        f"DESC LIMIT {k}", {"n": _limit(s), "q": q.tolist()})
    return [int(row[0]) for row in found.get_all()]


PEERS = (
    Peer("raw faiss HNSW", _faiss_build, _faiss_search, EF_SWEEP,
         "an id set (IDSelector) the application computes; no notion of a caller"),
    Peer("hnswlib", _hnswlib_build, _hnswlib_search, EF_SWEEP,
         "a Python filter callback the application supplies; no notion of a caller"),
    Peer("chromadb", _chroma_build, _chroma_search, (None,),
         "metadata `where` the application writes; tenancy per database/collection, not per row"),
    Peer("lancedb", _lance_build, _lance_search, (None,),
         "SQL `where` prefilter the application writes; no row-level access control (flat scan, no ANN index)"),
    Peer("LadybugDB", _ladybug_build, _ladybug_search, (None,),
         "Cypher WHERE the application writes; no row-level access control (exact scan: the HNSW "
         "extension is downloaded at run time, not shipped in the wheel)"),
)


def compare(data: datasets.DataSet, bucket: np.ndarray, masks: dict[float, np.ndarray], k: int, workdir: str,
            quick: bool, queries_max: int | None = None) -> dict[str, Any]:
    """Every installed peer on `data` at each selectivity: per setting, p50/p99 latency, QPS and recall@k
    against exact filtered search (the first `queries_max` queries when quick, default QUICK_QUERIES).
    `bucket` and `masks` come from datasets.selectivity_columns (masks[s] == bucket < s * BUCKETS). Peers
    that fail to import or build are listed with the reason."""
    queries = data.queries[:queries_max or QUICK_QUERIES] if quick else data.queries
    truth = {s: measure.exact_topk(data.base, queries, k, masks[s]) for s in datasets.SELECTIVITIES}
    out: dict[str, Any] = {"queries": len(queries), "results": {}, "build_s": {}, "acl": {}, "unavailable": {}}
    for peer in PEERS:
        directory = os.path.join(workdir, f"peer-{peer.name.replace(' ', '_')}-{data.source[:8]}-{len(data.base)}")
        os.makedirs(directory, exist_ok=True)
        out["acl"][peer.name] = peer.acl
        try:
            started = time.perf_counter()
            handle = peer.build(data, bucket, directory)
            out["build_s"][peer.name] = time.perf_counter() - started
            params = QUICK_EF_SWEEP if quick and peer.params == EF_SWEEP else peer.params
            out["results"][peer.name] = _measure(peer, handle, queries, truth, k, params)
        except Exception as error:  # ImportError (not installed) or the peer's own failure: say so
            out["unavailable"][peer.name] = f"{type(error).__name__}: {error}"
    return out


def _measure(peer: Peer, handle: Any, queries: np.ndarray, truth: dict[float, list], k: int,
             params: tuple[Any, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in datasets.SELECTIVITIES:
        points = []
        for param in params:
            found: list[list[int]] = []

            def one(i: int, param: Any = param, s: float = s, found: list = found) -> None:
                found.append(peer.search(handle, queries[i], k, s, param))

            latencies = measure.time_calls(one, len(queries), f"peers: {peer.name} {s:g} {param or ''}", warmup=0)
            series = measure.series_ms(latencies)
            points.append({"param": param, "qps": 1e3 / series["mean_ms"], "p50_ms": series["p50_ms"],
                           "p99_ms": series["p99_ms"], "recall": measure.recall_at_k(found, truth[s], k)})
        out[f"{s:g}"] = points
    return out


def render(peers: dict[str, Any], data: dict[str, Any]) -> str:
    """Markdown: per selectivity, each peer's best setting (the fastest reaching ours' recall, else its best
    recall) beside ours (principal filter) as a QPS ratio, and what each peer can filter on."""
    lines = [f"Peers on the same {data['rows']:,} rows ({peers['queries']} queries; ours / peer = our QPS over "
             "theirs at the setting shown):", "",
             "| visible | peer | setting | p50 | QPS | recall | ours QPS / peer QPS |", "|---|---|---|---|---|---|---|"]
    for s in data["principal"]:
        ours = data["principal"][s]
        for name, runs in peers["results"].items():
            points = runs.get(s, [])
            if not points:
                continue
            good = [p for p in points if p["recall"] >= ours["recall"] - 1e-9]
            best = max(good, key=lambda p: p["qps"]) if good else max(points, key=lambda p: p["recall"])
            setting = "-" if best["param"] is None else f"ef={best['param']}"
            lines.append(f"| {float(s):.1%} | {name} | {setting} | {best['p50_ms']:.3f} ms | {best['qps']:,.0f} | "
                         f"{best['recall']:.3f} | {ours['qps'] / best['qps']:.2f}x |")
    lines += ["", "Access control inside search: ours filters by the session's principal; the peers cannot:"]
    lines += [f"- {name}: {acl}" for name, acl in peers["acl"].items()]
    for name, reason in peers["unavailable"].items():
        lines.append(f"- {name} not measured: {reason}")
    return "\n".join(lines)
