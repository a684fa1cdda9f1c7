"""The job specification: every setting of a generate, image or edit_texture job, defined once.

A spec is a `JobSpec`: top-level fields (kind, prompt, seed, preset) and sections of typed fields
(model, guidance, nerf, schedule, output, image, edit), each field with its rule (range,
finiteness) and a doc line. The same record is

- what `asd generate --help` shows (the CLI's flags are generated from it, one group per section),
- what a client sends in `submit` (a *partial* spec: only the fields it sets, as JSON),
- what the server echoes in `accepted` and writes to job.json (the *resolved* spec), and
- what the worker and the training loops read.

Resolving a partial spec: the dataclass defaults, then the preset's partial spec, then the
client's, then `validate()` (rules across fields). A field the record does not have is an error
that names it; a missing field takes the preset's value or the default. Standard library only
(with `fields.py`): the Blender add-on bundles this.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import INVALID_FIELD, ProtocolError
from .fields import (
    Integer,
    ListOf,
    Spec,
    Struct,
    choice,
    flag,
    integer,
    number,
    record_to_json,
    shown,
    spec_field,
    spec_fields,
    text,
)

SPEC_VERSION = 1
JOB_KINDS = ("generate", "edit_texture", "image")
METHODS = ("asd", "vsd", "sds", "dds")  # dds: texture editing only
GAMMA_SCHEDULES = ("constant", "official")
MAX_PROMPT_CHARS = 2000
MAX_RENDER_SIDE = 1024
MAX_STEPS = 1_000_000
NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,31}"
DEFAULT_PRESET = "preview"
DEFAULT_TEACHER = "sd"  # SD 2.1-base through diffusers (teachers/__init__.py)


def _section(cls: type) -> Any:
    return spec_field(Struct(cls=cls, doc=(cls.__doc__ or "").strip().splitlines()[0]), factory=cls)


@dataclasses.dataclass
class ModelSpec:
    """Model: the diffusion teacher."""

    teacher: str | None = text(None, optional=True, max_len=512,
                               doc="sd[:ID_OR_PATH] | toy | tiny | random-sd21 (welcome lists what a server offers); "
                                   "unset: the server's default (SD 2.1-base)")
    discriminator_model: str | None = text(
        None, optional=True, max_len=512,
        doc="hub id or folder of a separate diffusers model for ε_φ's UNet, v-prediction models included (the "
            "official setup: SD 2.1, 768-v); unset: ε_φ is a LoRA on the teacher's own UNet")


@dataclasses.dataclass
class GuidanceSpec:
    """Guidance: the score-distillation method and its settings (official ASD values by default)."""

    method: str = choice(METHODS, "asd", doc="asd | vsd | sds, and dds for texture edits")
    cfg: float = number(7.5, lo=0.0, hi=200.0, doc="classifier-free guidance scale s")
    gamma: float = number(-0.75, lo=-1.0, hi=0.0, doc="ASD's γ, in (-1, 0); VSD is γ = 0")
    gamma_schedule: str = choice(GAMMA_SCHEDULES, "constant",
                                 doc="constant: γ at every t | official: the official v-space loss written in "
                                     "ε terms, γ_t = γ·ᾱ_t/(1 + γ·(1 − ᾱ_t)) (docs/method.md)")
    lora_rank: int = integer(4, lo=1, hi=256, doc="rank of ε_φ's LoRA on the teacher UNet")
    discriminator_lr: float = number(1e-4, lo=0.0, hi=1.0, doc="AdamW learning rate of ε_φ")
    discriminator_steps: int = integer(1, lo=1, hi=100,
                                       doc="ε_φ updates per generator step (the official code: 1), each with "
                                           "fresh t and ε on the same render")
    view_prompts: bool = flag(True, doc="append ', front view' etc. by camera direction (3D)")
    perp_neg: bool = flag(True, doc="Perp-Neg over the view prompts (3D; needs view_prompts)")


@dataclasses.dataclass
class GridSpec:
    """Hash grid: the multi-resolution hash encoding of the NeRF (official GPU values by default)."""

    n_levels: int = integer(16, lo=1, hi=32, doc="resolution levels")
    n_features_per_level: int = integer(2, lo=1, hi=8, doc="features per level")
    log2_hashmap_size: int = integer(19, lo=10, hi=24, doc="log2 of the hash-table entries per level")
    base_resolution: int = integer(16, lo=2, hi=1024, doc="coarsest grid resolution")
    per_level_scale: float = number(1.447269237440378, lo=1.0, hi=4.0, doc="growth factor between levels")

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.n_features_per_level


@dataclasses.dataclass
class LightingSpec:
    """Lighting of the renders the teacher sees (a NeRF's, an edited texture's)."""

    shading: str = choice(("albedo", "lambertian"), "albedo",
                          doc="albedo (colour as it is, unlit: the official ASD) | lambertian (lit by the light "
                              "below, so shading follows the surface)")
    light_elevation: float = number(45.0, lo=-90.0, hi=90.0, doc="lambertian: degrees above the ground")
    light_azimuth: float = number(30.0, lo=-360.0, hi=360.0,
                                  doc="lambertian: degrees around the object, as the cameras' (0 from its front, "
                                      "90 from its right)")
    ambient: float = number(0.35, lo=0.0, hi=1.0,
                            doc="lambertian: the share of light every surface gets; the rest comes from the light")


@dataclasses.dataclass
class NerfSpec:
    """NeRF and renderer: the 3D generator."""

    grid: GridSpec = _section(GridSpec)
    samples_per_ray: int = integer(96, lo=4, hi=1024, doc="samples along each ray")
    occupancy_resolution: int = integer(64, lo=8, hi=256, doc="occupancy-grid cells per axis")
    occupancy_update_every: int = integer(16, lo=1, hi=10_000, doc="steps between occupancy refreshes")
    occupancy_warmup_steps: int = integer(256, lo=0, hi=MAX_STEPS, doc="steps before empty space is skipped")
    background: str = choice(("environment", "white"), "environment",
                             doc="environment (learned, random-colour augmentation) | white (fixed)")
    radius: float = number(1.0, lo=0.1, hi=10.0, doc="radius of the bounded scene")
    density_blob_std: float = number(0.5, lo=0.05, hi=10.0,
                                     doc="radius of the soft ball the density starts from (Magic3D's blob, "
                                         "scene units): about the size of the object asked for")
    lighting: LightingSpec = _section(LightingSpec)


@dataclasses.dataclass
class ScheduleSpec:
    """Schedule: the text-to-3D optimisation (the preset sets most of it)."""

    steps: int = integer(1500, lo=1, hi=MAX_STEPS, doc="optimisation steps")
    resolution_schedule: list = spec_field(
        ListOf(item=ListOf(item=Integer(lo=0, hi=MAX_STEPS), max_items=2), max_items=16,
               doc="render side by step: [[from_step, side], ...], e.g. 0:64,5000:256"),
        factory=lambda: [[0, 64]])
    anneal_start_step: int | None = integer(None, optional=True, lo=0, hi=MAX_STEPS,
                                            doc="from this step the largest timestep is anneal_max_timestep·T "
                                                "(unset: never)")
    anneal_max_timestep: float = number(0.5, lo=0.05, hi=1.0,
                                        doc="the largest timestep from anneal_start_step on, × T (0.5: the official "
                                            "ASD's)")
    opaque_from_step: int | None = integer(None, optional=True, lo=0, hi=MAX_STEPS,
                                           doc="from this step the opacity loss is on (unset: never)")
    lambda_sparsity: float = number(10.0, lo=0.0, hi=1e6, doc="weight of the sparsity loss")
    lambda_opaque: float = number(1000.0, lo=0.0, hi=1e6, doc="weight of the opacity (binary entropy) loss")
    lr_encoding: float = number(0.01, lo=0.0, hi=10.0, doc="learning rate of the hash grid")
    lr_networks: float = number(1e-3, lo=0.0, hi=10.0, doc="learning rate of the density and colour MLPs")
    lr_background: float = number(1e-3, lo=0.0, hi=10.0, doc="learning rate of the environment background")
    checkpoint_every: int = integer(500, lo=1, hi=MAX_STEPS, doc="steps between checkpoints")

    def resolution_at(self, step: int) -> int:
        side = self.resolution_schedule[0][1]
        for start, value in self.resolution_schedule:
            if step >= start:
                side = value
        return side


@dataclasses.dataclass
class OutputSpec:
    """Output: preview meshes while it trains, the final mesh, turntable frames."""

    mesh_every: int = integer(150, lo=0, hi=MAX_STEPS, doc="preview mesh every N steps (0: final only)")
    first_mesh_seconds: float = number(8.0, lo=0.0, hi=3600.0,
                                       doc="the first preview mesh after this many seconds of optimisation, when "
                                       "that comes before step mesh_every (0: at step mesh_every)")
    preview_mc_resolution: int = integer(96, lo=16, hi=512,
                                         doc="marching-cubes resolution of previews (cells across the scene's cube)")
    preview_face_budget: int = integer(20_000, lo=4, hi=4_000_000, doc="faces a preview is decimated to")
    preview_render: int = integer(256, lo=16, hi=2048, doc="side of the preview render")
    mc_resolution: int = integer(192, lo=32, hi=1024,
                                 doc="marching-cubes resolution of the final mesh (cells across the scene's cube)")
    mc_threshold: float | None = number(None, optional=True, lo=0.0, hi=1e6,
                                        doc="density of the surface (unset: automatic)")
    texture_size: int = integer(0, lo=0, hi=8192,
                                doc="bake colours into an N×N texture on a UV atlas (0: vertex colours)")
    turntable: int = integer(8, lo=0, hi=360, doc="turntable frames rendered at the end (0: none)")
    turntable_size: int = integer(256, lo=16, hi=2048, doc="side of each turntable frame")


@dataclasses.dataclass
class ImageSpec:
    """Image: 2D distillation of one image."""

    steps: int = integer(500, lo=1, hi=MAX_STEPS, doc="optimisation steps")
    resolution: int | None = integer(None, optional=True, lo=64, hi=2048,
                                     doc="image side, a multiple of 8 (unset: the teacher's native size)")
    lr: float = number(0.03, lo=0.0, hi=10.0, doc="Adam learning rate of the image latent")
    every: int = integer(0, lo=0, hi=MAX_STEPS, doc="an intermediate frame every N steps (0: none)")


@dataclasses.dataclass
class EditSpec:
    """Edit: texture editing of a fixed mesh."""

    steps: int = integer(400, lo=1, hi=MAX_STEPS, doc="optimisation steps")
    source_prompt: str = text("", max_len=MAX_PROMPT_CHARS, doc="what the texture is now (unset: the object name)")
    object_name: str = text("", max_len=256, doc="the Blender object the texture belongs to")
    strength: float = number(0.6, lo=0.05, hi=1.0, doc="how far the edit may go: the largest timestep, × T")
    views: int = integer(24, lo=1, hi=256, doc="views around the object, ray-cast once")
    resolution: int | None = integer(None, optional=True, lo=64, hi=MAX_RENDER_SIDE,
                                     doc="render side (unset: the teacher's native size)")
    lr: float = number(0.01, lo=0.0, hi=10.0, doc="Adam learning rate of the texels")
    keep: float = number(0.0, lo=0.0, hi=1e6, doc="weight of ‖T − T_source‖² over the texture")
    every: int = integer(25, lo=0, hi=MAX_STEPS, doc="a texture preview every N steps (0: final only)")
    lighting: LightingSpec = _section(LightingSpec)

    def source(self) -> str:
        return self.source_prompt.strip() or self.object_name.strip() or "an object"


@dataclasses.dataclass
class JobSpec:
    """A job: what to make and every setting it runs with."""

    spec_version: int = integer(SPEC_VERSION, lo=SPEC_VERSION, hi=SPEC_VERSION, doc="version of this record")
    kind: str = choice(JOB_KINDS, "generate", doc="generate | image | edit_texture")
    prompt: str = text("", max_len=MAX_PROMPT_CHARS, doc="what to make (the edit prompt for edit_texture)")
    negative_prompt: str = text("", max_len=MAX_PROMPT_CHARS, doc="what to avoid")
    seed: int | None = integer(None, optional=True, lo=0, hi=2**32 - 1,
                               doc="random seed (unset: a random one, recorded in the resolved spec)")
    preset: str = text(DEFAULT_PRESET, max_len=32, pattern=NAME_PATTERN, pattern_hint="a preset name",
                       doc="smoke | toy | preview | standard | paper: a partial spec under the fields you set "
                           "(unset: the teacher's own preset, else preview)")
    model: ModelSpec = _section(ModelSpec)
    guidance: GuidanceSpec = _section(GuidanceSpec)
    nerf: NerfSpec = _section(NerfSpec)
    schedule: ScheduleSpec = _section(ScheduleSpec)
    output: OutputSpec = _section(OutputSpec)
    image: ImageSpec = _section(ImageSpec)
    edit: EditSpec = _section(EditSpec)

    @property
    def steps(self) -> int:
        """The number of optimisation steps of this job's kind."""
        return {"generate": self.schedule.steps, "image": self.image.steps, "edit_texture": self.edit.steps}[self.kind]

    def sections(self) -> tuple[str, ...]:
        return KIND_SECTIONS[self.kind]

    def validate(self, path: str = "spec") -> JobSpec:
        """Rules across fields (each field's own range was checked when it was read). Returns self.
        Errors name the field as `path`.section.name."""
        if not self.prompt.strip():
            raise _bad(f"{path}.prompt", "is empty", "describe what to make, e.g. 'a ceramic teapot'")
        g = self.guidance
        if g.method == "dds" and self.kind != "edit_texture":
            raise _bad(f"{path}.guidance.method", "dds is a texture-editing method", "use asd, vsd or sds")
        if g.method == "asd" and not -1.0 < g.gamma < 0.0:
            raise _bad(f"{path}.guidance.gamma", f"ASD needs -1 < gamma < 0 (the paper uses -0.75); got {g.gamma:g}",
                       "at -1 the discriminator loss is linear and diverges; gamma 0 is VSD (--method vsd)")
        if self.kind == "generate":
            if g.perp_neg and not g.view_prompts:
                raise _bad(f"{path}.guidance.perp_neg", "needs view_prompts", "turn perp_neg off too")
            schedule = self.schedule.resolution_schedule
            if not schedule or any(len(pair) != 2 for pair in schedule):
                raise _bad(f"{path}.schedule.resolution_schedule", "must be a list of [from_step, side] pairs",
                           "for example 0:64,5000:256")
            starts = [s for s, _ in schedule]
            if starts[0] != 0 or starts != sorted(set(starts)):
                raise _bad(f"{path}.schedule.resolution_schedule", "must start at step 0, steps increasing",
                           "for example 0:64,5000:256")
            for _, side in schedule:
                if not 8 <= side <= MAX_RENDER_SIDE:
                    raise _bad(f"{path}.schedule.resolution_schedule",
                               f"render side {side} is outside 8..{MAX_RENDER_SIDE}")
            size = self.output.texture_size
            if size and size < 64:
                raise _bad(f"{path}.output.texture_size", f"must be 0 (vertex colours) or at least 64; got {size}")
        if self.kind == "image" and self.image.resolution is not None and self.image.resolution % 8:
            raise _bad(f"{path}.image.resolution", f"must be a multiple of 8; got {self.image.resolution}")
        return self

    def to_json(self, all_sections: bool = False) -> dict[str, Any]:
        """JSON of the spec; only the sections its kind uses unless `all_sections`."""
        data = record_to_json(self)
        if not all_sections:
            for name in SECTIONS:
                if name not in self.sections():
                    data.pop(name)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str = "spec") -> JobSpec:
        """A full spec from JSON (job.json, `accepted`); missing fields take the defaults."""
        return _build(cls, check_partial(data, path))


SECTIONS = ("model", "guidance", "nerf", "schedule", "output", "image", "edit")
KIND_SECTIONS: dict[str, tuple[str, ...]] = {
    "generate": ("model", "guidance", "nerf", "schedule", "output"),
    "image": ("model", "guidance", "image"),
    "edit_texture": ("model", "guidance", "edit"),
}
# Settings that may change when a run resumes from its checkpoint: more steps, other outputs.
RESUMABLE_CHANGES = ("schedule.steps", "schedule.checkpoint_every", "output.")


def _bad(path: str, message: str, hint: str = "") -> ProtocolError:
    return ProtocolError(INVALID_FIELD, message, field=path, hint=hint)


def check_partial(data: Any, path: str = "spec", cls: type = JobSpec) -> dict[str, Any]:
    """Check a partial spec (JSON): every given field against its rule, unknown names refused.
    Returns the checked values, nested as given."""
    if not isinstance(data, Mapping):
        raise _bad(path, f"must be an object, got {type(data).__name__}")
    known = {f.name: spec for f, spec in spec_fields(cls)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        spec = known.get(key) if isinstance(key, str) else None
        if spec is None:  # the key is the client's text: quoted escaped, or the error could not be sent
            raise _bad(f"{path}.{shown(str(key))[:64]}", f"is not a setting of {path}", f"known: {', '.join(known)}")
        if isinstance(spec, Struct):
            out[key] = check_partial(value, f"{path}.{key}", spec.cls)
        else:
            out[key] = spec.check(f"{path}.{key}", value)
    return out


def _build(cls: type, checked: Mapping[str, Any]) -> Any:
    values = {}
    for f, spec in spec_fields(cls):
        if isinstance(spec, Struct):
            values[f.name] = _build(spec.cls, checked.get(f.name, {}))
        elif f.name in checked:
            values[f.name] = checked[f.name]
    return cls(**values)


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`, section by section (partial specs)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else value
    return out


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named partial spec laid under what the client sets; `high_cfg` = (s, partial) adds that partial
    spec to the preset's own when the job's CFG is at least s (still under what the client sets)."""

    description: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    high_cfg: tuple[float, Mapping[str, Any]] | None = None

    def for_cfg(self, cfg: float | None) -> Mapping[str, Any]:
        """The preset's partial spec for a job whose guidance.cfg is `cfg` (None: the preset's or default)."""
        if cfg is None:
            cfg = get_path(self.overrides, "guidance.cfg", GuidanceSpec().cfg)
        if self.high_cfg is not None and cfg >= self.high_cfg[0]:
            return merge(self.overrides, self.high_cfg[1])
        return self.overrides


def resolve(partial: Mapping[str, Any], presets: Mapping[str, Preset], *, seed: int | None = None,
            path: str = "spec") -> JobSpec:
    """Defaults ← the preset (with its high-CFG part if the job's CFG reaches it) ← `partial`, validated.
    An unset seed becomes `seed` or a random one."""
    given = check_partial(partial, path)
    kind = given.get("kind", "generate")
    for section in SECTIONS:
        if section in given and section not in KIND_SECTIONS[kind]:
            raise _bad(f"{path}.{section}", f"is not used by {kind} jobs", "leave it out")
    name = given.get("preset", DEFAULT_PRESET)
    if name not in presets:
        raise _bad(f"{path}.preset", f"unknown preset {name!r}", f"use one of {', '.join(presets)}")
    preset = presets[name].for_cfg(get_path(given, "guidance.cfg"))
    spec = _build(JobSpec, merge(check_partial(preset, f"preset {name}"), given))
    if spec.seed is None:
        spec.seed = random.randrange(2**31) if seed is None else seed
    return spec.validate(path)


def leaves(cls: type = JobSpec, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Spec]]:
    """Every setting as (dotted path, field, rule), sections flattened: 'guidance.cfg', ..."""
    for f, spec in spec_fields(cls):
        if isinstance(spec, Struct):
            yield from leaves(spec.cls, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, spec


def get_path(data: Mapping[str, Any], path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return default
        data = data[part]
    return data


def set_path(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *sections, name = path.split(".")
    node = data
    for part in sections:
        node = node.setdefault(part, {})
    node[name] = value
    return data


def option_paths(kind: str) -> dict[str, str]:
    """Option name → dotted path, for the fields a kind uses (each leaf's name is unique per kind):
    'cfg' → 'guidance.cfg', 'steps' → 'schedule.steps' for generate and 'image.steps' for image."""
    out: dict[str, str] = {}
    for path, f, _ in leaves():
        section = path.split(".")[0] if "." in path else None
        if section is not None and section not in KIND_SECTIONS[kind]:
            continue
        out[f.name] = path
    return out


def partial_from_options(kind: str, **options: Any) -> dict[str, Any]:
    """A partial spec from flat options as the CLI and the add-on name them (prompt=…, cfg=…, steps=…).
    None means unset. An option the kind does not use is an error that names it."""
    paths = option_paths(kind)
    partial: dict[str, Any] = {"kind": kind}
    for name, value in options.items():
        if value is None:
            continue
        if name not in paths:
            raise _bad(f"spec.{shown(name)[:64]}", f"{name!r} is not a setting of {kind} jobs",
                       f"settings: {', '.join(sorted(paths))}")
        set_path(partial, paths[name], value)
    return partial


def differences(a: JobSpec, b: JobSpec, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """(path, a's value, b's value) for each setting of a's kind where the two differ."""
    ja, jb = a.to_json(), b.to_json()
    out = []
    for path, _, _ in leaves():
        if path.split(".")[0] in SECTIONS and path.split(".")[0] not in a.sections():
            continue
        if any(path == p or (p.endswith(".") and path.startswith(p)) for p in ignore):
            continue
        va, vb = get_path(ja, path), get_path(jb, path)
        if va != vb and not (isinstance(va, float) and isinstance(vb, float) and math.isclose(va, vb)):
            out.append((path, va, vb))
    return out


__all__ = ["DEFAULT_PRESET", "DEFAULT_TEACHER", "GAMMA_SCHEDULES", "JOB_KINDS", "KIND_SECTIONS", "METHODS",
           "RESUMABLE_CHANGES",
           "SECTIONS", "SPEC_VERSION", "EditSpec", "GridSpec", "GuidanceSpec", "ImageSpec", "JobSpec", "LightingSpec",
           "ModelSpec",
           "NerfSpec", "OutputSpec", "PartialJobSpec", "Preset", "ScheduleSpec", "check_partial", "differences",
           "get_path", "leaves", "merge", "option_paths", "partial_from_options", "resolve", "set_path"]


@dataclasses.dataclass(frozen=True)
class PartialJobSpec(Spec):
    """A message field holding a (partial or resolved) job spec as JSON, checked by `check_partial`."""

    def check_value(self, path: str, value: Any) -> dict[str, Any]:
        return check_partial(value, path)
