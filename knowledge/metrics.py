"""Prometheus metrics for the server (`knowledge serve --metrics HOST:PORT`), structured JSON logs with a
request id, and the online recall sampler.

    metrics = Metrics()                              # its own CollectorRegistry
    server = start_http(metrics, "127.0.0.1:9464")   # GET /metrics
    with metrics.rpc("Search") as call:              # latency histogram, requests by status code
        table = session.search(vector, k=10)
        call.plan(table)                             # the plan the planner chose
    metrics.observe_timings(result.timings)          # retrieve's stages: embed, vector, keyword, graph, fetch
    sampler = RecallSampler(metrics, fraction=0.01)  # re-runs 1% of searches exactly, in the background
    sampler.offer(session, vector, k, table)

Names (all prefixed `knowledge_`): rpc_latency_seconds{rpc}, rpc_requests_total{rpc,code},
rpc_errors_total{rpc,code}, stage_latency_seconds{stage}, replication_lag_lsn{replica},
replication_lag_seconds{replica}, replication_lag_observed_seconds{replica} (a histogram of lag samples, for
lag SLOs), wal_fsync_seconds, index_rows{index}, index_live_rows{index}, search_plans_total{plan},
cache_requests_total{cache,result}, cache_hit_ratio{cache}, search_recall (histogram of sampled recall@k),
search_recall_sampled (mean of the last RECALL_WINDOW samples), recall_samples_dropped_total,
ttl_expired_rows_total{kind}, ttl_expired_pending_rows, ttl_sweeper_lag_seconds, storage_bytes{structure,state},
retrieve_fallbacks_total{mode,reason} (retrievals ranked another way than asked: reason "no_entities" is
graph or auto mode over a visible graph without entities, ranked as hybrid). knowledge.slo
reads the histograms and counters of an SLO file from a scrape.

Over ~450 lines on purpose: every metric the server exports is declared here once (names,
labels, buckets) beside the exporter and the recall sampler that feed them.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer, make_wsgi_app

from knowledge.errors import InvalidArgument, KnowledgeError, status_of

LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0)
"""Bounds of every latency histogram; SLO thresholds on these bounds are evaluated exactly."""
LAG_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RECALL_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.99, 1.0)
RECALL_WINDOW = 100
"""search_recall_sampled is the mean of this many latest samples."""
STAGES = ("embed", "vector", "keyword", "graph", "fetch")
STAGE_OF = {"embed": "embed", "vector": "vector", "keyword": "keyword", "fuse": "graph", "graph_view": "graph",
            "seeds": "graph", "ppr": "graph", "rank": "graph", "fetch": "fetch", "context": "fetch",
            "assemble": "fetch"}
"""How retrieve()'s timing keys fold into the five exported stages ("total" is the RPC itself)."""


_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("knowledge_request_id", default=None)


def status_code(error: BaseException | None) -> str:
    """The gRPC status code name a call ending with `error` answers (OK for None): the nearest KnowledgeError
    class in knowledge.errors.STATUS_CODES, else INTERNAL; a grpc.RpcError's own code."""
    if error is None:
        return "OK"
    code = getattr(error, "code", None)
    if callable(code) and not isinstance(error, KnowledgeError):
        try:
            return str(code().name)
        except Exception:  # not a grpc error after all
            pass
    return status_of(error)


class Call:
    """What `Metrics.rpc()` yields: set `code` to override the status, call `plan(table)` after a search."""

    def __init__(self, metrics: Metrics, rpc: str, request_id: str) -> None:
        self.metrics, self.rpc, self.request_id = metrics, rpc, request_id
        self.code: str | None = None

    def plan(self, table: Any) -> None:
        metadata = getattr(getattr(table, "schema", None), "metadata", None) or {}
        if b"plan" in metadata:
            self.metrics.observe_plan(metadata[b"plan"].decode())


class Metrics:
    """Every metric of one server, in its own registry (so tests and several servers never collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, n = self.registry, "knowledge"
        self.rpc_latency = Histogram(f"{n}_rpc_latency_seconds", "RPC latency", ["rpc"], registry=r,
                                     buckets=LATENCY_BUCKETS_S)
        self.rpc_requests = Counter(f"{n}_rpc_requests_total", "RPCs answered, by status code", ["rpc", "code"],
                                    registry=r)
        self.rpc_errors = Counter(f"{n}_rpc_errors_total", "RPCs answered with a status other than OK",
                                  ["rpc", "code"], registry=r)
        self.stage_latency = Histogram(f"{n}_stage_latency_seconds", "retrieval stage latency", ["stage"],
                                       registry=r, buckets=LATENCY_BUCKETS_S)
        self.lag_lsn = Gauge(f"{n}_replication_lag_lsn", "primary LSN minus the replica's durable LSN",
                             ["replica"], registry=r)
        self.lag_seconds = Gauge(f"{n}_replication_lag_seconds", "age of the oldest record a replica lacks",
                                 ["replica"], registry=r)
        self.lag_observed = Histogram(f"{n}_replication_lag_observed_seconds", "replication lag samples",
                                      ["replica"], registry=r, buckets=LAG_BUCKETS_S)
        self.fsync = Histogram(f"{n}_wal_fsync_seconds", "WAL sync latency", registry=r, buckets=LATENCY_BUCKETS_S)
        self.index_rows = Gauge(f"{n}_index_rows", "rows of a vector index, dead included", ["index"], registry=r)
        self.index_live = Gauge(f"{n}_index_live_rows", "live rows of a vector index", ["index"], registry=r)
        self.index_graph = Gauge(f"{n}_index_graph_rows", "rows in a vector index's HNSW graph", ["index"],
                                 registry=r)
        self.plans = Counter(f"{n}_search_plans_total", "search plans chosen", ["plan"], registry=r)
        self.cache = Counter(f"{n}_cache_requests_total", "cache lookups", ["cache", "result"], registry=r)
        self.cache_ratio = Gauge(f"{n}_cache_hit_ratio", "hits / lookups since start", ["cache"], registry=r)
        self.recall = Histogram(f"{n}_search_recall", "recall@k of sampled searches against exact search",
                                registry=r, buckets=RECALL_BUCKETS)
        self.recall_mean = Gauge(f"{n}_search_recall_sampled", f"mean recall of the last {RECALL_WINDOW} samples",
                                 registry=r)
        self.recall_dropped = Counter(f"{n}_recall_samples_dropped_total", "samples dropped: the queue was full",
                                      registry=r)
        self.ttl_expired = Counter(f"{n}_ttl_expired_rows_total", "rows the TTL sweeper deleted", ["kind"],
                                   registry=r)
        self.ttl_pending = Gauge(f"{n}_ttl_expired_pending_rows", "nodes past their deadline, not yet deleted",
                                 registry=r)
        self.ttl_lag = Gauge(f"{n}_ttl_sweeper_lag_seconds", "how long the oldest undeleted expired node has been "
                             "past its deadline", registry=r)
        self.fallbacks = Counter(f"{n}_retrieve_fallbacks_total", "retrievals ranked another way than the mode "
                                 "asked, by the mode asked and the reason (RetrievalResult.fallback)",
                                 ["mode", "reason"], registry=r)
        self.storage_bytes = Gauge(f"{n}_storage_bytes", "bytes per structure, live or dead (store.stats()['space'])",
                                   ["structure", "state"], registry=r)
        self._recent: deque[float] = deque(maxlen=RECALL_WINDOW)
        self._cache_seen: dict[str, tuple[int, int]] = {}
        self._ttl_seen: dict[str, int] = {}
        self._rpc_children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}  # (rpc, code) -> labelled metrics
        self._plan_children: dict[str, Any] = {}
        self._stage_children: dict[str, Any] = {}  # stage -> its labelled stage_latency
        self._lock = threading.Lock()

    # -- calls -------------------------------------------------------------------------------------------
    def observe_rpc(self, rpc: str, seconds: float, code: str = "OK") -> None:
        children = self._rpc_children.get((rpc, code))
        if children is None:  # labels() takes a lock and builds its key on every call: look each up once
            children = (self.rpc_latency.labels(rpc), self.rpc_requests.labels(rpc, code),
                        self.rpc_errors.labels(rpc, code) if code != "OK" else None)
            self._rpc_children[(rpc, code)] = children
        latency, requests, errors = children
        latency.observe(seconds)
        requests.inc()
        if errors is not None:
            errors.inc()

    @contextlib.contextmanager
    def rpc(self, rpc: str, request_id: str | None = None, logger: logging.Logger | None = None,
            **fields: Any) -> Iterator[Call]:
        """Time one call under a request id (a new one unless given) and count it by status code; with
        `logger`, log one JSON line per call. Exceptions pass through, counted by status_code()."""
        with request_scope(request_id) as rid:
            call = Call(self, rpc, rid)
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                yield call
            except BaseException as caught:
                error = caught
                raise
            finally:
                seconds = time.perf_counter() - started
                code = call.code or status_code(error)
                self.observe_rpc(rpc, seconds, code)
                if logger is not None:
                    logger.info("call", extra={"rpc": rpc, "code": code, "duration_ms": round(seconds * 1e3, 3),
                                               **fields})

    def observe_stage(self, stage: str, seconds: float) -> None:
        if stage not in STAGES:
            raise InvalidArgument(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        self.stage_latency.labels(stage).observe(seconds)

    def observe_timings(self, timings: dict[str, float]) -> None:
        """Fold a RetrievalResult's `timings` (seconds per step) into the five stages and observe each."""
        folded: dict[str, float] = {}
        for key, seconds in timings.items():
            if key in STAGE_OF:
                folded[STAGE_OF[key]] = folded.get(STAGE_OF[key], 0.0) + seconds
        children = self._stage_children
        for stage, seconds in folded.items():
            child = children.get(stage)
            if child is None:  # labels() takes a lock and builds its key on every call: look each up once
                child = children[stage] = self.stage_latency.labels(stage)
            child.observe(seconds)

    def observe_fallback(self, mode: str, reason: str) -> None:
        """Count a retrieval asked for in `mode` that was ranked another way, for `reason`."""
        self.fallbacks.labels(mode, reason).inc()

    # -- storage and replication -------------------------------------------------------------------------
    def observe_fsync(self, seconds: float) -> None:
        self.fsync.observe(seconds)

    def set_replication_lag(self, replica: str, lsns: int, seconds: float) -> None:
        """Record a replica's lag now (gauges) and as a sample (the histogram lag SLOs read)."""
        self.lag_lsn.labels(replica).set(lsns)
        self.lag_seconds.labels(replica).set(seconds)
        self.lag_observed.labels(replica).observe(seconds)

    def observe_plan(self, plan: str) -> None:
        child = self._plan_children.get(plan)
        if child is None:
            child = self._plan_children[plan] = self.plans.labels(plan)
        child.inc()

    def observe_cache(self, cache: str, hits: int, misses: int) -> None:
        """Add lookups to a cache's counters and refresh its hit ratio."""
        self.cache.labels(cache, "hit").inc(hits)
        self.cache.labels(cache, "miss").inc(misses)
        with self._lock:
            total_hits, total_misses = self._cache_seen.get(cache, (0, 0))
            total_hits, total_misses = total_hits + hits, total_misses + misses
            self._cache_seen[cache] = (total_hits, total_misses)
        if total_hits + total_misses:
            self.cache_ratio.labels(cache).set(total_hits / (total_hits + total_misses))

    def update_from_store(self, store: Any) -> None:
        """Refresh index sizes and the row cache's counters from `store.stats()` (call before a scrape or
        on a timer; the row cache counts cumulatively, so only the increase since the last call is added)."""
        stats = store.stats()
        for name, index in stats.get("vector_indexes", {}).items():
            self.index_rows.labels(name).set(index.get("rows", 0))
            self.index_live.labels(name).set(index.get("live", 0))
            self.index_graph.labels(name).set(index.get("graph_rows") or 0)
        self._update_ttl(stats)
        cache = stats.get("row_cache")
        if cache:
            with self._lock:
                seen = self._cache_seen.get("row", (0, 0))
            self.observe_cache("row", max(0, cache["hits"] - seen[0]), max(0, cache["misses"] - seen[1]))

    def _update_ttl(self, stats: dict[str, Any]) -> None:
        """TTL and retention figures from `store.stats()`: expired rows (counted up by the increase since the
        last call), pending expired nodes, sweeper lag, live and dead bytes per structure."""
        ttl = stats.get("ttl")
        if ttl:
            for kind, field in (("nodes", "expired_total"), ("edges", "expired_edges_total")):
                total = int(ttl.get(field, 0))
                with self._lock:
                    seen = self._ttl_seen.get(kind, 0)
                    self._ttl_seen[kind] = total
                if total > seen:
                    self.ttl_expired.labels(kind).inc(total - seen)
            self.ttl_pending.set(ttl.get("expired_pending", 0))
            self.ttl_lag.set(ttl.get("sweeper_lag_s", 0.0))
        for structure, figures in (stats.get("space") or {}).items():
            parts = figures.values() if figures and "live_bytes" not in figures else [figures]
            live = sum(part.get("live_bytes", 0) for part in parts if isinstance(part, dict))
            dead = sum(part.get("dead_bytes", 0) for part in parts if isinstance(part, dict))
            self.storage_bytes.labels(structure, "live").set(live)
            self.storage_bytes.labels(structure, "dead").set(dead)

    # -- recall ------------------------------------------------------------------------------------------
    def observe_recall(self, recall: float) -> None:
        self.recall.observe(recall)
        with self._lock:
            self._recent.append(recall)
            mean = sum(self._recent) / len(self._recent)
        self.recall_mean.set(mean)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (what GET /metrics serves)."""
        return generate_latest(self.registry)


# -- several processes, one scrape -----------------------------------------------------------------------
SUMMED_FAMILIES = ("knowledge_rpc_latency_seconds", "knowledge_rpc_requests", "knowledge_rpc_errors",
                   "knowledge_stage_latency_seconds", "knowledge_search_plans", "knowledge_cache_requests",
                   "knowledge_search_recall", "knowledge_recall_samples_dropped", "knowledge_retrieve_fallbacks")
"""The families of the calls a process serves: a scrape of a server with read processes adds theirs up. The
rest (the WAL, indexes, TTL, storage, replication) are the serving process's own figures."""


def merge_expositions(own: bytes, others: list[bytes]) -> bytes:
    """One exposition of `own` (the serving process's) and `others` (its read processes'): the samples of
    SUMMED_FAMILIES added up by name and labels (`_created`: the earliest), every other family as `own` has
    it, and the two derived gauges recomputed from the sums: cache_hit_ratio (hits / lookups, per cache)
    and search_recall_sampled (the mean over the processes that sampled any)."""
    from prometheus_client.core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    def base(name: str) -> str:
        return name[:-len("_created")] if name.endswith("_created") else name

    families: dict[str, Metric] = {}
    values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    recall_means: list[float] = []
    for position, text in enumerate([own, *others]):
        sampled = 0.0
        mean = None
        for family in text_string_to_metric_families(text.decode()):
            summed = base(family.name) in SUMMED_FAMILIES
            if position and not summed:
                if family.name == "knowledge_search_recall_sampled" and family.samples:
                    mean = family.samples[0].value
                continue
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            for sample in family.samples:
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                if sample.name == "knowledge_search_recall_count":
                    sampled = sample.value
                if key not in values:
                    values[key] = sample.value
                elif sample.name.endswith("_created"):
                    values[key] = min(values[key], sample.value)
                elif summed:
                    values[key] += sample.value
            if not position and family.name == "knowledge_search_recall_sampled" and family.samples:
                mean = family.samples[0].value
        if sampled and mean is not None:
            recall_means.append(mean)
    lookups: dict[str, dict[str, float]] = {}
    for (_, name, labels), value in values.items():
        if name == "knowledge_cache_requests_total":
            label = dict(labels)
            lookups.setdefault(label["cache"], {}).setdefault(label["result"], 0.0)
            lookups[label["cache"]][label["result"]] += value
    for cache, counts in lookups.items():
        total = counts.get("hit", 0.0) + counts.get("miss", 0.0)
        if total:
            families.setdefault("knowledge_cache_hit_ratio", Metric("knowledge_cache_hit_ratio",
                                                                    "hits / lookups since start", "gauge"))
            values[("knowledge_cache_hit_ratio", "knowledge_cache_hit_ratio", (("cache", cache),))] = \
                counts.get("hit", 0.0) / total
    if recall_means:
        values[("knowledge_search_recall_sampled", "knowledge_search_recall_sampled", ())] = \
            sum(recall_means) / len(recall_means)
    for (family, name, labels), value in values.items():
        families[family].add_sample(name, dict(labels), value)

    class Merged:
        def collect(self) -> Iterator[Metric]:
            return iter(families.values())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())  # type: ignore[arg-type]
    return generate_latest(registry)


# -- the HTTP exporter -------------------------------------------------------------------------------------
def parse_listen(text: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" ("[::1]:9464" for IPv6). Raises InvalidArgument."""
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"--metrics takes HOST:PORT (e.g. 127.0.0.1:9464; port 0 picks a free one), got {text!r}")
    return host, int(port)


class MetricsServer:
    """A running exporter: `url` is its /metrics address; `close()` stops it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread
        host, port = server.server_address[:2]
        self.host, self.port = host, port
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_http(metrics: Metrics, listen: str, before_scrape: Callable[[], None] | None = None,
               peers: Callable[[], list[bytes]] | None = None) -> MetricsServer:
    """Serve `metrics` over HTTP at `listen` ("HOST:PORT") in a daemon thread; `before_scrape` runs before
    each scrape (e.g. `lambda: metrics.update_from_store(store)`); `peers` returns the expositions of other
    processes serving the same calls (read processes), merged into each scrape (`merge_expositions`).
    Raises InvalidArgument on a bad address, Unavailable when it cannot bind."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from knowledge.errors import Unavailable

    host, port = parse_listen(listen)
    app = make_wsgi_app(metrics.registry)

    def wsgi(environ: dict, start_response: Callable) -> Any:
        if before_scrape is not None:
            with contextlib.suppress(Exception):  # a closed store must not break the exporter
                before_scrape()
        others = peers() if peers is not None else []
        if not others or environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            return app(environ, start_response)
        body = merge_expositions(metrics.exposition(), others)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:  # scrapes are not worth a stderr line each
            return

    try:
        server = make_server(host, port, wsgi, ThreadingWSGIServer, handler_class=Quiet)
    except OSError as error:
        raise Unavailable(f"cannot serve metrics on {listen}: {error}") from error
    thread = threading.Thread(target=server.serve_forever, name="knowledge-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)


class ServerMetrics:
    """A server's metrics: the registry, the recall sampler (when `recall_sample_fraction` > 0) and the HTTP
    exporter (when `listen` is set; `start(store)` starts it, refreshing the store's figures per scrape).
    The server calls `call(rpc)` around each handler, `searched(...)` after a search and `retrieved(result)`
    after a retrieve. Raises InvalidArgument on a bad address or fraction."""

    def __init__(self, listen: str | None = None, recall_sample_fraction: float = 0.0,
                 logger: logging.Logger | None = None) -> None:
        if listen is not None:
            parse_listen(listen)
        self.metrics = Metrics()
        self.listen, self.logger = listen, logger
        self.sampler = (RecallSampler(self.metrics, recall_sample_fraction) if recall_sample_fraction
                        else RecallSampler(self.metrics, 0.0, queue_max=1))
        self.exporter: MetricsServer | None = None
        self.peers: Callable[[], list[bytes]] | None = None  # other processes' expositions, merged per scrape

    def start(self, store: Any) -> MetricsServer | None:
        """Start the exporter (when `listen` is set) and time the store's WAL syncs (when its WAL says how)."""
        wal = getattr(store, "wal", None)
        if wal is not None and hasattr(wal, "on_sync"):
            wal.on_sync = self.metrics.observe_fsync
            self._wal = wal
        if self.listen is not None and self.exporter is None:
            self.exporter = start_http(self.metrics, self.listen, lambda: self.metrics.update_from_store(store),
                                       self.peers)
        return self.exporter

    def close(self) -> None:
        if self.exporter is not None:
            self.exporter.close()
            self.exporter = None
        if getattr(self, "_wal", None) is not None:
            self._wal.on_sync = None
            self._wal = None
        self.sampler.close()

    def call(self, rpc: str, **fields: Any) -> contextlib.AbstractContextManager[Call]:
        return self.metrics.rpc(rpc, logger=self.logger, **fields)

    def run(self, rpc: str, code: Callable[[], Any], fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` as `with call(rpc)` runs it (under a new request id, timed, counted by status code,
        logged with `log_json`), without a generator per call; `code()` after it names the status it
        answered (a name, or a grpc.StatusCode such as ServicerContext.code returns; None: the one its
        exception maps to)."""
        token = _request_id.set(new_request_id())
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return fn(*args)
        except BaseException as caught:
            error = caught
            raise
        finally:
            seconds = time.perf_counter() - started
            answered = code()
            answered = status_code(error) if answered is None else getattr(answered, "name", answered)
            self.metrics.observe_rpc(rpc, seconds, answered)
            if self.logger is not None:
                self.logger.info("call", extra={"rpc": rpc, "code": answered, "duration_ms": round(seconds * 1e3, 3)})
            _request_id.reset(token)

    def searched(self, session: Any, vector: Any, k: int, table: Any, **search: Any) -> None:
        """Count the plan a search took and maybe sample it for recall (type=, property=, where=)."""
        metadata = getattr(getattr(table, "schema", None), "metadata", None) or {}
        if b"plan" in metadata:
            self.metrics.observe_plan(metadata[b"plan"].decode())
        self.sampler.offer(session, vector, k, table, **search)

    def retrieved(self, result: Any, mode: str | None = None) -> None:
        """Observe a retrieve's stage latencies, and its fallback (if any) under the mode asked (`mode`,
        else the result's)."""
        self.metrics.observe_timings(getattr(result, "timings", {}) or {})
        fallback = getattr(result, "fallback", None)
        if fallback:
            self.metrics.observe_fallback(mode or result.mode, fallback)


# -- structured logs ---------------------------------------------------------------------------------------
_request_ids = itertools.count(random.getrandbits(63))  # a random start per process, then one apart


def new_request_id() -> str:
    """16 hex digits, different for every call in this process: a counter from a random start (uuid4 would
    cost a system call per call)."""
    return f"{next(_request_ids) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def current_request_id() -> str | None:
    """The request id of the call running in this context (the audit log records it), or None."""
    return _request_id.get()


@contextlib.contextmanager
def request_scope(request_id: str | None = None) -> Iterator[str]:
    """Run the block under `request_id` (a new one when None); logs and the audit log read it."""
    rid = request_id or new_request_id()
    token = _request_id.set(rid)
    try:
        yield rid
    finally:
        _request_id.reset(token)


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname, "logger": record.name,
                               "msg": record.getMessage(), "request_id": current_request_id()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def json_logging(logger: logging.Logger, stream: Any = None, level: int = logging.INFO) -> logging.Handler:
    """Attach a JSON-lines handler to `logger` (stderr unless `stream`); returns it (remove it to undo)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


# -- online recall ---------------------------------------------------------------------------------------
class RecallSampler:
    """Re-runs a `fraction` of searches exactly in a background thread and exports their recall@k
    (Metrics.observe_recall). `offer()` costs a random draw; a sampled search is queued (at most
    `queue_max`; past that it is dropped and counted) and answered exactly through the same session, so
    the exact answer sees what the search saw (commits landing in between can shift it slightly)."""

    def __init__(self, metrics: Metrics, fraction: float = 0.01, *, queue_max: int = 64,
                 rng: random.Random | None = None, exact: Callable[..., list[int]] | None = None) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
            raise InvalidArgument(f"recall sample fraction must be in [0, 1], got {fraction!r}")
        if queue_max < 1:
            raise InvalidArgument(f"queue_max must be at least 1, got {queue_max!r}")
        self.metrics, self.fraction = metrics, float(fraction)
        self.exact = exact or exact_search
        self._rng = rng or random.Random()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_max)
        self.sampled = self.done = self.failed = 0
        self._thread = threading.Thread(target=self._work, name="knowledge-recall-sampler", daemon=True)
        self._thread.start()

    def offer(self, session: Any, vector: Any, k: int, found: Any, **search: Any) -> bool:
        """Maybe sample a finished search: `found` is its result table (or its `_id`s); `search` its type=,
        property= and where= arguments. True when it was queued."""
        if self.fraction <= 0.0 or self._rng.random() >= self.fraction:
            return False
        ids = found.column("_id").to_pylist() if hasattr(found, "column") else list(found)
        try:
            self._queue.put_nowait((session, np.asarray(vector, dtype=np.float32), k, ids, search))
        except queue.Full:
            self.metrics.recall_dropped.inc()
            return False
        self.sampled += 1
        return True

    def drain(self, timeout_s: float = 30.0) -> None:
        """Wait until every queued sample is measured (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the background thread once the queued samples are measured."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        log = logging.getLogger("knowledge.metrics")
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            session, vector, k, ids, search = item
            try:
                truth = self.exact(session, vector, k, **search)
                want = set(truth[:k])
                recall = len(want & set(ids[:k])) / len(want) if want else 1.0
                self.metrics.observe_recall(recall)
                self.done += 1
            except Exception:  # a sample must never take the server down; count and log it
                self.failed += 1
                log.warning("recall sample failed", exc_info=True)
            finally:
                self._queue.task_done()


def exact_search(session: Any, vector: np.ndarray, k: int, type: str | None = None, property: str | None = None,
                 where: dict[str, Any] | None = None) -> list[int]:
    """The exact top-k `_id`s for `vector` among the session's visible rows matching `where`, by a full scan
    of the vector column (what the sampler compares a search with)."""
    type_name, prop, metric = _vector_target(session.store.schema.to_dict(), type, property)
    table = session.scan(type_name, where=where, columns=[prop])
    column = table.column(prop)
    ids = np.asarray(table.column("_id").to_numpy())
    present = np.asarray(column.is_valid().to_numpy(zero_copy_only=False))
    if not present.any():
        return []
    flat = column.filter(column.is_valid()).combine_chunks()
    rows = np.asarray(flat.values.to_numpy(), dtype=np.float32).reshape(len(flat), -1)
    ids, q = ids[present], np.asarray(vector, dtype=np.float32)
    if metric == "cosine":
        scores = rows @ (q / (np.linalg.norm(q) or 1.0)) / np.maximum(np.linalg.norm(rows, axis=1), 1e-30)
    elif metric == "l2":
        scores = -((rows - q) ** 2).sum(axis=1)
    else:
        scores = rows @ q
    order = np.lexsort((ids, -scores))[:k]
    return ids[order].tolist()


def _vector_target(schema: dict[str, Any], type_name: str | None, prop: str | None) -> tuple[str, str, str]:
    candidates = [(t, p, spec.get("metric", "cosine")) for t, node in schema["nodes"].items()
                  for p, spec in node["properties"].items() if str(spec.get("type", "")).startswith("vector[")
                  and (type_name is None or t == type_name) and (prop is None or p == prop)]
    if len(candidates) != 1:
        raise InvalidArgument(f"the recall sampler needs one vector property to compare with; "
                              f"type={type_name!r} property={prop!r} match {len(candidates)}")
    return candidates[0]
