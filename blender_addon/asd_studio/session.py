"""The add-on's conversation with a backend, without bpy: jobs, progress, what to put in the scene.

`Session.poll()` turns protocol messages into `Update`s that connection.py applies to Blender data
on the main thread. Keeping this bpy-free lets plain pytest cover the logic against a real server.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from . import protocol
from .mesh_data import MeshBuffers, image_pixels, mesh_buffers


@dataclasses.dataclass
class JobView:
    job_id: str
    prompt: str = ""
    kind: str = "generate"
    status: str = "queued"
    phase: str = ""
    step: int = 0
    total: int = 0
    eta_seconds: float | None = None
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)  # the resolved job spec, from `accepted`
    error: str = ""
    snapshots: int = 0
    request_id: str = ""  # msg_id of the submit that made it (when submitted through this session)
    cancelling: bool = False  # Cancel was pressed; true until the job ends
    waiting: str = ""  # a queued job: why the backend has no worker for it yet (its words)

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "cancelled", "failed")


@dataclasses.dataclass
class MeshUpdate:
    job: JobView
    buffers: MeshBuffers
    final: bool
    snapshot: int


@dataclasses.dataclass
class ImageUpdate:
    job: JobView
    pixels: Any  # flat RGBA float32, bottom-up rows
    width: int
    height: int
    final: bool
    role: str


@dataclasses.dataclass
class JobUpdate:
    job: JobView


@dataclasses.dataclass
class Notice:
    level: str  # INFO, WARNING or ERROR (Blender report types)
    text: str
    job_id: str | None = None


Update = MeshUpdate | ImageUpdate | JobUpdate | Notice


def check_address(address: str, online_access: bool) -> str | None:
    """Why this address cannot be used, or None."""
    if not address.startswith("tcp://") or ":" not in address[6:]:
        return f"backend address {address!r} must look like tcp://HOST:PORT (for example tcp://127.0.0.1:5555)"
    if not online_access and not protocol.is_loopback(address):
        return ("Blender's online access is off, so only a backend on this machine can be reached: enable "
                "Preferences ▸ System ▸ Network ▸ Allow Online Access, or use a local backend")
    return None


class Session:
    """One connection to one backend, and the jobs seen through it."""

    def __init__(self, address: str, *, online_access: bool = True, client_name: str = "asd-studio-blender",
                 server_public_key: str | None = None, client_public_key: str | None = None,
                 client_secret_key: str | None = None, dead_after: float = 10.0) -> None:
        problem = check_address(address, online_access)
        if problem:
            raise ValueError(problem)
        self.address = address
        self.client = protocol.AsdClient(address, client_name=client_name, server_public_key=server_public_key or None,
                                         client_public_key=client_public_key or None,
                                         client_secret_key=client_secret_key or None, dead_after=dead_after)
        self.jobs: dict[str, JobView] = {}
        self.requests: dict[str, JobView] = {}  # submit msg_id -> the job it will become
        self.status = f"connecting to {address}…"
        self.started = time.monotonic()

    @property
    def connected(self) -> bool:
        return self.client.state == "connected"

    @property
    def welcome(self):
        return self.client.welcome

    # -- requests ---------------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any], **arrays: Any) -> str:
        """Send a job (a partial job spec, the protocol's one request form; an edit's arrays beside it)."""
        request = self.client.submit(spec, **arrays)
        self.requests[request] = JobView(job_id="", prompt=spec["prompt"], kind=spec.get("kind", "generate"))
        return request

    def cancel(self, job_id: str) -> None:
        self.client.cancel(job_id)
        job = self.jobs.get(job_id)
        if job is not None and not job.finished:
            job.cancelling = True

    def attach(self, job_id: str) -> None:
        self.jobs.setdefault(job_id, JobView(job_id=job_id))
        self.client.attach(job_id)

    def resume(self, job_id: str) -> str:
        """Continue a job from its checkpoint; its `accepted` answers this request like a submit's."""
        job = self._job(job_id)
        job.error, job.cancelling = "", False
        request = self.client.resume(job_id)
        self.requests[request] = job
        return request

    def list_jobs(self) -> None:
        self.client.list_jobs()

    def close(self) -> None:
        self.client.close()

    # -- what arrived -----------------------------------------------------------------------------

    def poll(self) -> list[Update]:
        was = self.client.state
        updates: list[Update] = []
        for msg in self.client.poll():
            updates.extend(self._handle(msg))
        state = self.client.state
        if state != was or (state == "connecting" and time.monotonic() - self.started > self.client.dead_after):
            if state == "connected":
                self.status = self._connected_text()
            elif state == "lost":
                self.status = self.client.lost_reason()
                updates.append(Notice("ERROR", self.status))
        return updates

    def _connected_text(self) -> str:
        w = self.client.welcome
        teachers = ", ".join(t.name + ("" if t.trained else " (untrained)") for t in w.teachers)
        return f"connected to {w.server} at {self.address}; teachers: {teachers}"

    def _job(self, job_id: str) -> JobView:
        return self.jobs.setdefault(job_id, JobView(job_id=job_id))

    def _handle(self, msg) -> list[Update]:
        if isinstance(msg, protocol.Welcome):
            self.status = self._connected_text()
            # A (re)started server knows better what became of our jobs (a killed one is `interrupted`,
            # resumable): ask, instead of showing the rows as they were.
            try:
                self.client.list_jobs()
            except (ConnectionError, ValueError):
                pass  # it stopped answering again: the next welcome asks
            return []
        if isinstance(msg, protocol.Accepted):
            job = self.requests.pop(msg.parent_id or "", None) or JobView(job_id=msg.job_id)
            job.job_id, job.request_id = msg.job_id, msg.parent_id or ""
            job.spec = dict(msg.spec)
            job.status = "running" if msg.queue_position == 0 else "queued"
            self.jobs[msg.job_id] = job
            return [JobUpdate(job)]
        if isinstance(msg, protocol.Jobs):
            updates = []
            for info in msg.jobs:
                job = self._job(info.job_id)
                job.prompt, job.kind, job.status = info.prompt, info.kind, info.status
                job.step, job.total, job.error, job.snapshots = info.step, info.total, info.error, info.snapshots
                job.waiting = info.waiting
                updates.append(JobUpdate(job))
            return updates
        if msg.job_id is None:
            if isinstance(msg, protocol.Error):
                return [Notice("ERROR", msg.text)]
            return []
        job = self._job(msg.job_id)
        if isinstance(msg, protocol.Progress):
            job.phase, job.step, job.total, job.eta_seconds = msg.phase, msg.step, msg.total, msg.eta_seconds
            if not job.finished:
                job.status = "running"
            return [JobUpdate(job)]
        if isinstance(msg, protocol.MeshSnapshot):
            job.snapshots = max(job.snapshots, msg.snapshot)
            buffers = mesh_buffers(msg.vertices, msg.faces, msg.colors)
            return [MeshUpdate(job, buffers, msg.final, msg.snapshot)]
        if isinstance(msg, (protocol.Image, protocol.Texture)):
            h, w = msg.pixels.shape[:2]
            return [ImageUpdate(job, image_pixels(msg.pixels), w, h, msg.final, getattr(msg, "role", "texture"))]
        if isinstance(msg, protocol.Log):
            notice = Notice("WARNING" if msg.level in ("warning", "error") else "INFO", msg.text, job.job_id)
            if job.status == "queued":  # while it waits, what the backend says is why: the row shows it
                job.waiting = msg.text
                return [notice, JobUpdate(job)]
            return [notice]
        if isinstance(msg, protocol.Error):
            job.error = msg.text
            return [Notice("ERROR", job.error, job.job_id)]
        if isinstance(msg, protocol.Done):
            job.status, job.cancelling = msg.status, False
            if msg.status == "completed":
                job.step = job.total or job.step
            return [JobUpdate(job)]
        return []


PHASE_TEXT = {"starting": "starting", "loading": "loading the model", "rasterizing": "preparing the texture",
              "extracting": "extracting the mesh"}


def duration_text(seconds: float) -> str:
    """1:02:03 for an hour and more, 2:03 for minutes, 45s below a minute."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}" if minutes else f"{secs}s"


def progress_text(job: JobView) -> str:
    """The one line the progress bar shows: the current phase, counters only while they mean something."""
    if job.status == "completed":
        return "done"
    if job.status == "cancelled":
        return "cancelled"
    if job.status == "failed":
        return "failed"
    if job.cancelling:
        return "cancelling…"
    if job.status == "queued":
        return job.waiting or "queued on the backend"
    if job.phase == "optimizing" and job.total:
        eta = f", {duration_text(job.eta_seconds)} left" if job.eta_seconds is not None else ""
        return f"optimizing {job.step}/{job.total}{eta}"
    return PHASE_TEXT.get(job.phase, job.phase or "running") + "…"


def batch_text(jobs: list[JobView], submitted: int) -> str:
    """The progress line for several jobs followed together: '3 objects: 1 done, 1 running 4/12, 1 queued'."""
    order = ("completed", "running", "queued", "cancelled", "failed")
    words = {"completed": "done"}
    counts = {s: [j for j in jobs if j.status == s] for s in order}
    parts = []
    for status in order:
        if counts[status]:
            part = f"{len(counts[status])} {words.get(status, status)}"
            if status == "running" and len(counts[status]) == 1 and counts[status][0].total:
                part += f" {counts[status][0].step}/{counts[status][0].total}"
            parts.append(part)
    if submitted > len(jobs):
        parts.append(f"{submitted - len(jobs)} sent")
    return f"{submitted} objects: " + ", ".join(parts)


def status_text(job: JobView) -> tuple[str, bool]:
    """(the panel's status line for this job, whether it is an error)."""
    if job.status == "failed":
        return f"failed: {job.error or 'see the backend log'}", True
    return progress_text(job), False

