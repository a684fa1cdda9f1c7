"""`asd bench speed`: where a training step's time goes, and the final extraction, on any device.

The GPU figures of docs/benchmarks.md come from this (`--preset standard --teacher random-sd21
--device cuda`): the full-size SD 2.1-base architecture with random weights costs what the real
model costs. Resolution is forced to the preset's largest render side (`--resolution`) so the
expensive phase is what gets measured.

`seconds_per_step` is the steady state: the median over `steps` steps after a warm-up that reaches
past the first occupancy refresh of the reference path (step 16), so both paths are timed skipping
empty space; the warm-up is reported on its own. Each step is split into phases (PhaseTimer):
render forward and backward, the VAE, the teacher, ε_φ, the optimizer and the occupancy refresh.
`extract_seconds` is the final mesh of the trained field at the preset's marching-cubes resolution.
`--compare` runs the reference path (the plain hash-grid encoding, occupancy refreshes over the
whole cube from step 16, full-grid extraction) and the fast one in one process, and gives the ratios.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from asd_protocol.job_spec import MAX_STEPS, merge

from ..job_events import JobEvents
from ..phase_timer import PhaseTimer
from ..teachers import load_teacher
from ..train.presets import resolve_spec
from ..train.text_to_3d import generate


def run(preset: str = "standard", teacher: str = "random-sd21", device: str = "auto", method: str = "asd",
        steps: int = 20, warmup: int | None = None, resolution: int | None = None, loaded=None,
        implementation: str = "fast", seed: int = 0) -> dict[str, Any]:
    """Time one preset; `loaded` reuses a teacher already loaded (several presets in one call)."""
    loaded = loaded or load_teacher(teacher, device)
    base = resolve_spec({"prompt": "a ceramic teapot", "preset": preset, "guidance": {"method": method}}, seed=seed)
    side = resolution or max(side for _, side in base.schedule.resolution_schedule)
    warmup = base.nerf.occupancy_update_every + 1 if warmup is None else warmup
    spec = resolve_spec(merge(base.to_json(), {
        "schedule": {"steps": warmup + steps, "resolution_schedule": [[0, side]], "checkpoint_every": MAX_STEPS},
        "output": {"mesh_every": 0, "texture_size": 0}}))
    cuda = loaded.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(loaded.device)
    per_step: list[dict[str, float]] = []
    extract_began: list[float] = []

    class Timing(JobEvents):
        def progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
            per_step.append(metrics)

        def phase(self, name: str, message: str) -> None:
            if cuda:
                torch.cuda.synchronize(loaded.device)
            extract_began.append(time.perf_counter())

    timer = PhaseTimer(loaded.device)
    result = generate(loaded, spec, events=Timing(), timer=timer, implementation=implementation)
    if cuda:
        torch.cuda.synchronize(loaded.device)
    extract_seconds = time.perf_counter() - extract_began[0] if extract_began else None
    seconds = [m["seconds"] for m in per_step]
    durations = [b - a for a, b in zip([0.0, *seconds], seconds, strict=False)]
    timed, warm = per_step[warmup:], durations[:warmup]
    phases = sorted({k for m in timed for k in m if k.startswith("seconds_")})
    steady = statistics.median(durations[warmup:]) if timed else None
    return {
        "benchmark": "speed", "preset": preset, "teacher": teacher, "method": method,
        "implementation": implementation,
        "device": torch.cuda.get_device_name(loaded.device) if cuda else "cpu",
        "threads": torch.get_num_threads(),
        "render_resolution": side, "samples_per_ray": base.nerf.samples_per_ray, "steps_timed": len(timed),
        "seconds_per_step": _round(steady),
        "warmup_steps": warmup, "warmup_seconds_per_step": _round(statistics.median(warm)) if warm else None,
        "seconds_per_step_mean": _round(statistics.mean(durations[warmup:])) if timed else None,
        # Mean seconds per timed step in each phase (means, so that occasional work such as the
        # occupancy refresh counts at its share); "other" is what no phase covers (camera sampling,
        # losses, bookkeeping): the phases add up to seconds_per_step_mean.
        "phases": _phases(timed, durations[warmup:], phases) if timed else {},
        "samples_generated": _mean(m["samples_total"] for m in timed),
        "samples_evaluated": _mean(m["samples_evaluated"] for m in timed),
        "extract_seconds": _round(extract_seconds),
        "mc_resolution": base.output.mc_resolution,
        "mesh_faces": len(result.mesh.faces) if result.mesh is not None else 0,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(loaded.device) / 2**30, 2) if cuda else None,
        "weights_dtype": str(loaded.dtype).removeprefix("torch."),
        # ε_φ's loss over the timed steps, first and last fifth: it should fall (a flat loss in half
        # precision would mean its gradients underflow).
        "discriminator_loss_trend": _trend([m["loss_discriminator"] for m in timed if "loss_discriminator" in m]),
        "preset_steps": base.steps,
        "estimated_preset_minutes": round(steady * base.steps / 60, 1) if steady else None,
    }


def compare(**kwargs: Any) -> dict[str, Any]:
    """The reference and the fast path on the same teacher, seed and steps, and fast's speed-up."""
    kwargs["loaded"] = kwargs.get("loaded") or load_teacher(kwargs.get("teacher", "random-sd21"),
                                                            kwargs.get("device", "auto"))
    reference = run(**kwargs, implementation="reference")
    fast = run(**kwargs, implementation="fast")
    ratios = {key: _ratio(reference[key], fast[key])
              for key in ("seconds_per_step", "warmup_seconds_per_step", "extract_seconds")}
    ratios["phases"] = {k: _ratio(v, fast["phases"].get(k)) for k, v in reference["phases"].items()}
    return {"benchmark": "speed-compare", "preset": fast["preset"], "reference": reference, "fast": fast,
            "speedup": ratios}


def _phases(timed: list[dict[str, float]], durations: list[float], names: list[str]) -> dict[str, float]:
    means = {k.removeprefix("seconds_"): statistics.mean(m.get(k, 0.0) for m in timed) for k in names}
    means["other"] = statistics.mean(durations) - sum(means.values())
    return {k: _round(v) for k, v in means.items()}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _mean(values) -> int | None:
    values = list(values)
    return round(statistics.mean(values)) if values else None


def _trend(values: list[float]) -> dict[str, float] | None:
    if len(values) < 5:
        return None
    k = max(1, len(values) // 5)
    return {"first": round(statistics.mean(values[:k]), 5), "last": round(statistics.mean(values[-k:]), 5),
            "steps": len(values)}
