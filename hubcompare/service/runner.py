"""What a job worker runs: a validated request through :func:`~hubcompare.comparisons.run.run_request`.

The request is checked again here (``allow_paths=False``), in the process that acts on it, and every location
(the store, the registry, the data folder) comes from the server's settings, never from the request.
"""

from __future__ import annotations

import torch

from ..comparisons.requests import ComparisonRequest
from ..comparisons.run import run_request
from ..hub.registry import Registry
from ..results.store import ResultStore

__all__ = ["run_comparison", "worker_settings"]


def worker_settings(config) -> dict:
    """The JSON-able part of a :class:`~.config.ServiceConfig` a worker needs."""
    return {"data_dir": str(config.data_dir) if config.data_dir else None,
            "results_dir": str(config.results_dir) if config.results_dir else None,
            "registry_path": str(config.registry_path) if config.registry_path else None, "threads": config.threads}


def run_comparison(request: dict, settings: dict, on_progress) -> dict:
    req = ComparisonRequest.from_json(request, allow_paths=False)
    if settings.get("threads"):  # the server's --threads (on Ray: the CPUs the task asked for)
        torch.set_num_threads(int(settings["threads"]))
    registry = Registry(settings["registry_path"]) if settings.get("registry_path") else None
    outcome = run_request(req, store=ResultStore(settings.get("results_dir")), data_dir=settings.get("data_dir"),
                          on_progress=on_progress, registry=registry)
    return {"result_key": outcome.key, "from_store": outcome.from_store, "notices": outcome.notices,
            "warnings": outcome.warnings}
