"""The toy teacher proven in 2D: images sampled with the diffusers pipeline, named by the judge.

Every world prompt over several seeds (50 DDIM steps, CFG 7.5 by default) is judged for shape and
colour; for the two shapes with a front, "…, front view" and "…, back view" are judged for the
side they show (the chair's back, the mug's handle on the right from the front): the judge's azimuth
must fall in the asked-for range (front: |azimuth| < 60°, back: |azimuth| > 120°, a margin around
the captions' 30° thresholds).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .judge import ORIENTED, Judge
from .train_teacher import sample_images
from .world import COLOURS, SHAPES, all_objects


@dataclasses.dataclass
class CheckConfig:
    seeds: int = dataclasses.field(default=4, metadata={"help": "samples per prompt (seeds 0..N-1)"})
    steps: int = dataclasses.field(default=50, metadata={"help": "DDIM steps"})
    cfg: float = dataclasses.field(default=7.5, metadata={"help": "classifier-free guidance scale"})
    grid: Path | None = dataclasses.field(default=None, metadata={"help": "write seed 0's samples as a PNG grid"})


def in_view(direction: str, azimuth: float) -> bool:
    a = abs((azimuth + 180) % 360 - 180)
    return a < 60 if direction == "front" else a > 120


def check_teacher(pipe, judge: Judge, config: CheckConfig) -> dict[str, Any]:
    objects = all_objects()
    prompts = [o.caption for o in objects]
    shape_ok = np.zeros((config.seeds, len(objects)), dtype=bool)
    colour_ok = np.zeros_like(shape_ok)
    views: dict[str, list[bool]] = {}
    first = None
    for seed in range(config.seeds):
        images = sample_images(pipe, prompts, seed=seed, steps=config.steps, cfg=config.cfg)
        first = images if first is None else first
        verdict = judge.judge(images)
        shape_ok[seed] = [v == o.shape for v, o in zip(verdict["shape"], objects, strict=True)]
        colour_ok[seed] = [v == o.colour for v, o in zip(verdict["colour"], objects, strict=True)]
        oriented = [o for o in objects if o.shape in ORIENTED]
        for direction in ("front", "back"):
            asked = [f"{o.caption}, {direction} view" for o in oriented]
            seen = judge.judge(sample_images(pipe, asked, seed=seed, steps=config.steps, cfg=config.cfg))
            for o, azimuth, shape in zip(oriented, seen["azimuth"], seen["shape"], strict=True):
                views.setdefault(f"{o.shape}, {direction} view", []).append(shape == o.shape
                                                                            and in_view(direction, azimuth))
    both = shape_ok & colour_ok
    report: dict[str, Any] = {
        "prompts": len(objects), "seeds": config.seeds, "steps": config.steps, "cfg": config.cfg,
        "right": round(float(both.mean()), 4), "shape_right": round(float(shape_ok.mean()), 4),
        "colour_right": round(float(colour_ok.mean()), 4),
        "right_by_shape": {s: round(float(both[:, i * len(COLOURS):(i + 1) * len(COLOURS)].mean()), 3)
                           for i, s in enumerate(SHAPES)},
        "right_by_colour": {c: round(float(both[:, j::len(COLOURS)].mean()), 3) for j, c in enumerate(COLOURS)},
        "views_right": {k: round(float(np.mean(v)), 3) for k, v in views.items()},
        "wrong": [f"{objects[i].caption} (seed {s})" for s, i in zip(*np.nonzero(~both), strict=True)][:40],
    }
    if config.grid is not None and first is not None:
        from PIL import Image

        size = first.shape[-1]
        grid = first.reshape(len(SHAPES), len(COLOURS), 3, size, size).permute(0, 3, 1, 4, 2)
        grid = grid.reshape(len(SHAPES) * size, len(COLOURS) * size, 3)
        config.grid.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((grid.numpy() * 255).round().astype(np.uint8)).resize(
            (len(COLOURS) * size * 2, len(SHAPES) * size * 2), Image.NEAREST).save(config.grid)
    return report


def load_pipeline(folder: Path):
    from ..teachers.stable_diffusion import load_pipeline as load

    return load(str(folder), dtype=torch.float32)
