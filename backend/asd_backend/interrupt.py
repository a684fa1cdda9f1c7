"""Stopping inside long phases: a cancel, or a worker whose server is gone, lands within a chunk.

Loops that can run for seconds (marching-cubes grids, preview and turntable renders, texture bakes,
ray casting) take a `should_stop` callable and call `check(should_stop)` between chunks; it raises
`Interrupted`, which the training loops turn into a clean stop (checkpoint written, nothing half-saved).
"""

from __future__ import annotations

from collections.abc import Callable

StopCheck = Callable[[], bool] | None


class Interrupted(Exception):
    """should_stop() said stop in the middle of a long phase."""


def check(should_stop: StopCheck) -> None:
    if should_stop is not None and should_stop():
        raise Interrupted
