"""Prompt conditioning for a batch of views: view-dependent prompts and Perp-Neg weights.

Text-to-3D asks a 2D model for a view of an object, so the prompt names the view ("…, back view")
and Perp-Neg pushes away from the views that are not being rendered (Armandpour et al. 2023), which
is what keeps a face from appearing on the back of a head (the Janus problem).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from jaxtyping import Float
from torch import Tensor

from ..teachers.base import Teacher

SIDE, FRONT, BACK, OVERHEAD = 0, 1, 2, 3
DIRECTIONS = ("side", "front", "back", "overhead")


@dataclasses.dataclass
class ViewPromptConfig:
    """How the prompt depends on the camera. Defaults are the official ASD NeRF configuration."""

    view_dependent: bool = True
    """Append ", front view" / ", side view" / ", back view" / ", overhead view" by camera direction."""
    perp_neg: bool = True
    """Perp-Neg: subtract the parts of the other views' guidance perpendicular to this view's."""
    front_threshold: float = 30.0
    """Degrees of azimuth either side of 0 that count as the front."""
    back_threshold: float = 30.0
    """Degrees of azimuth either side of 180 that count as the back."""
    overhead_threshold: float = 60.0
    """Elevation in degrees above which a view is overhead."""

    def __post_init__(self) -> None:
        for name in ("front_threshold", "back_threshold"):
            if not 0 <= getattr(self, name) <= 180:
                raise ValueError(f"{name} must be between 0 and 180 degrees; got {getattr(self, name)}")
        if self.perp_neg and not self.view_dependent:
            raise ValueError("perp_neg needs view_dependent prompts; set both or turn perp_neg off")


@dataclasses.dataclass
class Conditioning:
    """Teacher conditioning for a batch of B views (conditioning tensors stacked on dim 0)."""

    cond: Tensor  # [B, ...] the (view-dependent) prompt
    uncond: Tensor  # [B, ...] the negative prompt ('' by default): CFG's unconditional branch
    base: Tensor  # [B, ...] the plain prompt, which conditions the discriminator ε_φ
    negatives: Tensor | None = None  # [B*K, ...] Perp-Neg's negative views, sample-major
    negative_weights: Float[Tensor, "B K"] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.cond.shape[0])


def wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    """To [-180, 180)."""
    return (azimuth_deg + 180) % 360 - 180


def view_prompt(prompt: str, direction: int) -> str:
    """"a red mug" → "a red mug, front view": the one place the view suffix is written."""
    return f"{prompt}, {DIRECTIONS[direction]} view"


def view_direction(elevation_deg: Tensor, azimuth_deg: Tensor, config: ViewPromptConfig) -> Tensor:
    """Index into DIRECTIONS for each view; later rules win, as in the official code. The toy teacher's
    captions use this too, so its training data names views exactly as the product asks for them."""
    azimuth = wrap_azimuth(azimuth_deg)
    index = torch.full_like(azimuth, SIDE, dtype=torch.long)
    index[(azimuth > -config.front_threshold) & (azimuth < config.front_threshold)] = FRONT
    index[(azimuth > 180 - config.back_threshold) | (azimuth < -180 + config.back_threshold)] = BACK
    index[elevation_deg > config.overhead_threshold] = OVERHEAD
    return index


class PromptBank:
    """A prompt's embeddings, computed once, and the conditioning for any batch of cameras."""

    def __init__(self, teacher: Teacher, prompt: str, negative_prompt: str = "",
                 config: ViewPromptConfig | None = None) -> None:
        if not prompt.strip():
            raise ValueError("the prompt is empty; describe the object to make")
        self.teacher = teacher
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.config = config or ViewPromptConfig()
        self.view_prompts = [view_prompt(prompt, d) for d in range(len(DIRECTIONS))]
        texts = [prompt, negative_prompt] + (self.view_prompts if self.config.view_dependent else [])
        embedded = teacher.embed_prompts(texts)
        self.base, self.uncond = embedded[0:1], embedded[1:2]
        self.views = embedded[2:] if self.config.view_dependent else None

    def direction(self, elevation_deg: Tensor, azimuth_deg: Tensor) -> Tensor:
        return view_direction(elevation_deg, azimuth_deg, self.config)

    def conditioning(self, elevation_deg: Tensor | None = None, azimuth_deg: Tensor | None = None,
                     batch_size: int | None = None) -> Conditioning:
        """Conditioning for B views; without cameras (2D) every row is the plain prompt."""
        if elevation_deg is None or azimuth_deg is None or self.views is None:
            b = batch_size if batch_size is not None else (1 if elevation_deg is None else len(elevation_deg))
            base = self.base.expand(b, *self.base.shape[1:])
            return Conditioning(cond=base, uncond=self.uncond.expand_as(base), base=base)
        b = len(elevation_deg)
        base = self.base.expand(b, *self.base.shape[1:])
        uncond = self.uncond.expand_as(base)
        index = self.direction(elevation_deg, azimuth_deg).to(self.views.device)
        if not self.config.perp_neg:
            return Conditioning(cond=self.views[index], uncond=uncond, base=base)
        cond, negatives, weights = self._perp_neg(index, wrap_azimuth(azimuth_deg))
        return Conditioning(cond=cond, uncond=uncond, base=base, negatives=negatives, negative_weights=weights)

    def _perp_neg(self, index: Tensor, azimuth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Interpolated positive embeddings and two weighted negative views per sample.

        Weights are the official ASD code's: front↔side interpolation for |azimuth| < 90°,
        side↔back beyond, none for overhead views. (Unlike that code we keep azimuth 0 as the front,
        the same convention its direction thresholds use.)
        """
        side, front, back = self.views[SIDE], self.views[FRONT], self.views[BACK]
        positives, negatives, weights = [], [], []
        for i, azi in zip(index.tolist(), azimuth.tolist(), strict=True):
            if i == OVERHEAD:
                positives.append(self.views[OVERHEAD])
                negatives += [self.uncond[0], self.uncond[0]]
                weights.append([0.0, 0.0])
            elif abs(azi) < 90:
                r = 1 - abs(azi) / 90  # 0: side, 1: front
                positives.append(r * front + (1 - r) * side)
                negatives += [front, side]
                weights.append([0.0 if r > 0.8 else -2 * math.exp(-2 * r),
                                0.0 if r < 0.2 else -2 * math.exp(-10 * (1 - r))])
            else:
                r = 2 - abs(azi) / 90  # 0: back, 1: side
                positives.append(r * side + (1 - r) * back)
                negatives += [side, front]
                weights.append([0.0 if r > 0.8 else -math.exp(-10 * r), -2.0])
        device = self.views.device
        return (torch.stack(positives), torch.stack(negatives),
                torch.tensor(weights, dtype=torch.float32, device=device))
