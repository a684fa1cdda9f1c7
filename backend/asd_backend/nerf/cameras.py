"""Random orbit cameras around the object, and their rays.

Frame: Z up (Blender's). Azimuth 0 looks at the object from +X, azimuth 90 from +Y; elevation is
above the XY plane. Cameras are OpenGL-style: they look along their local −Z, +Y is up.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from jaxtyping import Float
from torch import Tensor

# The one frame change between the field (front +X, azimuth 0) and Blender (front −Y): a −90° turn about
# Z, rows giving Blender's x, y, z from the field's. Meshes (mesh/export.to_blender_frame), lights
# (nerf/shading) and the toy world's shapes (toy/world) all turn by it; its transpose turns back.
FIELD_TO_BLENDER = ((0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0))


@dataclasses.dataclass
class CameraConfig:
    """The official ASD random-camera ranges."""

    distance_range: tuple[float, float] = (1.0, 1.5)
    fovy_range: tuple[float, float] = (40.0, 70.0)
    """Vertical field of view, degrees."""
    elevation_range: tuple[float, float] = (-10.0, 45.0)
    """Degrees above the XY plane."""
    azimuth_range: tuple[float, float] = (-180.0, 180.0)

    def __post_init__(self) -> None:
        for name in ("distance_range", "fovy_range", "elevation_range", "azimuth_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: the low end {lo} is above the high end {hi}")
        if self.distance_range[0] <= 0:
            raise ValueError(f"distance_range must be positive; got {self.distance_range}")
        if not 0 < self.fovy_range[0] <= self.fovy_range[1] < 180:
            raise ValueError(f"fovy_range must be within (0, 180) degrees; got {self.fovy_range}")


@dataclasses.dataclass
class CameraBatch:
    """B pinhole cameras looking at the origin."""

    c2w: Float[Tensor, "B 4 4"]
    fovy_deg: Float[Tensor, " B"]
    elevation_deg: Float[Tensor, " B"]
    azimuth_deg: Float[Tensor, " B"]
    distance: Float[Tensor, " B"]

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def positions(self) -> Float[Tensor, "B 3"]:
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device) -> CameraBatch:
        return CameraBatch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def look_at_origin(positions: Float[Tensor, "B 3"]) -> Float[Tensor, "B 4 4"]:
    """Camera-to-world matrices for cameras at `positions` looking at the origin, Z up."""
    forward = torch.nn.functional.normalize(-positions, dim=-1)
    world_up = torch.tensor([0.0, 0.0, 1.0], device=positions.device).expand_as(forward)
    right = torch.nn.functional.normalize(torch.cross(forward, world_up, dim=-1), dim=-1)
    up = torch.cross(right, forward, dim=-1)
    c2w = torch.zeros(len(positions), 4, 4, device=positions.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, -forward, positions
    c2w[:, 3, 3] = 1
    return c2w


def orbit_cameras(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor, fovy_deg: Tensor) -> CameraBatch:
    el, az = torch.deg2rad(elevation_deg.float()), torch.deg2rad(azimuth_deg.float())
    positions = torch.stack([distance * torch.cos(el) * torch.cos(az), distance * torch.cos(el) * torch.sin(az),
                             distance * torch.sin(el)], dim=-1)
    return CameraBatch(look_at_origin(positions), fovy_deg.float(), elevation_deg.float(), azimuth_deg.float(),
                       distance.float())


def sample_cameras(n: int, config: CameraConfig, generator: torch.Generator | None = None) -> CameraBatch:
    """Random cameras as the official data module draws them.

    Elevation is uniform in degrees half of the time and uniform on the sphere otherwise; azimuths
    of a batch are stratified so they cover the whole range.
    """

    def uniform(lo: float, hi: float, size: int = n) -> Tensor:
        return lo + (hi - lo) * torch.rand(size, generator=generator)

    lo, hi = config.elevation_range
    if float(torch.rand((), generator=generator)) < 0.5:
        elevation = uniform(lo, hi)
    else:
        s0, s1 = math.sin(math.radians(lo)), math.sin(math.radians(hi))
        elevation = torch.rad2deg(torch.asin(uniform(s0, s1)))
    a0, a1 = config.azimuth_range
    azimuth = (torch.rand(n, generator=generator) + torch.arange(n)) / n * (a1 - a0) + a0
    return orbit_cameras(elevation, azimuth, uniform(*config.distance_range), uniform(*config.fovy_range))


def camera_rays(cameras: CameraBatch, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Ray origins and unit directions, [B, H, W, 3] each, through pixel centres (row 0 at the top)."""
    device = cameras.c2w.device
    focal = 0.5 * height / torch.tan(0.5 * torch.deg2rad(cameras.fovy_deg))  # [B]
    j, i = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                          torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    x = (i + 0.5 - width / 2)[None] / focal[:, None, None]
    y = -(j + 0.5 - height / 2)[None] / focal[:, None, None]
    dirs_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
    dirs = torch.einsum("bij,bhwj->bhwi", cameras.c2w[:, :3, :3], dirs_cam)
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    origins = cameras.positions[:, None, None, :].expand_as(dirs)
    return origins, dirs


def project(points: Float[Tensor, "N 3"], cameras: CameraBatch, height: int, width: int) -> Tensor:
    """Pixel coordinates (column, row) of world points in each camera: [B, N, 2]. For tests and overlays."""
    w2c = torch.linalg.inv(cameras.c2w)
    homo = torch.cat([points, torch.ones_like(points[:, :1])], dim=-1)
    cam = torch.einsum("bij,nj->bni", w2c, homo)[..., :3]
    focal = (0.5 * height / torch.tan(0.5 * torch.deg2rad(cameras.fovy_deg)))[:, None]
    col = cam[..., 0] / -cam[..., 2] * focal + width / 2
    row = -cam[..., 1] / -cam[..., 2] * focal + height / 2
    return torch.stack([col, row], dim=-1)
