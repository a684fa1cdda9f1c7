"""Writing results: PNGs that carry their provenance, run JSON files, and the untrained-teacher notice."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

UNTRAINED_NOTICE = ("made with an UNTRAINED teacher (random weights): the result is noise-shaped and shows only "
                    "that the pipeline runs; use a real model (--teacher sd) for real results")


def teacher_notice(teacher: Any) -> str | None:
    return None if getattr(teacher, "trained", True) else f"teacher {teacher.name!r}: {UNTRAINED_NOTICE}"


def versions() -> dict[str, str]:
    import diffusers
    import torch

    from . import __version__

    return {"asd_studio": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cuda": str(torch.version.cuda)}


def write_png(path: Path, image: np.ndarray, metadata: dict[str, str] | None = None) -> Path:
    """H×W×3|4 uint8 to PNG, with text chunks (prompt, teacher, …) that image viewers show."""
    from PIL import Image, PngImagePlugin

    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, str(value))
    Image.fromarray(np.ascontiguousarray(image)).save(path, pnginfo=info)
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Atomic: a crash never leaves half a JSON file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path
