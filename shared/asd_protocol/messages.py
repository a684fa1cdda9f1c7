"""Protocol message types (version PROTOCOL_VERSION below): typed records, their rules, and who may send them.

A message is a header (version, ids, type, time) and a content whose fields are listed here; array
fields travel as raw trailing frames (see `frames.py`). Both sides call `validate()`: the sender so it
never puts a bad message on the wire, the receiver on everything it decodes. docs/protocol.md is the
prose specification of this file.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

import numpy as np

from .errors import INVALID_FIELD, ProtocolError, error_text
from .fields import (
    Array,
    Integer,
    Number,
    Text,
    array,
    check_record,
    choice,
    flag,
    integer,
    list_of,
    mapping,
    number,
    shown,
    spec_field,
    spec_fields,
    struct_list,
    text,
)
from .job_spec import JOB_KINDS, MAX_PROMPT_CHARS, PartialJobSpec

PROTOCOL_VERSION = "2.5"
PROTOCOL_MAJOR = 2

# Ids become folder names on the server: keep them to a safe alphabet.
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_ID_HINT = "use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"

MAX_MESH_VERTICES = 8_000_000
MAX_MESH_FACES = 16_000_000
MAX_IMAGE_SIDE = 4096

JOB_STATES = ("queued", "running", "completed", "cancelled", "failed", "interrupted")
DONE_STATES = ("completed", "cancelled", "failed")
RESUMABLE_STATES = ("failed", "cancelled", "interrupted")  # a generate job in these continues from its checkpoint
LOG_LEVELS = ("debug", "info", "warning", "error")
# A job's phases, in order (`progress.phase`): edit jobs rasterize, generate jobs extract at the end.
PHASES = ("starting", "loading", "rasterizing", "optimizing", "extracting")

CLIENT = "client"
SERVER = "server"
BOTH = "both"


def new_id() -> str:
    return uuid.uuid4().hex


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclasses.dataclass(kw_only=True)
class Message:
    """Base of every message: the header fields. Subclasses add content fields."""

    msg_type: ClassVar[str] = ""
    sender: ClassVar[str] = BOTH
    needs_job: ClassVar[bool] = False

    msg_id: str = dataclasses.field(default_factory=new_id)
    job_id: str | None = None
    parent_id: str | None = None
    timestamp: str = dataclasses.field(default_factory=now_iso)

    # -- validation -------------------------------------------------------------------------

    def validate(self) -> Message:
        """Check every field in place (converting numpy scalars to Python); return self."""
        header = Header.check({"msg_id": self.msg_id, "job_id": self.job_id, "parent_id": self.parent_id,
                               "timestamp": self.timestamp})
        if self.needs_job and header["job_id"] is None:
            raise ProtocolError(INVALID_FIELD, f"a {self.msg_type} message must name a job",
                                field="header.job_id", hint="set job_id to the id from the `accepted` reply")
        for f, spec in spec_fields(type(self)):
            setattr(self, f.name, spec.check(f"content.{f.name}", getattr(self, f.name)))
        self.check()
        return self

    def check(self) -> None:
        """Rules across fields; subclasses override. Raise ProtocolError naming the field."""

    # -- content <-> JSON -------------------------------------------------------------------

    def content_json(self) -> tuple[dict, list[np.ndarray]]:
        """Content as JSON-ready dict, arrays replaced by `{dtype, shape, buffer}` descriptors."""
        content: dict[str, Any] = {}
        buffers: list[np.ndarray] = []
        for f, spec in spec_fields(type(self)):
            value = getattr(self, f.name)
            if isinstance(spec, Array) and value is not None:
                content[f.name] = {"dtype": value.dtype.name, "shape": list(value.shape), "buffer": len(buffers)}
                buffers.append(value)
            else:
                content[f.name] = spec.to_json(value)
        return content, buffers

    @classmethod
    def from_content(cls, header: dict, content: dict) -> Message:
        values = check_record(cls, content, "content")
        msg = cls(**values, **header)
        msg.check()
        if cls.needs_job and msg.job_id is None:
            raise ProtocolError(INVALID_FIELD, f"a {cls.msg_type} message must name a job", field="header.job_id")
        return msg

    def reply(self, cls: type[Message], **content: Any) -> Message:
        """A message answering this one: same job, parent set to this message's id."""
        content.setdefault("job_id", self.job_id)
        return cls(parent_id=self.msg_id, **content)


class Header:
    """The header's rules (the header is not a dataclass of its own: its fields live on Message)."""

    msg_id = Text(max_len=64, pattern=ID_PATTERN, pattern_hint=_ID_HINT)
    job_id = Text(optional=True, max_len=64, pattern=ID_PATTERN, pattern_hint=_ID_HINT)
    parent_id = Text(optional=True, max_len=64, pattern=ID_PATTERN, pattern_hint=_ID_HINT)
    timestamp = Text(max_len=40)

    @classmethod
    def check(cls, header: dict) -> dict:
        return {name: getattr(cls, name).check(f"header.{name}", header.get(name))
                for name in ("msg_id", "job_id", "parent_id", "timestamp")}


# ---------------------------------------------------------------------------------------------
# Nested records


@dataclasses.dataclass
class TeacherInfo:
    name: str = text(max_len=128)
    description: str = text("", max_len=512)
    trained: bool = flag(True, doc="False for random-weight teachers: their outputs are noise")


@dataclasses.dataclass
class JobInfo:
    job_id: str = text(max_len=64, pattern=ID_PATTERN, pattern_hint=_ID_HINT)
    kind: str = choice(JOB_KINDS)
    prompt: str = text(max_len=MAX_PROMPT_CHARS)
    status: str = choice(JOB_STATES)
    created: str = text(max_len=40)
    updated: str = text(max_len=40)
    step: int = integer(0, lo=0)
    total: int = integer(0, lo=0)
    queue_position: int | None = integer(None, optional=True, lo=0)
    method: str = text("", max_len=16)
    snapshots: int = integer(0, lo=0)
    error: str = text("", max_len=2000)
    waiting: str = text("", max_len=500)  # a queued job: why it has no worker yet ("" when it is not waiting)


# ---------------------------------------------------------------------------------------------
# Session


@dataclasses.dataclass(kw_only=True)
class Hello(Message):
    """Client → server, first message: who is speaking and which protocol version."""

    msg_type: ClassVar[str] = "hello"
    sender: ClassVar[str] = CLIENT
    client: str = text(max_len=128, doc="client name and version, e.g. 'asd-studio-blender/0.1.0'")
    protocol_version: str = text(PROTOCOL_VERSION, max_len=16)


@dataclasses.dataclass(kw_only=True)
class Welcome(Message):
    """Server → client, answer to hello: what this server can do."""

    msg_type: ClassVar[str] = "welcome"
    sender: ClassVar[str] = SERVER
    server: str = text(max_len=128)
    server_id: str = text(max_len=64, doc="changes at every server start, so clients notice a restart")
    protocol_version: str = text(PROTOCOL_VERSION, max_len=16)
    capabilities: list[str] = list_of(Text(max_len=32), max_items=64)
    teachers: list[TeacherInfo] = struct_list(TeacherInfo, max_items=64)
    default_teacher: str = text("", max_len=128)
    methods: list[str] = list_of(Text(max_len=16), max_items=16)
    presets: list[str] = list_of(Text(max_len=32), max_items=32)
    limits: dict = mapping(values=Integer(lo=0))
    heartbeat_interval: float = number(2.0, lo=0.1, hi=60.0)


@dataclasses.dataclass(kw_only=True)
class Heartbeat(Message):
    """Either way, every `heartbeat_interval` seconds: silence for 10 s means the peer is gone."""

    msg_type: ClassVar[str] = "heartbeat"
    sender: ClassVar[str] = BOTH


# ---------------------------------------------------------------------------------------------
# Jobs: requests


@dataclasses.dataclass(kw_only=True)
class Submit(Message):
    """Client → server: start a job. The server answers `accepted` (with the resolved spec) or `error`."""

    msg_type: ClassVar[str] = "submit"
    sender: ClassVar[str] = CLIENT
    spec: dict = spec_field(PartialJobSpec(doc="the job: a partial job spec (job_spec.py); unset fields take "
                                           "the preset's value or the default"), factory=dict)
    # edit_texture only: fixed geometry (world space, metres, Z up), corner UVs and the texture.
    vertices: np.ndarray | None = array(None, optional=True, dtypes=("float32",), shape=("N", 3),
                                        max_elements=3 * MAX_MESH_VERTICES)
    faces: np.ndarray | None = array(None, optional=True, dtypes=("uint32",), shape=("M", 3),
                                     max_elements=3 * MAX_MESH_FACES)
    uvs: np.ndarray | None = array(None, optional=True, dtypes=("float32",), shape=("M", 3, 2),
                                   max_elements=6 * MAX_MESH_FACES)
    texture: np.ndarray | None = array(None, optional=True, dtypes=("uint8",), shape=("H", "W", (3, 4)),
                                       max_elements=MAX_IMAGE_SIDE * MAX_IMAGE_SIDE * 4)

    @property
    def kind(self) -> str:
        return self.spec.get("kind", "generate")

    @property
    def prompt(self) -> str:
        return self.spec.get("prompt", "")

    def check(self) -> None:
        if not str(self.spec.get("prompt", "")).strip():
            raise ProtocolError(INVALID_FIELD, "is required and may not be empty", field="content.spec.prompt",
                                hint="describe what to make, e.g. 'a ceramic teapot'")
        geometry = {"vertices": self.vertices, "faces": self.faces, "uvs": self.uvs, "texture": self.texture}
        if self.kind != "edit_texture":
            for name, value in geometry.items():
                if value is not None:
                    raise ProtocolError(INVALID_FIELD, f"is only used by kind 'edit_texture', not {self.kind!r}",
                                        field=f"content.{name}", hint="leave it out")
            return
        for name, value in geometry.items():
            if value is None:
                raise ProtocolError(INVALID_FIELD, "is required for kind 'edit_texture'", field=f"content.{name}")
        if not len(self.faces):
            raise ProtocolError(INVALID_FIELD, "has no faces: there is nothing to texture",
                                field="content.faces", hint="select a mesh object with faces")
        _check_faces(self.faces, len(self.vertices), "content.faces")
        if len(self.uvs) != len(self.faces):
            raise ProtocolError(INVALID_FIELD, f"must have one row per face ({len(self.faces)}); got {len(self.uvs)}",
                                field="content.uvs")
        if not np.isfinite(self.vertices).all():
            raise ProtocolError(INVALID_FIELD, "contains NaN or infinite coordinates", field="content.vertices")
        if not np.isfinite(self.uvs).all():
            raise ProtocolError(INVALID_FIELD, "contains NaN or infinite values", field="content.uvs")
        h, w = self.texture.shape[:2]
        if max(h, w) > MAX_IMAGE_SIDE or min(h, w) < 8:
            raise ProtocolError(INVALID_FIELD, f"must be between 8 and {MAX_IMAGE_SIDE} pixels a side; got {w}×{h}",
                                field="content.texture")


@dataclasses.dataclass(kw_only=True)
class Cancel(Message):
    """Client → server: stop a queued or running job. The job ends with `done` (status cancelled)."""

    msg_type: ClassVar[str] = "cancel"
    sender: ClassVar[str] = CLIENT
    needs_job: ClassVar[bool] = True


@dataclasses.dataclass(kw_only=True)
class Attach(Message):
    """Client → server: follow one of the user's jobs (any job, for an admin): state, newest mesh, then live."""

    msg_type: ClassVar[str] = "attach"
    sender: ClassVar[str] = CLIENT
    needs_job: ClassVar[bool] = True


@dataclasses.dataclass(kw_only=True)
class Resume(Message):
    """Client → server: queue a failed, cancelled or interrupted generate job again, to continue from its
    last checkpoint with the same spec. Answered by `accepted` (then it streams like a new job) or `error`."""

    msg_type: ClassVar[str] = "resume"
    sender: ClassVar[str] = CLIENT
    needs_job: ClassVar[bool] = True


@dataclasses.dataclass(kw_only=True)
class ListJobs(Message):
    msg_type: ClassVar[str] = "list_jobs"
    sender: ClassVar[str] = CLIENT
    limit: int = integer(100, lo=1, hi=10_000)


# ---------------------------------------------------------------------------------------------
# Jobs: replies and streams


@dataclasses.dataclass(kw_only=True)
class Accepted(Message):
    msg_type: ClassVar[str] = "accepted"
    sender: ClassVar[str] = SERVER
    needs_job: ClassVar[bool] = True
    kind: str = choice(JOB_KINDS)
    queue_position: int = integer(0, lo=0, doc="0: running now; n: n jobs ahead")
    spec: dict = spec_field(PartialJobSpec(doc="the resolved job spec: exactly what will run"), factory=dict)


@dataclasses.dataclass(kw_only=True)
class Jobs(Message):
    msg_type: ClassVar[str] = "jobs"
    sender: ClassVar[str] = SERVER
    jobs: list[JobInfo] = struct_list(JobInfo, max_items=10_000)


@dataclasses.dataclass(kw_only=True)
class Progress(Message):
    msg_type: ClassVar[str] = "progress"
    sender: ClassVar[str] = SERVER
    needs_job: ClassVar[bool] = True
    phase: str = choice(PHASES, doc="what the job is doing: " + ", ".join(PHASES))
    step: int = integer(0, lo=0)
    total: int = integer(0, lo=0)
    loss: float | None = number(None, optional=True)
    losses: dict = mapping(values=Number())
    eta_seconds: float | None = number(None, optional=True, lo=0.0)
    elapsed_seconds: float = number(0.0, lo=0.0)
    message: str = text("", max_len=1000)


@dataclasses.dataclass(kw_only=True)
class MeshSnapshot(Message):
    """A mesh in metres with Z up (Blender's frame), vertex colours in sRGB."""

    msg_type: ClassVar[str] = "mesh"
    sender: ClassVar[str] = SERVER
    needs_job: ClassVar[bool] = True
    vertices: np.ndarray = array(dtypes=("float32",), shape=("N", 3), max_elements=3 * MAX_MESH_VERTICES)
    faces: np.ndarray = array(dtypes=("uint32",), shape=("M", 3), max_elements=3 * MAX_MESH_FACES)
    colors: np.ndarray | None = array(None, optional=True, dtypes=("uint8",), shape=("N", (3, 4)),
                                      max_elements=4 * MAX_MESH_VERTICES)
    snapshot: int = integer(0, lo=0)
    step: int = integer(0, lo=0)
    final: bool = flag(False)

    def check(self) -> None:
        _check_faces(self.faces, len(self.vertices), "content.faces")
        if self.colors is not None and len(self.colors) != len(self.vertices):
            raise ProtocolError(INVALID_FIELD, f"must have one row per vertex ({len(self.vertices)}); "
                                f"got {len(self.colors)}", field="content.colors")


@dataclasses.dataclass(kw_only=True)
class Image(Message):
    """A picture: a preview render of a 3D job, a frame or the result of a 2D job (sRGB, rows top-down)."""

    msg_type: ClassVar[str] = "image"
    sender: ClassVar[str] = SERVER
    needs_job: ClassVar[bool] = True
    pixels: np.ndarray = array(dtypes=("uint8",), shape=("H", "W", (3, 4)),
                               max_elements=MAX_IMAGE_SIDE * MAX_IMAGE_SIDE * 4)
    role: str = choice(("preview", "result"), "preview")
    step: int = integer(0, lo=0)
    final: bool = flag(False)


@dataclasses.dataclass(kw_only=True)
class Texture(Message):
    """An edited texture for an `edit_texture` job (sRGB, rows top-down as in an image file)."""

    msg_type: ClassVar[str] = "texture"
    sender: ClassVar[str] = SERVER
    needs_job: ClassVar[bool] = True
    pixels: np.ndarray = array(dtypes=("uint8",), shape=("H", "W", (3, 4)),
                               max_elements=MAX_IMAGE_SIDE * MAX_IMAGE_SIDE * 4)
    step: int = integer(0, lo=0)
    final: bool = flag(False)


@dataclasses.dataclass(kw_only=True)
class Log(Message):
    msg_type: ClassVar[str] = "log"
    sender: ClassVar[str] = SERVER
    level: str = choice(LOG_LEVELS, "info")
    text: str = text(max_len=4000)


@dataclasses.dataclass(kw_only=True)
class Error(Message):
    """A request that could not be served, or a job that failed (then `done` follows)."""

    msg_type: ClassVar[str] = "error"
    sender: ClassVar[str] = SERVER
    code: str = text(max_len=64)
    message: str = text(max_len=4000)
    hint: str = text("", max_len=4000)
    field: str | None = text(None, optional=True, max_len=256)

    @property
    def text(self) -> str:
        """The error as a person reads it (`error_text`): the same words whoever shows it."""
        return error_text(self.message, self.hint, self.field)

    @classmethod
    def from_exception(cls, exc: ProtocolError, **header: Any) -> Error:
        # An error may quote what a client sent; escaped, so the reply always encodes.
        return cls(code=exc.code, message=shown(exc.message)[:4000], hint=shown(exc.hint)[:4000],
                   field=None if exc.field is None else shown(exc.field)[:256], **header)


@dataclasses.dataclass(kw_only=True)
class Done(Message):
    msg_type: ClassVar[str] = "done"
    sender: ClassVar[str] = SERVER
    needs_job: ClassVar[bool] = True
    status: str = choice(DONE_STATES)
    seconds: float = number(0.0, lo=0.0)
    outputs: dict = mapping(values=Text(max_len=4096), doc="output name -> path on the server")
    summary: dict = mapping()


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.msg_type: cls
    for cls in (Hello, Welcome, Heartbeat, Submit, Cancel, Attach, Resume, ListJobs, Accepted, Jobs, Progress,
                MeshSnapshot, Image, Texture, Log, Error, Done)
}


def _check_faces(faces: np.ndarray, n_vertices: int, path: str) -> None:
    if len(faces) and int(faces.max()) >= n_vertices:
        raise ProtocolError(INVALID_FIELD, f"index {int(faces.max())} is out of range for {n_vertices} vertices",
                            field=path)

