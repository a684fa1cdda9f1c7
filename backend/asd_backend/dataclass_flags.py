"""Command-line flags generated from a plain config dataclass, so a setting is declared once.

Each field becomes `--field-name`, parsed by its type, its help ending with the default. A field's help
is its attribute docstring (the string literal under it, as the config classes document their fields);
its metadata may give the `help` instead, other spellings (`aliases`), a `parse` function for text the type cannot
read (e.g. "0,1"), a `flag` name other than the field's, `repeatable` (the flag given once per value) and a
`metavar`.
Tuples of numbers take several values.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings under a class's annotated attributes (read from its source; none without source)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        kind = hints[field.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None: parsed as X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        text = field.metadata.get("help") or docs.get(field.name) or field.name.replace("_", " ")
        shown = (", ".join(map(str, default)) or "none") if isinstance(default, (tuple, list)) else default
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                  "help": f"{text} (default: {shown})"}
        origin = typing.get_origin(kind)
        meta = field.metadata
        if "parse" in meta:
            kwargs["type"] = meta["parse"]
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin in (tuple, list):
            args = [a for a in typing.get_args(kind) if a is not Ellipsis]
            kwargs |= {"type": args[0] if args else str, "metavar": field.name.upper()}
            kwargs |= {"action": "append"} if meta.get("repeatable") else {"nargs": "+"}
        elif kind in (int, float, str, Path):
            kwargs["type"] = kind
        else:
            kwargs["type"] = str
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        parser.add_argument(_flag(meta.get("flag", field.name)), *meta.get("aliases", ()), **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The dataclass with the flags the user gave (its own defaults for the rest); validation is its own."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    for name, value in list(given.items()):
        if isinstance(value, list):
            given[name] = tuple(value)
    return cls(**(given | overrides))  # type: ignore[call-arg]
