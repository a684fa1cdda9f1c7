"""Analytic teachers: diffusion models whose exact noise prediction is known in closed form.

They make the quality of score distillation measurable without any trained weights: the data
distribution is known, so where the generator ends up can be compared with where it should.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .base import EPSILON, Teacher, scaled_linear_alphas_cumprod

UNCONDITIONAL = -1


class GaussianMixtureTeacher(Teacher):
    """Per prompt, an equal-weight mixture of K isotropic Gaussians N(μ_pk, σ²I) in D dimensions.

    Under x_t = √ᾱ·x_0 + √(1−ᾱ)·ε the marginal stays a mixture, of N(√ᾱ·μ_k, s²I) with
    s² = ᾱσ² + 1 − ᾱ, so the exact denoiser is
        ε̂(x_t) = −√(1−ᾱ) · ∇log p_t(x_t) = √(1−ᾱ) · Σ_k r_k(x_t) (x_t − √ᾱ·μ_k) / s²
    with r_k the posterior responsibilities. The unconditional model (the empty prompt) is the
    mixture over every prompt's components, as a class-conditional model's marginal would be.
    Conditioning is the prompt index (−1 for unconditional).
    """

    def __init__(self, means: Float[Tensor, "P K D"], sigma: float, *, device: str | torch.device = "cpu",
                 alphas_cumprod: Tensor | None = None) -> None:
        if means.ndim != 3:
            raise ValueError(f"means must have shape [prompts, modes, dim]; got {list(means.shape)}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive; got {sigma}")
        self.device = torch.device(device)
        self.means = means.to(self.device, torch.float32)
        self.sigma = float(sigma)
        self.alphas_cumprod = (alphas_cumprod if alphas_cumprod is not None else scaled_linear_alphas_cumprod()).to(
            self.device)
        self.prediction_type = EPSILON
        self.name = "gmm"
        self.description = f"Gaussian mixtures: {means.shape[0]} prompts × {means.shape[1]} modes in {means.shape[2]}-D"
        self.trained = True
        self.sample_channels = int(means.shape[2])
        self.native_resolution = 1

    @classmethod
    def random(cls, *, prompts: int, modes: int, dim: int, sigma: float, seed: int = 0,
               device: str | torch.device = "cpu") -> GaussianMixtureTeacher:
        """Means drawn from N(0, I) with a seeded generator."""
        generator = torch.Generator().manual_seed(seed)
        return cls(torch.randn(prompts, modes, dim, generator=generator), sigma, device=device)

    @property
    def prompt_names(self) -> list[str]:
        return [str(i) for i in range(self.means.shape[0])]

    def embed_prompts(self, prompts: Sequence[str]) -> Int[Tensor, " P"]:
        index = []
        for p in prompts:
            if p == "":
                index.append(UNCONDITIONAL)
            elif p.isdigit() and int(p) < self.means.shape[0]:
                index.append(int(p))
            else:
                raise ValueError(f"prompt {p!r} is not one of this mixture's prompts {self.prompt_names} or ''")
        return torch.tensor(index, dtype=torch.long, device=self.device)

    def component_means(self, cond: Int[Tensor, " B"]) -> Float[Tensor, "B K D"]:
        """Each sample's component means; unconditional rows get every prompt's components."""
        n_prompts, n_modes, dim = self.means.shape
        all_means = self.means.reshape(1, n_prompts * n_modes, dim).expand(len(cond), -1, -1)
        own = self.means[cond.clamp(min=0)]  # [B, K, D]
        # Pad a prompt's K modes to P*K by repeating them: equal weights make repeats harmless.
        own = own.repeat(1, n_prompts, 1)
        return torch.where((cond == UNCONDITIONAL).reshape(-1, 1, 1), all_means, own)

    def predict_raw(self, x_t: Float[Tensor, "B D"], t: Int[Tensor, " B"], cond: Int[Tensor, " B"],
                    camera: Tensor | None = None) -> Float[Tensor, "B D"]:
        a = self.alpha_bar(t, x_t).reshape(-1, 1, 1)
        centres = a.sqrt() * self.component_means(cond.to(x_t.device))  # [B, K', D]
        s2 = a * self.sigma**2 + (1 - a)
        diff = x_t.unsqueeze(1) - centres  # [B, K', D]
        logits = -(diff**2).sum(-1, keepdim=True) / (2 * s2)
        resp = torch.softmax(logits, dim=1)
        return (1 - a).sqrt().squeeze(1) * (resp * diff).sum(1) / s2.squeeze(1)

    def sample(self, prompt: int, n: int, generator: torch.Generator | None = None) -> Float[Tensor, "N D"]:
        """Exact samples of one prompt's mixture (for metrics)."""
        means = self.means[prompt].cpu()
        pick = torch.randint(0, means.shape[0], (n,), generator=generator)
        return means[pick] + self.sigma * torch.randn(n, means.shape[1], generator=generator)

    def discriminator(self, **options: object) -> torch.nn.Module:
        from ..guidance.discriminator import ResidualDiscriminator

        return ResidualDiscriminator(self, **options)
