"""What the toy teacher prefers: how well a caption explains renders, by the teacher's own denoising.

A distillation that ends on the wrong object has two possible culprits: a teacher that does not tell
the object from what was made, or a distillation that did not find what the teacher knows. The
teacher's implicit classifier separates them (Diffusion Classifier, Li et al. 2023):

    caption_gain(x, y) = E_{t, ε} [ ‖ε_θ(x_t; ∅) − ε‖² − ‖ε_θ(x_t; y) − ε‖² ]

is, up to the weighting over t, log p(y | x) − log p(y) by the teacher's ELBO: how much better the
caption lets it denoise the image than no caption does. The raw denoising loss (`denoising_loss`)
is the ELBO itself, but it also falls for any simpler image (a smaller object on more white), so the
gain is the one to read. Every image set scored in one call sees the same timesteps and noise
(common random numbers), so differences between candidates are not noise draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import UsageError
from ..guidance.prompts import ViewPromptConfig, view_direction, view_prompt
from ..nerf.cameras import CameraBatch, CameraConfig, sample_cameras
from .render import render_objects
from .world import SDF, SHAPES, WorldObject


@dataclasses.dataclass
class PreferenceConfig:
    views: int = 48
    """Cameras, drawn as the product's NeRF draws them."""
    timesteps: int = 12
    """Timesteps on an even grid over [0.02, 0.98]·T (the generator's range)."""
    draws: int = 1
    """Noise draws per view and timestep."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("views", "timesteps", "draws"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1; got {getattr(self, name)}")


@torch.no_grad()
def caption_gains(teacher, images: Mapping[str, Float[Tensor, "B 3 H W"]], captions: list[str],
                  config: PreferenceConfig) -> dict[str, dict[str, float]]:
    """For each named set of B images in [0, 1] (image i captioned `captions[i]`): `caption_gain` and
    `denoising_loss`, per latent element, averaged over images, timesteps and draws."""
    if not images:
        raise UsageError("give at least one set of images to score")
    batch = {len(v) for v in images.values()}
    if batch != {len(captions)}:
        raise UsageError(f"every image set needs one image per caption ({len(captions)}); got sizes {sorted(batch)}")
    embedded = teacher.embed_prompts([*captions, ""])
    cond, uncond = embedded[:-1], embedded[-1:].expand(len(captions), *embedded.shape[1:])
    total = teacher.num_train_timesteps
    grid = torch.linspace(0.02 * total, 0.98 * total, config.timesteps).round().long()
    generator = torch.Generator().manual_seed(config.seed)
    # The posterior's mode, not a draw: a draw would differ between candidates (and runs) for nothing.
    latents = {name: teacher.encode_at_native(x.to(teacher.device, teacher.dtype), deterministic=True)
               for name, x in images.items()}
    like = next(iter(latents.values()))
    noises = torch.randn((config.timesteps, config.draws, *like.shape), generator=generator).to(like)
    sums = {name: torch.zeros(2, dtype=torch.float64) for name in images}
    for i, step in enumerate(grid.tolist()):
        t = torch.full((len(captions),), step, device=like.device)
        for d in range(config.draws):
            noise = noises[i, d]
            for name, x0 in latents.items():
                x_t = teacher.add_noise(x0, noise, t)
                with_caption = float(((teacher.predict_eps(x_t, t, cond) - noise) ** 2).mean())
                without = float(((teacher.predict_eps(x_t, t, uncond) - noise) ** 2).mean())
                sums[name] += torch.tensor([without - with_caption, with_caption], dtype=torch.float64)
    n = config.timesteps * config.draws
    return {name: {"caption_gain": round(float(s[0]) / n, 6), "denoising_loss": round(float(s[1]) / n, 6)}
            for name, s in sums.items()}


def view_captions(caption: str, cameras: CameraBatch) -> list[str]:
    """The caption with the view suffix the product's view prompts give each camera."""
    directions = view_direction(cameras.elevation_deg, cameras.azimuth_deg, ViewPromptConfig())
    return [view_prompt(caption, int(d)) for d in directions]


def candidates(obj: WorldObject) -> dict[str, WorldObject]:
    """The object, turned, resized, stretched or squashed vertically, filled (the mug), round from above
    (the cube), and every other world shape in its paint."""
    out = {"the object": obj}
    out |= {f"turned {a}°": dataclasses.replace(obj, turn_deg=float(a)) for a in (30, 45, 90, 180)}
    out |= {f"×{k:g}": dataclasses.replace(obj, scale=k) for k in (0.8, 1.25, 1.5)}
    out |= {f"×{k:g} tall": dataclasses.replace(obj, height=k) for k in (0.85, 1.2)}
    if f"filled {obj.shape}" in SDF:
        out["filled"] = dataclasses.replace(obj, shape=f"filled {obj.shape}")
    if f"round {obj.shape}" in SDF:
        out["round from above"] = dataclasses.replace(obj, shape=f"round {obj.shape}")
    out |= {f"a {shape}": WorldObject(shape, obj.colour) for shape in SHAPES if shape != obj.shape}
    return out


def prefers(teacher, obj: WorldObject, config: PreferenceConfig) -> dict[str, dict[str, float]]:
    """`caption_gains` of the object's caption over exact renders (on white) of `candidates(obj)`, seen by
    `config.views` cameras drawn as the product's NeRF draws them."""
    cameras = sample_cameras(config.views, CameraConfig(), torch.Generator().manual_seed(config.seed))
    size = teacher.native_resolution
    white = torch.ones(3)
    images = {name: render_objects([o] * len(cameras), cameras, size).over(white)
              for name, o in candidates(obj).items()}
    return caption_gains(teacher, images, view_captions(obj.caption, cameras), config)
