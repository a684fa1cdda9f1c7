"""Command-line flags generated from a plain config dataclass, so a setting is declared once.

Each field becomes `--field-name`, parsed by its type, its help ending with the default. A field's
help is its `metadata["help"]` when given. Tuples of numbers take several values.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        kind = hints[field.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: parsed as X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        text = field.metadata.get("help", field.name.replace("_", " "))
        shown = ", ".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                  "help": f"{text} (default: {shown})"}
        origin = typing.get_origin(kind)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin in (tuple, list):
            args = [a for a in typing.get_args(kind) if a is not Ellipsis]
            kwargs |= {"type": args[0] if args else str, "nargs": "+", "metavar": field.name.upper()}
        elif kind in (int, float, str, Path):
            kwargs["type"] = kind
        else:
            kwargs["type"] = str
        parser.add_argument(_flag(field.name), **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The dataclass with the flags the user gave (its own defaults for the rest); validation is its own."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    for name, value in list(given.items()):
        if isinstance(value, list):
            given[name] = tuple(value)
    return cls(**(given | overrides))  # type: ignore[call-arg]
