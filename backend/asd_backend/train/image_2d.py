"""2D score distillation (the paper's image experiments): the generator is one image's latent.

The loop is the 3D loop without a renderer: sample → guidance (the same ScoreDistillation the NeRF
uses) → generator step → discriminator step.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from asd_protocol.job_spec import JobSpec

from ..guidance.prompts import PromptBank, ViewPromptConfig
from ..guidance.score_distillation import ScoreDistillation
from ..job_events import JobEvents
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


def distill_image(teacher: Teacher, spec: JobSpec, events: JobEvents | None = None) -> ImageFrame:
    """Optimise an image latent with SDS/VSD/ASD for a resolved `image` spec; returns the final frame.
    `events` hears every step and every `image.every`-th frame; its `should_stop()` ends the run early (the
    frame of that step is the final one)."""
    if spec.kind != "image":
        raise ValueError(f"distill_image() runs image specs, not {spec.kind!r}")
    events = events or JobEvents()
    config = spec.image
    device = teacher.device
    side = config.resolution or teacher.native_resolution
    if side % teacher.vae_scale_factor:
        raise ValueError(f"resolution {side} must be a multiple of the teacher's VAE factor {teacher.vae_scale_factor}")
    torch.manual_seed(spec.seed)
    generator = torch.Generator(device=device).manual_seed(spec.seed)
    bank = PromptBank(teacher, spec.prompt, spec.negative_prompt, ViewPromptConfig(view_dependent=False,
                                                                                   perp_neg=False))
    cond = bank.conditioning(batch_size=1)
    latent_side = side // teacher.vae_scale_factor
    shape = (1, teacher.sample_channels, latent_side, latent_side)
    latent = torch.nn.Parameter(torch.randn(shape, device=device, generator=generator))
    with ScoreDistillation.from_spec(teacher, spec.guidance, spec.model) as guidance:
        # Adam for the latent (AdamW without weight decay), AdamW for ε_φ: one optimizer, two groups.
        optimizer = torch.optim.AdamW([{"params": [latent], "lr": config.lr, "weight_decay": 0.0},
                                       *guidance.discriminator_group(spec.guidance.discriminator_lr)])
        start = time.perf_counter()
        for step in range(1, config.steps + 1):
            metrics: dict[str, Any] = guidance.step(optimizer, latent, cond, step=step, generator=generator)
            metrics["seconds"] = time.perf_counter() - start
            events.progress(step, config.steps, metrics)
            last = step == config.steps or events.should_stop()
            if last or (config.every and step % config.every == 0):
                with torch.no_grad():
                    frame = ImageFrame(step, to_uint8(teacher.decode(latent.detach())), metrics, last)
                events.frame(frame)
            if last:
                break
    return frame  # image.steps ≥ 1: the last step always makes one
