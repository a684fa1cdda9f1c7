"""The teacher interface: a frozen diffusion model that predicts the noise in noisy samples.

Score distillation only needs four things from a teacher: ε̂(x_t, t, y), the noise schedule ᾱ_t,
a way into and out of its sample space (a VAE for latent models, identity for pixel models) and
prompt conditioning. Everything model-specific stays behind this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import UsageError

EPSILON = "epsilon"
V_PREDICTION = "v_prediction"


def expand_like(values: Float[Tensor, " B"], like: Tensor) -> Tensor:
    """Shape per-sample scalars [B] to broadcast against [B, ...]."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def epsilon_from_v(v: Tensor, x_t: Tensor, alpha_bar: Float[Tensor, " B"]) -> Tensor:
    """ε = √ᾱ·v + √(1−ᾱ)·x_t  (v = √ᾱ·ε − √(1−ᾱ)·x_0, x_t = √ᾱ·x_0 + √(1−ᾱ)·ε)."""
    a = expand_like(alpha_bar, x_t)
    return a.sqrt() * v + (1 - a).sqrt() * x_t


def v_from_epsilon(eps: Tensor, x_t: Tensor, alpha_bar: Float[Tensor, " B"]) -> Tensor:
    """Inverse of `epsilon_from_v`: v = (ε − √(1−ᾱ)·x_t) / √ᾱ."""
    a = expand_like(alpha_bar, x_t)
    return (eps - (1 - a).sqrt() * x_t) / a.sqrt()


def scaled_linear_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's training schedule (the `scaled_linear` betas), as ᾱ_t for t = 0..steps-1."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


class Teacher(ABC):
    """A frozen diffusion model. Subclasses set the attributes below in their constructor."""

    name: str
    description: str = ""
    trained: bool = True  # False: random weights; its outputs carry no meaning and say so
    prediction_type: str = EPSILON
    alphas_cumprod: Float[Tensor, " T"]
    device: torch.device
    dtype: torch.dtype = torch.float32
    sample_channels: int  # channels of x_t (4 for SD latents, C for pixel teachers)
    vae_scale_factor: int = 1  # image side / sample side
    native_resolution: int  # image side the model was trained at
    discriminator: str | None = None
    """The kind of ε_φ that fits this teacher, a name in guidance/discriminator.DISCRIMINATORS (None: SDS only)."""

    def discriminator_options(self, guidance: Any, model: Any = None, nerf: Any = None) -> dict[str, Any]:
        """What this teacher's ε_φ is built with, from a job spec's guidance, model and nerf sections."""
        if model is not None and getattr(model, "discriminator_model", None):
            raise UsageError(f"a separate discriminator model needs a Stable Diffusion teacher, not {self.name!r}")
        return {}

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def is_latent(self) -> bool:
        return self.vae_scale_factor != 1

    @abstractmethod
    def embed_prompts(self, prompts: Sequence[str]) -> Tensor:
        """Conditioning for each prompt, stacked on dim 0. The empty prompt is the unconditional."""

    def prompt_warning(self, prompt: str) -> str | None:
        """A one-line warning when this teacher cannot read all of `prompt` (too long for its text encoder, words
        it never learned), or None."""
        return None

    @abstractmethod
    def predict_raw(self, x_t: Tensor, t: Int[Tensor, " B"], cond: Tensor, camera: Tensor | None = None) -> Tensor:
        """The model's output in its own parameterization (`prediction_type`)."""

    def predict_eps(self, x_t: Tensor, t: Int[Tensor, " B"], cond: Tensor, camera: Tensor | None = None) -> Tensor:
        """ε̂(x_t, t, y), whatever the model predicts natively."""
        out = self.predict_raw(x_t, t, cond, camera)
        if self.prediction_type == V_PREDICTION:
            out = epsilon_from_v(out, x_t, self.alpha_bar(t, x_t))
        return out

    def alpha_bar(self, t: Int[Tensor, " B"], like: Tensor) -> Float[Tensor, " B"]:
        return self.alphas_cumprod.to(device=like.device)[t].to(like.dtype)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Int[Tensor, " B"]) -> Tensor:
        a = expand_like(self.alpha_bar(t, x0), x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def encode(self, images: Float[Tensor, "B 3 H W"], deterministic: bool = False) -> Tensor:
        """Images in [0, 1] to the model's sample space. Pixel teachers: identity (to [-1, 1]).
        `deterministic`: a latent teacher's posterior mode instead of a draw (for measuring)."""
        return images * 2 - 1

    def encode_at_native(self, images: Float[Tensor, "B 3 H W"], deterministic: bool = False) -> Tensor:
        """`encode` after a bilinear resize to the teacher's native resolution (renders come in any size)."""
        if images.shape[-2:] != (self.native_resolution, self.native_resolution):
            images = torch.nn.functional.interpolate(images, (self.native_resolution,) * 2, mode="bilinear",
                                                     align_corners=False)
        return self.encode(images, deterministic=deterministic)

    def decode(self, samples: Tensor) -> Float[Tensor, "B 3 H W"]:
        """Samples back to images in [0, 1]."""
        return ((samples + 1) / 2).clamp(0, 1)

