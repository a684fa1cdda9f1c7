"""What a running job tells its host, and how the host stops it: one object instead of callbacks.

The loops (train/text_to_3d.py, train/image_2d.py, texture/edit.py) and the job runner call these
methods; a host overrides the ones it shows: the CLI draws a progress bar, the server's worker sends
protocol messages, a benchmark passes nothing and the job runs silently. Torch-free.
"""

from __future__ import annotations

from typing import Any


class JobEvents:
    """Every method does nothing here; `should_stop` never stops."""

    def should_stop(self) -> bool:
        """Polled every step and between chunks of long phases (meshing, rendering): True checkpoints and ends
        the job early."""
        return False

    def progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        """After every optimisation step; `metrics` holds the losses and `seconds` since the loop began."""

    def phase(self, name: str, message: str) -> None:
        """The work changed phase after the optimisation ("extracting": the final mesh, then any turntable frames)."""

    def snapshot(self, snapshot: Any) -> None:
        """A 3D job's preview or final mesh with its render (train/text_to_3d.py's Snapshot), already on disk
        when it comes from the job runner."""

    def frame(self, frame: Any) -> None:
        """An image job's ImageFrame or an edit's TextureFrame, preview or final."""


class Relay(JobEvents):
    """Passes everything to `host` (a subclass adds its own work before passing it on)."""

    def __init__(self, host: JobEvents | None) -> None:
        self.host = host or JobEvents()

    def should_stop(self) -> bool:
        return self.host.should_stop()

    def progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.host.progress(step, total, metrics)

    def phase(self, name: str, message: str) -> None:
        self.host.phase(name, message)

    def snapshot(self, snapshot: Any) -> None:
        self.host.snapshot(snapshot)

    def frame(self, frame: Any) -> None:
        self.host.frame(frame)
