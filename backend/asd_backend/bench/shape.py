"""`asd bench 3d`: text-to-3D against a teacher that knows the answer, through the real training loop.

The teacher (RenderedShapeTeacher) is an exact Gaussian in pixel space around ray-cast renders of a
target mesh from each sampled camera, with a position-dependent albedo so the shape is well posed;
the prompt is the target in several paints, the unconditional every paint of the target, a sphere
and a box, made vague (`uncond_shrink`) so that CFG over-saturates as on a real teacher.
The NeRF is optimised with the same `generate()` the product runs; its final mesh is compared with
the target:

- chamfer_l1_rel: symmetric mean nearest-neighbour distance between 20k surface samples per side,
  over the target's bounding-box diagonal;
- iou: volumetric IoU of inside/outside on a 96³ grid over the target's padded bounding box;
- fscore: F-score of the surface samples at 1% of the diagonal.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asd_protocol.job_spec import JobSpec

from ..errors import UsageError
from ..mesh.extract import Mesh
from ..teachers.analytic import RenderedShapeTeacher
from ..train.presets import resolve_spec
from ..train.text_to_3d import generate

BUILTIN_TARGETS = ("torus", "star", "mug")
SATURATED = 0.02


def extruded_star(points: int = 5, outer: float = 0.5, inner: float = 0.22, height: float = 0.3):
    """A prism over a star polygon, triangulated as fans from the centre (the star is star-shaped)."""
    import trimesh

    n = 2 * points
    angles = np.arange(n) * np.pi / points + np.pi / 2
    radii = np.where(np.arange(n) % 2 == 0, outer, inner)
    ring = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    z0, z1 = -height / 2, height / 2
    vertices = np.concatenate([
        np.c_[ring, np.full(n, z0)], np.c_[ring, np.full(n, z1)], [[0, 0, z0], [0, 0, z1]]])
    bottom_c, top_c = 2 * n, 2 * n + 1
    faces = []
    for i in range(n):
        j = (i + 1) % n
        faces += [[bottom_c, j, i], [top_c, n + i, n + j], [i, j, n + j], [i, n + j, n + i]]
    return trimesh.Trimesh(vertices, np.array(faces), process=True)


def mug(radius: float = 0.3, height: float = 0.6, wall: float = 0.08, floor: float = 0.1):
    """A cup: a revolved closed profile with a hollow, open at the top (concave)."""
    import trimesh

    z0, z1 = -height / 2, height / 2
    profile = np.array([[0, z0], [radius, z0], [radius, z1], [radius - wall, z1], [radius - wall, z0 + floor],
                        [0, z0 + floor]])
    return trimesh.creation.revolve(profile, sections=96)


def builtin_target(name: str):
    """Built-in targets: a torus, an extruded five-pointed star (concave), a mug with a hollow (concave)."""
    import trimesh

    if name == "torus":
        return trimesh.creation.torus(major_radius=0.35, minor_radius=0.15, major_sections=96, minor_sections=48)
    if name == "star":
        return extruded_star()
    if name == "mug":
        return mug()
    raise UsageError(f"unknown built-in target {name!r}; use {', '.join(BUILTIN_TARGETS)} or a mesh file")


def load_target(spec: str):
    """A built-in name or a mesh file, centred and scaled to a bounding sphere of radius 0.55."""
    import trimesh

    if spec in BUILTIN_TARGETS:
        mesh = builtin_target(spec)
    else:
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"target {spec!r} is neither a built-in ({', '.join(BUILTIN_TARGETS)}) nor a file")
        mesh = trimesh.load(path, force="mesh")
    mesh = mesh.copy()
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    mesh.apply_scale(0.55 / np.linalg.norm(mesh.vertices, axis=1).max())
    return mesh


def distractor_for(target) -> list:
    """The unconditional mixture's other objects: a sphere and a box of the target's size."""
    import trimesh

    size = np.linalg.norm(target.extents) / 2
    return [trimesh.creation.icosphere(subdivisions=3, radius=0.8 * size),
            trimesh.creation.box(extents=[1.1 * size] * 3)]


@dataclasses.dataclass
class ShapeBenchConfig:
    target: str = "torus"
    """torus | star | mug | a mesh file."""
    method: str = "sds"
    """sds | vsd | asd."""
    steps: int = 2000
    """Optimisation steps."""
    seed: int = 0
    resolution: int = 48
    """Render side (the teacher works at this size, no VAE)."""
    samples_per_ray: int = 64
    cfg: float = 1.0
    sigma: float = 0.05
    """Pixel std of the teacher's Gaussian."""
    mc_resolution: int = 192
    lr_encoding: float = 0.03
    """Hash-grid learning rate (the product's 0.01 converges too slowly for a 10-minute CPU budget)."""
    samples: int = 20_000
    iou_grid: int = 96
    colourways: int = 3
    """Equally likely paints of the target (and of each distractor): the prompt is a distribution."""
    colourway_shift: float = 0.6
    """Phase step between paints, radians (2.4: paints so far apart that no render is near two)."""
    uncond_shrink: float = 0.05
    """How far the unconditional's renders are pulled towards their mean: what CFG pushes away from."""
    views: int = 8
    """Held-out views for render_psnr and saturated."""
    discriminator_lr: float = 0.01
    """ε_φ's learning rate (VSD and ASD: its NeRF's, like the generator's hash grid)."""
    discriminator_steps: int = 4
    """ε_φ updates per generator step."""


def metrics(pred: Mesh, target, samples: int = 20_000, grid: int = 96, seed: int = 0) -> dict[str, float]:
    import trimesh
    from scipy.spatial import cKDTree

    pred_tm = trimesh.Trimesh(pred.vertices, pred.faces, process=False)
    diagonal = float(np.linalg.norm(target.extents))
    if len(pred.faces) == 0:
        return {"chamfer_l1_rel": float("inf"), "iou": 0.0, "fscore": 0.0}
    a, _ = trimesh.sample.sample_surface(pred_tm, samples, seed=seed)
    b, _ = trimesh.sample.sample_surface(target, samples, seed=seed + 1)
    d_ab = cKDTree(b).query(a)[0]
    d_ba = cKDTree(a).query(b)[0]
    chamfer = 0.5 * (d_ab.mean() + d_ba.mean()) / diagonal
    tau = 0.01 * diagonal
    precision, recall = (d_ab < tau).mean(), (d_ba < tau).mean()
    fscore = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    lo, hi = target.bounds
    pad = 0.05 * (hi - lo)
    axes = [np.linspace(lo[i] - pad[i], hi[i] + pad[i], grid) for i in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    inside_t = target.contains(points)
    inside_p = pred_tm.contains(points)
    union = np.logical_or(inside_t, inside_p).sum()
    iou = float(np.logical_and(inside_t, inside_p).sum() / union) if union else 0.0
    return {"chamfer_l1_rel": round(float(chamfer), 5), "iou": round(iou, 4), "fscore": round(float(fscore), 4)}


def render_scores(model, teacher: RenderedShapeTeacher, views: int, resolution: int) -> dict[str, float]:
    """The reconstruction rendered with its colours from held-out views (elevation 20°, azimuths offset
    from any training grid) against the nearest of the target's colourways: PSNR, and the fraction of
    the target's pixels pushed within 2 % of 0 or 1 in a channel where no colourway is (over-saturation)."""
    from ..nerf.cameras import orbit_cameras

    n = views
    cameras = orbit_cameras(torch.full((n,), 20.0), torch.arange(n) * 360.0 / n + 11.25, torch.full((n,), 1.3),
                            torch.full((n,), 50.0))
    with torch.no_grad():
        out = model.renderer(cameras.to(model.field.device), resolution, resolution, training=False)
    pred = out.rgb.permute(0, 3, 1, 2).clamp(0, 1).cpu()
    variants = [r.cpu() for r in teacher.target_renders(cameras, resolution, resolution)]
    errors = [float(((pred - v) ** 2).mean()) for v in variants]
    nearest = int(np.argmin(errors))
    fg = (torch.stack(variants) != teacher.background.cpu()[None, None, :, None, None]).any(2).any(0)  # [n, H, W]
    # Within 2 % of 0 or 1: the NeRF's sigmoid colours approach the ends without reaching them.
    pixels = pred.permute(0, 2, 3, 1)[fg]  # [P, 3]
    extreme = (pixels <= SATURATED) | (pixels >= 1 - SATURATED)
    natural = torch.zeros_like(extreme)
    for v in variants:
        values = v.permute(0, 2, 3, 1)[fg]
        natural |= (values <= SATURATED) | (values >= 1 - SATURATED)
    return {"render_psnr": round(10 * float(np.log10(1 / max(errors[nearest], 1e-12))), 2),
            "saturated": round(float((extreme & ~natural).float().mean()), 5), "nearest_colourway": nearest}


def bench_spec(cfg: ShapeBenchConfig) -> JobSpec:
    """The generate spec of the benchmark: a small grid and white background, sized for 2 CPU cores."""
    return resolve_spec({
        "prompt": "target", "seed": cfg.seed,
        "guidance": {"method": cfg.method, "cfg": cfg.cfg, "view_prompts": False, "perp_neg": False,
                     "discriminator_lr": cfg.discriminator_lr, "discriminator_steps": cfg.discriminator_steps},
        "nerf": {"grid": {"n_levels": 12, "n_features_per_level": 2, "log2_hashmap_size": 16, "base_resolution": 16,
                          "per_level_scale": 1.32},
                 "samples_per_ray": cfg.samples_per_ray, "occupancy_resolution": 48, "occupancy_update_every": 16,
                 "occupancy_warmup_steps": 128, "background": "white"},
        "schedule": {"steps": cfg.steps, "resolution_schedule": [[0, cfg.resolution]], "lambda_sparsity": 1.0,
                     "lr_encoding": cfg.lr_encoding},
        "output": {"mesh_every": 0, "mc_resolution": cfg.mc_resolution, "turntable": 0}})


def run(cfg: ShapeBenchConfig, device: str = "cpu", save: str | None = None) -> dict[str, Any]:
    """Optimise, extract, score. `save` writes the reconstructed mesh (Blender frame) to that path."""
    target = load_target(cfg.target)
    teacher = RenderedShapeTeacher(target, distractor_for(target), resolution=cfg.resolution, sigma=cfg.sigma,
                                   device=device, colourways=cfg.colourways,
                                   colourway_shift=cfg.colourway_shift, uncond_shrink=cfg.uncond_shrink)
    from ..progress_bar import ProgressBar

    spec = bench_spec(cfg)
    start = time.perf_counter()
    with ProgressBar(spec.steps, f"bench 3d {cfg.target} {cfg.method}") as events:
        result = generate(teacher, spec, events=events)
    seconds = time.perf_counter() - start
    scores = metrics(result.mesh, target, cfg.samples, cfg.iou_grid, cfg.seed)  # both in the field's frame
    scores |= render_scores(result.model, teacher, cfg.views, cfg.resolution)
    if save:
        from ..mesh.export import write_mesh

        write_mesh(result.mesh, save)
    return {"benchmark": "3d", "settings": dataclasses.asdict(cfg), **scores, "seconds": round(seconds, 1),
            "steps": result.steps_done, "faces": len(result.mesh.faces)}


# -- the command line (flags generated from ShapeBenchConfig) -------------------------------------------

def _command(args: Any) -> int:
    import json

    from ..dataclass_flags import dataclass_from_args

    cfg = dataclass_from_args(ShapeBenchConfig, args)
    report = run(cfg, device=args.device, save=args.save)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{cfg.target} ({cfg.method}, {report['steps']} steps, {report['seconds']:.0f} s): "
              f"chamfer {100 * report['chamfer_l1_rel']:.2f}% of the diagonal, IoU {report['iou']:.3f}, "
              f"F-score@1% {report['fscore']:.3f}, render PSNR {report['render_psnr']} dB, saturated "
              f"{100 * report['saturated']:.2f}%")
    return 0


def add_cli(kinds: Any) -> None:
    from ..dataclass_flags import add_dataclass_flags

    p = kinds.add_parser("3d", help="text-to-3D against an exact teacher that renders a known mesh")
    add_dataclass_flags(p, ShapeBenchConfig)
    p.add_argument("--device", default="cpu")
    p.add_argument("--save", default=None, metavar="MESH", help="also write the reconstruction (.glb/.obj/.ply)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.set_defaults(handler=_command)
