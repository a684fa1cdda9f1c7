"""Marching cubes over any callable density field, with colours from any callable colour field.

`extract_mesh` is a pure function of two callables (points → density, points → RGB), so it serves
the NeRF, analytic SDFs in tests and anything else. Steps: a density grid; threshold (fixed, or
'auto' = half the typical interior density); enclosed pockets filled; pymcubes; drop small components
(floaters); optional decimation to a face budget; vertex colours, one field query per final vertex.

The density grid is built coarse to fine (`method="band"`, the default): a coarse grid over the
whole box (an eighth of the resolution, at least 48³) gives the threshold and the object's bounding
box; each finer grid, up to the voxels of the requested resolution inside that box, evaluates the field only
at points next to cells where the coarser grid crosses the threshold (the first refinement also
next to their neighbours) and interpolates the coarser grid elsewhere, where it is on one side of
the level and marching cubes finds no surface anyway. The field is evaluated near the surface
only, a few percent of a full grid's points; over the same lattice the mesh is the full grid's
(a test checks it face for face). `resolution` is the voxel size of a resolution³ grid over the
whole box: meshes have the same detail whatever the object's size.

`method="full"` is the first version, kept as the reference: every point of the whole box, then
every point of a second grid at the same resolution inside the first mesh's padded bounding box
(finer voxels where the object is, when the first mesh has no stray bits far from it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from ..interrupt import StopCheck, check

DensityFn = Callable[[torch.Tensor], torch.Tensor]  # [N, 3] -> [N]
ColorFn = Callable[[torch.Tensor], torch.Tensor]  # [N, 3] -> [N, 3] in [0, 1] (sRGB)


@dataclasses.dataclass
class Mesh:
    """Triangles with optional per-vertex sRGB colours.

    `frame` says whose axes: "field" (the NeRF's: front towards +X) while the backend works on it,
    "blender" (metres, Z up, front towards −Y) once it leaves (mesh/export.py converts, at one place).
    """

    vertices: np.ndarray  # float32 N×3
    faces: np.ndarray  # uint32 M×3, counter-clockwise seen from outside
    colors: np.ndarray | None = None  # uint8 N×3 (sRGB)
    uvs: np.ndarray | None = None  # float32 N×2, u right, v up (with `texture`, from mesh/bake.py)
    texture: np.ndarray | None = None  # uint8 H×W×3 (sRGB), rows top-down
    frame: str = "field"

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    def to_trimesh(self):
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=self.colors, process=False)


@dataclasses.dataclass
class ExtractionConfig:
    resolution: int = 256
    """Grid cells per axis (128-512 for finals; previews use less)."""
    threshold: float | str = "auto"
    """Density level of the surface, or 'auto': half the median density of the clearly occupied cells."""
    refine: bool = True
    """Second pass inside the padded bounding box of the first mesh."""
    min_component_fraction: float = 0.05
    """Drop connected pieces with fewer faces than this fraction of the largest piece."""
    fill_cavities: bool = True
    """Count as inside every empty pocket the outside cannot reach (a NeRF's interior is never rendered, so
    its density there is arbitrary): the mesh is the outer surface, without shells hidden inside it.
    Pockets open to the outside (a mug's hollow) are kept."""
    face_budget: int | None = None
    """Decimate to at most this many faces (quadric decimation); None keeps all."""
    chunk: int = 1 << 18
    method: str = "band"
    """band: evaluate the field near the surface only, coarse to fine; full: every grid point (reference)."""
    coarsest: int = 48
    """Smallest resolution of the band method's first, whole-box grid (resolution/8 when that is larger).
    It also gives the 'auto' threshold: 24³ put it 6 % off on a trained torus (Chamfer 1.20 % against
    0.96 %), 48³ within 1.5 % of the full grid's."""

    def __post_init__(self) -> None:
        if not 8 <= self.resolution <= 1024:
            raise ValueError(f"marching-cubes resolution must be in 8..1024; got {self.resolution}")
        if self.method not in ("band", "full"):
            raise ValueError(f"extraction method must be 'band' or 'full'; got {self.method!r}")
        if isinstance(self.threshold, str) and self.threshold != "auto":
            raise ValueError(f"threshold must be a number or 'auto'; got {self.threshold!r}")
        if self.face_budget is not None and self.face_budget < 4:
            raise ValueError(f"face_budget must be at least 4; got {self.face_budget}")


def auto_threshold(grid: np.ndarray, occupied: float = 1.0) -> float:
    """Half the median density of cells above `occupied`: the surface halfway into the object's density.

    A NeRF's interior density settles at whatever makes its renders opaque, which depends on the
    sampling (threestudio's fixed 25 suits 512 samples per ray, not 64). Half the typical interior
    density tracks that scale. Falls back to the mean positive density for faint fields.
    """
    inside = grid[grid > occupied]
    if inside.size:
        return 0.5 * float(np.median(inside))
    positive = grid[grid > 1e-5]
    return float(positive.mean()) if positive.size else 0.0


@torch.no_grad()
def density_grid(density_fn: DensityFn, lo: np.ndarray, hi: np.ndarray, resolution: int, chunk: int,
                 device: torch.device | str = "cpu", should_stop: StopCheck = None) -> np.ndarray:
    """Density at the (resolution)³ lattice spanning [lo, hi] (corners included), `chunk` points at a
    time: memory stays bounded by the grid itself (4 bytes a point), whatever the resolution."""
    axes = [torch.linspace(float(lo[i]), float(hi[i]), resolution, device=device) for i in range(3)]
    grid = torch.empty(resolution**3, dtype=torch.float32)
    plane = resolution * resolution
    for start in range(0, resolution**3, chunk):
        check(should_stop)
        index = torch.arange(start, min(start + chunk, resolution**3), device=device)
        points = torch.stack([axes[0][index // plane], axes[1][index // resolution % resolution],
                              axes[2][index % resolution]], dim=-1)
        grid[start:start + len(index)] = density_fn(points).float().cpu()
    return grid.reshape(resolution, resolution, resolution).numpy()


def _axis_interpolate(grid: torch.Tensor, axis: int, coords: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of `grid` along `axis` at fractional indices `coords`."""
    n = grid.shape[axis]
    i0 = coords.floor().clamp(0, n - 2).long()
    t = (coords - i0).clamp(0, 1)
    shape = [1, 1, 1]
    shape[axis] = -1
    t = t.reshape(shape)
    return grid.index_select(axis, i0) * (1 - t) + grid.index_select(axis, i0 + 1) * t


def _crossing_cells(grid: torch.Tensor, level: float) -> torch.Tensor:
    """Cells (n−1)³ whose 8 corners are not all on one side of `level`."""
    g = grid[None, None]
    hi = torch.nn.functional.max_pool3d(g, 2, stride=1)[0, 0]
    lo = -torch.nn.functional.max_pool3d(-g, 2, stride=1)[0, 0]
    return (hi >= level) & (lo < level)


def _dilate(cells: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.max_pool3d(cells[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0


@torch.no_grad()
def _refine_grid(density_fn: DensityFn, coarse: torch.Tensor, coarse_lo: np.ndarray, coarse_hi: np.ndarray,
                 lo: np.ndarray, hi: np.ndarray, shape: tuple[int, int, int], level: float, dilate: bool, chunk: int,
                 device: torch.device | str, should_stop: StopCheck = None) -> torch.Tensor:
    """A lattice of `shape` points over [lo, hi]: the field where `coarse` crosses the level, `coarse`
    interpolated elsewhere."""
    cells = _crossing_cells(coarse, level)
    if dilate:
        cells = _dilate(cells)
    # Each new lattice point's fractional index in the coarse lattice, axis by axis.
    coords = []
    for axis in range(3):
        x = np.linspace(lo[axis], hi[axis], shape[axis])
        coords.append(torch.from_numpy((x - coarse_lo[axis]) / (coarse_hi[axis] - coarse_lo[axis])
                                       * (coarse.shape[axis] - 1)).float())
    grid = coarse.cpu()
    for axis in range(3):
        grid = _axis_interpolate(grid, axis, coords[axis])
    # A point is evaluated when a cell of the new lattice around it overlaps an active coarse cell: the
    # coarse cells within one new spacing of it, on each axis (at most two: the spacing is finer).
    cells_cpu = cells.cpu()
    near = []
    for axis, c in enumerate(coords):
        step = float(c[1] - c[0]) if len(c) > 1 else 0.0
        near.append([(c + d).floor().clamp(0, coarse.shape[axis] - 2).long() for d in (-step, step)])
    active = torch.zeros(shape, dtype=torch.bool)
    for ix in near[0]:
        for iy in near[1]:
            for iz in near[2]:
                active |= cells_cpu[ix[:, None, None], iy[None, :, None], iz[None, None, :]]
    index = active.nonzero()
    if len(index):
        spacing = torch.from_numpy((hi - lo) / (np.array(shape) - 1)).float()
        lo_t = torch.from_numpy(lo).float()
        values = []
        for part in index.split(chunk):
            check(should_stop)
            points = (lo_t + part.float() * spacing).to(device)
            values.append(density_fn(points).float().cpu())
        grid[index[:, 0], index[:, 1], index[:, 2]] = torch.cat(values)
    return grid


def band_density_grid(density_fn: DensityFn, lo: np.ndarray, hi: np.ndarray, config: ExtractionConfig,
                      device: torch.device | str = "cpu",
                      should_stop: StopCheck = None) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """The coarse-to-fine density grid of the module docstring. Its voxels are those of a
    config.resolution³ grid over [lo, hi], restricted to the object's box when `refine` is on.

    Returns (grid, threshold, the grid's box lo, hi)."""
    resolution = config.resolution
    # The coarsest grid: resolution / 2^k for the largest k ≤ 3 that keeps it at `coarsest` or more.
    refinements = next((k for k in (3, 2, 1) if resolution // 2**k >= config.coarsest), 0)
    coarse_res = resolution // 2**refinements
    coarse = torch.from_numpy(density_grid(density_fn, lo, hi, coarse_res, config.chunk, device, should_stop))
    level = auto_threshold(coarse.numpy()) if config.threshold == "auto" else float(config.threshold)
    cells = _crossing_cells(coarse, level)
    if not cells.any() or coarse_res == resolution:
        return coarse.numpy(), level, lo, hi
    voxel = (hi - lo) / (resolution - 1)
    first, last = np.zeros(3, int), np.full(3, resolution - 1)
    if config.refine:
        # The box around the crossing cells (the surface is inside them), one coarse cell wider,
        # on the final lattice: the same voxels, evaluated only where the object is.
        spacing = (hi - lo) / (coarse_res - 1)
        where = cells.nonzero().numpy()
        first = np.maximum(np.floor((where.min(0) - 1) * spacing / voxel).astype(int), 0)
        last = np.minimum(np.ceil((where.max(0) + 2) * spacing / voxel).astype(int), resolution - 1)
    shape = tuple(int(n) for n in last - first + 1)
    box_lo, box_hi = lo + first * voxel, lo + last * voxel
    shapes = [shape]
    for _ in range(refinements - 1):  # each intermediate lattice at twice the spacing of the next
        shapes.insert(0, tuple((n - 1) // 2 + 1 for n in shapes[0]))
    grid, coarse_lo, coarse_hi = coarse, lo, hi
    for i, step_shape in enumerate(shapes):
        grid = _refine_grid(density_fn, grid, coarse_lo, coarse_hi, box_lo, box_hi, step_shape, level,
                            dilate=i == 0, chunk=config.chunk, device=device, should_stop=should_stop)
        coarse_lo, coarse_hi = box_lo, box_hi
    return grid.numpy(), level, box_lo, box_hi


def fill_cavities(grid: np.ndarray, level: float) -> np.ndarray:
    """The grid with every cell below `level` that no path of such cells links to the grid's border raised
    above it (6-connected): enclosed pockets become inside. One labelling pass of the empty cells (scipy),
    cheaper than iterated hole filling."""
    from scipy.ndimage import label

    labels, count = label(grid <= level)
    if count == 0:
        return grid
    outside = np.zeros(count + 1, bool)
    for face in (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        outside[face] = True
    outside[0] = True  # label 0: the cells above the level
    cavity = ~outside[labels]
    if not cavity.any():
        return grid
    grid = grid.copy()
    grid[cavity] = 2 * level if level > 0 else 1.0
    return grid


def _marching_cubes(grid: np.ndarray, level: float, lo: np.ndarray, hi: np.ndarray,
                    fill: bool) -> tuple[np.ndarray, np.ndarray]:
    import mcubes

    if fill:
        grid = fill_cavities(grid, level)
    vertices, faces = mcubes.marching_cubes(grid, level)
    if len(faces) == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint32)
    scale = (hi - lo) / (np.array(grid.shape) - 1)
    vertices = (vertices * scale + lo).astype(np.float32)
    faces = faces.astype(np.int64)
    # Density grows inwards; make the winding counter-clockwise from outside (positive volume).
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    if np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() < 0:
        faces = faces[:, ::-1]
    return vertices, faces


def _drop_small_components(vertices: np.ndarray, faces: np.ndarray, fraction: float):
    """Keep the connected pieces with at least `fraction` of the largest piece's faces (floaters go).
    Pieces are the connected components of the vertex graph (scipy's, several times faster than
    building trimesh's face adjacency)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    if count <= 1:
        return vertices, faces
    face_label = label[faces[:, 0]]
    sizes = np.bincount(face_label, minlength=count)
    keep_faces = sizes[face_label] >= fraction * sizes.max()
    faces = faces[keep_faces]
    used = np.zeros(n, bool)
    used[faces] = True
    remap = np.cumsum(used) - 1
    return vertices[used], remap[faces].astype(np.int64)


def extract_mesh(density_fn: DensityFn, bounds: tuple[np.ndarray, np.ndarray] | float,
                 config: ExtractionConfig | None = None, color_fn: ColorFn | None = None,
                 device: torch.device | str = "cpu", should_stop: StopCheck = None) -> Mesh:
    """A mesh of the level set {density = threshold} of `density_fn` inside `bounds`.

    `bounds` is (lo, hi) corners or a half-size r for the cube [-r, r]³. An empty level set gives an
    empty mesh (0 vertices), never an error: early in training the object may not exist yet.
    `should_stop` is polled between chunks (raises `interrupt.Interrupted`).
    """
    config = config or ExtractionConfig()
    if isinstance(bounds, (int, float)):
        lo, hi = np.full(3, -float(bounds)), np.full(3, float(bounds))
    else:
        lo, hi = np.asarray(bounds[0], np.float64), np.asarray(bounds[1], np.float64)
    if config.method == "band":
        grid, level, lo, hi = band_density_grid(density_fn, lo, hi, config, device, should_stop)
    else:
        grid = density_grid(density_fn, lo, hi, config.resolution, config.chunk, device, should_stop)
        level = auto_threshold(grid) if config.threshold == "auto" else float(config.threshold)
    vertices, faces = _marching_cubes(grid, level, lo, hi, config.fill_cavities)
    if config.method == "full" and config.refine and len(faces):
        pad = 2 * (hi - lo) / (config.resolution - 1)
        lo2 = np.maximum(vertices.min(0) - pad, lo)
        hi2 = np.minimum(vertices.max(0) + pad, hi)
        grid = density_grid(density_fn, lo2, hi2, config.resolution, config.chunk, device, should_stop)
        vertices, faces = _marching_cubes(grid, level, lo2, hi2, config.fill_cavities)
    if len(faces) and config.min_component_fraction > 0:
        vertices, faces = _drop_small_components(vertices, faces, config.min_component_fraction)
    if config.face_budget is not None and len(faces) > config.face_budget:
        import trimesh

        simplified = trimesh.Trimesh(vertices, faces, process=False).simplify_quadric_decimation(
            face_count=config.face_budget)
        vertices, faces = np.asarray(simplified.vertices, np.float32), np.asarray(simplified.faces, np.int64)
    colors = None
    if color_fn is not None and len(vertices):
        with torch.no_grad():
            pts = torch.from_numpy(vertices).to(device)
            rgb = []
            for i in range(0, len(pts), config.chunk):
                check(should_stop)
                rgb.append(color_fn(pts[i:i + config.chunk]).float().cpu())
            rgb = torch.cat(rgb)
        colors = (rgb.clamp(0, 1) * 255).round().byte().numpy()
    return Mesh(vertices.astype(np.float32), faces.astype(np.uint32), colors)
