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

import dataclasses
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


# -- the command line (flags generated from SpeedBenchConfig) -------------------------------------------

@dataclasses.dataclass
class SpeedBenchConfig:
    preset: str = "standard"
    """A preset, or several: preview,standard,paper."""
    teacher: str = "random-sd21"
    """random-sd21 (full size, random weights) | toy | tiny | sd."""
    device: str = "auto"
    method: str = "asd"
    """asd | vsd | sds."""
    steps: int = 20
    """Steps timed after the warm-up."""
    warmup: int | None = None
    """Steps before timing (unset: past the reference path's first occupancy refresh)."""
    resolution: int | None = None
    """Render side (unset: the preset's largest)."""
    compare: bool = False
    """Run the reference path and the fast one side by side and print the speed-ups."""
    json: bool = False
    """Print the full report as JSON."""


def _presets(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _command(args: Any) -> int:
    import json

    from ..dataclass_flags import dataclass_from_args

    cfg = dataclass_from_args(SpeedBenchConfig, args)
    presets = _presets(cfg.preset)
    loaded = load_teacher(cfg.teacher, cfg.device)  # once, for every preset
    measure = compare if cfg.compare else run
    reports = [measure(preset=name, teacher=cfg.teacher, device=cfg.device, method=cfg.method,
                       steps=cfg.steps, warmup=cfg.warmup, resolution=cfg.resolution, loaded=loaded)
               for name in presets]
    if cfg.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
        return 0
    for report in reports:
        if cfg.compare:
            _print_speed(report["reference"], report["fast"], report["speedup"])
        else:
            _print_speed(report)
    return 0


def _print_speed(report: dict, fast: dict | None = None, speedup: dict | None = None) -> None:
    """A preset's timing as a table: phases per step, extraction; with --compare, both paths and ratios."""
    columns = [report] + ([fast] if fast else [])
    head = f"{report['preset']} on {report['device']} ({report['threads']} threads), {report['teacher']} teacher, "
    print(head + f"{report['render_resolution']}² renders, {report['samples_per_ray']} samples per ray")
    names = ["reference", "fast", "speed-up"] if fast else [report["implementation"]]
    print(f"{'':<26}" + "".join(f"{n:>12}" for n in names))

    def row(label: str, key: str, unit: str = "s") -> None:
        values = [c.get(key) for c in columns] + ([speedup.get(key)] if speedup else [])
        cells = [f"{v:>11.3f}{unit}" if v is not None else f"{'–':>12}" for v in values[:len(columns)]]
        if speedup:
            cells.append(f"{values[-1]:>11.2f}×" if values[-1] else f"{'–':>12}")
        print(f"{label:<26}" + "".join(cells))

    row("seconds per step", "seconds_per_step")
    row("warm-up seconds per step", "warmup_seconds_per_step")
    for phase in report["phases"]:
        values = [c["phases"].get(phase) for c in columns]
        ratio = (speedup or {}).get("phases", {}).get(phase)
        print(f"  {phase:<24}" + "".join(f"{v:>11.3f}s" if v is not None else f"{'–':>12}" for v in values)
              + (f"{ratio:>11.2f}×" if ratio else (f"{'–':>12}" if speedup else "")))
    print(f"{'samples evaluated':<26}" + "".join(f"{c['samples_evaluated']:>12,}" for c in columns)
          + f"  of {report['samples_generated']:,}")
    row(f"extraction at {report['mc_resolution']}³", "extract_seconds")
    if report.get("peak_memory_gib") is not None:
        print(f"{'peak memory':<26}" + "".join(f"{c['peak_memory_gib']:>10.2f}GB" for c in columns))
    def duration(c: dict) -> str:
        seconds = (c["seconds_per_step"] or 0) * c["preset_steps"]
        return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"

    print(f"whole preset ({report['preset_steps']} steps of optimisation): about "
          + " / ".join(duration(c) for c in columns))


def add_cli(kinds: Any) -> None:
    from ..dataclass_flags import add_dataclass_flags

    p = kinds.add_parser("speed", help="seconds per step by phase, extraction time and peak GPU memory of a preset")
    add_dataclass_flags(p, SpeedBenchConfig)
    p.set_defaults(handler=_command)
