"""`asd bench edit`: texture editing against an exact teacher, through the product's edit loop.

The teacher (`RenderedTextureTeacher`) is exact and behaves under CFG as real ones do: the edit
prompt is several equally likely textures (modes), the source prompt the source texture, and the
unconditional is broad and vague (every mode, the source and other textures, each pulled
`uncond_shrink` towards their mean, so CFG over-saturates: docs/method.md). Each mode changes only the
edit region; elsewhere every mode equals the source, so an edit must leave it alone. Scores, over
the texels some view sees:

- `psnr_edit`: where some mode differs from the source, against the nearest mode;
- `psnr_keep`: where every mode equals the source;
- `saturated`: the fraction of channels pushed to 0 or 255 where no mode is (over-saturation).

Built-in cases (`--variant N`: another source, other modes, another edit region) use a UV sphere;
`--mesh`, `--source`, `--target` take files.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError

# ε_φ of the texture family must keep up with the texture (docs/method.md ▸ Keeping up).
KEEPING_UP = {"discriminator_lr": 0.01, "discriminator_steps": 16}
REGIONS = ("top", "left", "bottom", "right")


def _opt(default: Any, help: str, **metadata: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _png_list(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


@dataclasses.dataclass
class EditBenchConfig:
    """`asd bench edit`'s settings; each field is its flag."""

    method: str = _opt("asd", "sds | dds | vsd | asd")
    cfg: float = _opt(7.5, "classifier-free guidance scale")
    steps: int = _opt(400, "optimisation steps")
    seed: int = _opt(0, "seed of the views, the noise and ε_φ")
    variant: int = _opt(0, "built-in case: 0 (settings chosen on it), 1, 2, … (new sources, modes, regions)")
    modes: int = _opt(2, "equally likely edits in the built-in case")
    mesh: str | None = _opt(None, "a mesh with UVs (.obj/.glb/.ply) instead of the built-in sphere")
    source: str | None = _opt(None, "the texture before the edit (PNG)")
    targets: tuple[str, ...] = _opt((), "what the edit prompt means: one or several equally likely textures (PNG, "
                                        "comma-separated)", flag="target", parse=_png_list, metavar="PNG[,PNG…]")
    teacher: str = _opt("", "toy: edit a world object with the toy teacher (see --world-edit); empty: the exact "
                            "analytic teacher")
    world_edit: str = _opt("a red mug -> a blue mug", "with --teacher toy: the source and the edit prompt, each a "
                                                      "world object of the same shape")
    views: int = _opt(24, "precomputed views the texture is rendered into")
    resolution: int = _opt(64, "side of those views (the toy teacher: its native 32)")
    sigma: float = _opt(0.05, "the analytic teacher's noise scale")
    uncond_shrink: float = _opt(0.05, "how far the analytic unconditional's textures are pulled towards their "
                                      "mean (0: exactly them)")
    lr: float = _opt(0.02, "texel learning rate")
    discriminator_lr: float | None = _opt(None, "ε_φ's lr (ASD, VSD); unset: the keeping-up value for the analytic "
                                                "teacher, the product's default for the toy teacher")
    discriminator_steps: int | None = _opt(None, "ε_φ updates per step; unset as --discriminator-lr")

    def __post_init__(self) -> None:
        if self.method not in ("sds", "dds", "vsd", "asd"):
            raise UsageError(f"--method must be sds, dds, vsd or asd; got {self.method!r}")
        if self.teacher not in ("", "toy"):
            raise UsageError(f"--teacher must be toy or left out (the analytic teacher); got {self.teacher!r}")
        if self.teacher and world_pair(self.world_edit) is None:
            raise UsageError(f"--world-edit {self.world_edit!r}: give 'SOURCE -> EDIT', two world objects of one "
                             "shape, e.g. 'a red mug -> a blue mug'")


def world_pair(text: str):
    """('a red mug -> a blue mug') → the two WorldObjects, or None when it is not two of one shape."""
    from ..toy.world import parse_prompt

    source, _, edit = text.partition("->")
    before, after = parse_prompt(source.strip()), parse_prompt(edit.strip())
    if before is None or after is None or before.shape != after.shape:
        return None
    return before, after


def uv_sphere(n_lon: int = 48, n_lat: int = 24, radius: float = 1.0, per_vertex: bool = False):
    """A latitude-longitude sphere with a seam: u = longitude / 2π, v = latitude (0 south, 1 north).
    UVs per face corner (M×3×2), or per vertex (N×2, as mesh files store them) with `per_vertex`."""
    lon = np.linspace(0, 2 * np.pi, n_lon + 1)
    lat = np.linspace(-np.pi / 2, np.pi / 2, n_lat + 1)
    lon_g, lat_g = np.meshgrid(lon, lat)  # [n_lat+1, n_lon+1]
    vertices = np.stack([np.cos(lat_g) * np.cos(lon_g), np.cos(lat_g) * np.sin(lon_g), np.sin(lat_g)], -1)
    vertices = radius * vertices.reshape(-1, 3)
    uv = np.stack([lon_g / (2 * np.pi), (lat_g + np.pi / 2) / np.pi], -1).reshape(-1, 2)
    faces = []
    w = n_lon + 1
    for i in range(n_lat):
        for j in range(n_lon):
            a, b, c, d = i * w + j, i * w + j + 1, (i + 1) * w + j, (i + 1) * w + j + 1
            faces += [[a, b, d], [a, d, c]]  # counter-clockwise seen from outside
    faces = np.array(faces)
    uvs = uv if per_vertex else uv[faces]
    return vertices.astype(np.float32), faces.astype(np.uint32), uvs.astype(np.float32)


def pattern(height: int, width: int, phase: float, frequency: float = 1.0) -> np.ndarray:
    """A smooth colourful texture (uint8 RGBA, values in 0.1..0.9), different for different phases."""
    v, u = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    f, tau = frequency, 2 * np.pi
    rgb = np.stack([0.5 + 0.4 * np.sin(tau * (2 * f * u + phase)), 0.5 + 0.4 * np.cos(tau * (f * v + phase)),
                    0.5 + 0.4 * np.sin(tau * (f * (u + v) + 2 * phase))], -1)
    rgba = np.concatenate([rgb, np.ones_like(rgb[..., :1])], -1)
    return np.round(rgba * 255).astype(np.uint8)


def region_mask(height: int, width: int, region: str) -> np.ndarray:
    """True where an edit of the built-in case may change the texture (rows top-down)."""
    mask = np.zeros((height, width), bool)
    if region == "top":
        mask[: height // 2] = True
    elif region == "bottom":
        mask[height // 2:] = True
    elif region == "left":
        mask[:, : width // 2] = True
    else:
        mask[:, width // 2:] = True
    return mask


def builtin_case(variant: int, modes: int, height: int = 64, width: int = 128):
    """(vertices, faces, uvs, source, modes, others) of a built-in case; textures uint8 RGBA."""
    rng = np.random.default_rng(variant)
    vertices, faces, uvs = uv_sphere()
    vertices = vertices * 2.5 + np.array([4.0, -1.0, 2.0], np.float32)  # anywhere in the world
    source = pattern(height, width, 0.35 if variant == 0 else float(rng.uniform(0, 1)))
    region = region_mask(height, width, REGIONS[variant % len(REGIONS)])
    phases = [0.0, 0.6, 0.3, 0.85][:modes] if variant == 0 else rng.uniform(0, 1, modes)
    targets = []
    for k, phase in enumerate(phases):
        edited = pattern(height, width, float(phase), frequency=1.0 + 0.5 * (k % 2))
        targets.append(np.where(region[..., None], edited, source))
    others = [pattern(height, width, float(p), frequency=2.0) for p in rng.uniform(0, 1, 4)]
    return vertices, faces, uvs, source, targets, others


def load_case(cfg: EditBenchConfig):
    """The case from files: a mesh with UVs, a source PNG and one or more target PNGs (same size)."""
    import trimesh
    from PIL import Image

    if not (cfg.mesh and cfg.source and cfg.targets):
        raise UsageError("give --mesh, --source and --target together (or none, for the built-in case)")
    tm = trimesh.load(cfg.mesh, force="mesh", process=False)
    uv = getattr(tm.visual, "uv", None)
    if uv is None or len(uv) != len(tm.vertices):
        raise UsageError(f"{cfg.mesh}: the mesh has no UV map; unwrap it first (Blender: Smart UV Project)")
    faces = np.asarray(tm.faces, np.uint32)

    def image(path: str) -> np.ndarray:
        if not Path(path).is_file():
            raise UsageError(f"{path}: no such image")
        return np.asarray(Image.open(path).convert("RGBA"))

    source, targets = image(cfg.source), [image(p) for p in cfg.targets]
    if any(t.shape != source.shape for t in targets):
        raise UsageError(f"every --target must have the source's size {source.shape[1]}×{source.shape[0]}")
    rng = np.random.default_rng(cfg.seed)
    others = [pattern(*source.shape[:2], float(p), frequency=2.0) for p in rng.uniform(0, 1, 4)]
    return (np.asarray(tm.vertices, np.float32), faces, np.asarray(uv, np.float32)[faces], source, targets, others)


def world_case(cfg: EditBenchConfig, side: int = 64):
    """A world object's exact surface (marching cubes of its signed distance, bench/toy.py), unwrapped by
    xatlas; the source texture is the source paint everywhere, the one target the edit's paint."""
    import xatlas

    from ..mesh.export import to_blender_frame
    from ..mesh.extract import Mesh
    from .toy import exact_mesh

    before, after = world_pair(cfg.world_edit)
    surface = exact_mesh(before.shape, 96)
    # In Blender's frame (front −Y), as the add-on sends a mesh: the export's one frame change.
    blender = to_blender_frame(Mesh(np.asarray(surface.vertices, np.float32), np.asarray(surface.faces, np.uint32)))
    vmapping, faces, uv = xatlas.parametrize(blender.vertices, blender.faces)
    vertices = blender.vertices[vmapping]

    def solid(colour: str) -> np.ndarray:
        from ..toy.world import COLOURS

        rgba = np.empty((side, side, 4), np.uint8)
        rgba[..., :3], rgba[..., 3] = np.asarray(COLOURS[colour], np.uint8), 255
        return rgba

    faces = faces.astype(np.uint32)
    return vertices, faces, uv.astype(np.float32)[faces], solid(before.colour), [solid(after.colour)], []


def scores(result: np.ndarray, source: np.ndarray, targets: list[np.ndarray], seen: np.ndarray) -> dict[str, float]:
    rgb = lambda x: x[..., :3].astype(np.float64) / 255  # noqa: E731
    out, src, modes = rgb(result), rgb(source), [rgb(t) for t in targets]
    changed = np.any([np.abs(m - src).max(-1) > 1.5 / 255 for m in modes], axis=0)
    edit, keep = seen & changed, seen & ~changed

    def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float | None:
        if not where.any():
            return None
        mse = float(((a[where] - b[where]) ** 2).mean())
        return round(10 * math.log10(1 / max(mse, 1e-12)), 2)

    nearest = min(range(len(modes)), key=lambda k: float(((out[edit] - modes[k][edit]) ** 2).mean()) if edit.any()
                  else 0.0)
    raw = result[..., :3][seen]
    extreme = (raw <= 1) | (raw >= 254)
    some_mode_there = np.any([(t[..., :3][seen] <= 1) | (t[..., :3][seen] >= 254) for t in targets], axis=0)
    return {"psnr_edit": psnr(out, modes[nearest], edit), "psnr_keep": psnr(out, src, keep),
            "saturated": round(float((extreme & ~some_mode_there).mean()), 5), "nearest_mode": nearest}


def run(cfg: EditBenchConfig, device: str = "cpu") -> dict[str, Any]:
    from ..progress_bar import ProgressBar
    from ..teachers.analytic import RenderedTextureTeacher
    from ..texture.edit import edit_texture, to_tensor
    from ..texture.raster import NormalisedMesh, UVRasterizer
    from ..train.presets import resolve_spec

    files = bool(cfg.mesh or cfg.source or cfg.targets)
    guidance: dict[str, Any] = {"method": cfg.method, "cfg": cfg.cfg}
    if cfg.teacher == "toy":
        from ..teachers import load_teacher

        vertices, faces, uvs, source, targets, others = world_case(cfg)
        teacher = load_teacher("toy", device)
        resolution = teacher.native_resolution
        raster = UVRasterizer.orbit(NormalisedMesh.from_world(vertices, faces, uvs), views=cfg.views,
                                    resolution=resolution, seed=cfg.seed, device=device, normals=True)
        source_prompt, prompt = (part.strip() for part in cfg.world_edit.split("->"))
        case = f"toy teacher: {cfg.world_edit}"
        keeping_up = {}  # the product's own ε_φ settings, unless given
    else:
        vertices, faces, uvs, source, targets, others = (load_case(cfg) if files
                                                         else builtin_case(cfg.variant, cfg.modes))
        resolution = cfg.resolution
        raster = UVRasterizer.orbit(NormalisedMesh.from_world(vertices, faces, uvs), views=cfg.views,
                                    resolution=resolution, seed=cfg.seed, device=device)
        tensor = lambda image: to_tensor(image, device)[0]  # noqa: E731
        teacher = RenderedTextureTeacher(raster, {"edit": [tensor(t) for t in targets], "source": tensor(source),
                                                  "others": [tensor(o) for o in others]}, sigma=cfg.sigma,
                                         device=device, uncond_shrink=cfg.uncond_shrink)
        source_prompt, prompt = "source", "edit"
        case = "files" if files else f"built-in variant {cfg.variant}, {cfg.modes} modes"
        keeping_up = KEEPING_UP
    if cfg.method in ("asd", "vsd"):
        guidance |= {k: getattr(cfg, k) for k in ("discriminator_lr", "discriminator_steps")
                     if getattr(cfg, k) is not None or k in keeping_up}
        guidance |= {k: v for k, v in keeping_up.items() if guidance.get(k) is None}
    model = {"model": {"teacher": "toy"}} if cfg.teacher == "toy" else {}  # its preset, as the product resolves it
    spec = resolve_spec({"kind": "edit_texture", "prompt": prompt, "seed": cfg.seed, "guidance": guidance, **model,
                         "edit": {"source_prompt": source_prompt, "strength": 1.0, "steps": cfg.steps, "lr": cfg.lr,
                                  "views": cfg.views, "every": 0}})
    started = time.perf_counter()
    with ProgressBar(spec.steps, f"bench edit {cfg.method} cfg {cfg.cfg:g}") as events:
        final = edit_texture(teacher, vertices, faces, uvs, source, spec, rasterizer=raster, events=events)
    seconds = time.perf_counter() - started
    seen = raster.visible_texels(*source.shape[:2]).cpu().numpy()
    return {"benchmark": "edit", "method": cfg.method, "cfg": cfg.cfg,
            **scores(final.texture, source, targets, seen), "seconds": round(seconds, 1),
            "case": case,
            "spec": spec.to_json(), "settings": dataclasses.asdict(cfg)}


# -- the command line (flags generated from EditBenchConfig) --------------------------------------------

def _command(args: Any) -> int:
    import json

    from ..dataclass_flags import dataclass_from_args

    cfg = dataclass_from_args(EditBenchConfig, args)
    report = run(cfg, device=args.device)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['case']}, {cfg.method} at CFG {cfg.cfg:g}: edit {report['psnr_edit']} dB, keep "
              f"{report['psnr_keep']} dB, saturated {100 * report['saturated']:.2f}%, {report['seconds']:.0f} s")
    return 0


def add_cli(kinds: Any) -> None:
    from ..dataclass_flags import add_dataclass_flags

    p = kinds.add_parser("edit", help="texture editing against an exact, CFG-sensitive teacher (or the toy teacher "
                                      "on a world object)")
    add_dataclass_flags(p, EditBenchConfig)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.set_defaults(handler=_command)
