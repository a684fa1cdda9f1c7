"""A job's events as a progress bar on stderr (stdout stays for results and JSON reports): the CLI's and the
benchmarks' host for the loops (job_events.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .job_events import JobEvents


class ProgressBar(JobEvents):
    """A tqdm bar of the steps; use it as a context manager (the bar closes whatever happens).

    `stop`: polled as the job's should_stop (the CLI's Ctrl-C). `details`: the loss and render side beside
    the bar, and each later phase on its own line (the CLI); without, the phase names the bar (benchmarks).
    `keep`: every step's metrics are kept in `trace` (per-step traces for the reports)."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, stop: Callable[[], bool] | None = None,
                 details: bool = False, keep: bool = False) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.stop, self.details, self.keep = stop, details, keep
        self.trace: list[dict[str, float]] = []

    def should_stop(self) -> bool:
        return self.stop is not None and self.stop()

    def progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        if self.details:
            shown = {"loss": f"{metrics['loss']:.3g}"} if "loss" in metrics else {}
            if "resolution" in metrics:
                shown["res"] = int(metrics["resolution"])
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(step - self.bar.n)  # redrawn at tqdm's own pace, not every step
        if self.keep:
            self.trace.append({"step": step, **{k: float(v) for k, v in metrics.items()
                                                if isinstance(v, (int, float))}})

    def phase(self, name: str, message: str) -> None:
        if self.details:
            self.bar.close()
            print(f"{name}: {message}…", file=sys.stderr, flush=True)
        else:
            self.bar.set_description(f"{name}: {message}")

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
