"""From the field's frame to Blender's, and to files (.glb, .obj, .ply).

The NeRF looks at the object's front from +X (azimuth 0). Blender's Front view looks from −Y, so
meshes leave the backend rotated −90° about Z: metres, Z up, front towards −Y (what the protocol
sends). glTF and OBJ are Y-up formats whose Blender importers turn Y-up into Z-up; we write them
Y-up so they import upright. glTF vertex colours are linear by specification; we convert from sRGB.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..artifacts import atomic_path
from ..errors import UsageError
from ..nerf.cameras import FIELD_TO_BLENDER
from .extract import Mesh

FORMATS = (".glb", ".obj", ".ply")


def to_blender_frame(mesh: Mesh) -> Mesh:
    """Rotate −90° about Z: +X (the NeRF's front) → −Y (Blender's front). A mesh already in Blender's
    frame comes back as it is: this is the one place meshes change frame (the wire and files)."""
    if mesh.frame == "blender":
        return mesh
    rotated = (mesh.vertices @ np.asarray(FIELD_TO_BLENDER, np.float32).T).astype(np.float32)
    return dataclasses.replace(mesh, vertices=rotated, frame="blender")


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = c.astype(np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear [0, 1] to sRGB bytes."""
    srgb = np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1 / 2.4) - 0.055)
    return np.round(np.clip(srgb, 0, 1) * 255).astype(np.uint8)


def z_up_to_y_up(vertices: np.ndarray) -> np.ndarray:
    """(x, y, z) Z-up → (x, z, −y) Y-up: the inverse of what Blender's glTF/OBJ importers apply."""
    return np.stack([vertices[:, 0], vertices[:, 2], -vertices[:, 1]], axis=1)


def write_mesh(mesh: Mesh, path: str | Path) -> Path:
    """Write a mesh as .glb, .obj or .ply (chosen by the suffix), in Blender's frame (Z up)."""
    import trimesh

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"cannot write {path.name}: use one of {', '.join(FORMATS)}")
    if len(mesh.faces) == 0:
        raise UsageError(f"cannot write {path.name}: the mesh is empty (nothing above the density threshold)")
    mesh = to_blender_frame(mesh)
    vertices = mesh.vertices if suffix == ".ply" else z_up_to_y_up(mesh.vertices)
    colors = mesh.colors
    if colors is not None and suffix == ".glb":
        colors = np.round(srgb_to_linear(colors[:, :3]) * 255).astype(np.uint8)
    tm = trimesh.Trimesh(vertices, mesh.faces.astype(np.int64), process=False)
    if mesh.texture is not None and mesh.uvs is not None and suffix != ".ply":
        from PIL import Image

        material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(mesh.texture),
                                                       metallicFactor=0.0, roughnessFactor=0.6, name="albedo")
        tm.visual = trimesh.visual.TextureVisuals(uv=mesh.uvs, material=material)
    elif colors is not None:
        alpha = np.full((len(colors), 1), 255, np.uint8)
        tm.visual = trimesh.visual.ColorVisuals(tm, vertex_colors=np.concatenate([colors[:, :3], alpha], axis=1))
    with atomic_path(path) as tmp:  # never a half-written mesh under the final name
        tm.export(tmp)
    return path


def read_mesh(path: str | Path) -> Mesh:
    """Read a file written by write_mesh back into the Blender frame (colours back to sRGB)."""
    import trimesh

    path = Path(path)
    tm = trimesh.load(path, force="mesh", process=False)
    vertices = np.asarray(tm.vertices, np.float64)
    if path.suffix.lower() != ".ply":
        vertices = np.stack([vertices[:, 0], -vertices[:, 2], vertices[:, 1]], axis=1)
    colors = uvs = texture = None
    if getattr(tm.visual, "kind", None) == "texture" and tm.visual.uv is not None:
        uvs = np.asarray(tm.visual.uv, np.float32)
        image = getattr(tm.visual.material, "baseColorTexture", None) or getattr(tm.visual.material, "image", None)
        texture = None if image is None else np.asarray(image.convert("RGB"))
    elif tm.visual is not None and getattr(tm.visual, "kind", None) == "vertex":
        colors = np.asarray(tm.visual.vertex_colors)[:, :3].astype(np.uint8)
        if path.suffix.lower() == ".glb":
            colors = linear_to_srgb(colors / 255.0)
    return Mesh(vertices.astype(np.float32), np.asarray(tm.faces, np.uint32), colors, uvs=uvs, texture=texture,
                frame="blender")
