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
    """Replace (or append) the `## section` of a Markdown file with `body`."""
    text = open(markdown_path).read() if os.path.exists(markdown_path) else "# Benchmark results\n"
    header = f"## {section}"
    start = text.find(header)
    block = f"{header}\n\n{body.strip()}\n\n"
    if start < 0:
        text = text.rstrip() + "\n\n" + block
    else:
        end = text.find("\n## ", start + len(header))
        text = text[:start] + block + (text[end + 1:] if end >= 0 else "")
    with open(markdown_path, "w") as f:
        f.write(text.rstrip() + "\n")


def publish(name: str, section: str, results: dict[str, Any], body: str, write: bool) -> None:
    """Print a benchmark's Markdown `body`; with `write`, also save `results` as bench/results/<name>.json
    and make `body` the `## section` of bench/RESULTS.md."""
    print(body)
    if write:
        print(write_json(name, results))
        replace_section(os.path.join(HERE, "RESULTS.md"), section, body)
