"""Streamed meshes as the flat arrays Blender's `foreach_set` takes. No bpy: tested under plain pytest."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class MeshBuffers:
    co: np.ndarray  # float32 3N: vertex positions
    vertex_index: np.ndarray  # int32 3M: each loop's vertex (triangles, in order)
    loop_start: np.ndarray  # int32 M: first loop of each polygon (every polygon has 3)
    color_srgb: np.ndarray | None  # float32 4N in [0, 1], or None

    @property
    def n_vertices(self) -> int:
        return len(self.co) // 3

    @property
    def n_faces(self) -> int:
        return len(self.loop_start)


def mesh_buffers(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> MeshBuffers:
    """Convert protocol arrays (float32 N×3, uint32 M×3, uint8 N×3|N×4) to Blender's flat layout."""
    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be N×3; got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be M×3 triangles; got {faces.shape}")
    if len(faces) and int(faces.max()) >= len(vertices):
        raise ValueError(f"face index {int(faces.max())} is out of range for {len(vertices)} vertices")
    co = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1)
    vertex_index = np.ascontiguousarray(faces, dtype=np.int32).reshape(-1)
    loop_start = np.arange(0, 3 * len(faces), 3, dtype=np.int32)
    color = None
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape[0] != len(vertices) or colors.shape[1] not in (3, 4):
            raise ValueError(f"colors must be N×3 or N×4 for {len(vertices)} vertices; got {colors.shape}")
        rgba = np.empty((len(colors), 4), np.float32)
        rgba[:, :3] = colors[:, :3] / np.float32(255)
        rgba[:, 3] = colors[:, 3] / np.float32(255) if colors.shape[1] == 4 else 1.0
        color = rgba.reshape(-1)
    return MeshBuffers(co, vertex_index, loop_start, color)


def image_pixels(pixels: np.ndarray) -> np.ndarray:
    """H×W×3|4 uint8, rows top-down (as images are sent) → Blender's flat RGBA floats, rows bottom-up."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"pixels must be H×W×3 or H×W×4; got {pixels.shape}")
    h, w = pixels.shape[:2]
    rgba = np.ones((h, w, 4), np.float32)
    rgba[..., : pixels.shape[2]] = pixels / np.float32(255)
    return np.ascontiguousarray(rgba[::-1]).reshape(-1)


def object_name(prompt: str, limit: int = 60) -> str:
    """A readable object name from a prompt: 'ASD ceramic teapot'."""
    words = "".join(c if c.isalnum() or c in " -_" else " " for c in prompt).split()
    stop = {"a", "an", "the", "of"}
    kept = [w for w in words if w.lower() not in stop] or ["object"]
    return ("ASD " + " ".join(kept))[:limit].rstrip()
