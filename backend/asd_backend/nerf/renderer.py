"""Volume rendering of the field: stratified samples inside the bounding sphere, alpha compositing.

Each ray is cut to where it crosses the sphere of the field's radius and sampled at S stratified
depths. Samples in cells the occupancy grid marks empty get zero density without a field call;
the others are evaluated in one batch. Colour = Σ wᵢ·cᵢ + (1 − Σ wᵢ)·background, with cᵢ the albedo,
or the albedo lit by a `Light` (nerf/shading.py; normals only where a sample's weight counts).
"""

from __future__ import annotations

import dataclasses

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..interrupt import StopCheck, check
from .cameras import CameraBatch, camera_rays
from .field import NerfField
from .occupancy import OccupancyGrid
from .shading import Light, lit

# Samples that weigh less than this in their pixel are lit by the ambient term alone: the normals'
# three field evaluations a sample go where they change the image.
SHADED_WEIGHT = 1e-4


@dataclasses.dataclass
class RenderOutput:
    rgb: Float[Tensor, "B H W 3"]  # composited over the background
    opacity: Float[Tensor, "B H W 1"]
    depth: Float[Tensor, "B H W 1"]
    samples_evaluated: int = 0  # field evaluations (after empty-space skipping)
    samples_total: int = 0
    offsets: Float[Tensor, "R S"] | None = None  # each sample's place in its stratum, in [0, 1) (training)


def sphere_bounds(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """near/far where unit-direction rays cross the origin-centred sphere; near = far for misses."""
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - c
    root = disc.clamp_min(0).sqrt()
    near = (-b - root).clamp_min(0)
    far = (-b + root).clamp_min(0)
    hit = disc > 0
    return torch.where(hit, near, 0), torch.where(hit, far, 0)


class VolumeRenderer(nn.Module):
    def __init__(self, field: NerfField, background: nn.Module, occupancy: OccupancyGrid | None = None,
                 samples_per_ray: int = 64, light: Light | None = None) -> None:
        super().__init__()
        if samples_per_ray < 2:
            raise ValueError(f"samples_per_ray must be at least 2; got {samples_per_ray}")
        self.field = field
        self.background = background
        self.occupancy = occupancy
        self.samples_per_ray = samples_per_ray
        self.light = light  # None: colour is albedo (the official ASD NeRF)

    @property
    def step_size(self) -> float:
        """Sample spacing along a ray through the centre (what the occupancy grid weighs density by)."""
        return 2 * self.field.radius / self.samples_per_ray

    def forward(self, cameras: CameraBatch, height: int, width: int, *, training: bool = False,
                generator: torch.Generator | None = None, chunk: int = 1 << 14,
                should_stop: StopCheck = None, offsets: Tensor | None = None) -> RenderOutput:
        """Render the cameras. `training` jitters each sample within its stratum (drawn from `generator`,
        returned as `offsets`); `offsets` [B·H·W, S] places the samples instead (a render made with
        another render's jitter); neither: stratum centres."""
        origins, dirs = camera_rays(cameras, height, width)
        o, d = origins.reshape(-1, 3), dirs.reshape(-1, 3)
        if offsets is None and training:
            offsets = torch.rand(len(o), self.samples_per_ray, generator=generator).to(o.device)
        if offsets is not None and offsets.shape != (len(o), self.samples_per_ray):
            raise ValueError(f"offsets must be [rays, samples] = [{len(o)}, {self.samples_per_ray}]; "
                             f"got {list(offsets.shape)}")
        parts = []
        for i in range(0, len(o), chunk):
            check(should_stop)  # a big preview render takes seconds: a cancel lands between chunks
            parts.append(self._render_rays(o[i:i + chunk], d[i:i + chunk],
                                           None if offsets is None else offsets[i:i + chunk]))
        rgb_fg, opacity, depth = (torch.cat([p[k] for p in parts]) for k in range(3))
        shape = (len(cameras), height, width)
        opacity = opacity.reshape(*shape, 1)
        background = self.background(dirs, augment=training, generator=generator)
        rgb = rgb_fg.reshape(*shape, 3) + (1 - opacity) * background
        return RenderOutput(rgb=rgb, opacity=opacity, depth=depth.reshape(*shape, 1),
                            samples_evaluated=sum(p[3] for p in parts), samples_total=len(o) * self.samples_per_ray,
                            offsets=offsets)

    def _render_rays(self, o: Tensor, d: Tensor, u: Tensor | None):
        n_rays, n_samples = o.shape[0], self.samples_per_ray
        near, far = sphere_bounds(o, d, self.field.radius)
        if u is None:
            u = torch.full((n_rays, n_samples), 0.5, device=o.device)
        span = (far - near)[:, None]
        t = near[:, None] + (torch.arange(n_samples, device=o.device)[None] + u) / n_samples * span  # [R, S]
        points = o[:, None, :] + t[..., None] * d[:, None, :]  # [R, S, 3]
        flat = points.reshape(-1, 3)
        live = (span > 0).expand(-1, n_samples).reshape(-1)
        if self.occupancy is not None:
            live = live & self.occupancy.query(flat)
        index = live.nonzero().squeeze(-1)
        sigma = torch.zeros(n_rays * n_samples, device=o.device, dtype=o.dtype)
        albedo = torch.zeros(n_rays * n_samples, 3, device=o.device, dtype=o.dtype)
        if len(index):
            s, a = self.field(flat[index])
            sigma = sigma.index_put((index,), s.to(o.dtype))
            albedo = albedo.index_put((index,), a.to(o.dtype))
        sigma, albedo = sigma.reshape(n_rays, n_samples), albedo.reshape(n_rays, n_samples, 3)
        delta = span / n_samples  # uniform spacing
        alpha = 1 - torch.exp(-sigma * delta)
        transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], dim=1),
                                      dim=1)[:, :-1]
        weights = alpha * transmittance  # [R, S]
        if self.light is not None:
            albedo = self._lit(albedo, weights, flat, sigma.reshape(-1))
        rgb = (weights[..., None] * albedo).sum(1)
        opacity = weights.sum(1)
        depth = (weights * t).sum(1)
        return rgb, opacity, depth, len(index)

    def _lit(self, albedo: Tensor, weights: Tensor, points: Tensor, sigma: Tensor) -> Tensor:
        """Albedo [R, S, 3] lit by the light: normals where a sample weighs (the rest ambient only)."""
        shade = torch.full(weights.shape, self.light.ambient, device=weights.device, dtype=weights.dtype).reshape(-1)
        index = (weights.detach().reshape(-1) > SHADED_WEIGHT).nonzero().squeeze(-1)
        if len(index):
            normals = self.field.normals(points[index], sigma[index]).to(weights.dtype)
            shade = shade.index_put((index,), self.light.shade(normals))
        return lit(albedo.reshape(-1, 3), shade).reshape(albedo.shape)
