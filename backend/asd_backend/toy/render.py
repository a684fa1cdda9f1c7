"""Renders of world objects by sphere tracing their exact signed distances, with the product's cameras.

Rays come from nerf/cameras.camera_rays, the function the NeRF renders with, so a render here and a
NeRF render from the same CameraBatch see the same thing. Shading: sRGB albedo → linear,
ambient + Lambert under the world's fixed light, → sRGB. Each pixel averages `supersample`²
rays, so edges are soft as a NeRF's are. The result is colour and coverage; the background is
composited later (`composite`), so one render serves any background.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..nerf.cameras import CameraBatch, camera_rays
from ..nerf.shading import lit
from .world import BOUNDING_RADIUS, WorldObject, world_light

HIT_EPSILON = 1e-3
MARCH_STEPS = 80


@dataclasses.dataclass
class ObjectRender:
    colour: Float[Tensor, "B 3 H W"]
    """sRGB colour of the object where it covers the pixel (premultiplied by coverage)."""
    coverage: Float[Tensor, "B 1 H W"]
    """The fraction of the pixel the object covers (alpha)."""

    def over(self, background: Float[Tensor, "B 3"] | Float[Tensor, 3]) -> Float[Tensor, "B 3 H W"]:
        return composite(self.colour, self.coverage, background)


def composite(colour: Tensor, coverage: Tensor, background: Tensor) -> Tensor:
    """Premultiplied colour over a solid background (one colour, or one per image)."""
    bg = background.reshape(-1, 3, 1, 1).to(colour)
    return colour + (1 - coverage) * bg


def _trace(obj: WorldObject, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Distances along the rays to the first hit, and whether there was one. Field-frame rays."""
    # Enter at the bounding sphere: sphere tracing from the camera would waste steps on empty space.
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - BOUNDING_RADIUS**2
    disc = b * b - c
    inside = disc > 0
    root = disc.clamp(min=0).sqrt()
    t = (-b - root).clamp(min=0)
    t_far = -b + root
    for _ in range(MARCH_STEPS):
        d = obj.sdf_field(origins + t[..., None] * dirs)
        t = t + torch.where(inside & (t < t_far), d, torch.zeros_like(d))
    final = obj.sdf_field(origins + t[..., None] * dirs)
    hit = inside & (t < t_far) & (final.abs() < 10 * HIT_EPSILON)
    return t, hit


def _normals(obj: WorldObject, points: Tensor, eps: float = 5e-4) -> Tensor:
    """Field-frame unit normals by central differences of the distance."""
    offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
    grads = [obj.sdf_field(points + o) - obj.sdf_field(points - o) for o in offsets]
    return F.normalize(torch.stack(grads, dim=-1), dim=-1)


@torch.no_grad()
def render_objects(objects: list[WorldObject], cameras: CameraBatch, size: int, supersample: int = 2) -> ObjectRender:
    """One render per camera, object i seen by camera i: colour (premultiplied) and coverage."""
    if len(objects) != len(cameras):
        raise ValueError(f"one object per camera: got {len(objects)} objects and {len(cameras)} cameras")
    fine = size * supersample
    origins, dirs = camera_rays(cameras, fine, fine)  # [B, h, w, 3]
    light = world_light()
    colour = torch.zeros(len(objects), fine, fine, 3)
    coverage = torch.zeros(len(objects), fine, fine, 1)
    # Group by surface so each group's distance function runs once over all its rays.
    by_geometry: dict[tuple[str, float, float, float], list[int]] = {}
    for i, obj in enumerate(objects):
        by_geometry.setdefault(obj.geometry, []).append(i)
    for indices in by_geometry.values():
        idx = torch.tensor(indices)
        obj = objects[indices[0]]
        o, d = origins[idx].reshape(-1, 3), dirs[idx].reshape(-1, 3)
        t, hit = _trace(obj, o, d)
        points = o[hit] + t[hit][:, None] * d[hit]
        normal = _normals(obj, points)
        shade = light.shade(normal)  # [n]
        albedo = torch.tensor([objects[i].albedo for i in indices])  # [G, 3]
        per_ray_albedo = albedo[:, None, :].expand(-1, fine * fine, 3).reshape(-1, 3)[hit]
        group_colour = torch.zeros(len(o), 3)
        group_colour[hit] = lit(per_ray_albedo, shade)
        colour[idx] = group_colour.reshape(len(indices), fine, fine, 3)
        coverage[idx] = hit.float().reshape(len(indices), fine, fine, 1)
    colour = F.avg_pool2d(colour.permute(0, 3, 1, 2), supersample)
    coverage = F.avg_pool2d(coverage.permute(0, 3, 1, 2), supersample)
    return ObjectRender(colour, coverage)
