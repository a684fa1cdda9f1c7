"""Pictures of results: each mesh beside the exact object its prompt names, from the same cameras.

The docs' tables say how far a result is from the truth; a picture says how. Both halves of a row are
lit alike (the world's light, ambient + Lambert, on white): the exact object by render.py's sphere
tracing, the mesh (a file from `asd generate` or `asd bench toy --save`, what an artist imports) by ray
casting its triangles with trimesh, its vertex colours or texture taken as albedo (the toy preset's NeRF is lit by
the world's light and learns albedo; a mesh from an unlit preset has shading in its colours, shaded
twice here). The default views: the front-right three-quarter view (the mug's handle, the chair's
seat), the back-left one (the chair's backrest) and one from nearly overhead (a cube that came out
round shows it there).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError
from ..mesh.export import FORMATS
from ..mesh.extract import Mesh
from ..mesh.raycast import barycentric, raycast
from ..nerf.cameras import CameraBatch, orbit_cameras
from ..nerf.shading import lit
from .render import ObjectRender, render_objects
from .world import WorldObject, output_to_field, world_light, world_object

# (elevation, azimuth) in degrees, the cameras' convention (azimuth 0 from the front, 90 from the right).
DEFAULT_VIEWS = ((20.0, 45.0), (20.0, -135.0), (80.0, 0.0))
# The held-out cameras' distance and field of view (bench/toy.py), so the object fills the frame as there.
DISTANCE, FOVY = 1.3, 50.0
UNCOLOURED_ALBEDO = (0.7, 0.7, 0.7)  # a mesh with neither texture nor vertex colours


@dataclasses.dataclass
class GalleryConfig:
    size: int = dataclasses.field(default=96, metadata={"help": "side of each picture in pixels"})
    supersample: int = dataclasses.field(default=2, metadata={"help": "rays per pixel side (soft edges)"})

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 1024:
            raise UsageError(f"--size must be 8..1024 pixels; got {self.size}")
        if not 1 <= self.supersample <= 4:
            raise UsageError(f"--supersample must be 1..4 rays per pixel side; got {self.supersample}")


def gallery_cameras(views: tuple[tuple[float, float], ...] = DEFAULT_VIEWS) -> CameraBatch:
    n = len(views)
    elevation, azimuth = torch.tensor(views, dtype=torch.float32).unbind(dim=1)
    return orbit_cameras(elevation, azimuth, torch.full((n,), DISTANCE), torch.full((n,), FOVY))


def field_frame_vertices(mesh: Mesh) -> np.ndarray:
    """The mesh's vertices in the field frame (the cameras'): files come in Blender's frame."""
    vertices = torch.from_numpy(mesh.vertices.astype(np.float64))
    return (vertices if mesh.frame == "field" else output_to_field(vertices)).numpy()


def surface_albedo(mesh: Mesh, corners: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """sRGB albedo in [0, 1] at hit points: the texture at the interpolated UVs (a textured .glb/.obj),
    else the interpolated vertex colours, else a neutral grey."""
    if mesh.texture is not None and mesh.uvs is not None:
        uv = (mesh.uvs[corners].astype(np.float64) * bary[..., None]).sum(axis=1)
        h, w = mesh.texture.shape[:2]
        column = np.clip(np.round(uv[:, 0] * (w - 1)), 0, w - 1).astype(np.int64)
        row = np.clip(np.round((1 - uv[:, 1]) * (h - 1)), 0, h - 1).astype(np.int64)  # v up, rows down
        return mesh.texture[row, column, :3].astype(np.float64) / 255
    if mesh.colors is not None:
        return (mesh.colors[corners, :3].astype(np.float64) / 255 * bary[..., None]).sum(axis=1)
    return np.broadcast_to(np.asarray(UNCOLOURED_ALBEDO), (len(corners), 3))


@torch.no_grad()
def render_mesh(mesh: Mesh, cameras: CameraBatch, size: int, supersample: int = 2) -> ObjectRender:
    """The mesh under the world's light from each camera: colour (premultiplied) and coverage, as
    render_objects gives for exact objects. Smooth normals (barycentric), turned to face the ray, so
    the inside of a cup is lit as its outside is."""
    import trimesh

    if not len(mesh.faces):
        raise UsageError("the mesh is empty: nothing to picture")
    tm = trimesh.Trimesh(field_frame_vertices(mesh), mesh.faces.astype(np.int64), process=False)
    fine = size * supersample
    hits = raycast(tm, cameras, fine, fine)
    hit = hits.hit.reshape(-1)
    triangles = hits.face.reshape(-1)[hit]
    corners = mesh.faces[triangles].astype(np.int64)  # [n, 3]
    points = hits.points.reshape(-1, 3)[hit]
    bary = barycentric(points, tm.vertices[corners])
    d = points - np.repeat(cameras.positions.double().cpu().numpy(), fine * fine, axis=0)[hit]  # along the ray
    normals = (tm.vertex_normals[corners] * bary[..., None]).sum(axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True).clip(min=1e-12)
    normals *= -np.sign((normals * d).sum(axis=1, keepdims=True) + 1e-12)  # face the camera
    shade = world_light().shade(torch.from_numpy(normals).float())
    colour = torch.zeros(len(hit), 3)
    coverage = torch.zeros(len(hit), 1)
    index = torch.from_numpy(np.nonzero(hit)[0])
    colour[index] = lit(torch.from_numpy(surface_albedo(mesh, corners, bary)).float().clamp(0, 1), shade)
    coverage[index] = 1.0
    colour = F.avg_pool2d(colour.reshape(len(cameras), fine, fine, 3).permute(0, 3, 1, 2), supersample)
    coverage = F.avg_pool2d(coverage.reshape(len(cameras), fine, fine, 1).permute(0, 3, 1, 2), supersample)
    return ObjectRender(colour, coverage)


def gallery_row(obj: WorldObject, meshes: list[Mesh], config: GalleryConfig) -> Tensor:
    """[3, S, (1 + M)·V·S]: the exact object from V views, then each mesh from the same views, on white."""
    cameras = gallery_cameras()
    white = torch.ones(3)
    pictures = [render_objects([obj] * len(cameras), cameras, config.size, config.supersample).over(white)]
    pictures += [render_mesh(mesh, cameras, config.size, config.supersample).over(white) for mesh in meshes]
    return torch.cat([view for picture in pictures for view in picture], dim=2).clamp(0, 1)


def parse_item(text: str) -> tuple[WorldObject, list[Path]]:
    """'PROMPT=MESH[,MESH…]' → the world object and its mesh files, with errors that say what to write."""
    prompt, sep, paths = text.partition("=")
    files = [Path(p) for p in paths.split(",") if p]
    if not sep or not prompt or not files:
        raise UsageError(f"{text!r}: write each item as 'PROMPT=MESH[,MESH…]', e.g. 'a red cube=asd.ply,sds.ply'")
    for path in files:
        if path.suffix.lower() not in FORMATS:
            raise UsageError(f"{path}: not a mesh file the product writes; use one of {', '.join(FORMATS)}")
        if not path.is_file():
            raise UsageError(f"{path}: no such mesh file (from `asd generate … -o FILE` or "
                             f"`asd bench toy --save FILE`)")
    return world_object(prompt), files


def load_mesh(path: Path) -> Mesh:
    """A mesh file read back as the product wrote it, or a UsageError that names the file."""
    from ..mesh.export import read_mesh

    try:
        mesh = read_mesh(path)
    except (ValueError, OSError, KeyError, IndexError) as exc:  # trimesh's errors for a broken file
        raise UsageError(f"{path}: cannot read it as a mesh ({exc})") from exc
    if not len(mesh.faces):
        raise UsageError(f"{path}: the mesh is empty, nothing to picture")
    return mesh


def write_gallery(items: list[str], out: Path, config: GalleryConfig) -> dict[str, object]:
    """One row per 'PROMPT=MESH[,MESH…]' item (the exact object, then each mesh), a label band above
    each picture group, written as a PNG."""
    from PIL import Image, ImageDraw

    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: the gallery is a PNG; name a file ending in .png")
    parsed = [parse_item(item) for item in items]
    if not parsed:
        raise UsageError("name at least one 'PROMPT=MESH' item")
    band, group = 14, config.size * len(DEFAULT_VIEWS)
    rows = []
    for obj, paths in parsed:
        pixels = (gallery_row(obj, [load_mesh(p) for p in paths], config).permute(1, 2, 0).numpy() * 255).round()
        picture = Image.new("RGB", (pixels.shape[1], pixels.shape[0] + band), "white")
        picture.paste(Image.fromarray(pixels.astype(np.uint8)), (0, band))
        draw = ImageDraw.Draw(picture)
        for k, label in enumerate([f"{obj.caption}: exact"] + [p.stem for p in paths]):
            draw.text((k * group + 3, 1), label, fill=(0, 0, 0))
            if k:
                draw.line([(k * group, band), (k * group, picture.height)], fill=(160, 160, 160))
        rows.append(picture)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return {"gallery": str(out), "rows": len(rows), "views": [list(v) for v in DEFAULT_VIEWS],
            "size": config.size}
