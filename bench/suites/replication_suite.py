"""replication: commit latency and throughput under the commit policies async, sync(1), zones(2) and all,
against local-only commits in the same run; failover time (primary killed -> writes accepted again) and
acknowledged writes lost; replica lag in LSNs and ms under load; measured by bench/replication.py (issue
14). Reports "not available" until bench/replication.py and the replication it drives exist."""

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
    return module.suite(quick=context.quick, workdir=context.workdir)
