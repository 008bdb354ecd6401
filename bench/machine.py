"""What the benchmarks ran on: CPU model, cores, memory, versions, and the load average around a step."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

PACKAGES = ("numpy", "pyarrow", "duckdb", "faiss-cpu", "grpcio", "prometheus-client")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return None


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages now (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def describe() -> dict[str, Any]:
    """The machine: CPU model, logical cores, usable cores, memory, OS, Python and library versions, load."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "cores_usable": usable,
            "memory_gib": memory_gib(), "platform": platform.platform(), "python": platform.python_version(),
            "versions": versions(), "load": load()}


def summary_line(machine: dict[str, Any]) -> str:
    return (f"{machine['cpu_model']}, {machine['cores']} cores, {machine.get('memory_gib')} GiB, "
            f"Python {machine['python']}, load {machine.get('load')}")
