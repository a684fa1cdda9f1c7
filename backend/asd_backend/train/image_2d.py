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

from ..guidance.prompts import PromptBank, ViewPromptConfig
from ..guidance.score_distillation import GuidanceConfig, ScoreDistillation, train_discriminator
from ..teachers.base import Teacher


@dataclasses.dataclass
class ImageDistillConfig:
    prompt: str
    negative_prompt: str = ""
    method: str = "asd"
    cfg: float = 7.5
    steps: int = 500
    seed: int = 0
    resolution: int | None = None
    """Image side in pixels; default the teacher's native resolution."""
    lr: float = 0.03
    """Adam learning rate of the image latent."""
    discriminator_lr: float = 1e-4
    """AdamW learning rate of ε_φ (LoRA and camera embedding), the official value."""
    lora_rank: int = 4
    gamma: float = -0.75
    every: int = 0
    """Decode and report an intermediate frame every N steps (0: only the last)."""

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("the prompt is empty; describe the image to make")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1; got {self.steps}")
        if self.every < 0:
            raise ValueError(f"every must be >= 0; got {self.every}")
        GuidanceConfig(method=self.method, cfg=self.cfg, gamma=self.gamma)  # validates method, cfg, gamma


@dataclasses.dataclass
class ImageFrame:
    step: int
    image: np.ndarray  # H×W×3 uint8
    metrics: dict[str, float]
    final: bool


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] to H×W×3 uint8."""
    return (images[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()


def distill_image(teacher: Teacher, config: ImageDistillConfig,
                  on_frame: Callable[[ImageFrame], None] | None = None,
                  on_step: Callable[[int, dict[str, float]], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> ImageFrame:
    """Optimise an image latent with SDS/VSD/ASD; returns the final frame."""
    device = teacher.device
    side = config.resolution or teacher.native_resolution
    if side % teacher.vae_scale_factor:
        raise ValueError(f"resolution {side} must be a multiple of the teacher's VAE factor {teacher.vae_scale_factor}")
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    guidance = ScoreDistillation(teacher, GuidanceConfig(method=config.method, cfg=config.cfg, gamma=config.gamma),
                                 **({"rank": config.lora_rank} if config.method != "sds" else {}))
    bank = PromptBank(teacher, config.prompt, config.negative_prompt, ViewPromptConfig(view_dependent=False,
                                                                                       perp_neg=False))
    cond = bank.conditioning(batch_size=1)
    try:
        return _optimise(teacher, config, guidance, cond, side, generator, on_frame, on_step, should_stop)
    finally:
        guidance.close()


def _optimise(teacher: Teacher, config: ImageDistillConfig, guidance: ScoreDistillation, cond, side: int,
              generator: torch.Generator, on_frame, on_step, should_stop) -> ImageFrame:
    device = teacher.device
    latent_side = side // teacher.vae_scale_factor
    shape = (1, teacher.sample_channels, latent_side, latent_side)
    latent = torch.nn.Parameter(torch.randn(shape, device=device, generator=generator))
    optimizer = torch.optim.Adam([latent], lr=config.lr)
    disc_optimizer = None
    if guidance.discriminator is not None:
        disc_optimizer = torch.optim.AdamW(guidance.discriminator.trainable_parameters(), lr=config.discriminator_lr)
    start = time.perf_counter()
    frame: ImageFrame | None = None
    for step in range(1, config.steps + 1):
        out = guidance.generator_loss(latent, cond, step=step, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        metrics: dict[str, Any] = out.metrics()
        if disc_optimizer is not None:
            metrics["loss_discriminator"] = train_discriminator(guidance, disc_optimizer, latent, cond,
                                                                generator=generator)
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
