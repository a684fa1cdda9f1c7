"""Text-to-3D: a NeRF distilled from a diffusion teacher with SDS, VSD or ASD. The whole loop is here.

Each step: sample a camera → render the NeRF → encode for the teacher → guidance loss (the
distillation core) → sparsity and opacity losses on the official schedule → one optimizer step for
the NeRF and the discriminator ε_φ together (their losses touch disjoint parameters, as in the
official code) → occupancy-grid refresh. Every `mesh_every` steps a preview mesh and render go to
the job's events (job_events.py); checkpoints let `resume=True` continue exactly where a run stopped.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asd_protocol.job_spec import RESUMABLE_CHANGES, JobSpec, NerfSpec, differences

from .. import job_layout
from ..errors import AsdError
from ..guidance.prompts import PromptBank, ViewPromptConfig
from ..guidance.score_distillation import ScoreDistillation
from ..interrupt import Interrupted, StopCheck
from ..job_events import JobEvents
from ..mesh.extract import ExtractionConfig, Mesh, extract_mesh
from ..nerf.background import EnvironmentBackground, SolidBackground
from ..nerf.cameras import CameraConfig, orbit_cameras, sample_cameras
from ..nerf.field import FieldConfig, NerfField
from ..nerf.occupancy import OccupancyGrid
from ..nerf.renderer import VolumeRenderer
from ..nerf.shading import Light
from ..phase_timer import PhaseTimer, phases_of
from ..teachers.base import Teacher

IMPLEMENTATIONS = ("fast", "reference")


@dataclasses.dataclass
class Snapshot:
    index: int
    step: int
    mesh: Mesh  # the field's frame (front +X); mesh/export.py turns it into Blender's where it leaves
    preview: np.ndarray  # H×W×3 uint8 render
    metrics: dict[str, float]
    final: bool


@dataclasses.dataclass
class GenerationResult:
    mesh: Mesh | None
    steps_done: int
    seconds: float
    stopped: bool  # should_stop() ended it early (a checkpoint was written)
    snapshots: int  # the last snapshot index (it keeps counting across resumes)
    model: Generator3D | None = None  # for turntable renders and further use
    resumed_from: int = 0  # the step the run continued from (0: a fresh start)


class Generator3D(torch.nn.Module):
    """Everything that trains on the generator side: field, background, occupancy grid, renderer."""

    def __init__(self, nerf: NerfSpec, implementation: str = "fast") -> None:
        """`implementation="reference"`: the plain hash-grid encoding, occupancy refreshes over the
        whole cube from step 16 and full-grid extraction, kept for `asd bench speed --compare`."""
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")
        self.implementation = implementation
        fast = implementation == "fast"
        self.field = NerfField(FieldConfig(radius=nerf.radius, grid=nerf.grid, density_blob_std=nerf.density_blob_std),
                               implementation)
        self.background = EnvironmentBackground() if nerf.background == "environment" else SolidBackground()
        self.occupancy = OccupancyGrid(nerf.radius, nerf.occupancy_resolution, update_every=nerf.occupancy_update_every,
                                       warmup_steps=nerf.occupancy_warmup_steps, sphere_only=fast)
        self.renderer = VolumeRenderer(self.field, self.background, self.occupancy, nerf.samples_per_ray,
                                       Light.from_spec(nerf.lighting))

    def mesh(self, config: ExtractionConfig, threshold_fallback: bool = True, texture_size: int = 0,
             should_stop: StopCheck = None) -> Mesh:
        """Marching cubes of the density, coloured by albedo (and baked into a texture if asked);
        the 'auto' threshold if a fixed one finds nothing. In the field's frame (the wire and files convert).
        (Masking the density by the occupancy grid was tried: it cuts into surfaces and scores worse on
        `asd bench 3d`.)"""
        device = self.field.device
        if self.implementation == "reference":
            config = dataclasses.replace(config, method="full")
        mesh = extract_mesh(self.field.density, self.field.radius, config, color_fn=self.field.albedo, device=device,
                            should_stop=should_stop)
        if not len(mesh.faces) and threshold_fallback and config.threshold != "auto":
            mesh = extract_mesh(self.field.density, self.field.radius, dataclasses.replace(config, threshold="auto"),
                                color_fn=self.field.albedo, device=device, should_stop=should_stop)
        if texture_size and len(mesh.faces):
            from ..mesh.bake import bake_texture

            mesh = bake_texture(mesh, self.field.albedo, texture_size, device=device, should_stop=should_stop)
        return mesh

    @torch.no_grad()
    def preview(self, side: int, azimuth_deg: float = 30.0, should_stop: StopCheck = None) -> np.ndarray:
        """A render from a fixed viewpoint (front-right, slightly above), H×W×3 uint8."""
        return self.turntable(side, [azimuth_deg], should_stop)[0]

    @torch.no_grad()
    def turntable(self, side: int, azimuths_deg: list[float], should_stop: StopCheck = None) -> list[np.ndarray]:
        n = len(azimuths_deg)
        cameras = orbit_cameras(torch.full((n,), 15.0), torch.tensor(azimuths_deg, dtype=torch.float32),
                                torch.full((n,), 1.6), torch.full((n,), 45.0)).to(self.field.device)
        out = self.renderer(cameras, side, side, training=False, should_stop=should_stop)
        return [(img.clamp(0, 1) * 255).round().byte().cpu().numpy() for img in out.rgb]


def _optimizer(model: Generator3D, spec: JobSpec, guidance: ScoreDistillation) -> torch.optim.Optimizer:
    schedule = spec.schedule
    groups = [
        {"params": list(model.field.encoding.parameters()), "lr": schedule.lr_encoding, "name": "encoding"},
        {"params": list(model.field.density_network.parameters()) + list(model.field.feature_network.parameters()),
         "lr": schedule.lr_networks, "name": "networks"},
    ]
    background = list(model.background.parameters())
    if background:
        groups.append({"params": background, "lr": schedule.lr_background, "name": "background"})
    groups += guidance.discriminator_group(spec.guidance.discriminator_lr)
    # The fused kernel: one pass over the hash table's 12M values instead of a dozen (10× on a CPU).
    params = [p for g in groups for p in g["params"]]
    fused = model.implementation == "fast" and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                                   for p in params)
    return torch.optim.AdamW(groups, betas=(0.9, 0.99), eps=1e-15, fused=fused or None)


def save_checkpoint(path: Path, step: int, model: Generator3D, optimizer: torch.optim.Optimizer,
                    guidance: ScoreDistillation, generators: dict[str, torch.Generator], spec: JobSpec,
                    snapshots: int) -> None:
    """Everything needed to continue bit-for-bit; written atomically (an interrupt or a crash leaves the
    previous checkpoint and no partial file), then its JSON record (spec, step) beside it."""
    from ..artifacts import atomic_path, write_json

    state = {
        "step": step,
        "snapshots": snapshots,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "discriminator": None if guidance.discriminator is None else guidance.discriminator.trainable_state(),
        "scaler": None if guidance.scaler is None else guidance.scaler.state_dict(),  # fp16 loss scales
        "discriminator_scaler": (None if guidance.discriminator_scaler is None
                                 else guidance.discriminator_scaler.state_dict()),
        "generators": {k: g.get_state() for k, g in generators.items()},
        # Global RNG too: some library code draws from it (the VAE's posterior sample, for one).
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (RuntimeError, OSError) as exc:
        # torch reports a full disk as "unexpected pos …" or "file write failed": say what it is.
        import errno
        import shutil

        free = shutil.disk_usage(path.parent).free
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOSPC, errno.EDQUOT) and free > 64 << 20:
            raise
        if not isinstance(exc, OSError) and free > 64 << 20:
            raise
        raise OSError(errno.ENOSPC, f"disk full: the checkpoint at step {step} could not be written to "
                      f"{path.parent} ({free >> 20} MiB free); the previous checkpoint is kept") from exc
    write_json(path.with_name(job_layout.CHECKPOINT_RECORD), {"step": step, "snapshots": snapshots,
                                                   "spec": spec.to_json()})


def load_checkpoint(path: Path, model: Generator3D, optimizer: torch.optim.Optimizer, guidance: ScoreDistillation,
                    generators: dict[str, torch.Generator]) -> tuple[int, int]:
    """Restore the training state; returns (step, snapshots). A checkpoint that cannot be read (a torn
    disk, a file from an incompatible version) is set aside as checkpoint.pt.damaged, with its record, and
    an AsdError says so: nothing offers to resume it again, and the artist starts the job over."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        if guidance.discriminator is not None and state["discriminator"] is not None:
            guidance.discriminator.load_trainable_state(state["discriminator"])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as exc:  # torch reports damage as RuntimeError, EOFError, IndexError, UnpicklingError…
        damaged = path.with_name(path.name + ".damaged")
        path.replace(damaged)
        record = path.with_name(job_layout.CHECKPOINT_RECORD)
        if record.exists():
            record.replace(record.with_name(record.name + ".damaged"))
        raise AsdError(f"the checkpoint {path} is damaged or from an incompatible version ({type(exc).__name__}: "
                       f"{str(exc)[:200]}); it was set aside as {damaged.name}. Start the job again (without "
                       "resume)") from exc
    _match_state_layout(optimizer)
    if guidance.scaler is not None and state.get("scaler"):
        guidance.scaler.load_state_dict(state["scaler"])
    if guidance.discriminator_scaler is not None and state.get("discriminator_scaler"):
        guidance.discriminator_scaler.load_state_dict(state["discriminator_scaler"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), int(state.get("snapshots", 0))


def _match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Moment estimates saved for a transposed parameter (the first version's [T, F] hash table) are
    transposed to the parameter's shape, as HashGrid does for the table itself."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if (isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape != param.shape
                        and value.t().shape == param.shape):
                    optimizer.state[param][key] = value.t().contiguous()


def checkpoint_record(workdir: Path) -> dict[str, Any] | None:
    """The checkpoint's JSON record ({step, snapshots, spec}), or None when there is no checkpoint."""
    import json

    record = Path(workdir) / job_layout.CHECKPOINT_RECORD
    if not (Path(workdir) / job_layout.CHECKPOINT).is_file() or not record.is_file():
        return None
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError) as exc:
        raise AsdError(f"the checkpoint record {record} cannot be read ({exc}); delete {workdir} to start "
                       "over") from None


def check_resume(workdir: Path, spec: JobSpec) -> int:
    """The step a resumed run continues from (0: nothing to resume; the last step: only the mesh is made
    again, with the output settings asked for now). Refuses a checkpoint made for another prompt or
    other settings (only more steps and other outputs may change), or past the steps asked for."""
    record = checkpoint_record(workdir)
    if record is None:
        return 0
    saved = JobSpec.from_json(record["spec"])
    changed = differences(saved, spec, ignore=RESUMABLE_CHANGES)
    if changed:
        listing = "; ".join(f"{path}: {old!r} in the checkpoint, {new!r} now" for path, old, new in changed[:6])
        raise AsdError(f"cannot resume {workdir}: the checkpoint was made with other settings ({listing}). "
                       "Resume with the same prompt and settings, or drop --resume to start over")
    step = int(record["step"])
    if step > spec.schedule.steps:
        raise AsdError(f"cannot resume {workdir}: the checkpoint is at step {step}, past the {spec.schedule.steps} "
                       f"steps asked for; ask for at least {step} (--steps) or drop --resume to start over")
    return step



def opacity_losses(opacity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sparsity, opaque) as the official system: √(o² + 0.01) and the binary entropy of o."""
    sparsity = (opacity**2 + 0.01).sqrt().mean()
    o = opacity.clamp(1e-3, 1 - 1e-3)
    opaque = (-o * torch.log(o) - (1 - o) * torch.log(1 - o)).mean()
    return sparsity, opaque


def view_prompts(spec: JobSpec) -> ViewPromptConfig:
    return ViewPromptConfig(view_dependent=spec.guidance.view_prompts, perp_neg=spec.guidance.perp_neg)


def guidance_for(teacher: Teacher, spec: JobSpec) -> ScoreDistillation:
    """The score distillation a generate job runs: its guidance, model and NeRF sections, and its
    schedule's timestep annealing."""
    return ScoreDistillation.from_spec(teacher, spec.guidance, spec.model, spec.nerf,
                                       anneal_start_step=spec.schedule.anneal_start_step,
                                       max_step_percent_annealed=spec.schedule.anneal_max_timestep)


def generate(teacher: Teacher, spec: JobSpec, *, workdir: Path | None = None, resume: bool = False,
             events: JobEvents | None = None, timer: PhaseTimer | None = None,
             implementation: str = "fast") -> GenerationResult:
    """Run (or continue) a text-to-3D optimisation of a resolved `generate` spec. Returns the final
    mesh (in the field's frame, as every mesh here: mesh/export.py converts where meshes leave).

    `events` (job_events.py) hears every step, the preview and final meshes and the phase after the
    optimisation ("extracting"); its `should_stop()` is polled every step and between chunks of meshing and
    rendering (True: checkpoint and return). The previews are made only when `output.mesh_every` asks.
    `timer` and `implementation` are for benchmarks: per-phase timings in the metrics, and "reference" for
    the plain hash-grid encoding and full-grid extraction the fast paths are measured against.
    """
    if spec.kind != "generate":
        raise ValueError(f"generate() runs generate specs, not {spec.kind!r}")
    events = events or JobEvents()
    should_stop = events.should_stop
    device = teacher.device
    torch.manual_seed(spec.seed)
    model = Generator3D(spec.nerf, implementation).to(device)
    with guidance_for(teacher, spec) as guidance:
        schedule, output = spec.schedule, spec.output
        optimizer = _optimizer(model, spec, guidance)
        generators = {"cpu": torch.Generator().manual_seed(spec.seed)}
        generators["device"] = (generators["cpu"] if device.type == "cpu"
                                else torch.Generator(device=device).manual_seed(spec.seed + 1))
        checkpoint = None if workdir is None else Path(workdir) / job_layout.CHECKPOINT
        start = snapshots = 0
        if resume and checkpoint is not None and check_resume(Path(workdir), spec):
            start, snapshots = load_checkpoint(checkpoint, model, optimizer, guidance, generators)
        bank = PromptBank(teacher, spec.prompt, spec.negative_prompt, view_prompts(spec))
        threshold = "auto" if output.mc_threshold is None else output.mc_threshold
        preview_extraction = ExtractionConfig(resolution=output.preview_mc_resolution, threshold=threshold,
                                              face_budget=output.preview_face_budget)
        cameras_config = CameraConfig()
        cpu_gen, dev_gen = generators["cpu"], generators["device"]
        began = time.perf_counter()
        step = start
        stopped = False
        final_mesh: Mesh | None = None
        phase = phases_of(timer)
        if start == 0 and model.implementation == "fast":
            # Skip empty space from the first step: the initial field is a ball (the density blob).
            with phase("occupancy"):
                model.occupancy.update(0, model.field.density, model.renderer.step_size, cpu_gen)
        for step in range(start + 1, schedule.steps + 1):
            # 1. Render a random view of the NeRF.
            side = schedule.resolution_at(step)
            cameras = sample_cameras(1, cameras_config, cpu_gen).to(device)
            with phase("render_forward"):
                out = model.renderer(cameras, side, side, training=True, generator=cpu_gen)
            images = out.rgb.permute(0, 3, 1, 2)
            # 2. Into the teacher's sample space (the VAE for latent teachers), at its native size.
            with phase("encode_forward"):
                z = teacher.encode_at_native(images)
            if timer is not None:
                timer.split_backward([(z, "guidance_backward"), (images, "encode_backward")], rest="render_backward")
            # 3. The distillation gradient and the official regularisers; ε_φ's loss on the same render;
            #    one step for the NeRF and ε_φ together.
            conditioning = bank.conditioning(cameras.elevation_deg, cameras.azimuth_deg)
            sparsity, opaque = opacity_losses(out.opacity)
            regularisers = {"sparsity": schedule.lambda_sparsity * sparsity}
            if schedule.opaque_from_step is not None and step >= schedule.opaque_from_step:
                regularisers["opaque"] = schedule.lambda_opaque * opaque
            metrics = guidance.step(optimizer, z, conditioning, cameras, step=step, generator=dev_gen,
                                    extra=regularisers, timer=timer, sample_offsets=out.offsets)
            metrics["samples_evaluated"], metrics["samples_total"] = out.samples_evaluated, out.samples_total
            # 4. Refresh the record of empty space when it is due.
            with phase("occupancy"):
                model.occupancy.update(step, model.field.density, model.renderer.step_size, cpu_gen)
            if timer is not None:
                metrics.update({f"seconds_{name}": value for name, value in timer.end_step().items()})
            metrics["occupied"] = model.occupancy.occupied_fraction
            metrics["resolution"] = side
            metrics["seconds"] = time.perf_counter() - began
            events.progress(step, schedule.steps, metrics)
            stopping = should_stop()
            last = step == schedule.steps
            # Previews every mesh_every steps; the first one as soon as first_mesh_seconds have passed, so
            # an artist sees a shape within seconds whatever the step count (it changes nothing in training).
            first_due = (snapshots == 0 and output.first_mesh_seconds > 0
                         and metrics["seconds"] >= output.first_mesh_seconds)
            if (not (last or stopping) and output.mesh_every
                    and (step % output.mesh_every == 0 or first_due)):
                try:  # seconds of meshing and rendering: a cancel (or a lost server) lands inside them
                    mesh = model.mesh(preview_extraction, should_stop=should_stop)
                    preview = model.preview(output.preview_render, should_stop=should_stop)
                except Interrupted:
                    stopping = True
                else:
                    snapshots += 1
                    events.snapshot(Snapshot(snapshots, step, mesh, preview, metrics, final=False))
            if checkpoint is not None and (stopping or last or step % schedule.checkpoint_every == 0):
                save_checkpoint(checkpoint, step, model, optimizer, guidance, generators, spec, snapshots)
            if stopping:
                stopped = True
                break
        if not stopped:
            events.phase("extracting", f"marching cubes at {output.mc_resolution}³"
                         + (f", then a {output.texture_size}² texture bake" if output.texture_size else ""))
            final = ExtractionConfig(resolution=output.mc_resolution, threshold=threshold)
            try:  # the checkpoint of the last step is on disk: a resume goes straight to this extraction
                final_mesh = model.mesh(final, texture_size=output.texture_size, should_stop=should_stop)
                preview = model.preview(output.preview_render, should_stop=should_stop)
            except Interrupted:
                final_mesh, stopped = None, True
            else:
                snapshots += 1
                events.snapshot(Snapshot(snapshots, step, final_mesh, preview, {"seconds": time.perf_counter() - began},
                                         final=True))
        return GenerationResult(final_mesh, step, time.perf_counter() - began, stopped, snapshots, model,
                                resumed_from=start)
