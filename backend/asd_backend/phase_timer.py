"""Where a training step's time goes: named phases timed with the device synchronised around them.

The training loops take an optional `PhaseTimer`; without one nothing is timed or synchronised, so
the product pays nothing. `asd bench speed` passes one. One backward pass covers several models
(ε_φ and the losses, then the VAE, then the renderer), so `split_backward` watches the tensors where
one ends and the next begins: autograd reaches them in that order, and the time at which each
gradient arrives divides the pass.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor


class PhaseTimer:
    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.current: dict[str, float] = defaultdict(float)
        self._watched: list[tuple[Tensor, str]] = []
        self._rest = "backward"
        self._arrivals: list[tuple[str, float]] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            end = time.perf_counter()
            if name == "backward" and self._arrivals:
                for label, at in self._arrivals:
                    self.current[label] += at - start
                    start = at
                self.current[self._rest] += end - start
                self._arrivals = []
            else:
                self.current[name] += end - start

    def split_backward(self, watched: Sequence[tuple[Tensor, str]], rest: str) -> None:
        """In the next `phase("backward")`, the time until each watched tensor's gradient arrives is
        booked under its label (in the order given), the remainder under `rest`."""
        self._rest = rest
        for tensor, label in watched:
            if tensor.requires_grad:
                tensor.register_hook(lambda grad, label=label: self._arrive(label))

    def _arrive(self, label: str) -> None:
        self._sync()
        self._arrivals.append((label, time.perf_counter()))

    def end_step(self) -> dict[str, float]:
        """The phases of the step that just ended (seconds), and a fresh start for the next."""
        done, self.current = dict(self.current), defaultdict(float)
        self._arrivals = []
        return done


def phases_of(timer: PhaseTimer | None) -> Callable[[str], AbstractContextManager]:
    """`timer.phase`, or a context that does nothing when the run is not timed."""
    return timer.phase if timer is not None else (lambda name: nullcontext())
