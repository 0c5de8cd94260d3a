"""Sharded CKA: one comparison's minibatch plan split over Ray workers, with the numbers of one process.

The minibatch estimator is a sum over minibatches (:class:`~.cka.MinibatchCKA`): each minibatch adds an
(L, L) float64 matrix ``n * HSIC_1`` over every layer of every model, and the jackknife needs only those
matrices. So a comparison can be cut into shards of its plan and put back together exactly:

- the driver sets the comparison up as :func:`~.engine.compare` does (:class:`~.engine.ComparisonPass`:
  settings checked, every model's layers captured, the plan made), so a bad setting fails before any worker
  starts, and the driver knows the layers, warnings and provenance;
- the plan is cut into ``workers`` contiguous shards, one Ray task each. A task resolves every model
  itself, once, from its reference (pinned: a Hub model to the commit the driver loaded, a folder to its
  absolute path, so on a cluster folders must be on a filesystem every node sees; models are never
  pickled), gets the dataset once through Ray's object store, runs its minibatches with the same code as
  one process (:meth:`~.engine.ComparisonPass.contributions`) and streams back each minibatch's matrices
  (a few KB each: the driver's progress bar moves per minibatch);
- the driver checks that each worker captured the same layers, then adds the matrices in plan order into
  the same accumulators one process fills. The same float64 additions in the same order: values and
  jackknife standard errors are those of one process, bit for bit, whenever the workers' minibatch
  matrices are (same device type, and on the CPU the same torch thread count, ``threads``: float32
  kernels may round differently with more threads; elsewhere they differ in the last bits only).

Ray is reached through :func:`hubcompare.training.backends.connect_ray` (an initialised Ray is used as it
is; otherwise the cluster at ``address`` or a local Ray started, and stopped, here) and imported only then.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..data.datasets import ImageDataset
from ..errors import CompareBackendError, HubcompareError
from ..hub.references import resolve_reference
from ..models.checkpoint import DEFAULT_MAX_PARAMS
from ..models.devices import describe_device
from ..training.backends import connect_ray, ray_node_cpus
from .engine import BatchContribution, CompareModel, Comparison, ComparisonPass
from .settings import PassSettings

__all__ = ["ModelSource", "RayShards", "compare_sharded", "shard_bounds"]


@dataclass(frozen=True)
class ModelSource:
    """What a worker needs to load one model itself: its name in results, the reference it resolves, its layer
    patterns and the size limit (``max_params``) it is loaded under."""

    name: str
    ref: str
    layers: tuple[str, ...] | None
    max_params: int = DEFAULT_MAX_PARAMS

    @classmethod
    def of(cls, model: CompareModel, max_params: int = DEFAULT_MAX_PARAMS) -> ModelSource:
        resolved = model.provenance.get("resolved")
        if not resolved:
            raise CompareBackendError(
                f"{model.ref}: sharded workers load every model from its reference and this one has none; make it with "
                "CompareModel.from_resolved(resolve_reference(...)) or compare it in one process.")
        if resolved.startswith("local-dir:") and model.provenance.get("path"):  # a worker's working folder may differ
            resolved = f"local-dir:{Path(model.provenance['path']).resolve()}"
        return cls(model.ref, resolved, None if model.layers is None else tuple(model.layers), max_params)


def shard_bounds(num_batches: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous, non-empty ranges of plan positions covering ``num_batches``, sizes differing by one at most."""
    shards = max(1, min(shards, num_batches))
    cuts = [k * num_batches // shards for k in range(shards + 1)]
    return list(zip(cuts, cuts[1:]))


def _run_shard(sources: Sequence[ModelSource], dataset: ImageDataset, indices: Sequence[int], settings: PassSettings,
               threads: int):
    """A worker's shard (a Ray streaming task): a header describing the worker and its layers, then one
    :class:`BatchContribution` per minibatch at ``indices``, in order."""
    torch.set_num_threads(max(1, threads))
    models = [CompareModel.from_resolved(resolve_reference(s.ref, max_params=s.max_params),
                                         None if s.layers is None else list(s.layers), ref=s.name) for s in sources]
    with ComparisonPass(models, dataset, settings) as run:
        yield {"layers": run.layer_names, "host": socket.gethostname(), "pid": os.getpid(),
               "device": describe_device(run.dev)}
        for c in run.contributions(indices):
            yield c.cpu()


class RayShards:
    """Where sharded comparisons run: Ray (``address``, or an initialised Ray, or a local one started here and
    stopped by :meth:`close`), ``workers`` shards per comparison (default: the cluster's CPUs, at most one per
    minibatch), each with ``threads`` torch threads and as many CPUs (default: the CPUs split between the
    shards, at most a node's). ``max_params``: the size limit workers load models under. A context manager."""

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int | None = None,
                 max_params: int = DEFAULT_MAX_PARAMS):
        for name, value in (("workers", workers), ("threads", threads)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise CompareBackendError(f"{name} = {value!r} must be an integer >= 1", params=(name,))
        self.address, self.workers, self.threads, self.max_params = address, workers, threads, max_params
        self.ray, self._owns = connect_ray(address, CompareBackendError)
        self.node_cpus = ray_node_cpus(self.ray)
        if threads is not None and threads > max(self.node_cpus):
            self.close()
            raise CompareBackendError(f"each shard asks for {threads} CPUs (threads) but the largest Ray node has "
                                      f"{max(self.node_cpus):g}: lower threads.", params=("threads",))

    def __enter__(self) -> RayShards:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the local Ray started here, if any (a Ray found initialised, or a cluster, is left running)."""
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns = False

    def compare(self, models: Sequence[CompareModel], dataset: ImageDataset, settings: PassSettings | None = None, *,
                on_batch: Callable[[int, int], None] | None = None, **options) -> Comparison:
        """:func:`~.engine.compare`, its plan sharded over Ray workers: the same arguments and result (see the module
        doc for when it is bit for bit the same); the settings' ``backend`` records the shards and workers."""
        sources = [ModelSource.of(m, self.max_params) for m in models]
        with ComparisonPass(models, dataset, PassSettings.of(settings, **options)) as run:
            total_cpus = max(1, int(sum(self.node_cpus)))
            bounds = shard_bounds(len(run.plan), self.workers or total_cpus)
            threads = self.threads or max(1, min(total_cpus // len(bounds), int(max(self.node_cpus))))
            gpus = 1 if run.dev.type == "cuda" else 0  # a CUDA comparison: each shard on a GPU of its own
            # the workers run the plan as the driver resolved it (batch size, examples, device type, pipeline, products)
            worker = replace(run.settings, batch_size=run.batch_size, num_examples=run.n_total, device=run.dev.type,
                             pipeline=run.pipeline, hsic_products=run.products)
            headers, got = self._run(run, sources, dataset, bounds, worker, threads, gpus, on_batch)
            acc = run.accumulators()
            for index in range(len(run.plan)):  # plan order: the additions one process makes
                run.add(acc, got[index])
            return run.result(acc, {
                "name": "ray",
                "address": self.address or ("a local Ray" if self._owns else "the Ray this process had initialised"),
                "shards": len(bounds),
                "minibatches_per_shard": [hi - lo for lo, hi in bounds],
                "threads_per_shard": threads,
                "workers": [{"host": h["host"], "pid": h["pid"], "device": h["device"]} for h in headers],
            })

    def _run(self, run: ComparisonPass, sources, dataset, bounds, settings: PassSettings, threads, gpus, on_batch):
        """Submit one streaming task per shard; collect headers (checked) and contributions by plan position."""
        ray = self.ray
        task = ray.remote(_run_shard).options(num_returns="streaming", num_cpus=threads, num_gpus=gpus, max_retries=0,
                                              retry_exceptions=False)
        data = ray.put(dataset)
        streams = {task.remote(sources, data, list(range(lo, hi)), settings, threads): k for k, (lo, hi) in enumerate(bounds)}
        headers: dict[int, dict] = {}
        got: dict[int, BatchContribution] = {}
        pending = list(streams)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for stream in ready:
                    k = streams[stream]
                    try:
                        ref = next(stream)
                    except StopIteration:
                        continue
                    item = self._get(ref, k, bounds)
                    pending.append(stream)
                    if k not in headers:
                        self._check_layers(item, run, k, bounds)
                        headers[k] = item
                        continue
                    lo, hi = bounds[k]
                    if not (isinstance(item, BatchContribution) and lo <= item.index < hi):
                        raise CompareBackendError(f"shard {k + 1} sent a result for another minibatch than its own")
                    got[item.index] = item
                    if on_batch:
                        on_batch(len(got), len(run.plan))
        finally:
            for stream in pending:
                try:
                    ray.cancel(stream, force=True)
                except Exception:  # pragma: no cover - finished or gone already
                    pass
        missing = [i for i in range(len(run.plan)) if i not in got]
        if missing:
            raise CompareBackendError(f"the workers returned {len(got)} of {len(run.plan)} minibatches (first missing: "
                                      f"{missing[0]}); rerun the comparison")
        return [headers[k] for k in sorted(headers)], got

    def _get(self, ref, k: int, bounds):
        ray = self.ray
        lo, hi = bounds[k]
        where = f"shard {k + 1} of {len(bounds)} (minibatches {lo}-{hi - 1})"
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, HubcompareError):  # the worker's own typed error, as one process would raise it
                raise cause from None
            why = f"{type(cause).__name__}: {cause}" if cause is not None else _first_line(e)
            raise CompareBackendError(f"{where} failed in its worker ({why[:300]})") from None
        except ray.exceptions.RayError as e:  # the worker died (killed, out of memory) or its node was lost
            raise CompareBackendError(f"{where} was lost ({type(e).__name__}: {_first_line(e)[:300]}); rerun the "
                                      "comparison") from None

    @staticmethod
    def _check_layers(header, run: ComparisonPass, k: int, bounds) -> None:
        if not isinstance(header, dict) or header.get("layers") != run.layer_names:
            names = [m.ref for m, a, b in zip(run.models, header.get("layers", []) if isinstance(header, dict) else [],
                                              run.layer_names) if a != b]
            raise CompareBackendError(
                f"shard {k + 1}'s worker ({header.get('host') if isinstance(header, dict) else '?'}) loaded "
                f"{', '.join(names) or 'the models'} with other layers than this process: every node must see the same "
                "checkpoint folders and package versions")


def _first_line(e: BaseException) -> str:
    return next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)


def compare_sharded(models: Sequence[CompareModel], dataset: ImageDataset, settings: PassSettings | None = None, *,
                    address: str | None = None, workers: int | None = None, threads: int | None = None,
                    max_params: int = DEFAULT_MAX_PARAMS, **kwargs) -> Comparison:
    """:func:`~.engine.compare` (same arguments) sharded over Ray: :class:`RayShards` for one comparison."""
    with RayShards(address, workers, threads, max_params) as shards:
        return shards.compare(models, dataset, settings, **kwargs)
