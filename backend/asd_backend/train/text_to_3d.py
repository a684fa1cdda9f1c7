"""Text-to-3D: a NeRF distilled from a diffusion teacher with SDS, VSD or ASD. The whole loop is here.

Each step: sample a camera → render the NeRF → encode for the teacher → guidance loss (the
distillation core) → sparsity and opacity losses on the official schedule → one optimizer step for
the NeRF and the discriminator ε_φ together (their losses touch disjoint parameters, as in the
official code) → occupancy-grid refresh. Every `mesh_every` steps a preview mesh and render go to
`on_snapshot`; checkpoints let `resume=True` continue exactly where a run stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..guidance.prompts import PromptBank, ViewPromptConfig
from ..guidance.score_distillation import GuidanceConfig, ScoreDistillation
from ..mesh.export import to_blender_frame
from ..mesh.extract import ExtractionConfig, Mesh, extract_mesh
from ..nerf.background import EnvironmentBackground, SolidBackground
from ..nerf.cameras import CameraConfig, orbit_cameras, sample_cameras
from ..nerf.field import FieldConfig, NerfField
from ..nerf.occupancy import OccupancyGrid
from ..nerf.renderer import VolumeRenderer
from ..teachers.base import Teacher
from .presets import NerfPreset, get_preset

CHECKPOINT_NAME = "checkpoint.pt"


@dataclasses.dataclass
class GenerateConfig:
    prompt: str
    negative_prompt: str = ""
    method: str = "asd"
    cfg: float = 7.5
    seed: int = 0
    preset: str | NerfPreset = "preview"
    """A preset name (train/presets.py) or a NerfPreset of one's own (benchmarks)."""
    steps: int | None = None
    """Override the preset's number of steps."""
    mesh_every: int | None = None
    """Override how often a preview mesh is made (0: only the final mesh)."""
    mc_resolution: int | None = None
    """Override the final marching-cubes resolution."""
    texture_size: int = 0
    """Also bake the albedo into a texture of this size on an xatlas atlas for the final mesh (0: off)."""
    mc_threshold: float | str = "auto"
    """Density of the surface, or 'auto' (half the typical interior density; see mesh/extract.py)."""
    gamma: float = -0.75
    lora_rank: int = 4
    view_prompts: ViewPromptConfig = dataclasses.field(default_factory=ViewPromptConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    background: str = "environment"
    """environment (learned, with random solid-colour augmentation) or white (fixed)."""
    radius: float = 1.0

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("the prompt is empty; describe the object to make")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1; got {self.steps}")
        if self.mesh_every is not None and self.mesh_every < 0:
            raise ValueError(f"mesh_every must be >= 0; got {self.mesh_every}")
        if self.background not in ("environment", "white"):
            raise ValueError(f"background must be 'environment' or 'white'; got {self.background!r}")
        if isinstance(self.preset, str):
            get_preset(self.preset)
        GuidanceConfig(method=self.method, cfg=self.cfg, gamma=self.gamma)

    def resolved_preset(self) -> NerfPreset:
        preset = get_preset(self.preset) if isinstance(self.preset, str) else dataclasses.replace(self.preset)
        if self.steps is not None:
            preset.steps = self.steps
        if self.mesh_every is not None:
            preset.mesh_every = self.mesh_every
        if self.mc_resolution is not None:
            preset.mc_resolution = self.mc_resolution
        return preset


@dataclasses.dataclass
class Snapshot:
    index: int
    step: int
    mesh: Mesh  # Blender frame: metres, Z up, front towards −Y
    preview: np.ndarray  # H×W×3 uint8 render
    metrics: dict[str, float]
    final: bool


@dataclasses.dataclass
class GenerationResult:
    mesh: Mesh | None
    steps_done: int
    seconds: float
    stopped: bool  # should_stop() ended it early (a checkpoint was written)
    snapshots: int
    model: Generator3D | None = None  # for turntable renders and further use


class Generator3D(torch.nn.Module):
    """Everything that trains on the generator side: field, background, occupancy grid, renderer."""

    def __init__(self, preset: NerfPreset, config: GenerateConfig) -> None:
        super().__init__()
        self.field = NerfField(FieldConfig(radius=config.radius, grid=preset.grid))
        self.background = EnvironmentBackground() if config.background == "environment" else SolidBackground()
        self.occupancy = OccupancyGrid(config.radius, preset.occupancy_resolution,
                                       update_every=preset.occupancy_update_every,
                                       warmup_steps=preset.occupancy_warmup_steps)
        self.renderer = VolumeRenderer(self.field, self.background, self.occupancy, preset.samples_per_ray)

    def mesh(self, config: ExtractionConfig, threshold_fallback: bool = True, texture_size: int = 0) -> Mesh:
        """Marching cubes of the density, coloured by albedo (and baked into a texture if asked);
        the 'auto' threshold if a fixed one finds nothing. Returned in Blender's frame."""
        device = self.field.device
        mesh = extract_mesh(self.field.density, self.field.radius, config, color_fn=self.field.albedo, device=device)
        if not len(mesh.faces) and threshold_fallback and config.threshold != "auto":
            mesh = extract_mesh(self.field.density, self.field.radius, dataclasses.replace(config, threshold="auto"),
                                color_fn=self.field.albedo, device=device)
        if texture_size and len(mesh.faces):
            from ..mesh.bake import bake_texture

            mesh = bake_texture(mesh, self.field.albedo, texture_size, device=device)
        return to_blender_frame(mesh)

    @torch.no_grad()
    def preview(self, side: int, azimuth_deg: float = 30.0) -> np.ndarray:
        """A render from a fixed viewpoint (front-right, slightly above), H×W×3 uint8."""
        return self.turntable(side, [azimuth_deg])[0]

    @torch.no_grad()
    def turntable(self, side: int, azimuths_deg: list[float]) -> list[np.ndarray]:
        n = len(azimuths_deg)
        cameras = orbit_cameras(torch.full((n,), 15.0), torch.tensor(azimuths_deg, dtype=torch.float32),
                                torch.full((n,), 1.6), torch.full((n,), 45.0)).to(self.field.device)
        out = self.renderer(cameras, side, side, training=False)
        return [(img.clamp(0, 1) * 255).round().byte().cpu().numpy() for img in out.rgb]


def _optimizer(model: Generator3D, preset: NerfPreset, guidance: ScoreDistillation) -> torch.optim.Optimizer:
    groups = [
        {"params": list(model.field.encoding.parameters()), "lr": preset.lr_encoding, "name": "encoding"},
        {"params": list(model.field.density_network.parameters()) + list(model.field.feature_network.parameters()),
         "lr": preset.lr_networks, "name": "networks"},
    ]
    background = list(model.background.parameters())
    if background:
        groups.append({"params": background, "lr": preset.lr_background, "name": "background"})
    if guidance.discriminator is not None:
        groups.append({"params": guidance.discriminator.trainable_parameters(), "lr": preset.lr_discriminator,
                       "name": "discriminator"})
    return torch.optim.AdamW(groups, betas=(0.9, 0.99), eps=1e-15)


def save_checkpoint(path: Path, step: int, model: Generator3D, optimizer: torch.optim.Optimizer,
                    guidance: ScoreDistillation, generators: dict[str, torch.Generator],
                    config: GenerateConfig) -> None:
    """Everything needed to continue bit-for-bit; written atomically (a crash leaves the previous one)."""
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "discriminator": None if guidance.discriminator is None else guidance.discriminator.trainable_state(),
        "generators": {k: g.get_state() for k, g in generators.items()},
        # Global RNG too: some library code draws from it (the VAE's posterior sample, for one).
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "config": dataclasses.asdict(config),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, model: Generator3D, optimizer: torch.optim.Optimizer, guidance: ScoreDistillation,
                    generators: dict[str, torch.Generator]) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    if guidance.discriminator is not None and state["discriminator"] is not None:
        guidance.discriminator.load_trainable_state(state["discriminator"])
    optimizer.load_state_dict(state["optimizer"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"])


def checkpoint_config(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)["config"]


def opacity_losses(opacity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sparsity, opaque) as the official system: √(o² + 0.01) and the binary entropy of o."""
    sparsity = (opacity**2 + 0.01).sqrt().mean()
    o = opacity.clamp(1e-3, 1 - 1e-3)
    opaque = (-o * torch.log(o) - (1 - o) * torch.log(1 - o)).mean()
    return sparsity, opaque


def generate(teacher: Teacher, config: GenerateConfig, *, workdir: Path | None = None, resume: bool = False,
             on_progress: Callable[[int, int, dict[str, float]], None] | None = None,
             on_snapshot: Callable[[Snapshot], None] | None = None,
             should_stop: Callable[[], bool] | None = None,
             on_phase: Callable[[str], None] | None = None) -> GenerationResult:
    """Run (or continue) a text-to-3D optimisation. Returns the final mesh in Blender's frame.

    Callbacks: `on_progress(step, total, metrics)` every step, `on_snapshot` with preview and final
    meshes, `should_stop()` polled every step (True: checkpoint and return), `on_phase(name)` when the
    work changes phase after the optimisation ("extracting").
    """
    preset = config.resolved_preset()
    device = teacher.device
    torch.manual_seed(config.seed)
    model = Generator3D(preset, config).to(device)
    guidance = ScoreDistillation(
        teacher,
        GuidanceConfig(method=config.method, cfg=config.cfg, gamma=config.gamma,
                       anneal_start_step=preset.anneal_start_step),
        **({"rank": config.lora_rank} if config.method != "sds" and hasattr(teacher, "unet") else {}),
    )
    try:
        return _optimise(teacher, config, preset, model, guidance, workdir, resume, on_progress, on_snapshot,
                         should_stop, on_phase)
    finally:
        guidance.close()


def _optimise(teacher: Teacher, config: GenerateConfig, preset: NerfPreset, model: Generator3D,
              guidance: ScoreDistillation, workdir: Path | None, resume: bool,
              on_progress: Callable[[int, int, dict[str, float]], None] | None,
              on_snapshot: Callable[[Snapshot], None] | None,
              should_stop: Callable[[], bool] | None,
              on_phase: Callable[[str], None] | None) -> GenerationResult:
    device = teacher.device
    optimizer = _optimizer(model, preset, guidance)
    generators = {"cpu": torch.Generator().manual_seed(config.seed)}
    generators["device"] = (generators["cpu"] if device.type == "cpu"
                            else torch.Generator(device=device).manual_seed(config.seed + 1))
    checkpoint = None if workdir is None else Path(workdir) / CHECKPOINT_NAME
    start = 0
    if resume and checkpoint is not None and checkpoint.is_file():
        start = load_checkpoint(checkpoint, model, optimizer, guidance, generators)
    bank = PromptBank(teacher, config.prompt, config.negative_prompt, config.view_prompts)
    preview_extraction = ExtractionConfig(resolution=preset.preview_mc_resolution, threshold=config.mc_threshold,
                                          face_budget=preset.preview_face_budget)
    cpu_gen, dev_gen = generators["cpu"], generators["device"]
    snapshots = 0
    began = time.perf_counter()
    step = start
    stopped = False
    final_mesh: Mesh | None = None
    for step in range(start + 1, preset.steps + 1):
        # 1. Render a random view of the NeRF.
        side = preset.resolution_at(step)
        cameras = sample_cameras(1, config.camera, cpu_gen).to(device)
        out = model.renderer(cameras, side, side, training=True, generator=cpu_gen)
        images = out.rgb.permute(0, 3, 1, 2)
        # 2. Into the teacher's sample space (the VAE for latent teachers), at its native size.
        z = teacher.encode_at_native(images)
        # 3. The distillation gradient, and ε_φ's own loss on the same (detached) render.
        conditioning = bank.conditioning(cameras.elevation_deg, cameras.azimuth_deg)
        guided = guidance.generator_loss(z, conditioning, cameras, step=step, generator=dev_gen)
        sparsity, opaque = opacity_losses(out.opacity)
        opaque_weight = preset.lambda_opaque if (preset.opaque_from_step is not None
                                                 and step >= preset.opaque_from_step) else 0.0
        loss = guided.loss + preset.lambda_sparsity * sparsity + opaque_weight * opaque
        metrics = {"loss": 0.0, "loss_guidance": float(guided.loss.detach()), "loss_sparsity": float(sparsity.detach()),
                   "grad_norm": float(guided.grad.norm())}
        if guidance.discriminator is not None:
            loss_d = guidance.discriminator_loss(z, conditioning, cameras, generator=dev_gen)
            loss = loss + loss_d
            metrics["loss_discriminator"] = float(loss_d.detach())
        metrics["loss"] = float(loss.detach())
        # 4. One step for the NeRF and ε_φ together.
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # 5. Skip empty space from now on.
        model.occupancy.update(step, model.field.density, model.renderer.step_size, cpu_gen)
        metrics["occupied"] = model.occupancy.occupied_fraction
        metrics["resolution"] = side
        metrics["seconds"] = time.perf_counter() - began
        if on_progress is not None:
            on_progress(step, preset.steps, metrics)
        stopping = should_stop is not None and should_stop()
        last = step == preset.steps
        if checkpoint is not None and (stopping or last or step % preset.checkpoint_every == 0):
            save_checkpoint(checkpoint, step, model, optimizer, guidance, generators, config)
        if stopping:
            stopped = True
            break
        if on_snapshot is not None and not last and preset.mesh_every and step % preset.mesh_every == 0:
            mesh = model.mesh(preview_extraction)
            snapshots += 1
            on_snapshot(Snapshot(snapshots, step, mesh, model.preview(preset.preview_render), metrics, final=False))
    if not stopped:
        if on_phase is not None:
            on_phase("extracting")
        final = ExtractionConfig(resolution=preset.mc_resolution, threshold=config.mc_threshold)
        final_mesh = model.mesh(final, texture_size=config.texture_size)
        if on_snapshot is not None:
            snapshots += 1
            on_snapshot(Snapshot(snapshots, step, final_mesh, model.preview(preset.preview_render),
                                 {"seconds": time.perf_counter() - began}, final=True))
    return GenerationResult(final_mesh, step, time.perf_counter() - began, stopped, snapshots, model)
