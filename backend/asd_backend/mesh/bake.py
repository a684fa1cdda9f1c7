"""Bake a colour field into a texture on an automatic UV atlas (xatlas), for the final mesh.

Vertex colours are limited to one colour per vertex; a texture keeps the field's detail between
vertices. xatlas cuts the mesh into charts and packs them into [0, 1]²; each texel centre is then
located on the atlas by ray casting straight down onto the flattened UV layout (trimesh/Embree, the
same ray caster the teachers use), its barycentric coordinates give the 3D point, and the colour
field is evaluated there. Texels outside every chart are filled from the nearest chart texel so
bilinear filtering does not bleed background into the seams.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..interrupt import StopCheck, check
from .extract import Mesh
from .raycast import barycentric


def bake_texture(mesh: Mesh, color_fn: Callable[[torch.Tensor], torch.Tensor], size: int = 1024,
                 device: torch.device | str = "cpu", chunk: int = 1 << 18, should_stop: StopCheck = None) -> Mesh:
    """A copy of `mesh` with per-vertex UVs (vertices split along chart seams) and a baked texture."""
    import trimesh
    import xatlas
    from scipy import ndimage

    if size < 16 or size > 8192:
        raise ValueError(f"texture size must be between 16 and 8192; got {size}")
    if not len(mesh.faces):
        raise ValueError("cannot bake an empty mesh")
    vmapping, faces, uvs = xatlas.parametrize(mesh.vertices, mesh.faces.astype(np.uint32))
    vertices = mesh.vertices[vmapping]
    flat = trimesh.Trimesh(np.c_[uvs, np.zeros(len(uvs))], faces, process=False)
    # Texel centres, rows top-down: row r holds v = 1 - (r + 0.5) / size.
    cols, rows = np.meshgrid(np.arange(size), np.arange(size))
    u = (cols.ravel() + 0.5) / size
    v = 1 - (rows.ravel() + 0.5) / size
    origins = np.c_[u, v, np.ones_like(u)]
    directions = np.tile([0.0, 0.0, -1.0], (len(u), 1))
    locations, ray_index, tri_index = flat.ray.intersects_location(origins, directions, multiple_hits=False)
    weights = barycentric(np.c_[locations[:, :2], np.zeros(len(locations))], flat.vertices[flat.faces[tri_index]])
    points = np.einsum("kc,kcd->kd", weights, vertices[faces[tri_index]].astype(np.float64))
    colors = np.zeros((size * size, 3), np.float32)
    with torch.no_grad():
        pts = torch.from_numpy(points.astype(np.float32)).to(device)
        baked = []
        for i in range(0, len(pts), chunk):
            check(should_stop)
            baked.append(color_fn(pts[i:i + chunk]).float().clamp(0, 1).cpu())
    if baked:
        colors[ray_index] = torch.cat(baked).numpy()
    covered = np.zeros(size * size, bool)
    covered[ray_index] = True
    # Pad charts: every uncovered texel takes the colour of the nearest covered one.
    nearest = ndimage.distance_transform_edt(~covered.reshape(size, size), return_distances=False,
                                             return_indices=True)
    image = colors.reshape(size, size, 3)[nearest[0], nearest[1]]
    texture = np.round(image * 255).astype(np.uint8)
    vertex_colors = None if mesh.colors is None else mesh.colors[vmapping]
    return Mesh(vertices.astype(np.float32), faces.astype(np.uint32), vertex_colors, uvs=uvs.astype(np.float32),
                texture=texture, frame=mesh.frame)
