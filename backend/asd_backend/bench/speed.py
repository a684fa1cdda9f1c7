"""`asd bench speed`: seconds per training step and peak memory of a preset, on any device.

The GPU figures of docs/benchmarks.md come from this (`--preset standard --teacher random-sd21
--device cuda`): the full-size SD 2.1-base architecture with random weights costs what the real
model costs. Steps are timed after a warm-up; resolution is forced to the preset's largest render
side (`--resolution`) so the expensive phase is what gets measured.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from asd_protocol.job_spec import MAX_STEPS, merge

from ..teachers import load_teacher
from ..train.presets import resolve_spec
from ..train.text_to_3d import generate


def run(preset: str = "standard", teacher: str = "random-sd21", device: str = "auto", method: str = "asd",
        steps: int = 20, warmup: int = 3, resolution: int | None = None, loaded=None) -> dict[str, Any]:
    """Time one preset; `loaded` reuses a teacher already loaded (several presets in one call)."""
    loaded = loaded or load_teacher(teacher, device)
    base = resolve_spec({"prompt": "a ceramic teapot", "preset": preset, "guidance": {"method": method}}, seed=0)
    side = resolution or max(side for _, side in base.schedule.resolution_schedule)
    spec = resolve_spec(merge(base.to_json(), {
        "schedule": {"steps": warmup + steps, "resolution_schedule": [[0, side]], "checkpoint_every": MAX_STEPS},
        "output": {"mesh_every": 0, "mc_resolution": 64}}))
    cuda = loaded.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(loaded.device)
    stamps: list[float] = []
    losses: list[float] = []

    def on_progress(step: int, total: int, metrics: dict[str, float]) -> None:
        if cuda:
            torch.cuda.synchronize(loaded.device)
        stamps.append(time.perf_counter())
        if "loss_discriminator" in metrics:
            losses.append(metrics["loss_discriminator"])

    generate(loaded, spec, on_progress=on_progress)
    per_step = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:], strict=False)]
    return {
        "benchmark": "speed", "preset": preset, "teacher": teacher, "method": method,
        "device": torch.cuda.get_device_name(loaded.device) if cuda else "cpu",
        "render_resolution": side, "samples_per_ray": base.nerf.samples_per_ray, "steps_timed": len(per_step),
        "seconds_per_step": round(statistics.median(per_step), 4) if per_step else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(loaded.device) / 2**30, 2) if cuda else None,
        "weights_dtype": str(loaded.dtype).removeprefix("torch."),
        # ε_φ's loss over the timed steps, first and last fifth: it should fall (a flat loss in half
        # precision would mean its gradients underflow).
        "discriminator_loss_trend": _trend(losses),
        "preset_steps": base.steps,
        "estimated_preset_minutes": round(statistics.median(per_step) * base.steps / 60, 1) if per_step else None,
    }


def _trend(values: list[float]) -> dict[str, float] | None:
    if len(values) < 5:
        return None
    k = max(1, len(values) // 5)
    return {"first": round(statistics.mean(values[:k]), 5), "last": round(statistics.mean(values[-k:]), 5),
            "steps": len(values)}
