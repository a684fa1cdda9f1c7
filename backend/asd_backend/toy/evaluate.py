"""The toy teacher proven in 2D: images sampled with the diffusers pipeline, named by the judge.

Every world prompt over several seeds (50 DDIM steps, CFG 7.5 by default) is judged for shape and
colour; for the two shapes with a front, "…, front view" and "…, back view" are judged for the
side they show (the chair's back, the mug's handle on the right from the front): the judge's azimuth
must fall in the asked-for range (front: |azimuth| < 60°, back: |azimuth| > 120°, a margin around
the captions' 30° thresholds). The check also says how large the teacher draws each shape against exact
renders from the product's cameras (`size_by_shape`, from the rows and columns the object fills): a distilled
object can only be as right in size as the images its teacher has in mind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..nerf.cameras import CameraConfig, sample_cameras
from .judge import ORIENTED, Judge
from .render import render_objects
from .train_teacher import sample_images
from .world import COLOURS, SHAPES, WorldObject, all_objects


@dataclasses.dataclass
class CheckConfig:
    seeds: int = dataclasses.field(default=4, metadata={"help": "samples per prompt (seeds 0..N-1)"})
    steps: int = dataclasses.field(default=50, metadata={"help": "DDIM steps"})
    cfg: float = dataclasses.field(default=7.5, metadata={"help": "classifier-free guidance scale"})
    grid: Path | None = dataclasses.field(default=None, metadata={"help": "write seed 0's samples as a PNG grid"})


def in_view(direction: str, azimuth: float) -> bool:
    a = abs((azimuth + 180) % 360 - 180)
    return a < 60 if direction == "front" else a > 120


def object_extent(images: Tensor, background: float = 0.85, ink: float = 0.4) -> tuple[Tensor, Tensor]:
    """The size of each image's object in pixels, √(rows × columns) that hold at least two of its pixels
    (pixels with some channel more than `ink` below white), and whether the background is white (all four
    corners above `background`): the teacher draws 40 % of its images on random colours, where this rule
    cannot tell the object. Rows and columns, not an area, so that a blurred hole or thin legs do not
    count as size; at least two pixels, so that a stray speckle does not either; `ink` about half of what
    every paint but white has (0.8 or more), so that an edge counts where it is half covered, however
    blurred (the teacher's samples are softer than exact renders)."""
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # [N, 3, 4]
    white = (corners > background).all(dim=2).all(dim=1)
    ink_mask = ((1 - images).amax(dim=1) > ink).float()  # [N, H, W]
    rows = (ink_mask.sum(dim=2) >= 2).float().sum(dim=1)
    columns = (ink_mask.sum(dim=1) >= 2).float().sum(dim=1)
    return (rows * columns).sqrt(), white


def exact_extents(objects: list[WorldObject], size: int, views: int = 16, seed: int = 0) -> Tensor:
    """Each object's mean `object_extent` over exact renders on white from `views` product cameras."""
    generator = torch.Generator().manual_seed(seed)
    extents = []
    for obj in objects:
        render = render_objects([obj] * views, sample_cameras(views, CameraConfig(), generator), size)
        extents.append(object_extent(render.over(torch.ones(3)).clamp(0, 1))[0].mean())
    return torch.stack(extents)


def check_teacher(pipe, judge: Judge, config: CheckConfig) -> dict[str, Any]:
    objects = all_objects()
    prompts = [o.caption for o in objects]
    shape_ok = np.zeros((config.seeds, len(objects)), dtype=bool)
    colour_ok = np.zeros_like(shape_ok)
    views: dict[str, list[bool]] = {}
    first = None
    # Apparent size: white objects vanish on white, so they do not count.
    sized = [i for i, o in enumerate(objects) if o.colour != "white"]
    sample_extent, counted = np.zeros(len(objects)), np.zeros(len(objects))
    on_white = np.zeros((config.seeds, len(objects)), dtype=bool)
    for seed in range(config.seeds):
        images = sample_images(pipe, prompts, seed=seed, steps=config.steps, cfg=config.cfg)
        first = images if first is None else first
        if seed == 0:
            exact = exact_extents(objects, images.shape[-1]).numpy()
        extent, white = object_extent(images)
        on_white[seed] = white.numpy()
        for i in sized:
            if white[i]:
                sample_extent[i] += float(extent[i])
                counted[i] += 1
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
        # The teacher draws its own background (white, or a colour as it was trained): which one it chose
        # says where its misses are.
        "right_by_background": {name: round(float(both[mask].mean()), 3) if mask.any() else None
                                for name, mask in (("white", on_white), ("colour", ~on_white))},
        "samples_by_background": {"white": int(on_white.sum()), "colour": int((~on_white).sum())},
        "size_by_shape": {}, "size_samples_by_shape": {},
        "wrong": [f"{objects[i].caption} (seed {s})" for s, i in zip(*np.nonzero(~both), strict=True)][:40],
    }
    for i, shape in enumerate(SHAPES):
        # The size the teacher draws over the exact size, over the white-background samples of its colours.
        block = slice(i * len(COLOURS), (i + 1) * len(COLOURS))
        n = int(counted[block].sum())
        report["size_samples_by_shape"][shape] = n
        ratio = float(sample_extent[block].sum() / (exact[block] * counted[block]).sum()) if n else None
        report["size_by_shape"][shape] = None if ratio is None else round(ratio, 3)
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
