"""Writing a suite run: results.json, report.md (each suite's own `render`, the machine, ratios to the
baselines) and PNG plots (matplotlib, the `bench` extra): latency CDFs, recall against QPS per selectivity,
commit latency by policy, the failover timeline and replica lag over time."""

from __future__ import annotations

import json
import os
from typing import Any

from bench import machine, suites

SECTION = "Benchmark suite (python -m bench)"
"""The section of bench/RESULTS.md that --publish rewrites (the single-purpose scripts own the others)."""


def write(results: dict[str, Any], out_dir: str) -> list[str]:
    """Write results.json, report.md and plots/*.png under `out_dir`; the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "results.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True, default=_plain)
    plots, note = make_plots(results, os.path.join(out_dir, "plots"))
    results.setdefault("plots", [os.path.relpath(p, out_dir) for p in plots])
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown(results, [os.path.relpath(p, out_dir) for p in plots], note) + "\n")
    return [json_path, md_path, *plots]


def publish_results(results: dict[str, Any], out_dir: str) -> None:
    """Make the report the suite section of bench/RESULTS.md (plots copied to bench/results/plots) and save
    the JSON as bench/results/suite.json, through bench/common.py's publish."""
    import shutil

    from bench import common

    plot_dir = os.path.join(common.RESULTS_DIR, "plots")
    os.makedirs(plot_dir, exist_ok=True)
    for stale in [n for n in os.listdir(plot_dir) if n.endswith(".png")]:  # a plot this run has not made goes
        os.unlink(os.path.join(plot_dir, stale))
    names = []
    for path in sorted(os.listdir(os.path.join(out_dir, "plots"))) if os.path.isdir(os.path.join(out_dir, "plots")) else []:
        shutil.copy(os.path.join(out_dir, "plots", path), os.path.join(plot_dir, path))
        names.append(os.path.join("results", "plots", path))
    body = markdown(results, names, None, heading_level=3)
    common.publish("suite", SECTION, results, body, write=True)


def section_commands(results_md: str) -> list[tuple[str, str | None]]:
    """(section, command) for every `## ` section of RESULTS.md: the command its "Command: `...`" line
    names (None for a section written by hand, which regeneration keeps as it is)."""
    import re

    text = open(results_md, encoding="utf-8").read()
    out = []
    for block in re.split(r"\n(?=## )", text):
        if not block.startswith("## "):
            continue
        match = re.search(r"^Command: `([^`]+)`", block, flags=re.MULTILINE)
        out.append((block.splitlines()[0][3:].strip(), match.group(1) if match else None))
    return out


def regenerate(results_md: str, repo: str, gpu: bool = False, dry_run: bool = False) -> int:
    """Re-run every section's command from the repository root, in order (GPU sections only with `gpu`);
    print what ran, what failed and what was kept; 1 when a command failed."""
    import shlex
    import subprocess
    import sys

    failed = 0
    for section, command in section_commands(results_md):
        if command is None:
            print(f"kept as written (no command): {section}")
            continue
        if "gpu" in section.lower() and not gpu:
            print(f"skipped (needs a GPU; pass --gpu on a GPU machine): {section}: {command}")
            continue
        argv = shlex.split(command)
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        print(f"running: {command}", flush=True)
        if not dry_run:
            done = subprocess.run(argv, cwd=repo)
            if done.returncode:
                failed += 1
                print(f"FAILED ({done.returncode}): {section}: {command}", flush=True)
    return 1 if failed else 0


def markdown(results: dict[str, Any], plots: list[str], plot_note: str | None, heading_level: int = 2) -> str:
    """The report: command, machine and load, then each suite's section (its render(), or its status)."""
    h = "#" * heading_level
    m = results["machine"]
    lines = [] if heading_level > 2 else ["# Benchmark suite report", ""]
    size = "smoke sizes" if results.get("smoke") else "quick (CI) sizes" if results["quick"] else "full sizes"
    lines += [f"Command: `{results['command']}`; {size}; "
              f"{results.get('duration_s', 0):.0f} s, started {results['started_at']}.", "",
              f"Machine: {machine.summary_line(m)} before, load {m.get('load_after')} after. "
              f"Every ratio is to a baseline measured in the same run (latency ratio: ours p50 / baseline p50).", ""]
    for name, result in results["suites"].items():
        lines += [f"{h} {name}", "", f"Status: **{result['status']}**"
                  + (f" ({result['reason']})" if result.get("reason") else "")
                  + f"; {result['duration_s']:.1f} s; load {result['load_before']} before, {result['load_after']} after.",
                  ""]
        if result["status"] == "ok":
            if result.get("baseline"):
                lines += [f"Baseline: {result['baseline']['name']}: {result['baseline']['description']}.", ""]
            module = suites.load(name)
            if hasattr(module, "render"):
                try:
                    lines += [module.render(result), ""]
                except (KeyError, TypeError, ValueError) as error:  # a result the renderer does not know
                    lines += [f"(no table: {type(error).__name__}: {error})", ""]
    if plots:
        lines += [f"{h} Plots", ""] + [f"![{os.path.basename(p)}]({p})" for p in plots] + [""]
    if plot_note:
        lines += [plot_note, ""]
    return "\n".join(lines).rstrip()


# -- plots ------------------------------------------------------------------------------------------------
def make_plots(results: dict[str, Any], plot_dir: str) -> tuple[list[str], str | None]:
    """PNG plots of what the run measured; ([], note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "Plots skipped: matplotlib is not installed (pip install 'knowledge[bench]')."
    os.makedirs(plot_dir, exist_ok=True)
    out = []
    for make in (_latency_cdfs, _recall_qps, _commit_policies, _failover, _replica_lag):
        for name, figure in make(results["suites"], plt):
            path = os.path.join(plot_dir, f"{name}.png")
            figure.savefig(path, dpi=90, bbox_inches="tight")
            plt.close(figure)
            out.append(path)
    return out, None


def _cdf(axis: Any, series: dict[str, Any], label: str) -> None:
    points = series.get("cdf_ms") or []
    if points:
        n = len(points)
        axis.plot(points, [i / max(1, n - 1) for i in range(n)], label=label)


def _latency_cdfs(suite_results: dict[str, Any], plt: Any) -> list[tuple[str, Any]]:
    """One figure per suite that has latency series: their CDFs on a log time axis."""
    out = []
    for name, result in suite_results.items():
        series = result.get("latency") if result.get("status") == "ok" else None
        if not series:
            continue
        chosen = {k: v for k, v in series.items() if name != "vectors" or k.endswith(("/1", "/0.01"))}
        figure, axis = plt.subplots(figsize=(7, 4))
        for label, s in chosen.items():
            _cdf(axis, s, label)
        axis.set(xscale="log", xlabel="latency (ms)", ylabel="fraction of calls", title=f"{name}: latency CDF")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=6)
        out.append((f"latency_cdf_{name}", figure))
    return out


def _recall_qps(suite_results: dict[str, Any], plt: Any) -> list[tuple[str, Any]]:
    """Per vector data set: one panel per selectivity, recall@10 against QPS for ours, the exact baseline
    and every peer (curves where a peer was swept over its search parameter)."""
    vectors = suite_results.get("vectors", {})
    if vectors.get("status") != "ok":
        return []
    out = []
    for key, data in vectors["sets"].items():
        selectivities = list(data["principal"])
        figure, axes = plt.subplots(1, len(selectivities), figsize=(4 * len(selectivities), 3.6), squeeze=False)
        for axis, s in zip(axes[0], selectivities, strict=True):
            base = data["baseline"][s]
            axis.scatter([base["recall"]], [1e3 / base["latency"]["mean_ms"]], marker="s", color="black",
                         label="faiss exact (baseline)")
            for f, colour in (("principal", "red"), ("where", "darkred")):
                cell = data[f][s]
                axis.scatter([cell["recall"]], [cell["qps"]], marker="*", s=140, color=colour, label=f"ours ({f})",
                             zorder=3)
            for peer, runs in (data.get("peers") or {}).get("results", {}).items():
                points = [r for r in runs.get(s, []) if "recall" in r]
                if points:
                    axis.plot([p["recall"] for p in points], [p["qps"] for p in points], marker=".", label=peer)
            axis.set(title=f"{float(s):.1%} visible", xlabel="recall@10", ylabel="QPS", yscale="log")
            axis.grid(True, alpha=0.3)
        axes[0][-1].legend(fontsize=6)
        figure.suptitle(f"vectors, {data['name']}: recall against QPS per selectivity", y=1.04)
        out.append((f"recall_qps_{key}", figure))
    return out


def _commit_policies(suite_results: dict[str, Any], plt: Any) -> list[tuple[str, Any]]:
    """Commit latency by policy: the ingest suite's local policies and the replication suite's policies."""
    policies: dict[str, dict[str, Any]] = {}
    for name in ("ingest", "replication"):
        result = suite_results.get(name, {})
        if result.get("status") == "ok":
            policies.update(result.get("commit_policies", {}))
    if not policies:
        return []
    figure, axis = plt.subplots(figsize=(7, 4))
    for label, series in policies.items():
        _cdf(axis, series, label)
    axis.set(xscale="log", xlabel="commit latency (ms)", ylabel="fraction of commits", title="commit latency by policy")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    return [("commit_latency_by_policy", figure)]


def _failover(suite_results: dict[str, Any], plt: Any) -> list[tuple[str, Any]]:
    """Writes accepted per time step around a primary kill (replication suite's `failover.timeline`)."""
    result = suite_results.get("replication", {})
    timeline = (result.get("failover") or {}).get("timeline") if result.get("status") == "ok" else None
    if not timeline:
        return []
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.plot([p["t_s"] for p in timeline], [p["writes_per_s"] for p in timeline], drawstyle="steps-post")
    for event in result["failover"].get("events", []):
        axis.axvline(event["t_s"], linestyle="--", alpha=0.6)
        axis.annotate(event["name"], (event["t_s"], 0), rotation=90, fontsize=7, va="bottom")
    axis.set(xlabel="time (s)", ylabel="acknowledged writes/s", title="failover timeline")
    axis.grid(True, alpha=0.3)
    return [("failover_timeline", figure)]


def _replica_lag(suite_results: dict[str, Any], plt: Any) -> list[tuple[str, Any]]:
    """Replica lag in LSNs and ms over time (replication suite's `lag.samples`)."""
    result = suite_results.get("replication", {})
    samples = (result.get("lag") or {}).get("samples") if result.get("status") == "ok" else None
    if not samples:
        return []
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.plot([p["t_s"] for p in samples], [p["lag_ms"] for p in samples], label="lag (ms)")
    other = axis.twinx()
    other.plot([p["t_s"] for p in samples], [p["lag_lsn"] for p in samples], color="tab:orange", label="lag (LSNs)")
    axis.set(xlabel="time (s)", ylabel="lag (ms)", title="replica lag under load")
    other.set_ylabel("lag (LSNs)")
    return [("replica_lag", figure)]


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
