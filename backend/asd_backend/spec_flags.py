"""Command-line flags generated from the job spec (asd_protocol/job_spec.py), as nerfstudio does with
its configs: one flag per setting, named after its field (`--cfg`, `--mc-resolution`), grouped by
section, with the field's doc line and its default (and what each preset sets) in `--help`.

Flags default to "not given" (argparse.SUPPRESS), so what the user typed becomes a partial spec and
the preset fills the rest exactly as it does for a job submitted to a server.
"""

from __future__ import annotations

import argparse
from typing import Any

from asd_protocol.errors import ProtocolError, error_text
from asd_protocol.fields import Flag, Integer, ListOf, Number, Spec, Text
from asd_protocol.job_spec import KIND_SECTIONS, JobSpec, get_path, leaves, partial_from_options

from .errors import UsageError
from .train.presets import PRESETS

# Top-level fields that are not flags: the prompt is positional; the kind follows from the command.
NOT_FLAGS = ("spec_version", "kind", "prompt")
SECTION_TITLES = {"": "job"}


def _schedule(text: str) -> list[list[int]]:
    """'0:64,5000:256' → [[0, 64], [5000, 256]]."""
    try:
        pairs = [part.split(":") for part in text.split(",") if part.strip()]
        return [[int(a), int(b)] for a, b in pairs]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FROM_STEP:SIDE pairs such as 0:64,5000:256; got {text!r}") \
            from None


def _kwargs(spec: Spec) -> dict[str, Any]:
    if isinstance(spec, Flag):
        return {"action": argparse.BooleanOptionalAction}
    if isinstance(spec, Integer):
        return {"type": int, "metavar": "N"}
    if isinstance(spec, Number):
        return {"type": float, "metavar": "X"}
    if isinstance(spec, ListOf):
        return {"type": _schedule, "metavar": "STEP:SIDE,…"}
    if isinstance(spec, Text) and spec.choices:
        return {"choices": spec.choices}
    return {"metavar": "TEXT"}


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, list):
        return ",".join(f"{a}:{b}" for a, b in value)
    return str(value)


def _help(path: str, spec: Spec) -> str:
    default = get_path(JobSpec().to_json(all_sections=True), path)
    text = f"{spec.doc} (default: {_shown(default)}"
    by_preset = []
    for name, preset in PRESETS.items():
        if (value := get_path(preset.overrides, path)) is not None:
            by_preset.append(f"{name} {_shown(value)}")
        if preset.high_cfg is not None and (value := get_path(preset.high_cfg[1], path)) is not None:
            by_preset.append(f"{name} at CFG ≥ {preset.high_cfg[0]:g}: {_shown(value)}")
    if by_preset:
        text += "; preset " + ", ".join(by_preset)
    return (text + ")").replace("%", "%%")


def add_spec_flags(parser: argparse.ArgumentParser, kinds: tuple[str, ...]) -> None:
    """One flag per setting that any of `kinds` uses, in a group per section."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    seen: set[str] = set()
    for path, f, spec in leaves():
        section = path.split(".")[0] if "." in path else ""
        if f.name in NOT_FLAGS or f.name in seen or (section and not any(section in KIND_SECTIONS[k] for k in kinds)):
            continue
        seen.add(f.name)
        if section not in groups:
            title = SECTION_TITLES.get(section) or section
            doc = "" if not section else (type(getattr(JobSpec(), section)).__doc__ or "").strip()
            groups[section] = parser.add_argument_group(f"{title} settings", doc or None)
        kwargs = {"choices": list(PRESETS)} if f.name == "preset" else _kwargs(spec)
        groups[section].add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=argparse.SUPPRESS,
                                     help=_help(path, spec), **kwargs)


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The spec flags the user typed (absent ones were suppressed), by field name."""
    names = {f.name for _, f, _ in leaves()} - set(NOT_FLAGS)
    return {k: v for k, v in vars(args).items() if k in names}


def partial_from_args(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The partial spec of what was typed, for a job of `kind`; a flag that kind does not use is refused."""
    options = given_options(args)
    try:
        return partial_from_options(kind, prompt=args.prompt, **options)
    except ProtocolError as exc:
        name = (exc.field or "").split(".")[-1]
        raise UsageError(f"--{name.replace('_', '-')} is not used by {kind} jobs; leave it out") from None


def flag_error(exc: ProtocolError) -> str:
    """A spec error in the CLI's words: 'spec.guidance.cfg: must be…' → '--cfg: must be…'."""
    field = exc.field or ""
    if field.startswith(("spec.", "content.spec.")):
        name = field.split(".")[-1]
        return error_text(exc.message, exc.hint, "the prompt" if name == "prompt" else f"--{name.replace('_', '-')}")
    return exc.text
