"""Editing the texture of a fixed mesh from a prompt: ASD editing, DDS as its fixed special case.

The texture is the generator. Each step renders it into one of V precomputed views (UVRasterizer:
one grid_sample), encodes the render for the teacher and applies the distillation gradient

    grad = w(t) · (ε̃_teacher(x_t; y_edit) − ref)

    ASD / VSD  ref = ε_φ(x_t; y_source, camera): the discriminator starts as the teacher on the source
               prompt and is trained on the texture's own renders (ASD: with the γ term towards the
               teacher on the edit prompt, the generator's prompt, as in text-to-3D);
    DDS        ref = ε̃_teacher(x̂_t; y_source): the teacher on the unedited render x̂, same t and ε,
               i.e. a discriminator frozen at the source;
    SDS        ref = ε.

At the first step ASD's gradient is DDS's (the texture is still the source); then ε_φ follows the
edit where DDS keeps comparing with the original. Regions the prompt does not ask to change stay
close to the source because the two predictions agree there; `strength` caps the timestep (small
t: small, local changes), and `keep` adds ‖T − T_source‖² over the texture. docs/method.md explains.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from asd_protocol.job_spec import JobSpec

from ..guidance.prompts import Conditioning
from ..guidance.score_distillation import ScoreDistillation
from ..job_events import JobEvents
from ..nerf.shading import Light
from ..teachers.base import Teacher
from .raster import NormalisedMesh, UVRasterizer


def edit_guidance(teacher: Teacher, spec: JobSpec) -> ScoreDistillation:
    """Guidance for an edit: `strength` caps the timestep (small t: small, local changes)."""
    top = max(0.03, 0.98 * spec.edit.strength)
    return ScoreDistillation.from_spec(teacher, spec.guidance, spec.model, min_step_percent=0.02,
                                       max_step_percent=top, max_step_percent_annealed=top)


@dataclasses.dataclass
class TextureFrame:
    step: int
    texture: np.ndarray  # H×W×4 uint8, rows top-down
    metrics: dict[str, float]
    final: bool


def to_tensor(texture: np.ndarray, device: torch.device) -> tuple[torch.Tensor, np.ndarray | None]:
    """H×W×3|4 uint8 → [1, 3, H, W] float in [0, 1], plus the alpha channel kept aside."""
    rgb = torch.from_numpy(np.ascontiguousarray(texture[..., :3])).float().div(255)
    alpha = texture[..., 3].copy() if texture.shape[2] == 4 else None
    return rgb.permute(2, 0, 1)[None].to(device), alpha


def to_uint8(texture: torch.Tensor, alpha: np.ndarray | None) -> np.ndarray:
    rgb = (texture[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().cpu().numpy()
    a = alpha if alpha is not None else np.full(rgb.shape[:2], 255, np.uint8)
    return np.concatenate([rgb, a[..., None]], axis=2)


def edit_texture(teacher: Teacher, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, texture: np.ndarray,
                 spec: JobSpec, *, rasterizer: UVRasterizer | None = None,
                 events: JobEvents | None = None) -> TextureFrame:
    """Optimise `texture` (H×W×3|4 uint8) on the fixed mesh for a resolved `edit_texture` spec; returns the
    final frame (H×W×4 uint8). `events` hears every step and every `edit.every`-th texture; its
    `should_stop()` ends the edit early (the texture of that step is the final one)."""
    if spec.kind != "edit_texture":
        raise ValueError(f"edit_texture() runs edit_texture specs, not {spec.kind!r}")
    events = events or JobEvents()
    config, method = spec.edit, spec.guidance.method
    device = teacher.device
    torch.manual_seed(spec.seed)
    side = config.resolution or teacher.native_resolution
    light = Light.from_spec(config.lighting, frame="blender")  # meshes to edit come in Blender's frame
    if rasterizer is None:
        mesh = NormalisedMesh.from_world(vertices, faces, uvs)
        rasterizer = UVRasterizer.orbit(mesh, config.views, side, seed=spec.seed, device=device,
                                        normals=light is not None)
    source, alpha = to_tensor(texture, device)
    texels = torch.nn.Parameter(source.clone())
    with edit_guidance(teacher, spec) as guidance:
        emb = teacher.embed_prompts([spec.prompt, spec.negative_prompt, config.source()])
        # ε_φ is conditioned on the source prompt; its γ term (as in text-to-3D) pulls towards the teacher
        # on the generator's own prompt, the edit: the fixed point is then the edited texture, while a
        # source-prompt target would keep pulling the texture back by γ·(ε(y_edit) − ε(y_source)).
        conditioning = Conditioning(cond=emb[0:1], uncond=emb[1:2], base=emb[2:3])
        # Adam for the texels (AdamW without weight decay), AdamW for ε_φ: one optimizer, two groups.
        optimizer = torch.optim.AdamW([{"params": [texels], "lr": config.lr, "weight_decay": 0.0},
                                       *guidance.discriminator_group(spec.guidance.discriminator_lr)])
        generator = torch.Generator(device=device).manual_seed(spec.seed)
        cpu = torch.Generator().manual_seed(spec.seed)
        source_latents: dict[int, torch.Tensor] = {}  # DDS: each view's source render, encoded once
        started = time.perf_counter()
        for step in range(1, config.steps + 1):
            index = torch.randint(len(rasterizer), (1,), generator=cpu)
            views = rasterizer.views(index)
            z = teacher.encode_at_native(rasterizer.render(texels, index, light=light))
            source_z = None
            if method == "dds":
                key = int(index)
                if key not in source_latents:
                    with torch.no_grad():
                        source_latents[key] = teacher.encode_at_native(rasterizer.render(source, index, light=light))
                source_z = source_latents[key]
            extra = {"keep": config.keep * ((texels - source) ** 2).mean()} if config.keep else None
            metrics = guidance.step(optimizer, z, conditioning, views, step=step, generator=generator, source=source_z,
                                    extra=extra)
            with torch.no_grad():
                texels.clamp_(0, 1)
            metrics["seconds"] = time.perf_counter() - started
            events.progress(step, config.steps, metrics)
            last = step == config.steps or events.should_stop()
            if last or (config.every and step % config.every == 0):
                frame = TextureFrame(step, to_uint8(texels.detach(), alpha), metrics, last)
                events.frame(frame)
            if last:
                break
    return frame  # edit.steps ≥ 1: the last step always makes one
