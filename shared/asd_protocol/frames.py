"""Multipart encoding: `[header JSON, content JSON, *array buffers]`, never pickle.

Arrays leave as zero-copy views of their memory and arrive as read-only numpy views of the received
frames; content describes each one as `{"dtype", "shape", "buffer"}`. `decode` accepts any list of
frames and either returns a valid message or raises ProtocolError: nothing else, whatever arrives.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import (
    BAD_FRAMES,
    BAD_HEADER,
    TOO_LARGE,
    UNKNOWN_MSG_TYPE,
    VERSION_MISMATCH,
    WRONG_DIRECTION,
    ProtocolError,
)
from .fields import WIRE_DTYPES, Array, spec_fields
from .messages import BOTH, MESSAGE_TYPES, PROTOCOL_MAJOR, PROTOCOL_VERSION, Header, Message

PROTOCOL_NAME = "asd"


@dataclasses.dataclass(frozen=True)
class FrameLimits:
    """Sizes a receiver accepts before it even parses a message."""

    max_header_bytes: int = 64 * 1024
    max_content_bytes: int = 4 * 1024 * 1024
    max_message_bytes: int = 512 * 1024 * 1024
    max_buffers: int = 16


DEFAULT_LIMITS = FrameLimits()


def encode(msg: Message) -> list[Any]:
    """Validate `msg` and return its frames; arrays are sent from their own memory (no copy)."""
    msg.validate()
    content, arrays = msg.content_json()
    header = {
        "protocol": PROTOCOL_NAME,
        "version": PROTOCOL_VERSION,
        "msg_type": msg.msg_type,
        "msg_id": msg.msg_id,
        "job_id": msg.job_id,
        "parent_id": msg.parent_id,
        "timestamp": msg.timestamp,
    }
    frames: list[Any] = [_dump(header), _dump(content)]
    for arr in arrays:
        wire = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        frames.append(wire.reshape(-1).view(np.uint8))
    return frames


def decode(frames: Sequence[Any], *, limits: FrameLimits = DEFAULT_LIMITS, expect_sender: str | None = None,
           types: Mapping[str, type[Message]] = MESSAGE_TYPES) -> Message:
    """Parse and validate frames into a message, or raise ProtocolError naming what is wrong.

    `frames` are bytes or buffer-protocol objects (zmq.Frame). `expect_sender` ("client" or
    "server") refuses message types that only the other side may send. `types` are the message
    types understood (the backend adds its internal front-end ⇄ worker commands).
    """
    if len(frames) < 2:
        raise ProtocolError(BAD_FRAMES, f"a message has at least 2 frames (header, content); got {len(frames)}",
                            hint="send [header JSON, content JSON, *buffers] as one multipart message")
    views = [_view(f, i) for i, f in enumerate(frames)]
    total = sum(v.nbytes for v in views)
    if total > limits.max_message_bytes:
        raise ProtocolError(TOO_LARGE, f"message is {total} bytes; the limit is {limits.max_message_bytes}",
                            hint="send a smaller mesh or texture")
    if len(views) - 2 > limits.max_buffers:
        raise ProtocolError(BAD_FRAMES, f"{len(views) - 2} buffers; at most {limits.max_buffers} are accepted")

    header = _load(views[0], limits.max_header_bytes, "header")
    cls = _message_class(header, types)
    if expect_sender is not None and cls.sender not in (expect_sender, BOTH):
        raise ProtocolError(WRONG_DIRECTION, f"a {cls.msg_type!r} message is sent by the {cls.sender}, not the "
                            f"{expect_sender}", field="header.msg_type")
    header_values = Header.check(header)
    content = _load(views[1], limits.max_content_bytes, "content")
    content = _attach_arrays(cls, content, views[2:])
    return cls.from_content(header_values, content)


def _message_class(header: dict, types: Mapping[str, type[Message]]) -> type[Message]:
    if header.get("protocol", PROTOCOL_NAME) != PROTOCOL_NAME:
        raise ProtocolError(BAD_HEADER, f"not an {PROTOCOL_NAME} protocol message", field="header.protocol")
    version = header.get("version")
    if not isinstance(version, str):
        raise ProtocolError(BAD_HEADER, "must be a string such as '1.0'", field="header.version")
    major, _, _ = version.partition(".")
    if major != str(PROTOCOL_MAJOR):
        raise ProtocolError(VERSION_MISMATCH, f"protocol {version!r:.20} is not compatible with {PROTOCOL_VERSION}",
                            field="header.version",
                            hint="update the add-on or the backend so both speak the same major version")
    msg_type = header.get("msg_type")
    if not isinstance(msg_type, str):
        raise ProtocolError(BAD_HEADER, "must be a string", field="header.msg_type")
    cls = types.get(msg_type)
    if cls is None:
        raise ProtocolError(UNKNOWN_MSG_TYPE, f"unknown message type {msg_type!r:.64}", field="header.msg_type",
                            hint=f"known types: {', '.join(sorted(types))}")
    return cls


def _attach_arrays(cls: type[Message], content: dict, buffers: list[memoryview]) -> dict:
    used: set[int] = set()
    for f, spec in spec_fields(cls):
        if not isinstance(spec, Array) or content.get(f.name) is None:
            continue
        path = f"content.{f.name}"
        desc = content[f.name]
        if not isinstance(desc, dict):
            raise ProtocolError(BAD_FRAMES, "must be an array descriptor {dtype, shape, buffer}", field=path)
        dtype = WIRE_DTYPES.get(desc.get("dtype")) if isinstance(desc.get("dtype"), str) else None
        if dtype is None:
            raise ProtocolError(BAD_FRAMES, f"dtype must be one of {', '.join(WIRE_DTYPES)}", field=f"{path}.dtype")
        shape = desc.get("shape")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**40 for s in shape)):
            raise ProtocolError(BAD_FRAMES, "must be a list of at most 8 non-negative integers", field=f"{path}.shape")
        index = desc.get("buffer")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(buffers):
            raise ProtocolError(BAD_FRAMES, f"must index one of the {len(buffers)} buffers", field=f"{path}.buffer")
        if index in used:
            raise ProtocolError(BAD_FRAMES, f"buffer {index} is used twice", field=f"{path}.buffer")
        used.add(index)
        expected = math.prod(shape) * dtype.itemsize
        buf = buffers[index]
        if buf.nbytes != expected:
            raise ProtocolError(BAD_FRAMES, f"buffer {index} has {buf.nbytes} bytes; {desc['dtype']} {shape} needs "
                                f"{expected}", field=f"buffers[{index}]")
        arr = np.frombuffer(buf, dtype=dtype) if expected else np.empty(0, dtype=dtype)
        content[f.name] = arr.reshape(shape).view(dtype.newbyteorder("="))
    if len(used) != len(buffers):
        unused = sorted(set(range(len(buffers))) - used)
        raise ProtocolError(BAD_FRAMES, f"buffers {unused} are not described by any content field",
                            field=f"buffers[{unused[0]}]")
    return content


def _view(frame: Any, index: int) -> memoryview:
    try:
        view = memoryview(getattr(frame, "buffer", frame))
    except TypeError as exc:
        raise ProtocolError(BAD_FRAMES, f"frame {index} is not a byte buffer") from exc
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load(view: memoryview, limit: int, what: str) -> dict:
    if view.nbytes > limit:
        raise ProtocolError(TOO_LARGE, f"{what} is {view.nbytes} bytes; the limit is {limit}", field=what)
    try:
        value = json.loads(view.tobytes().decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(BAD_FRAMES, f"is not valid UTF-8 JSON ({str(exc)[:120]})", field=what) from exc
    if not isinstance(value, dict):
        raise ProtocolError(BAD_FRAMES, f"must be a JSON object, got {type(value).__name__}", field=what)
    return value


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
