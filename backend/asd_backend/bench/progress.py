"""A benchmark's job events: a progress bar on stderr (stdout carries only the JSON report)."""

from __future__ import annotations

import sys

from ..job_events import JobEvents


class BarEvents(JobEvents):
    """Counts steps on a tqdm bar and shows the phase after the optimisation; use it as a context manager."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr)

    def progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.bar.update(step - self.bar.n)

    def phase(self, name: str, message: str) -> None:
        self.bar.set_description(f"{name}: {message}")

    def __enter__(self) -> BarEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
