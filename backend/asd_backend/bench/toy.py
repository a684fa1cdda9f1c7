"""`asd bench toy`: the product's own `generate()` with the toy teacher on a world prompt, scored against
the exact object.

- chamfer_l1_rel, iou: the final mesh against the exact object's surface (marching cubes of its exact
  signed distance at `exact_resolution`³), as `asd bench 3d` scores them;
- nearest_shape: the world shape whose exact surface is nearest the mesh by Chamfer;
- from `views` held-out cameras (elevation 20°, azimuths between any grid the loop uses), the NeRF
  rendered with its own colours on white against the exact object rendered under the world's light:
  render_psnr; saturated (the share of the object's pixel channels within 2 % of 0 or 1 where the exact
  render is not); saturated_far (the same, counting only channels whose exact value lies at least 0.1
  from that end: a dark paint's shadow, 0.03 in the exact render, is not over-saturated at 0.01, and
  the black cone's and the red cube's shadows fill `saturated` with such channels); nearest_colour (the
  paint whose exact render is nearest); judge_shape_accuracy and judge_colour_accuracy (the judge,
  toy/judge.py, on those renders: no method ever trains against it), judge_shape_probability and
  judge_colour_probability (the mean probability it gives the asked shape and paint: finer than right
  or wrong, where every result is read right); chroma_excess (how much more colourful than the truth
  the object's pixels are, the mean of max(0, C − C_exact) with C = max − min of a pixel's channels:
  over-saturation as colour, which a darker black or a duller paint does not raise);
  mesh_colour_psnr: the mesh's vertex colours against the paint (shading baked into them is error);
  nearest_mesh_colour: the paint nearest their median (the paint an artist gets, unlit: a thin result's
  renders show background inside the exact silhouette, which can take nearest_colour to white);
  for the mug and the chair, judge_azimuth_error_deg: the median error of the azimuth the judge reads
  from each render (a Janus object, or a handle on the wrong side, reads far from the camera's);
- for the cube, top_square_fill: how much of the tightest square around it (at any turn) its silhouette
  seen from above fills: 1 for a cube, π/4 = 0.785 for a solid of revolution;
- caption_gain and caption_gain_exact: how well the prompt explains the result's renders and the exact
  object's, by the teacher's own denoising (toy/preference.py), same views and noise: a result below
  the exact object is a distillation that missed what the teacher knows; one level with it, a teacher
  that cannot tell them apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from asd_protocol.job_spec import GAMMA_SCHEDULES

from ..errors import UsageError
from ..mesh.extract import Mesh
from ..nerf.background import SolidBackground
from ..nerf.cameras import CameraBatch, orbit_cameras
from ..progress_bar import ProgressBar
from ..toy.judge import ORIENTED, load_judge
from ..toy.preference import PreferenceConfig, caption_gains, view_captions
from ..toy.render import render_objects
from ..toy.world import BOUNDING_RADIUS, COLOURS, SHAPES, WorldObject, world_object
from .shape import SATURATED, metrics

# `saturated_far` counts a clipped channel only where the exact render lies at least this far from that end.
FAR_FROM_END = 0.1


@dataclasses.dataclass
class ToyBenchConfig:
    prompt: str = dataclasses.field(default="a red cube", metadata={"help": "a world prompt: a colour and a shape"})
    method: str = dataclasses.field(default="asd", metadata={"help": "asd | vsd | sds"})
    cfg: float = dataclasses.field(default=7.5, metadata={"help": "classifier-free guidance scale"})
    steps: int = dataclasses.field(default=0, metadata={"help": "optimisation steps (0: the toy preset's)"})
    seed: int = 0
    gamma_schedule: str = dataclasses.field(default="", metadata={
        "help": "ASD's γ schedule, constant | official (empty: the product's default)"})
    discriminator_lr: float = dataclasses.field(default=0.0, metadata={
        "help": "ε_φ's learning rate (0: the product's default), to measure whether ε_φ keeps up"})
    discriminator_steps: int = dataclasses.field(default=0, metadata={
        "help": "ε_φ updates per step (0: the product's default)"})
    lora_rank: int = dataclasses.field(default=0, metadata={"help": "ε_φ's LoRA rank (0: the product's default)"})
    anneal_start_step: int = dataclasses.field(default=-1, metadata={
        "help": "schedule.anneal_start_step (-1: the preset's; toy anneals from CFG 15, train/presets.py)"})
    anneal_max_timestep: float = dataclasses.field(default=0.0, metadata={
        "help": "schedule.anneal_max_timestep (0: the preset's)"})
    lambda_sparsity: float = dataclasses.field(default=-1.0, metadata={
        "help": "schedule.lambda_sparsity (-1: the preset's; toy's is 100, the official 10)"})
    opaque_from_step: int = dataclasses.field(default=-1, metadata={
        "help": "schedule.opaque_from_step: the opacity (binary entropy) loss from this step "
                "(-1: the preset's; toy's: never)"})
    lambda_opaque: float = dataclasses.field(default=-1.0, metadata={
        "help": "schedule.lambda_opaque (-1: the preset's, the official 1000)"})
    preset: str = dataclasses.field(default="toy", metadata={"help": "the job preset the run starts from"})
    views: int = dataclasses.field(default=8, metadata={"help": "held-out views for the render scores and judge"})
    render_size: int = dataclasses.field(default=64, metadata={"help": "side of the held-out renders"})
    exact_resolution: int = dataclasses.field(default=192, metadata={"help": "marching cubes of the exact objects"})
    samples: int = 20_000
    iou_grid: int = 96

    def __post_init__(self) -> None:
        world_object(self.prompt, "--prompt")
        if self.method not in ("asd", "vsd", "sds"):
            raise UsageError(f"--method must be asd, vsd or sds; got {self.method!r}")
        if self.steps < 0 or self.views < 1:
            raise UsageError("--steps must be ≥ 0 and --views ≥ 1")
        if self.gamma_schedule and self.gamma_schedule not in GAMMA_SCHEDULES:
            raise UsageError(f"--gamma-schedule must be one of {', '.join(GAMMA_SCHEDULES)} (or left out for the "
                             f"product's default); got {self.gamma_schedule!r}")


@functools.lru_cache(maxsize=16)
def exact_mesh(shape: str, resolution: int = 192):
    """The exact object's surface in the field frame (marching cubes of its signed distance), as trimesh."""
    import mcubes
    import trimesh

    r = BOUNDING_RADIUS
    axis = torch.linspace(-r, r, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    obj = WorldObject(shape, "white")
    sdf = torch.cat([obj.sdf_field(chunk) for chunk in points.split(1 << 20)]).reshape((resolution,) * 3)
    vertices, faces = mcubes.marching_cubes(-sdf.numpy(), 0.0)
    vertices = vertices / (resolution - 1) * 2 * r - r
    # mcubes orients faces for a field that grows inwards; ours flips sign, so turn them outwards.
    return trimesh.Trimesh(vertices, faces[:, ::-1], process=True)


def held_out_cameras(views: int) -> CameraBatch:
    n = views
    return orbit_cameras(torch.full((n,), 20.0), torch.arange(n) * 360.0 / n + 11.25 - 180.0, torch.full((n,), 1.3),
                         torch.full((n,), 50.0))


def nerf_renders(model, cameras: CameraBatch, size: int) -> torch.Tensor:
    """The NeRF's own colours on white, [B, 3, S, S] (its learned background swapped out for the render)."""
    saved = model.renderer.background
    model.renderer.background = SolidBackground().to(model.field.device)
    try:
        with torch.no_grad():
            out = model.renderer(cameras.to(model.field.device), size, size, training=False)
    finally:
        model.renderer.background = saved
    return out.rgb.permute(0, 3, 1, 2).clamp(0, 1).cpu()


def chroma(pixels: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
    """How colourful each pixel is: its largest channel less its smallest (0 for any grey)."""
    return pixels.amax(-1) - pixels.amin(-1)


def render_scores(pred: torch.Tensor, obj: WorldObject, cameras: CameraBatch, size: int) -> dict[str, Any]:
    white = torch.ones(3)
    exact = render_objects([obj] * len(cameras), cameras, size)
    target = exact.over(white)
    mse = float(((pred - target) ** 2).mean())
    fg = exact.coverage[:, 0] > 0.5  # [B, H, W]
    paints = {}
    for colour in COLOURS:
        painted = render_objects([WorldObject(obj.shape, colour)] * len(cameras), cameras, size).over(white)
        paints[colour] = float(((pred - painted) ** 2).permute(0, 2, 3, 1)[fg].mean())
    pixels = pred.permute(0, 2, 3, 1)[fg]
    natural = target.permute(0, 2, 3, 1)[fg]
    extreme = (pixels <= SATURATED) | (pixels >= 1 - SATURATED)
    extreme_natural = (natural <= SATURATED) | (natural >= 1 - SATURATED)
    saturated = extreme & ~extreme_natural
    # Of those, the ones clipped towards an end the truth is well away from: over-saturation, not a dark
    # paint's shadow a shade darker.
    far = ((pixels <= SATURATED) & (natural >= FAR_FROM_END)) | ((pixels >= 1 - SATURATED)
                                                                 & (natural <= 1 - FAR_FROM_END))
    return {"render_psnr": round(10 * math.log10(1 / max(mse, 1e-12)), 2),
            "saturated": round(float(saturated.float().mean()), 5),
            "saturated_far": round(float((saturated & far).float().mean()), 5),
            "chroma_excess": round(float((chroma(pixels) - chroma(natural)).clamp(min=0).mean()), 5),
            "nearest_colour": min(paints, key=paints.get)}


def top_square_fill(mesh: Mesh, samples: int = 160) -> float:
    """The share of the tightest square (over turns about the vertical) that the mesh's silhouette seen from
    above fills: 1 for an upright box, π/4 for a solid of revolution."""
    import trimesh

    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    (x0, y0, _), (x1, y1, z1) = tm.bounds
    xs, ys = np.meshgrid(np.linspace(x0, x1, samples), np.linspace(y0, y1, samples))
    origins = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z1 + 1.0)], axis=1)
    hit = tm.ray.intersects_any(origins, np.tile([0.0, 0.0, -1.0], (xs.size, 1)))
    if not hit.any():
        return 0.0
    area = hit.mean() * (x1 - x0) * (y1 - y0)
    points = origins[hit, :2]
    side = min(np.ptp(points @ np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]), axis=0).max()
               for a in np.radians(np.arange(0.0, 90.0, 3.0)))
    return round(float(area / side**2), 3)


def teacher_preference(teacher, model, obj: WorldObject, cameras: CameraBatch, seed: int) -> dict[str, float]:
    """The teacher's caption gain on the result's renders and on the exact object's (same views and noise)."""
    size = teacher.native_resolution
    images = {"result": nerf_renders(model, cameras, size),
              "exact": render_objects([obj] * len(cameras), cameras, size).over(torch.ones(3))}
    config = PreferenceConfig(views=len(cameras), timesteps=12, draws=4, seed=seed)
    rows = caption_gains(teacher, images, view_captions(obj.caption, cameras), config)
    return {"caption_gain": rows["result"]["caption_gain"], "caption_gain_exact": rows["exact"]["caption_gain"]}


def mesh_colour_psnr(mesh: Mesh, obj: WorldObject) -> float | None:
    """The mesh's vertex colours against the object's paint (what an artist gets in Blender, to be lit
    there): shading baked into them counts as error. None for a mesh without colours."""
    if mesh.colors is None or not len(mesh.colors):
        return None
    error = mesh.colors.astype(np.float64) / 255 - np.asarray(obj.albedo)
    return round(10 * math.log10(1 / max(float((error**2).mean()), 1e-12)), 2)


def nearest_mesh_colour(mesh: Mesh) -> str | None:
    """The paint nearest the median of the mesh's vertex colours: the colour an artist sees in Blender,
    unlit. `nearest_colour` reads the lit render inside the exact silhouette, where a result thinner
    than the truth shows background and a lit paint can sit nearer its neighbour; this reads the paint.
    None for a mesh without colours."""
    if mesh.colors is None or not len(mesh.colors):
        return None
    median = np.median(mesh.colors[:, :3].astype(np.float64), axis=0)
    return min(COLOURS, key=lambda c: float(((np.asarray(COLOURS[c]) - median) ** 2).sum()))


def size_scores(mesh: Mesh, exact) -> dict[str, float]:
    """How much larger than the exact object the mesh is, and where: its width (the mean of the two
    horizontal extents) and height over the exact object's, how far it reaches below the exact bottom and
    above the exact top (scene units, positive = beyond the object), and its surface area over the exact
    one's. Chamfer says how far off a result is; these say whether it is the size, and which side.
    Heights are along Z in the field frame and the output frame alike."""
    if not len(mesh.faces):
        return {}
    lo, hi = mesh.vertices.min(axis=0).astype(np.float64), mesh.vertices.max(axis=0).astype(np.float64)
    (exact_lo, exact_hi), extents = exact.bounds, exact.extents
    ratio = (hi - lo) / extents
    area = float(mesh.to_trimesh().area)
    return {"width_ratio": round(float(ratio[:2].mean()), 3), "height_ratio": round(float(ratio[2]), 3),
            "below_bottom": round(float(exact_lo[2] - lo[2]), 3), "above_top": round(float(hi[2] - exact_hi[2]), 3),
            "area_ratio": round(area / float(exact.area), 3)}


def shape_scores(mesh: Mesh, obj: WorldObject, cfg: ToyBenchConfig) -> dict[str, Any]:
    exact = {shape: exact_mesh(shape, cfg.exact_resolution) for shape in SHAPES}
    scores = metrics(mesh, exact[obj.shape], cfg.samples, cfg.iou_grid, cfg.seed) | size_scores(mesh, exact[obj.shape])
    chamfers = {shape: metrics(mesh, target, cfg.samples // 4, 8, cfg.seed)["chamfer_l1_rel"]
                for shape, target in exact.items()}
    return scores | {"nearest_shape": min(chamfers, key=chamfers.get)}


SCHEDULE_REPORTED = ("anneal_start_step", "anneal_max_timestep", "lambda_sparsity", "opaque_from_step", "lambda_opaque")


def bench_spec(cfg: ToyBenchConfig):
    from ..train.presets import resolve_spec

    partial: dict[str, Any] = {"prompt": cfg.prompt, "seed": cfg.seed, "preset": cfg.preset,
                               "model": {"teacher": "toy"}, "guidance": {"method": cfg.method, "cfg": cfg.cfg},
                               "output": {"mesh_every": 0, "turntable": 0}}
    schedule: dict[str, Any] = {}
    if cfg.steps:
        schedule["steps"] = cfg.steps
    if cfg.anneal_max_timestep:
        schedule["anneal_max_timestep"] = cfg.anneal_max_timestep
    # Flags whose -1 means "the preset's" (0 is a real value for each).
    schedule |= {name: getattr(cfg, name) for name in ("anneal_start_step", "lambda_sparsity", "opaque_from_step",
                                                         "lambda_opaque") if getattr(cfg, name) >= 0}
    if schedule:
        partial["schedule"] = schedule
    if cfg.gamma_schedule:
        partial["guidance"]["gamma_schedule"] = cfg.gamma_schedule
    if cfg.discriminator_lr:
        partial["guidance"]["discriminator_lr"] = cfg.discriminator_lr
    if cfg.discriminator_steps:
        partial["guidance"]["discriminator_steps"] = cfg.discriminator_steps
    if cfg.lora_rank:
        partial["guidance"]["lora_rank"] = cfg.lora_rank
    return resolve_spec(partial)


def trace_summary(trace: list[dict[str, float]]) -> dict[str, float]:
    """ε_φ's diagnostics (guidance/score_distillation.py) averaged over the last quarter of the steps."""
    tail = trace[len(trace) * 3 // 4:]
    out = {}
    for key in ("phi_objective_ratio", "phi_noise_error_ratio", "phi_teacher_distance", "phi_optimum_gap",
                "cfg_term_rms", "loss_discriminator"):
        values = [m[key] for m in tail if key in m]
        if values:
            out[f"{key}_last_quarter"] = round(float(np.mean(values)), 4)
    return out


def run(cfg: ToyBenchConfig, device: str = "cpu", save: str | Path | None = None, teacher=None,
        trace: str | Path | None = None) -> dict[str, Any]:
    from ..teachers import load_teacher
    from ..train.text_to_3d import generate

    obj = world_object(cfg.prompt, "--prompt")
    teacher = teacher or load_teacher("toy", device)
    spec = bench_spec(cfg)
    start = time.perf_counter()
    with ProgressBar(spec.steps, f"bench toy {cfg.prompt!r} {cfg.method} {cfg.cfg:g}", keep=True) as events:
        result = generate(teacher, spec, events=events)
    if trace:
        Path(trace).write_text("".join(json.dumps(m) + "\n" for m in events.trace))
    seconds = time.perf_counter() - start
    report: dict[str, Any] = {"benchmark": "toy", "prompt": cfg.prompt, "method": cfg.method, "cfg": cfg.cfg,
                              "steps": result.steps_done, "seed": cfg.seed,
                              # the resolved settings a flag may override, so that a row says how it was run
                              **{name: getattr(spec.schedule, name) for name in SCHEDULE_REPORTED},
                              "gamma_schedule": spec.guidance.gamma_schedule,
                              "discriminator_lr": spec.guidance.discriminator_lr,
                              "discriminator_steps": spec.guidance.discriminator_steps,
                              "lora_rank": spec.guidance.lora_rank}
    report |= shape_scores(result.mesh, obj, cfg)
    report["mesh_colour_psnr"] = mesh_colour_psnr(result.mesh, obj)
    report["nearest_mesh_colour"] = nearest_mesh_colour(result.mesh)
    cameras = held_out_cameras(cfg.views)
    pred = nerf_renders(result.model, cameras, cfg.render_size)
    report |= render_scores(pred, obj, cameras, cfg.render_size)
    if obj.shape == "cube":
        report["top_square_fill"] = top_square_fill(result.mesh)
    verdict = load_judge().judge(pred)
    report["judge_shape_accuracy"] = float(np.mean([s == obj.shape for s in verdict["shape"]]))
    report["judge_colour_accuracy"] = float(np.mean([c == obj.colour for c in verdict["colour"]]))
    report["judge_shape_probability"] = round(float(verdict["shape_probabilities"][:, SHAPES.index(obj.shape)]
                                                    .mean()), 4)
    report["judge_colour_probability"] = round(float(verdict["colour_probabilities"][:, list(COLOURS)
                                                     .index(obj.colour)].mean()), 4)
    if obj.shape in ORIENTED:  # the chair's backrest and the mug's handle, once and on their side
        errors = [abs((a - float(c) + 180) % 360 - 180) for a, c in zip(verdict["azimuth"],
                                                                          cameras.azimuth_deg.tolist(), strict=True)]
        report["judge_azimuth_error_deg"] = round(float(np.median(errors)), 1)
    report |= teacher_preference(teacher, result.model, obj, cameras, cfg.seed)
    report |= trace_summary(events.trace)
    report["seconds"] = round(seconds, 1)
    report["faces"] = len(result.mesh.faces)
    if save:
        from ..mesh.export import write_mesh

        write_mesh(result.mesh, save)
    return report


# -- the command line (flags generated from ToyBenchConfig) -------------------------------------------

def _command(args: argparse.Namespace) -> int:
    from ..dataclass_flags import dataclass_from_args

    cfg = dataclass_from_args(ToyBenchConfig, args)
    report = run(cfg, device=args.device, save=args.save, trace=args.trace)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{cfg.prompt} ({cfg.method} at CFG {cfg.cfg:g}, {report['steps']} steps, {report['seconds']:.0f} s): "
              f"nearest {report['nearest_colour']} {report['nearest_shape']}, chamfer "
              f"{100 * report['chamfer_l1_rel']:.2f}% of the diagonal, IoU {report['iou']:.3f}, render PSNR "
              f"{report['render_psnr']} dB, saturated {100 * report['saturated']:.2f}%, judge: shape "
              f"{report['judge_shape_accuracy']:.2f}, colour {report['judge_colour_accuracy']:.2f}")
    return 0


def add_cli(kinds: argparse._SubParsersAction) -> None:
    from ..dataclass_flags import add_dataclass_flags

    p = kinds.add_parser("toy", help="text-to-3D with the toy teacher, scored against the exact world object")
    add_dataclass_flags(p, ToyBenchConfig)
    p.add_argument("--save", default=None, metavar="MESH", help="write the final mesh (.glb/.obj/.ply)")
    p.add_argument("--trace", default=None, metavar="JSONL", help="write every step's metrics (losses, ε_φ's "
                   "diagnostics), one JSON line each")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(handler=_command)
