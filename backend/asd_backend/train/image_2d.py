"""2D score distillation (the paper's image experiments): the generator is one image's latent.

The loop is the 3D loop without a renderer: sample → guidance (the same ScoreDistillation the NeRF
uses) → generator step → discriminator step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from asd_protocol.job_spec import JobSpec

from ..guidance.prompts import PromptBank, ViewPromptConfig
from ..guidance.score_distillation import ScoreDistillation
from ..teachers.base import Teacher


@dataclasses.dataclass
class ImageFrame:
    step: int
    image: np.ndarray  # H×W×3 uint8
    metrics: dict[str, float]
    final: bool


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] to H×W×3 uint8."""
    return (images[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()


def distill_image(teacher: Teacher, spec: JobSpec,
                  on_frame: Callable[[ImageFrame], None] | None = None,
                  on_step: Callable[[int, dict[str, float]], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> ImageFrame:
    """Optimise an image latent with SDS/VSD/ASD for a resolved `image` spec; returns the final frame."""
    if spec.kind != "image":
        raise ValueError(f"distill_image() runs image specs, not {spec.kind!r}")
    device = teacher.device
    side = spec.image.resolution or teacher.native_resolution
    if side % teacher.vae_scale_factor:
        raise ValueError(f"resolution {side} must be a multiple of the teacher's VAE factor {teacher.vae_scale_factor}")
    torch.manual_seed(spec.seed)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    guidance = ScoreDistillation.from_spec(teacher, spec.guidance, spec.model)
    bank = PromptBank(teacher, spec.prompt, spec.negative_prompt, ViewPromptConfig(view_dependent=False,
                                                                                   perp_neg=False))
    cond = bank.conditioning(batch_size=1)
    try:
        return _optimise(teacher, spec, guidance, cond, side, generator, on_frame, on_step, should_stop)
    finally:
        guidance.close()


def _optimise(teacher: Teacher, spec: JobSpec, guidance: ScoreDistillation, cond, side: int,
              generator: torch.Generator, on_frame, on_step, should_stop) -> ImageFrame:
    config = spec.image
    device = teacher.device
    latent_side = side // teacher.vae_scale_factor
    shape = (1, teacher.sample_channels, latent_side, latent_side)
    latent = torch.nn.Parameter(torch.randn(shape, device=device, generator=generator))
    # Adam for the latent (AdamW without weight decay), AdamW for ε_φ, as before: one optimizer, two groups.
    optimizer = torch.optim.AdamW([{"params": [latent], "lr": config.lr, "weight_decay": 0.0},
                                   *guidance.discriminator_group(spec.guidance.discriminator_lr)])
    start = time.perf_counter()
    frame: ImageFrame | None = None
    for step in range(1, config.steps + 1):
        metrics: dict[str, Any] = guidance.step(optimizer, latent, cond, step=step, generator=generator)
        metrics["seconds"] = time.perf_counter() - start
        if on_step is not None:
            on_step(step, metrics)
        last = step == config.steps or (should_stop is not None and should_stop())
        if last or (config.every and step % config.every == 0):
            with torch.no_grad():
                frame = ImageFrame(step, to_uint8(teacher.decode(latent.detach())), metrics, last)
            if on_frame is not None:
                on_frame(frame)
        if last:
            break
    return frame
