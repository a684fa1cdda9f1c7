"""Lambertian shading of the field's albedo under one directional light, and sRGB ↔ linear.

Why: with `albedo` shading (the official ASD NeRF) a NeRF paints the shading its teacher's images
show into its colours, and the mesh carries that shading baked in, to be shaded again in Blender.
Lit by the light the teacher's world is lit by, brightness comes from the surface's normal and the
colours stay albedo (DreamFusion shades its NeRF for the geometry's sake; on the toy teacher the
geometry measured level and the mesh's colours truer, docs/benchmarks.md).

Light and shading follow the toy world's renders (toy/render.py): sRGB albedo → linear,
× (ambient + (1 − ambient)·max(0, n·l)), → sRGB.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from jaxtyping import Float
from torch import Tensor

from asd_protocol.job_spec import LightingSpec

from .cameras import FIELD_TO_BLENDER


def srgb_to_linear(c: Tensor) -> Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp(min=0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: Tensor) -> Tensor:
    c = c.clamp(0, 1)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp(min=1e-8) ** (1 / 2.4) - 0.055)


@dataclasses.dataclass(frozen=True)
class Light:
    """A directional light plus ambient, in the frame of what it lights (`from_spec`: the NeRF's field
    frame, front +X, or Blender's, front −Y; Z up in both)."""

    direction: tuple[float, float, float]
    """Unit vector towards the light."""
    ambient: float

    @classmethod
    def from_angles(cls, elevation_deg: float, azimuth_deg: float, ambient: float) -> Light:
        """Angles as the cameras' (nerf/cameras.py): azimuth 0 from the front, 90 from the right
        (seen from the front); elevation above the ground plane."""
        e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
        return cls((math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)), ambient)

    @classmethod
    def from_spec(cls, lighting: LightingSpec, frame: str = "field") -> Light | None:
        """The spec's light, or None for albedo. `frame`: "field" (front +X: the NeRF's) or "blender"
        (front −Y: the meshes an edit receives), so that azimuth 0 is the object's front in both."""
        if lighting.shading == "albedo":
            return None
        light = cls.from_angles(lighting.light_elevation, lighting.light_azimuth, lighting.ambient)
        if frame == "blender":
            turned = tuple(sum(r * d for r, d in zip(row, light.direction, strict=True)) for row in FIELD_TO_BLENDER)
            light = cls(turned, light.ambient)
        elif frame != "field":
            raise ValueError(f"frame must be 'field' or 'blender'; got {frame!r}")
        return light

    def shade(self, normals: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        """Ambient + diffuse·max(0, n·l) for unit normals."""
        light = normals.new_tensor(self.direction)
        return self.ambient + (1 - self.ambient) * (normals @ light).clamp(min=0)


def lit(albedo: Float[Tensor, "N 3"], shade: Float[Tensor, " N"]) -> Float[Tensor, "N 3"]:
    """sRGB albedo lit by a shading factor, in linear light, back to sRGB."""
    return linear_to_srgb(srgb_to_linear(albedo) * shade[..., None])
