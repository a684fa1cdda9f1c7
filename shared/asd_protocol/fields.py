"""Field specifications: what a message field may hold, checked with errors that name the field.

Each content field of a message dataclass carries one `Spec` in its metadata (see `messages.py`).
The same spec checks a value built in Python before it is sent and a value decoded from the wire,
so both sides agree on the rules. Standard library and numpy only: the Blender add-on bundles this.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import INVALID_FIELD, TOO_LARGE, ProtocolError

# Arrays travel little-endian; these are the only element types on the wire.
WIRE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("uint8", "uint16", "uint32", "int32", "float16", "float32")
}

_MISSING = object()


def _bad(path: str, message: str, hint: str = "", code: str = INVALID_FIELD) -> ProtocolError:
    return ProtocolError(code, message, field=path, hint=hint)


# C0 controls but tab, newline and carriage return; DEL; C1 controls. They draw as nothing (or break a
# terminal) and a NUL truncates C strings; nobody types them into a prompt.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(value: str) -> str:
    """Text made to pass `check_text`, for what a program writes (exception messages, library warnings
    with terminal colours): lone surrogates become '?', control characters are dropped."""
    value = value.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub("", value)


def shown(value: str) -> str:
    """Client text as an error may quote it: control characters and lone surrogates written as escapes
    (`\\x07`, `\\ud800`), so the client sees which character was refused and the reply still encodes."""
    out = []
    for ch in value:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        elif _CONTROL.match(ch) or ch in "\t\n\r":
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    return "".join(out)


def check_text(path: str, value: str) -> str:
    """Text every reply can carry: valid Unicode that encodes as UTF-8 (no lone surrogates, which JSON's
    \\ud800 escapes let through) and no control characters. Stored strings pass here first, so a stored
    job can never make a reply fail to encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _bad(path, f"holds {value[exc.start]!r} at position {exc.start}, a lone surrogate that is not a "
                   "character (it cannot be encoded as UTF-8)", hint="send valid Unicode text") from None
    bad = _CONTROL.search(value)
    if bad is not None:
        raise _bad(path, f"holds the control character U+{ord(bad.group()):04X} at position {bad.start()}",
                   hint="remove control characters (tabs and newlines are fine)")
    return value


@dataclasses.dataclass(frozen=True)
class Spec:
    """Base of all specs. `optional` admits None; `default` is used when the field is absent."""

    optional: bool = False
    doc: str = ""

    def check(self, path: str, value: Any) -> Any:
        if value is None:
            if self.optional:
                return None
            raise _bad(path, "is required and may not be null")
        return self.check_value(path, value)

    def check_value(self, path: str, value: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_json(self, value: Any) -> Any:
        return value


@dataclasses.dataclass(frozen=True)
class Text(Spec):
    max_len: int = 256
    min_len: int = 0
    choices: tuple[str, ...] | None = None
    pattern: str | None = None  # a regular expression the whole value must match
    pattern_hint: str = ""

    def check_value(self, path: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _bad(path, f"must be a string, got {type(value).__name__}")
        if self.choices is not None and value not in self.choices:
            raise _bad(path, f"must be one of {', '.join(self.choices)}; got {value!r:.80}")
        if len(value) > self.max_len:
            raise _bad(path, f"is {len(value)} characters long; the limit is {self.max_len}", code=TOO_LARGE)
        if len(value) < self.min_len:
            raise _bad(path, "may not be empty" if self.min_len == 1 else f"needs at least {self.min_len} characters")
        check_text(path, value)
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            raise _bad(path, f"{value!r:.80} is not valid: {self.pattern_hint or 'must match ' + self.pattern}")
        return value


@dataclasses.dataclass(frozen=True)
class Integer(Spec):
    lo: int = -(2**63)
    hi: int = 2**63 - 1

    def check_value(self, path: str, value: Any) -> int:
        # bool is an int in Python but never a sensible integer field on the wire.
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise _bad(path, f"must be an integer, got {type(value).__name__}")
        value = int(value)
        if not self.lo <= value <= self.hi:
            raise _bad(path, f"must be between {self.lo} and {self.hi}; got {value}")
        return value


@dataclasses.dataclass(frozen=True)
class Number(Spec):
    lo: float = -math.inf
    hi: float = math.inf

    def check_value(self, path: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise _bad(path, f"must be a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise _bad(path, "must be a finite number")
        if not self.lo <= value <= self.hi:
            raise _bad(path, f"must be between {self.lo:g} and {self.hi:g}; got {value:g}")
        return value


@dataclasses.dataclass(frozen=True)
class Flag(Spec):
    def check_value(self, path: str, value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise _bad(path, f"must be true or false, got {type(value).__name__}")
        return bool(value)


@dataclasses.dataclass(frozen=True)
class ListOf(Spec):
    item: Spec = dataclasses.field(default_factory=Text)
    max_items: int = 1024

    def check_value(self, path: str, value: Any) -> list:
        if not isinstance(value, (list, tuple)):
            raise _bad(path, f"must be a list, got {type(value).__name__}")
        if len(value) > self.max_items:
            raise _bad(path, f"has {len(value)} items; the limit is {self.max_items}", code=TOO_LARGE)
        return [self.item.check(f"{path}[{i}]", v) for i, v in enumerate(value)]

    def to_json(self, value: Any) -> Any:
        return None if value is None else [self.item.to_json(v) for v in value]


@dataclasses.dataclass(frozen=True)
class Mapping(Spec):
    """A JSON object of string keys to scalar values (settings, metrics, output paths)."""

    max_items: int = 256
    values: Spec | None = None  # None: any JSON scalar (str, number, bool, null)

    def check_value(self, path: str, value: Any) -> dict:
        if not isinstance(value, dict):
            raise _bad(path, f"must be an object, got {type(value).__name__}")
        if len(value) > self.max_items:
            raise _bad(path, f"has {len(value)} entries; the limit is {self.max_items}", code=TOO_LARGE)
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or len(key) > 128:
                raise _bad(path, "keys must be strings of at most 128 characters")
            check_text(f"{path} key", key)
            if self.values is not None:
                out[key] = self.values.check(f"{path}.{key}", item)
            elif isinstance(item, float) and not math.isfinite(item):
                raise _bad(f"{path}.{key}", "must be a finite number")
            elif isinstance(item, str):
                out[key] = check_text(f"{path}.{key}", item)
            elif item is None or isinstance(item, (int, float, bool)):
                out[key] = item
            else:
                raise _bad(f"{path}.{key}", f"must be a string, number, boolean or null, got {type(item).__name__}")
        return out


@dataclasses.dataclass(frozen=True)
class Struct(Spec):
    """A nested record, itself a dataclass whose fields carry specs (for example `JobInfo`)."""

    cls: type | None = None

    def check_value(self, path: str, value: Any) -> Any:
        if isinstance(value, self.cls):
            value = record_to_json(value)
        if not isinstance(value, dict):
            raise _bad(path, f"must be an object, got {type(value).__name__}")
        return self.cls(**check_record(self.cls, value, path))

    def to_json(self, value: Any) -> Any:
        return None if value is None else record_to_json(value)


@dataclasses.dataclass(frozen=True)
class Array(Spec):
    """An ndarray that travels as a raw trailing frame.

    `shape` is a pattern: ints are fixed sizes, strings name sizes (equal names must agree within one
    message, checked by the message), and a tuple of ints lists the sizes allowed at that axis.
    """

    dtypes: tuple[str, ...] = ("float32",)
    shape: tuple[int | str | tuple[int, ...], ...] = ()
    max_elements: int = 2**28

    def check_value(self, path: str, value: Any) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise _bad(path, f"must be an array, got {type(value).__name__}")
        if value.dtype.name not in self.dtypes:
            raise _bad(path, f"must have dtype {' or '.join(self.dtypes)}; got {value.dtype.name}")
        if value.ndim != len(self.shape):
            raise _bad(path, f"must have {len(self.shape)} axes ({self.shape_text()}); "
                       f"got shape {list(value.shape)}")
        for axis, (size, want) in enumerate(zip(value.shape, self.shape, strict=True)):
            if isinstance(want, int) and size != want:
                raise _bad(path, f"axis {axis} must have size {want} ({self.shape_text()}); "
                           f"got shape {list(value.shape)}")
            if isinstance(want, tuple) and size not in want:
                raise _bad(path, f"axis {axis} must have size {' or '.join(map(str, want))}; "
                           f"got shape {list(value.shape)}")
        if value.size > self.max_elements:
            raise _bad(path, f"has {value.size} elements; the limit is {self.max_elements}", code=TOO_LARGE)
        return value

    def shape_text(self) -> str:
        def axis(w: int | str | tuple[int, ...]) -> str:
            return "|".join(map(str, w)) if isinstance(w, tuple) else str(w)

        return "×".join(axis(w) for w in self.shape)


# Field constructors: `prompt: str = text(max_len=2000, doc="...")` reads as the rule it is.

def _field(spec: Spec, default: Any = _MISSING, factory: Callable[[], Any] | None = None) -> Any:
    meta = {"spec": spec}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def spec_field(spec: Spec, default: Any = _MISSING, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field carrying `spec`, for rules the constructors below do not cover."""
    return _field(spec, default, factory)


def text(default: Any = _MISSING, **kw: Any) -> Any:
    return _field(Text(**kw), default)


def choice(choices: Sequence[str], default: Any = _MISSING, **kw: Any) -> Any:
    return _field(Text(choices=tuple(choices), **kw), default)


def integer(default: Any = _MISSING, **kw: Any) -> Any:
    return _field(Integer(**kw), default)


def number(default: Any = _MISSING, **kw: Any) -> Any:
    return _field(Number(**kw), default)


def flag(default: Any = _MISSING, **kw: Any) -> Any:
    return _field(Flag(**kw), default)


def list_of(item: Spec, **kw: Any) -> Any:
    return _field(ListOf(item=item, **kw), factory=list)


def mapping(**kw: Any) -> Any:
    return _field(Mapping(**kw), factory=dict)


def struct_list(cls: type, **kw: Any) -> Any:
    return _field(ListOf(item=Struct(cls=cls), **kw), factory=list)


def array(default: Any = _MISSING, **kw: Any) -> Any:
    return _field(Array(**kw), default)


def spec_of(f: dataclasses.Field) -> Spec | None:
    return f.metadata.get("spec")


def spec_fields(cls: type) -> list[tuple[dataclasses.Field, Spec]]:
    return [(f, s) for f in dataclasses.fields(cls) if (s := spec_of(f)) is not None]


def check_record(cls: type, data: dict, path: str) -> dict:
    """Check a JSON object against the specs of `cls`'s fields; unknown keys are ignored."""
    out = {}
    for f, spec in spec_fields(cls):
        if f.name in data:
            out[f.name] = spec.check(f"{path}.{f.name}", data[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _bad(f"{path}.{f.name}", "is required")
    return out


def record_to_json(record: Any) -> dict:
    return {f.name: spec.to_json(getattr(record, f.name)) for f, spec in spec_fields(type(record))}
