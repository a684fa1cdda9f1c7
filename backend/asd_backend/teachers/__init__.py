"""Teachers: frozen diffusion models behind one interface (base.py); registry.py is the table of the
ones the product offers and `load_teacher` loads one by its spec (`toy`, `sd:PATH`, ...).

Imports are lazy: the server's front end reads the registry without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import TEACHERS, find_teacher, load_teacher, usage

_LAZY = {"Teacher": ".base", "StableDiffusionTeacher": ".stable_diffusion", "DEFAULT_MODEL": ".stable_diffusion",
         "TeacherLoadError": ".stable_diffusion"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_MODEL", "TEACHERS", "StableDiffusionTeacher", "Teacher", "TeacherLoadError", "find_teacher",
           "load_teacher", "usage"]
