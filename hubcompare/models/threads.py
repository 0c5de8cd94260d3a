"""How many torch CPU threads to use when the user names none.

Why not torch's default (one thread per core): on Linux torch runs its intra-op parallelism on OpenMP
(libgomp). Every parallel region ends at a barrier where the finished threads spin (libgomp's default spin
count), and the region ends only when its slowest thread does. When another process holds one of the cores,
the thread that shares that core runs only in its scheduler slices: every parallel region then waits up to a
slice for it, while the spinning peers burn the CPU time the descheduled one needed. A digits ResNet has
thousands of tiny regions per epoch; on the 2-core development machine with the other core busy,
`train digits` took 73-77 s with 2 threads and 4 s with 1 (``benchmarks/threads.py`` for the figures).

The rule (:func:`choose_threads`), in order:

1. at most the cores this process may use (``os.sched_getaffinity``), and at most ``at_most``;
2. small work per step (a forward pass under ``SMALL_STEP_MACS`` multiply-accumulates per batch, e.g. the
   digits ResNets): 1 thread -- its parallel regions are too short to gain from a second thread and lose
   the most when a core is shared;
3. ``by_load``: at most the cores idle right now, sampled from ``/proc/stat`` over ``SAMPLE_S`` (elsewhere
   the 1-minute load average), at least 1. Time of niced processes counts as idle for a process that is not
   niced itself (the scheduler gives a nice-19 peer ~1.5% of a shared core).

A run's resume state records the count it chose, and a resumed run reuses it (the thread count can change
the last bits of float32 results). :func:`forward_macs` counts a model's multiply-accumulates per image.
Nothing here imports torch at module level.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["SMALL_STEP_MACS", "SAMPLE_S", "ThreadChoice", "ThreadPolicy", "usable_cores", "idle_cores", "choose_threads",
           "forward_macs", "set_torch_threads"]

# A forward pass of one batch under this many multiply-accumulates trains on one thread whatever the load
# (benchmarks/threads.py: the digits ResNet-14 at batch 64, 0.11 G, ran 17-23x slower on 2 threads than on 1 with
# a busy core, and 23x with only other people's jobs running; on an idle machine its regions are too short
# to gain much from a second thread (not measured: the machine was never idle); the CIFAR ResNet-20 at batch 128 is 5.2 G; the
# digits-blocks ResNet-56 at 128 is 1.0 G, so just above: by the load)
SMALL_STEP_MACS = 1e9
SAMPLE_S = 0.15
# a core counts as idle when at least this share of it was idle over the sample (a busy peer at 30% still stalls
# every parallel region it shares a core with)
IDLE_SHARE = 0.75
_STAT = "/proc/stat"


@dataclass(frozen=True)
class ThreadPolicy:
    """How to choose when the user named no count: ``at_most`` (e.g. a grid worker's share of the CPUs), and
    ``by_load`` (count the cores idle now; False when a rerun must get the same count as the first run)."""

    at_most: int | None = None
    by_load: bool = True


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # why, for one line of output: "the other core is busy", "small model", ...

    def describe(self) -> str:
        return f"threads: {self.threads} ({self.reason})"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def _cpu_ids() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        return None


def _read_stat(path: str) -> dict[int, list[int]]:
    """Per-CPU jiffies from /proc/stat: ``{cpu: [user, nice, system, idle, iowait, irq, softirq, steal, ...]}``."""
    found = {}
    with open(path, encoding="ascii") as f:
        for line in f:
            name, _, rest = line.partition(" ")
            if name.startswith("cpu") and name[3:].isdigit():
                found[int(name[3:])] = [int(v) for v in rest.split()]
    return found


def idle_cores(sample_s: float = SAMPLE_S, *, stat_path: str = _STAT, cpus: set[int] | None = None,
               count_nice_as_idle: bool | None = None, sleep: Callable[[float], None] = time.sleep,
               loadavg: Callable[[], Sequence[float]] | None = None) -> float | None:
    """Cores idle right now among ``cpus`` (default: this process's affinity), each counted only when at least
    ``IDLE_SHARE`` of it was idle over ``sample_s``; None when nothing can be read. From ``/proc/stat`` where it
    exists, else ``cores - 1-minute load average``."""
    cpus = _cpu_ids() if cpus is None else cpus
    if count_nice_as_idle is None:
        count_nice_as_idle = _own_nice() <= 0
    try:
        before = _read_stat(stat_path)
        sleep(sample_s)
        after = _read_stat(stat_path)
    except (OSError, ValueError):
        before = after = {}
    if before and after:
        idle = 0
        for cpu in sorted(after):
            if (cpus is not None and cpu not in cpus) or cpu not in before:
                continue
            d = [a - b for a, b in zip(after[cpu], before[cpu])]
            total = sum(d[:8])
            if total <= 0:  # no tick in the sample: nothing ran there either
                idle += 1
                continue
            free = d[3] + (d[4] if len(d) > 4 else 0) + (d[1] if count_nice_as_idle else 0)
            idle += free / total >= IDLE_SHARE
        return float(idle)
    try:
        load = (loadavg or os.getloadavg)()[0]
    except (AttributeError, OSError):
        return None
    n = len(cpus) if cpus else usable_cores()
    return float(max(0, math.floor(n - load + (1 - IDLE_SHARE))))


def _own_nice() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return 0


def choose_threads(macs_per_step: float | None = None, policy: ThreadPolicy | None = None, *,
                   cores: int | None = None, idle: Callable[[], float | None] = idle_cores) -> ThreadChoice:
    """The thread count for work of ``macs_per_step`` forward multiply-accumulates per batch (None: unknown, e.g.
    a comparison pass) under ``policy`` (see the module docstring). ``cores``/``idle``: for tests."""
    policy = policy or ThreadPolicy()
    n = cores if cores is not None else usable_cores()
    limit, why = n, f"{n} usable core{'s' if n != 1 else ''}"
    if policy.at_most is not None and policy.at_most < limit:
        limit, why = max(1, policy.at_most), f"this run's share of {n} cores"
    if limit == 1:
        return ThreadChoice(1, why)
    if macs_per_step is not None and macs_per_step < SMALL_STEP_MACS:
        return ThreadChoice(1, f"small model: {macs_per_step / 1e9:.2g} G multiply-adds a batch")
    if policy.by_load:
        free = idle()
        if free is not None and free < limit:
            count = max(1, int(free))
            busy = n - int(free)
            if n == 2:
                return ThreadChoice(count, "the other core is busy" if count == 1 else "one core is busy")
            return ThreadChoice(count, f"{busy} of {n} cores busy")
    return ThreadChoice(limit, why)


def forward_macs(model, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of ``model`` on one input of ``input_shape`` (C, H, W),
    counted over its convolutions and linear layers (the rest is a few percent of a ResNet). Runs one
    forward pass of a single zero image on the model's device, in eval mode (BatchNorm statistics untouched)."""
    import torch
    from torch import nn

    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total[0] += output.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        x = torch.zeros((1, *input_shape), device=param.device if param is not None else "cpu")
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return int(total[0])


def set_torch_threads(threads: int | None, macs_per_step: float | None = None,
                      policy: ThreadPolicy | None = None) -> ThreadChoice:
    """Set torch's intra-op threads: ``threads`` when given, else :func:`choose_threads`. Returns the choice."""
    import torch

    choice = ThreadChoice(int(threads), "as asked") if threads else choose_threads(macs_per_step, policy)
    torch.set_num_threads(choice.threads)
    return choice
