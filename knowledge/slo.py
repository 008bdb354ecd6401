"""Service-level objectives: an SLO file in TOML, evaluated against a bench results document
(`python -m bench --out DIR` writes DIR/results.json) or a live server's Prometheus metrics endpoint, with
each objective's error-budget burn rate.

    name = "retrieval"

    [[objectives]]
    name = "retrieve-p99"
    kind = "latency"            # latency | lag | recall | availability
    threshold_ms = 50           # latency, lag: a call (or a lag sample) is good when at most this
    target = 0.99               # share of good events (recall: the mean recall) the objective promises
    window = "28d"              # s, m, h, d or w
    results = "suites.retrieval.latency.graph"       # where a bench results document holds it
    prometheus = { metric = "knowledge_rpc_latency_seconds", labels = { rpc = "Retrieve" } }

Error budget = 1 - target. The bad fraction is: for latency and lag, the share of events above
threshold_ms; for recall, 1 - the measured recall@k against exact search; for availability, errors over
requests. Burn rate = bad fraction / budget: 1.0 spends exactly the window's budget over the window, above
1.0 the objective is violated. An objective with no data (its suite did not run, or the metric is absent)
reports "no data"; `check(..., strict=True)` counts that as a failure.

Prometheus: latency and lag objectives read a histogram (`_bucket`, `_count`; threshold_ms is compared with
the largest bucket bound at or below it, so an off-bucket threshold errs on the strict side), recall reads a
histogram of per-search recall (mean = `_sum` / `_count`), availability a counter with a `code` label (codes
in `good_codes`, by default OK and the caller's own mistakes, are not errors). One scrape gives the totals
since the server started; `over_s` scrapes twice and evaluates the difference.
"""

from __future__ import annotations

import math
import re
import time
import tomllib
from dataclasses import dataclass, field
from typing import Any

from knowledge.errors import SloError, Unavailable

KINDS = ("latency", "lag", "recall", "availability")
GOOD_CODES = ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED",
              "FAILED_PRECONDITION", "OUT_OF_RANGE", "CANCELLED")
"""gRPC codes that do not spend an availability budget: success and the caller's own mistakes."""
WINDOW_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
RESULTS_SCHEMA = "knowledge-bench/1"
SUITE_STATUSES = ("ok", "not available", "error")
SCRAPE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Objective:
    """One objective of an SLO file (see the module docstring for the fields)."""

    name: str
    kind: str
    target: float
    window: str
    window_s: float
    threshold_ms: float | None = None
    results: str | None = None
    prometheus: dict[str, Any] | None = None
    good_codes: tuple[str, ...] = GOOD_CODES

    @property
    def budget(self) -> float:
        return 1.0 - self.target


@dataclass(frozen=True)
class SloFile:
    name: str
    path: str
    objectives: tuple[Objective, ...]


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one objective: status "met", "violated" or "no data", the measured value in words,
    the bad fraction, the burn rate (bad fraction / budget) and the events it was computed from."""

    objective: Objective
    status: str
    measured: str
    bad_fraction: float | None = None
    burn_rate: float | None = None
    events: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Report:
    source: str
    slo: SloFile
    evaluations: tuple[Evaluation, ...] = field(default_factory=tuple)

    def failed(self, strict: bool = False) -> bool:
        """Whether an objective is violated (or, with strict, has no data)."""
        bad = ("violated", "no data") if strict else ("violated",)
        return any(e.status in bad for e in self.evaluations)


# -- the SLO file ------------------------------------------------------------------------------------------
def parse_window(text: Any, path: str = "", objective: str = "") -> float:
    """Seconds in a window such as "30s", "5m", "1h", "28d", "1w"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise SloError(f"{path}: objective {objective!r}: window must be a positive number with a unit s, m, h, "
                       f"d or w (e.g. \"28d\"), got {text!r}", path=path, objective=objective, field="window")
    return float(match.group(1)) * WINDOW_UNITS_S[match.group(2)]


def load_slo(path: str) -> SloFile:
    """Read and check an SLO file. Raises SloError naming the file, the objective and the field."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SloError(f"cannot read SLO file {path}: {error}", path=path) from error
    return parse_slo(text, path)


def parse_slo(text: str, path: str = "<string>") -> SloFile:
    """An SloFile from TOML text. Raises SloError on bad TOML, unknown kinds, targets outside (0, 1),
    missing thresholds, bad windows, duplicate names or unknown fields."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SloError(f"{path} is not valid TOML: {error}", path=path) from error
    raw = data.get("objectives")
    if not isinstance(raw, list) or not raw:
        raise SloError(f"{path}: no [[objectives]] tables", path=path, field="objectives")
    objectives = [_objective(item, path, i) for i, item in enumerate(raw)]
    names = [o.name for o in objectives]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SloError(f"{path}: objective names must be unique: {', '.join(duplicates)}", path=path, field="name")
    return SloFile(str(data.get("name", path)), path, tuple(objectives))


_FIELDS = {"name", "kind", "target", "window", "threshold_ms", "results", "prometheus", "good_codes", "description"}


def _objective(item: Any, path: str, index: int) -> Objective:
    if not isinstance(item, dict):
        raise SloError(f"{path}: objectives[{index}] is not a table", path=path)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise SloError(f"{path}: objectives[{index}] needs a name", path=path, field="name")

    def fail(field_name: str, message: str) -> SloError:
        return SloError(f"{path}: objective {name!r}: {message}", path=path, objective=name, field=field_name)

    unknown = sorted(set(item) - _FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    kind = item.get("kind")
    if kind not in KINDS:
        raise fail("kind", f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    target = item.get("target")
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0.0 < float(target) < 1.0:
        raise fail("target", f"target must be a fraction strictly between 0 and 1 (e.g. 0.99), got {target!r}")
    threshold = item.get("threshold_ms")
    if kind in ("latency", "lag"):
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not threshold > 0:
            raise fail("threshold_ms", f"a {kind} objective needs threshold_ms > 0, got {threshold!r}")
        threshold = float(threshold)
    elif threshold is not None:
        raise fail("threshold_ms", f"a {kind} objective takes no threshold_ms")
    results, prometheus = item.get("results"), item.get("prometheus")
    if results is None and prometheus is None:
        raise fail("results", "say where the indicator is: results = \"suites....\" and/or prometheus = {...}")
    if results is not None and not isinstance(results, str):
        raise fail("results", f"results must be a dotted path string, got {results!r}")
    if prometheus is not None and (not isinstance(prometheus, dict) or not isinstance(prometheus.get("metric"), str)):
        raise fail("prometheus", "prometheus must be a table with metric = \"name\" (and optional labels)")
    if prometheus is not None and not isinstance(prometheus.get("labels", {}), dict):
        raise fail("prometheus", "prometheus.labels must be a table of label = \"value\"")
    codes = item.get("good_codes", list(GOOD_CODES))
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise fail("good_codes", "good_codes must be a list of status code names")
    window = item.get("window", "28d")
    return Objective(name, kind, float(target), str(window), parse_window(window, path, name), threshold,
                     results, prometheus, tuple(codes))


# -- bench results -----------------------------------------------------------------------------------------
def resolve(document: Any, dotted: str) -> Any:
    """The value at a dotted path; keys may themselves hold dots ("sets.real.principal.0.01" finds the key
    "0.01"): at each level the shortest run of segments naming a key is taken. KeyError when absent."""
    parts = dotted.split(".")
    node, i = document, 0
    while i < len(parts):
        if not isinstance(node, dict):
            raise KeyError(dotted)
        for j in range(i + 1, len(parts) + 1):
            key = ".".join(parts[i:j])
            if key in node:
                node, i = node[key], j
                break
        else:
            raise KeyError(dotted)
    return node


def validate_results(results: Any, slo: SloFile | None = None, path: str = "results") -> None:
    """Check a bench results document against the schema "knowledge-bench/1" (machine described, every suite
    with a status, duration, load before and after; ok suites with a baseline and ratios) and, given an SLO
    file, that each objective's `results` path holds the right kind of value wherever its suite ran.
    Raises SloError naming the first problem."""
    def fail(message: str, objective: str | None = None) -> SloError:
        return SloError(f"{path}: {message}", path=path, objective=objective)

    if not isinstance(results, dict) or results.get("schema") != RESULTS_SCHEMA:
        raise fail(f"not a bench results document (schema must be {RESULTS_SCHEMA!r})")
    machine = results.get("machine")
    if not isinstance(machine, dict) or not {"cpu_model", "cores", "load", "load_after"} <= set(machine):
        raise fail("machine must give cpu_model, cores, load and load_after")
    suites = results.get("suites")
    if not isinstance(suites, dict) or not suites:
        raise fail("no suites")
    for name, suite in suites.items():
        if not isinstance(suite, dict) or suite.get("status") not in SUITE_STATUSES:
            raise fail(f"suite {name!r}: status must be one of {SUITE_STATUSES}")
        missing = {"duration_s", "load_before", "load_after"} - set(suite)
        if missing:
            raise fail(f"suite {name!r}: missing {', '.join(sorted(missing))}")
        if suite["status"] != "ok":
            if not suite.get("reason"):
                raise fail(f"suite {name!r} is {suite['status']!r} without a reason")
            continue
        baseline = suite.get("baseline")
        if not isinstance(baseline, dict) or not baseline.get("name") or not baseline.get("description"):
            raise fail(f"suite {name!r}: an ok suite names its baseline (name, description)")
        ratios = suite.get("ratios")
        if not isinstance(ratios, dict) or not ratios:
            raise fail(f"suite {name!r}: an ok suite reports ratios to its baseline")
        bad = [k for k, v in ratios.items() if v is not None and not (isinstance(v, int | float) and math.isfinite(v))]
        if bad:
            raise fail(f"suite {name!r}: ratio {bad[0]!r} is not a finite number")
    for objective in slo.objectives if slo else ():
        if objective.results is None:
            continue
        suite = objective.results.split(".")[1] if objective.results.startswith("suites.") else None
        if suite is not None and (suite not in suites or suites[suite]["status"] != "ok"):
            continue
        try:
            value = resolve(results, objective.results)
        except KeyError:
            raise fail(f"objective {objective.name!r}: nothing at {objective.results}", objective.name) from None
        problem = _indicator_problem(objective, value)
        if problem:
            raise fail(f"objective {objective.name!r}: {objective.results} {problem}", objective.name)


def _indicator_problem(objective: Objective, value: Any) -> str | None:
    if objective.kind in ("latency", "lag"):
        if not isinstance(value, dict) or not isinstance(value.get("cdf_ms"), list) or "count" not in value:
            return "is not a latency series (count, cdf_ms)"
    elif objective.kind == "recall":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            return "is not a recall in [0, 1]"
    elif not isinstance(value, dict) or not {"requests", "errors"} <= set(value):
        return "is not a request count (requests, errors)"
    return None


def evaluate_results(slo: SloFile, results: dict[str, Any]) -> list[Evaluation]:
    """Evaluate every objective against a bench results document (objectives without `results`, or whose
    suite did not run, report "no data")."""
    out = []
    for objective in slo.objectives:
        value = None
        if objective.results is not None:
            try:
                value = resolve(results, objective.results)
            except KeyError:
                value = None
        if value is None:
            out.append(Evaluation(objective, "no data", f"nothing at {objective.results}"
                                  if objective.results else "no results path"))
        elif objective.kind in ("latency", "lag"):
            cdf = value.get("cdf_ms") or []
            if not cdf:
                out.append(Evaluation(objective, "no data", "empty series"))
                continue
            bad = sum(1 for x in cdf if x > objective.threshold_ms) / len(cdf)
            out.append(_judge(objective, bad, value.get("count", len(cdf)),
                              f"p99 {value.get('p99_ms', float('nan')):.3f} ms, {bad:.2%} over {objective.threshold_ms:g} ms"))
        elif objective.kind == "recall":
            out.append(_judge(objective, 1.0 - float(value), None, f"recall {float(value):.4f}"))
        else:
            requests, errors = float(value["requests"]), float(value["errors"])
            if requests <= 0:
                out.append(Evaluation(objective, "no data", "no requests"))
                continue
            out.append(_judge(objective, errors / requests, requests, f"{errors:g} errors in {requests:g} requests"))
    return out


def _judge(objective: Objective, bad: float, events: float | None, measured: str, note: str = "") -> Evaluation:
    burn = bad / objective.budget
    status = "met" if burn <= 1.0 + 1e-9 else "violated"
    return Evaluation(objective, status, measured, bad, burn, events, note)


# -- Prometheus --------------------------------------------------------------------------------------------
def scrape(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> str:
    """The text a metrics endpoint serves. Raises Unavailable when it cannot be read."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise Unavailable(f"cannot scrape metrics from {url}: {error}") from error


def samples(text: str, source: str = "metrics") -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) of every sample in Prometheus text, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        return [(s.name, dict(s.labels), float(s.value)) for family in text_string_to_metric_families(text)
                for s in family.samples]
    except ValueError as error:
        raise SloError(f"{source} is not Prometheus text: {error}", path=source) from error


def _select(parsed: list, name: str, labels: dict[str, str]) -> list[tuple[dict[str, str], float]]:
    return [(lab, value) for sample, lab, value in parsed
            if sample == name and all(lab.get(k) == str(v) for k, v in labels.items())]


def evaluate_metrics(slo: SloFile, text: str, previous: str | None = None, source: str = "metrics") -> list[Evaluation]:
    """Evaluate every objective against Prometheus text (minus `previous`, an earlier scrape, when given)."""
    now = samples(text, source)
    before = samples(previous, source) if previous is not None else []

    def total(name: str, labels: dict[str, str], extra: Any = None) -> float:
        def add(parsed: list) -> float:
            return sum(v for lab, v in _select(parsed, name, labels) if extra is None or extra(lab))
        return add(now) - (add(before) if before else 0.0)

    out = []
    for objective in slo.objectives:
        spec = objective.prometheus
        if spec is None:
            out.append(Evaluation(objective, "no data", "no prometheus metric named"))
            continue
        metric, labels = spec["metric"], spec.get("labels", {})
        if objective.kind in ("latency", "lag"):
            out.append(_histogram_objective(objective, metric, labels, now, total))
        elif objective.kind == "recall":
            count = total(f"{metric}_count", labels)
            if count <= 0:
                out.append(Evaluation(objective, "no data", f"no {metric} samples"))
                continue
            mean = total(f"{metric}_sum", labels) / count
            out.append(_judge(objective, 1.0 - mean, count, f"mean sampled recall {mean:.4f} over {count:g} searches"))
        else:
            requests = total(metric, labels)
            if requests <= 0:
                out.append(Evaluation(objective, "no data", f"no {metric} samples"))
                continue
            errors = total(metric, labels, lambda lab, good=objective.good_codes: lab.get("code", "OK") not in good)
            out.append(_judge(objective, errors / requests, requests, f"{errors:g} errors in {requests:g} requests"))
    return out


def _histogram_objective(objective: Objective, metric: str, labels: dict[str, str], now: list,
                         total: Any) -> Evaluation:
    count = total(f"{metric}_count", labels)
    if count <= 0:
        return Evaluation(objective, "no data", f"no {metric} observations")
    threshold_s = objective.threshold_ms / 1e3
    bounds = sorted({float(lab["le"]) for lab, _ in _select(now, f"{metric}_bucket", labels)
                     if "le" in lab and float(lab["le"]) <= threshold_s * (1 + 1e-9)})
    note = ""
    if not bounds:
        good, note = 0.0, f"no bucket at or below {objective.threshold_ms:g} ms: every observation counted bad"
    else:
        bound = bounds[-1]
        good = total(f"{metric}_bucket", labels, lambda lab: "le" in lab and math.isclose(float(lab["le"]), bound))
        if not math.isclose(bound, threshold_s):
            note = f"threshold compared at the bucket bound {bound * 1e3:g} ms"
    bad = max(0.0, count - good) / count
    return _judge(objective, bad, count, f"{bad:.2%} of {count:g} over {objective.threshold_ms:g} ms", note)


# -- the check ---------------------------------------------------------------------------------------------
def check(source: str, slo_path: str, *, over_s: float | None = None) -> Report:
    """Evaluate the SLO file at `slo_path` against `source`: an http(s) URL of a metrics endpoint (scraped
    once, or twice `over_s` apart) or a bench results.json (or the directory holding it)."""
    import json
    import os

    slo = load_slo(slo_path)
    if source.startswith(("http://", "https://")):
        first = scrape(source)
        if over_s:
            time.sleep(over_s)
            return Report(source, slo, tuple(evaluate_metrics(slo, scrape(source), first, source)))
        return Report(source, slo, tuple(evaluate_metrics(slo, first, None, source)))
    path = os.path.join(source, "results.json") if os.path.isdir(source) else source
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as error:
        raise SloError(f"cannot read bench results {path}: {error}", path=path) from error
    validate_results(results, slo, path)
    return Report(path, slo, tuple(evaluate_results(slo, results)))


def format_report(report: Report) -> str:
    """One line per objective: status, name, what was measured, the target, the burn rate."""
    lines = [f"SLO {report.slo.name!r} ({report.slo.path}) against {report.source}:"]
    for e in report.evaluations:
        o = e.objective
        goal = (f"{o.target:.4g} of {'calls' if o.kind == 'latency' else 'samples'} <= {o.threshold_ms:g} ms"
                if o.kind in ("latency", "lag") else f"{o.kind} >= {o.target:.4g}")
        burn = "burn rate -" if e.burn_rate is None else f"burn rate {e.burn_rate:.2f}"
        line = f"  {e.status.upper():9} {o.name}: {e.measured}; target {goal} over {o.window}; {burn}"
        if e.burn_rate is not None and e.burn_rate > 1.0:
            line += f" (the {o.window} budget lasts {o.window_s / e.burn_rate / 3600:.1f} h at this rate)"
        lines.append(line + (f" [{e.note}]" if e.note else ""))
    violated = sum(e.status == "violated" for e in report.evaluations)
    lines.append(f"{violated} of {len(report.evaluations)} objectives violated")
    return "\n".join(lines)


def run_check(source: str, slo_path: str, *, over_s: float | None = None, strict: bool = False,
              out: Any = None) -> int:
    """`knowledge slo check`: print the report; 1 when an objective is violated (or, strict, has no data),
    else 0."""
    import sys

    report = check(source, slo_path, over_s=over_s)
    print(format_report(report), file=out or sys.stdout)
    return 1 if report.failed(strict) else 0
