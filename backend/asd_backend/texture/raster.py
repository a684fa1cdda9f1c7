"""Fixed-geometry texture rendering: each view is ray-cast once, then textures are sampled per step.

The geometry of an edited object never changes, so for every view the per-pixel UV coordinates and
coverage mask are computed once (trimesh/Embree ray casting, barycentric interpolation of the
corner UVs). Rendering a texture into a view is then one differentiable `grid_sample`, on CPU or GPU,
lit (nerf/shading.py) by the face normals found then, if the edit asks for a light.

UV convention (Blender's, OpenGL's): u to the right, v up; texture arrays are rows top-down (as
image files), so texel row = (1 − v)·H.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..mesh.raycast import barycentric, raycast
from ..nerf.cameras import CameraBatch, orbit_cameras
from ..nerf.shading import Light, lit


@dataclasses.dataclass
class NormalisedMesh:
    """The mesh moved to the origin and scaled to a bounding sphere of `radius` (views are framed there)."""

    vertices: np.ndarray  # float64 N×3
    faces: np.ndarray  # int64 M×3
    uvs: np.ndarray  # float32 M×3×2, per face corner
    centre: np.ndarray
    scale: float

    @classmethod
    def from_world(cls, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, radius: float = 0.6):
        vertices = np.asarray(vertices, np.float64)
        centre = (vertices.min(0) + vertices.max(0)) / 2
        extent = np.linalg.norm(vertices - centre, axis=1).max()
        if extent <= 0:
            raise ValueError("the mesh has no extent (all vertices coincide)")
        scale = radius / extent
        return cls((vertices - centre) * scale, np.asarray(faces, np.int64), np.asarray(uvs, np.float32), centre,
                   scale)

    def trimesh(self):
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, process=False)


@dataclasses.dataclass
class ViewBatch:
    """Indices into a rasterizer's precomputed views, with their cameras (for ε_φ and teachers)."""

    index: Tensor  # long [B]
    c2w: Float[Tensor, "B 4 4"]


class UVRasterizer:
    """Precomputed UV maps of V views of one mesh; renders any texture into them."""

    def __init__(self, mesh: NormalisedMesh, cameras: CameraBatch, resolution: int,
                 device: torch.device | str = "cpu", normals: bool = False) -> None:
        """`normals`: keep each pixel's surface normal too, for lit renders (`render(light=…)`)."""
        self.mesh = mesh
        self.cameras = cameras
        self.resolution = resolution
        self.device = torch.device(device)
        hits = raycast(mesh.trimesh(), cameras, resolution, resolution)
        uv = np.zeros((len(cameras), resolution, resolution, 2), np.float32)
        face = hits.face[hits.hit]
        tri = mesh.vertices[mesh.faces[face]]  # [K, 3, 3]
        weights = barycentric(hits.points[hits.hit], tri)  # [K, 3]
        uv[hits.hit] = np.einsum("kc,kcd->kd", weights, mesh.uvs[face])
        self.uv = torch.from_numpy(uv).to(self.device)  # [V, H, W, 2]
        self.mask = torch.from_numpy(hits.hit).to(self.device)  # [V, H, W]
        self.normals: Tensor | None = None  # [V, H, W, 3], float16
        if normals:
            # Face normals turned towards the camera: a mesh's winding is not always consistent.
            per_pixel = np.zeros((len(cameras), resolution, resolution, 3), np.float32)
            facing = np.asarray(mesh.trimesh().face_normals)[face]
            seen_from = cameras.positions.double().cpu().numpy()[np.nonzero(hits.hit)[0]]
            away = ((hits.points[hits.hit] - seen_from) * facing).sum(-1) > 0
            per_pixel[hits.hit] = np.where(away[:, None], -facing, facing)
            self.normals = torch.from_numpy(per_pixel).to(self.device, torch.float16)

    @classmethod
    def orbit(cls, mesh: NormalisedMesh, views: int, resolution: int, seed: int = 0,
              device: torch.device | str = "cpu", normals: bool = False) -> UVRasterizer:
        """`views` cameras spread around the object (stratified azimuth, elevation −10°..50°)."""
        g = torch.Generator().manual_seed(seed)
        azimuth = (torch.arange(views) + torch.rand(views, generator=g)) * 360.0 / views - 180.0
        elevation = -10.0 + 60.0 * torch.rand(views, generator=g)
        distance = 1.5 + 0.3 * torch.rand(views, generator=g)
        fovy = 40.0 + 10.0 * torch.rand(views, generator=g)
        return cls(mesh, orbit_cameras(elevation, azimuth, distance, fovy), resolution, device, normals)

    def __len__(self) -> int:
        return int(self.uv.shape[0])

    def views(self, index: Tensor) -> ViewBatch:
        return ViewBatch(index=index, c2w=self.cameras.c2w[index.cpu()].to(self.device))

    def render(self, texture: Float[Tensor, "1 3 Ht Wt"], index: Tensor,
               background: Float[Tensor, "B 3"] | float = 0.5, light: Light | None = None) -> Float[Tensor, "B 3 H W"]:
        """Texture seen from views `index`, over `background` where the object is not; lit by `light`
        (in the mesh's frame) if given, else its colours as they are."""
        uv = self.uv[index]  # [B, H, W, 2]
        # grid_sample's (x, y) in [-1, 1] with y down: x = 2u − 1, y = 1 − 2v.
        grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1)
        sampled = F.grid_sample(texture.expand(len(index), -1, -1, -1), grid, mode="bilinear",
                                padding_mode="border", align_corners=False)
        if light is not None:
            if self.normals is None:
                raise ValueError("a lit render needs the rasterizer's normals: build it with normals=True")
            shade = light.shade(self.normals[index].to(sampled.dtype))  # [B, H, W]
            sampled = lit(sampled.permute(0, 2, 3, 1), shade).permute(0, 3, 1, 2)
        mask = self.mask[index][:, None].to(sampled.dtype)
        if not torch.is_tensor(background):
            background = torch.full((len(index), 3), float(background), device=sampled.device)
        return sampled * mask + background[:, :, None, None].to(sampled.dtype) * (1 - mask)

    def visible_texels(self, height: int, width: int) -> Tensor:
        """Texels that some view samples (bool H×W): every texel a bilinear lookup of a covered pixel
        reads, that is, every texel an edit can change."""
        uv = self.uv[self.mask]  # [K, 2]
        x = uv[:, 0] * width - 0.5  # texel centres sit at (i + 0.5) / W (align_corners=False)
        y = (1 - uv[:, 1]) * height - 0.5
        seen = torch.zeros(height, width, dtype=torch.bool, device=self.device)
        for dx in (0, 1):
            for dy in (0, 1):
                col = (x.floor().long() + dx).clamp(0, width - 1)
                row = (y.floor().long() + dy).clamp(0, height - 1)
                seen[row, col] = True
        return seen
