"""Ray casting meshes from cameras (trimesh, with Embree when embreex is installed).

Used wherever a fixed mesh must be seen from a camera: the analytic 3D teacher's target renders
and the texture editor's per-view UV lookups.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..nerf.cameras import CameraBatch, camera_rays


@dataclasses.dataclass
class RayHits:
    """Per pixel of B views: whether the ray hit, where, which face, at what distance."""

    hit: np.ndarray  # bool B×H×W
    points: np.ndarray  # float64 B×H×W×3 (zero where missed)
    face: np.ndarray  # int64 B×H×W (-1 where missed)
    depth: np.ndarray  # float64 B×H×W (0 where missed)


def raycast(mesh, cameras: CameraBatch, height: int, width: int) -> RayHits:
    """First hits of every pixel's ray with a trimesh.Trimesh."""
    origins, dirs = camera_rays(cameras, height, width)
    o = origins.reshape(-1, 3).double().cpu().numpy()
    d = dirs.reshape(-1, 3).double().cpu().numpy()
    n = len(o)
    points = np.zeros((n, 3))
    face = np.full(n, -1, np.int64)
    depth = np.zeros(n)
    locations, ray_index, tri_index = mesh.ray.intersects_location(o, d, multiple_hits=False)
    if len(ray_index):
        points[ray_index] = locations
        face[ray_index] = tri_index
        depth[ray_index] = np.linalg.norm(locations - o[ray_index], axis=1)
    shape = (len(cameras), height, width)
    return RayHits(hit=(face >= 0).reshape(shape), points=points.reshape(*shape, 3), face=face.reshape(shape),
                   depth=depth.reshape(shape))


def barycentric(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Barycentric coordinates of points (N×3) in their triangles (N×3×3)."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    v0, v1, v2 = b - a, c - a, points - a
    d00 = (v0 * v0).sum(1)
    d01 = (v0 * v1).sum(1)
    d11 = (v1 * v1).sum(1)
    d20 = (v2 * v0).sum(1)
    d21 = (v2 * v1).sum(1)
    denom = np.where(np.abs(d00 * d11 - d01 * d01) < 1e-20, 1e-20, d00 * d11 - d01 * d01)
    v = (d11 * d20 - d01 * d21) / denom
    w = (d00 * d21 - d01 * d20) / denom
    return np.stack([1 - v - w, v, w], axis=1)


def torch_image(values: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values)).float().to(device)
