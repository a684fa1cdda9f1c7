"""Writing results: PNGs that carry their provenance, run JSON files, and the untrained-teacher notice."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

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


@contextlib.contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed to `path` when the block ends, removed when it
    raises (an error, Ctrl-C): a file under the final name is always whole, and nothing half-written stays.
    `durable`: the file and the rename are also on disk when the block ends (fsync of the file and of its
    folder), so after a power cut it is the old file or the new one, never an empty one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.part{path.suffix}")  # the suffix keeps writers' formats
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and hasattr(os, "O_DIRECTORY"):  # POSIX: a rename is durable once its folder is
        _fsync(path.parent, os.O_DIRECTORY)


def _fsync(path: Path, flags: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_png(path: Path, image: np.ndarray, metadata: dict[str, str] | None = None) -> Path:
    """H×W×3|4 uint8 to PNG, with text chunks (prompt, teacher, …) that image viewers show."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, str(value))
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG", pnginfo=info)
    return path


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Atomic and durable: a crash or a power cut never leaves half a JSON file behind. NaN and
    infinities are refused (not JSON)."""
    text = json.dumps(data, indent=2, default=str, allow_nan=False) + "\n"
    with atomic_path(path, durable=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def check_output_path(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    """Refuse, before any work, an output path that cannot be written; one line that says what to do."""
    path = Path(path).expanduser()
    if path.is_dir():
        example = path / ("out" + suffixes[0])
        raise UsageError(f"-o {path}: that is a folder; give a file name inside it, e.g. {example}")
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"-o {path}: the {what} is written as {' or '.join(suffixes)}; give a path ending in "
                         f"{' or '.join(suffixes)}")
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"-o {path}: {existing} is a file, not a folder; choose another output folder")
    try:  # a probe file, gone when closed: permissions, read-only disks and special folders all show here
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UsageError(f"-o {path}: cannot write in {existing} ({exc.strerror or exc}); choose a folder you can "
                         "write to") from None
    return path
