"""A benchmark's job events: a progress bar on stderr (stdout carries only the JSON report)."""

from __future__ import annotations

import sys

from ..job_events import JobEvents


class BarEvents(JobEvents):
    """Counts steps on a tqdm bar and shows the phase after the optimisation; use it as a context manager.
    `keep` keeps every step's metrics in `trace` (per-step traces for the reports)."""

    def __init__(self, total: int, desc: str, keep: bool = False) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr)
        self.keep = keep
        self.trace: list[dict[str, float]] = []

    def progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.bar.update(step - self.bar.n)
        if self.keep:
            self.trace.append({"step": step, **{k: float(v) for k, v in metrics.items()
                                                if isinstance(v, (int, float))}})

    def phase(self, name: str, message: str) -> None:
        self.bar.set_description(f"{name}: {message}")

    def __enter__(self) -> BarEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
