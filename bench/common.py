"""Helpers shared by the benchmark scripts: timing, percentiles and writing results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def latencies_us(function: Callable[[int], Any], count: int, warmup: int = 20) -> list[float]:
    """Call function(i) `count` times after a warm-up; return each call's latency in microseconds."""
    for i in range(warmup):
        function(i)
    out = []
    for i in range(count):
        start = time.perf_counter()
        function(i)
        out.append((time.perf_counter() - start) * 1e6)
    return out


def summary_us(values: list[float]) -> dict[str, float]:
    return {"p50_us": statistics.median(values), "p95_us": percentile(values, 0.95),
            "p99_us": percentile(values, 0.99), "count": len(values)}


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def write_json(name: str, data: dict[str, Any]) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    return path


def replace_section(markdown_path: str, section: str, body: str) -> None:
    """Replace (or append) the `## section` of a Markdown file with `body`, keeping its handwritten
    subsections: a `### ` subsection of the old section whose heading `body` does not make itself is kept,
    after `body`, in its old order (what the benchmark generated it replaces; notes written by hand, such as
    a rerun's table under its own heading, survive a rerun with --write-results)."""
    text = open(markdown_path).read() if os.path.exists(markdown_path) else "# Benchmark results\n"
    header = f"## {section}"
    start = _line_start(text, header)
    generated = {h for h in body.splitlines() if h.startswith("### ")}
    if start < 0:
        text = text.rstrip() + "\n\n" + f"{header}\n\n{body.strip()}\n\n"
    else:
        end = text.find("\n## ", start + len(header))
        old = text[start:end + 1] if end >= 0 else text[start:]
        kept = [part for part in _subsections(old) if part.splitlines()[0].rstrip() not in generated]
        block = "\n\n".join([f"{header}\n\n{body.strip()}", *(part.strip() for part in kept)]) + "\n\n"
        text = text[:start] + block + (text[end + 1:] if end >= 0 else "")
    with open(markdown_path, "w") as f:
        f.write(text.rstrip() + "\n")


def _line_start(text: str, line: str) -> int:
    """Where `line` starts as a whole line of `text` (-1: it is not one)."""
    at = 0
    while True:
        at = text.find(line, at)
        if at < 0:
            return -1
        end = at + len(line)
        if (at == 0 or text[at - 1] == "\n") and (end == len(text) or text[end] == "\n"):
            return at
        at = end


def _subsections(section: str) -> list[str]:
    """The `### ` subsections of one `## ` section's text, each from its heading to the next (fenced code
    blocks are not searched for headings)."""
    parts: list[list[str]] = []
    fenced = False
    for line in section.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("### "):
            parts.append([line])
        elif parts:
            parts[-1].append(line)
    return ["\n".join(p) for p in parts]


def publish(name: str, section: str, results: dict[str, Any], body: str, write: bool) -> None:
    """Print a benchmark's Markdown `body`; with `write`, also save `results` as bench/results/<name>.json
    and make `body` the `## section` of bench/RESULTS.md."""
    print(body)
    if write:
        print(write_json(name, results))
        replace_section(os.path.join(HERE, "RESULTS.md"), section, body)
