"""A host for the loops in tests: keeps every event a job sends, and stops when `stop()` says so."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asd_backend.job_events import JobEvents


class Recording(JobEvents):
    def __init__(self, stop: Callable[[], bool] = lambda: False) -> None:
        self.stop = stop
        self.metrics: dict[int, dict[str, float]] = {}  # step → metrics
        self.phases: list[str] = []
        self.snapshots: list[Any] = []
        self.frames: list[Any] = []

    def should_stop(self) -> bool:
        return self.stop()

    def progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.metrics[step] = metrics

    def phase(self, name: str, message: str) -> None:
        self.phases.append(name)

    def snapshot(self, snapshot: Any) -> None:
        self.snapshots.append(snapshot)

    def frame(self, frame: Any) -> None:
        self.frames.append(frame)
