"""Teachers: frozen diffusion models behind one interface (base.py), and `load_teacher` to pick one.

Teacher specs, as the CLI and the protocol name them:
    sd:ID_OR_PATH   any diffusers SD-family pipeline (hub id or local folder); `sd` alone is SD 2.1-base
    tiny            the built-in tiny random pipeline (untrained: outputs are noise, for tests and demos)
    random-sd21     the full-size SD 2.1-base architecture with random weights (speed and memory only)
"""

from __future__ import annotations

import torch

from .base import Teacher
from .stable_diffusion import DEFAULT_MODEL, StableDiffusionTeacher, TeacherLoadError

TEACHER_SPECS = ("sd:ID_OR_PATH", "tiny", "random-sd21")


def load_teacher(spec: str, device: str | torch.device = "auto", *, local_files_only: bool | None = None) -> Teacher:
    from ..devices import resolve_device, weights_dtype
    from . import builders

    device = resolve_device(device)
    if spec == "tiny":
        return StableDiffusionTeacher.from_pretrained(
            str(builders.saved_pipeline("tiny")), device=device, dtype=torch.float32, trained=False, name="tiny",
            description="built-in tiny random SD-shaped pipeline: UNTRAINED, its outputs are noise")
    if spec == "random-sd21":
        pipe = builders.build_pipeline("sd21-base", dtype=weights_dtype(device)).to(device)
        return StableDiffusionTeacher(pipe, name="random-sd21", trained=False,
                                      description="SD 2.1-base architecture with random weights: UNTRAINED, "
                                                  "for speed and memory figures only")
    if spec == "sd" or spec.startswith("sd:"):
        source = spec[3:] or DEFAULT_MODEL
        return StableDiffusionTeacher.from_pretrained(source, device=device, local_files_only=local_files_only)
    raise ValueError(f"unknown teacher {spec!r}; use one of {', '.join(TEACHER_SPECS)}")


__all__ = ["DEFAULT_MODEL", "TEACHER_SPECS", "StableDiffusionTeacher", "Teacher", "TeacherLoadError", "load_teacher"]
