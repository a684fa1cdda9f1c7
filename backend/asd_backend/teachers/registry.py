"""The teachers this product offers, in one table: name, how to load it, what it is, its default preset.

The CLI's help, the server's `welcome` and the add-on's list read this table; adding a teacher is one
entry here. Loading is lazy (torch and diffusers are imported by the factories), so the front end
can read the table without loading a model.

Teacher specs, as the CLI and the protocol name them: `NAME` or `NAME:ARGUMENT` (`sd:PATH`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import Teacher

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOY_TEACHER_DIR = ASSETS / "toy_teacher"


@dataclasses.dataclass(frozen=True)
class TeacherEntry:
    name: str
    usage: str
    """How the spec is written (`sd[:ID_OR_PATH]`)."""
    description: str
    trained: bool
    load: Callable[..., Teacher]
    """load(argument, device, local_files_only) → a Teacher."""
    default_preset: str | None = None
    """The preset a job with this teacher runs when it names none (None: the spec's default)."""
    takes_argument: bool = False
    builtin: bool = False
    """Ships with the product (every server offers it)."""


def _load_sd(argument: str, device: Any, local_files_only: bool | None) -> Teacher:
    from .stable_diffusion import DEFAULT_MODEL, StableDiffusionTeacher

    return StableDiffusionTeacher.from_pretrained(argument or DEFAULT_MODEL, device=device,
                                                  local_files_only=local_files_only)


def _load_tiny(argument: str, device: Any, local_files_only: bool | None) -> Teacher:
    import torch

    from . import builders
    from .stable_diffusion import StableDiffusionTeacher

    return StableDiffusionTeacher.from_pretrained(
        str(builders.saved_pipeline("tiny")), device=device, dtype=torch.float32, trained=False, name="tiny",
        description=TEACHERS["tiny"].description)


def _load_random_sd21(argument: str, device: Any, local_files_only: bool | None) -> Teacher:
    from ..devices import resolve_device, weights_dtype
    from . import builders
    from .stable_diffusion import StableDiffusionTeacher

    device = resolve_device(device)
    pipe = builders.build_pipeline("sd21-base", dtype=weights_dtype(device)).to(device)
    return StableDiffusionTeacher(pipe, name="random-sd21", trained=False,
                                  description=TEACHERS["random-sd21"].description)


def _load_toy(argument: str, device: Any, local_files_only: bool | None) -> Teacher:
    from ..toy.teacher import ToyTeacher

    return ToyTeacher.from_pretrained(str(TOY_TEACHER_DIR), device=device, name="toy",
                                      description=TEACHERS["toy"].description)


TEACHERS: dict[str, TeacherEntry] = {entry.name: entry for entry in (
    TeacherEntry("sd", "sd[:ID_OR_PATH]", "any diffusers Stable Diffusion pipeline, a hub id or a local folder "
                 "(alone: SD 2.1-base)", trained=True, load=_load_sd, takes_argument=True),
    TeacherEntry("toy", "toy", "the toy teacher, trained here on a world of 7 shapes in 8 colours (\"a red mug\", "
                 "\"a blue chair\"): real objects on a CPU in minutes", trained=True, load=_load_toy,
                 default_preset="toy", builtin=True),
    TeacherEntry("tiny", "tiny", "built-in tiny random SD-shaped pipeline: UNTRAINED, its outputs are noise (tests)",
                 trained=False, load=_load_tiny, builtin=True),
    TeacherEntry("random-sd21", "random-sd21", "SD 2.1-base architecture with random weights: UNTRAINED, for speed "
                 "and memory figures only", trained=False, load=_load_random_sd21),
)}


def usage() -> str:
    return " | ".join(entry.usage for entry in TEACHERS.values())


def find_teacher(spec: str) -> tuple[TeacherEntry, str]:
    """The entry a teacher spec names and its argument (`sd:PATH` → sd, PATH). ValueError names the choices."""
    name, _, argument = spec.partition(":")
    entry = TEACHERS.get(name)
    if entry is None or (argument and not entry.takes_argument):
        raise UsageError(f"unknown teacher {spec!r}; use one of {usage()}")
    return entry, argument


def describe(spec: str) -> tuple[str, bool]:
    """(description, trained) of a teacher spec, for `welcome`; a spec with an argument names its model."""
    try:
        entry, argument = find_teacher(spec)
    except ValueError:
        return f"diffusers model {spec}", True
    if argument:
        return f"diffusers model {argument}", entry.trained
    return entry.description, entry.trained


def default_preset(spec: str | None) -> str | None:
    if not spec:
        return None
    try:
        return find_teacher(spec)[0].default_preset
    except ValueError:
        return None


def load_teacher(spec: str, device: Any = "auto", *, local_files_only: bool | None = None) -> Teacher:
    from ..devices import resolve_device

    entry, argument = find_teacher(spec)
    return entry.load(argument, resolve_device(device), local_files_only)
