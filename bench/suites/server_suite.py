"""server: get, search and retrieve through `knowledge serve` over loopback gRPC, with 1, 8 and 64
concurrent clients, as ratios to the embedded call in the same run, and commit latency while readers run
against commit latency idle; measured by bench/server.py (issue 13). Reports "not available" until
bench/server.py and the server it drives exist."""

from __future__ import annotations

import importlib
import os
from typing import Any

from bench.suites import Context

NAME = "server"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module() -> Any:
    from bench.runner import NotAvailable

    if not os.path.exists(os.path.join(HERE, "server.py")):
        raise NotAvailable("bench/server.py does not exist yet (the gRPC server's benchmark, issue 13)")
    try:
        importlib.import_module("knowledge.server")
        return importlib.import_module("bench.server")
    except ImportError as error:
        raise NotAvailable(f"the server cannot be imported here: {error}") from error


def run(context: Context) -> dict[str, Any]:
    from bench.runner import NotAvailable

    module = _module()
    if not hasattr(module, "suite"):
        raise NotAvailable("bench/server.py has no suite(quick, workdir) entry point yet")
    return module.suite(quick=context.quick, workdir=context.workdir)
