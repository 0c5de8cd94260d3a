"""A finiteness check per minibatch that never makes the host wait for a GPU inside a comparison pass."""

from __future__ import annotations

from typing import Callable

import torch

from .batchplan import Minibatch

__all__ = ["LateCheck"]


class LateCheck:
    """One finiteness check per minibatch without stalling a GPU: its flags are copied back without waiting,
    and read only after the next minibatch's work is queued (at once on other devices)."""

    def __init__(self, dev: torch.device, on_bad: Callable[[int, Minibatch], None]):
        self.lag, self.on_bad, self.pending = dev.type == "cuda", on_bad, None

    def push(self, flags: torch.Tensor, mb: Minibatch) -> None:
        if not self.lag:
            self._check(flags.cpu(), mb)
            return
        host = torch.empty(flags.shape, dtype=torch.bool, pin_memory=True)
        host.copy_(flags, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        previous, self.pending = self.pending, (host, event, mb)
        if previous is not None:
            self._wait(previous)

    def finish(self) -> None:
        previous, self.pending = self.pending, None
        if previous is not None:
            self._wait(previous)

    def _wait(self, pending) -> None:
        host, event, mb = pending
        event.synchronize()
        self._check(host, mb)

    def _check(self, flags: torch.Tensor, mb: Minibatch) -> None:
        if not bool(flags.all()):
            self.on_bad(int((~flags).nonzero()[0]), mb)
