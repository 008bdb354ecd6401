"""replication: commit latency and throughput under the commit policies async, sync(1), zones(2) and all,
against local-only commits in the same run; failover time (primary killed -> writes accepted again) and
acknowledged writes lost; replica lag in LSNs and ms under load; measured by bench/replication.py (issue
14). Reports "not available" until bench/replication.py and the replication it drives exist.

What this suite expects of `bench.replication.suite(quick, workdir) -> dict` (the report's plots and
bench/slo.toml read these keys): `baseline` {name, description} (local-only commits), `ratios` {name: float},
`commit_policies` {policy: latency series}, `failover` {"timeline": [{t_s, writes_per_s}], "events":
[{t_s, name}], "acked_lost": int}, `lag` {"series": latency series of lag samples in ms, "samples":
[{t_s, lag_ms, lag_lsn}]}; a latency series is bench.measure.series_ms(latencies_ms)."""

from __future__ import annotations

import importlib
import os
from typing import Any

from bench.suites import Context

NAME = "replication"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(context: Context) -> dict[str, Any]:
    from bench.runner import NotAvailable

    if not os.path.exists(os.path.join(HERE, "replication.py")):
        raise NotAvailable("bench/replication.py does not exist yet (log shipping and failover, issue 14)")
    try:
        module = importlib.import_module("bench.replication")
    except ImportError as error:
        raise NotAvailable(f"replication cannot be imported here: {error}") from error
    if not hasattr(module, "suite"):
        raise NotAvailable("bench/replication.py has no suite(quick, workdir) entry point yet")
    if context.smoke:
        raise NotAvailable("skipped at --smoke size: three server processes per commit policy take minutes")
    if context.smoke:
        raise NotAvailable("skipped at --smoke size: five three-node clusters take minutes to start")
    return module.suite(quick=context.quick, workdir=context.workdir)


def render(result: dict[str, Any]) -> str:
    import importlib

    return importlib.import_module("bench.replication")._markdown(result)
