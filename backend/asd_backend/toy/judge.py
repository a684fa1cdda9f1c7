"""A judge no method trains against: a small CNN that names the shape and colour of a 32² image of the
world, and for the two shapes with a front (mug, chair), the azimuth it is seen from.

Trained on renders with other seeds than the teacher's, on the same backgrounds, with blur, noise
and brightness jitter so that soft NeRF renders and diffusion samples are judged as renders are.
It is for measuring only: no loss in the product ever uses it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..artifacts import atomic_path
from ..errors import MissingFileError
from .world import COLOURS, SHAPES, all_objects

JUDGE_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy_judge"
ORIENTED = ("mug", "chair")  # the shapes whose azimuth can be told from an image
WHITE_SHARE = 0.6  # as the teacher's training data (train_teacher.ToyTrainingConfig.white_background)


class Judge(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(i: int, o: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.GroupNorm(8, o), nn.SiLU())

        self.features = nn.Sequential(block(3, width, 1), block(width, width, 2), block(width, 2 * width, 1),
                                      block(2 * width, 2 * width, 2), block(2 * width, 4 * width, 1),
                                      block(4 * width, 4 * width, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.shape_head = nn.Linear(4 * width, len(SHAPES))
        self.colour_head = nn.Linear(4 * width, len(COLOURS))
        self.azimuth_head = nn.Linear(4 * width, 2)  # (cos, sin) of the azimuth

    def forward(self, images: Float[Tensor, "B 3 32 32"]) -> tuple[Tensor, Tensor, Tensor]:
        h = self.features(images * 2 - 1)
        return self.shape_head(h), self.colour_head(h), self.azimuth_head(h)

    @torch.no_grad()
    def judge(self, images: Float[Tensor, "B 3 H W"]) -> dict[str, Any]:
        """Names and azimuths (degrees) for images in [0, 1], any size (resized to 32²), and the probability
        given to every shape and paint (`shape_probabilities` [B, 7] in `SHAPES`' order, `colour_probabilities`
        [B, 8] in `COLOURS`'), for a reading finer than right or wrong."""
        self.eval()
        if images.shape[-1] != 32:
            images = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        shape, colour, azimuth = self(images.float())
        return {"shape": [SHAPES[i] for i in shape.argmax(-1).tolist()],
                "colour": [list(COLOURS)[i] for i in colour.argmax(-1).tolist()],
                "azimuth": torch.rad2deg(torch.atan2(azimuth[:, 1], azimuth[:, 0])).tolist(),
                "shape_probabilities": shape.softmax(-1), "colour_probabilities": colour.softmax(-1)}


def load_judge(folder: Path = JUDGE_DIR) -> Judge:
    from safetensors.torch import load_file

    path = folder / "judge.safetensors"
    if not path.is_file():
        raise MissingFileError(f"no toy judge at {path}; train one with `asd toy train-judge`")
    config = json.loads((folder / "judge.json").read_text())
    judge = Judge(width=config["width"])
    judge.load_state_dict(load_file(path))
    return judge.eval()


@dataclasses.dataclass
class JudgeTrainingConfig:
    out: Path = JUDGE_DIR
    seed: int = 1000
    """Renders with seeds the teacher never saw (the teacher's data uses seed 0)."""
    views_per_object: int = 160
    steps: int = 1500
    batch: int = 128
    lr: float = 2e-3
    width: int = 32


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Blur some, add noise, jitter brightness: what separates a render from a sample or a NeRF."""
    b = len(images)
    blur = torch.rand(b, generator=generator) < 0.4
    if blur.any():
        kernel = torch.tensor([1.0, 2.0, 1.0])
        kernel = (kernel[:, None] * kernel[None, :]) / 16
        smoothed = F.conv2d(F.pad(images[blur], (1, 1, 1, 1), mode="replicate"),
                            kernel.expand(3, 1, 3, 3).contiguous(), groups=3)
        images = images.clone()
        images[blur] = smoothed
    gain = 1 + 0.1 * (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1)
    noise = torch.randn(images.shape, generator=generator) * 0.03 * torch.rand(b, 1, 1, 1, generator=generator)
    return (images * gain + noise).clamp(0, 1)


def train_judge(config: JudgeTrainingConfig, cache: Path, progress: bool = True) -> dict[str, Any]:
    """Train, measure on held-out renders (another seed), save safetensors + judge.json; returns the record."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from .train_teacher import DATA_VERSION, cached_world

    torch.manual_seed(config.seed)
    data = cached_world(config.views_per_object, config.seed, cache, progress=progress)
    held_out = cached_world(16, config.seed + 1, cache, progress=progress)
    objects = all_objects()
    shape_of = torch.tensor([SHAPES.index(o.shape) for o in objects])
    colour_of = torch.tensor([list(COLOURS).index(o.colour) for o in objects])
    oriented = torch.tensor([o.shape in ORIENTED for o in objects])
    judge = Judge(config.width)
    opt = torch.optim.AdamW(judge.parameters(), lr=config.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(config.seed)

    bar = tqdm(range(config.steps), desc="judge", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        pick = torch.randint(len(data), (config.batch,), generator=generator)
        obj = data.object_index[pick]
        images = augment(data.images(pick, generator, WHITE_SHARE), generator)
        shape, colour, azimuth = judge(images)
        az = torch.deg2rad(data.azimuth[pick])
        mask = oriented[obj]
        loss = F.cross_entropy(shape, shape_of[obj]) + F.cross_entropy(colour, colour_of[obj])
        if mask.any():
            target = torch.stack([az.cos(), az.sin()], dim=-1)
            loss = loss + F.mse_loss(azimuth[mask], target[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    verdict = judge.judge(held_out.images(torch.arange(len(held_out)), torch.Generator().manual_seed(5), WHITE_SHARE))
    obj = held_out.object_index
    shape_ok = [v == objects[i].shape for v, i in zip(verdict["shape"], obj.tolist(), strict=True)]
    colour_ok = [v == objects[i].colour for v, i in zip(verdict["colour"], obj.tolist(), strict=True)]
    errors = [abs((a - float(t) + 180) % 360 - 180)
              for a, t, i in zip(verdict["azimuth"], held_out.azimuth.tolist(), obj.tolist(), strict=True)
              if objects[i].shape in ORIENTED]
    record = {"width": config.width, "seed": config.seed, "views_per_object": config.views_per_object,
              "steps": config.steps, "held_out_shape_accuracy": sum(shape_ok) / len(shape_ok),
              "held_out_colour_accuracy": sum(colour_ok) / len(colour_ok),
              "held_out_azimuth_median_error_deg": sorted(errors)[len(errors) // 2],
              "data_version": DATA_VERSION, "command": "asd toy train-judge", "torch": torch.__version__}
    config.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(config.out / "judge.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(tmp))
    (config.out / "judge.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
