"""Follow one job on a server through AsdClient and write what streams in to disk (CLI and demo).

Mesh snapshots are written as they arrive (`mesh_NNN.glb`), the final mesh under the name asked
for, preview renders as PNG; progress goes to a callback (a progress bar in the CLI).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asd_protocol import Accepted, Done, Error, Image, Log, MeshSnapshot, Message, Progress, Welcome
from asd_protocol.client import AsdClient

from .artifacts import write_png
from .errors import AsdError, UsageError
from .mesh.export import write_mesh
from .mesh.extract import Mesh


class RemoteJobError(AsdError):
    """The server refused or failed the job; the message carries its code, message and hint."""


@dataclasses.dataclass
class RemoteResult:
    job_id: str
    status: str
    mesh_path: Path | None
    preview_path: Path | None
    snapshots: list[Path]
    messages: list[str]  # server logs (warnings such as the untrained-teacher notice)
    seconds: float


def wait_for_welcome(client: AsdClient, timeout: float = 15.0) -> Welcome:
    msg = client.wait_for(lambda m: isinstance(m, (Welcome, Error)), timeout=timeout)
    if isinstance(msg, Error):
        raise RemoteJobError(msg.text)
    return msg


def follow(client: AsdClient, *, submit: dict[str, Any] | None = None, attach: str | None = None,
           resume: str | None = None,
           out_dir: Path | Callable[[str], Path], final_name: str = "mesh.glb", keep_snapshots: bool = True,
           on_progress: Callable[[Progress], None] | None = None,
           on_message: Callable[[Message], None] | None = None, timeout: float = 24 * 3600) -> RemoteResult:
    """Submit a job (or attach to one, or resume one) and stream it to `out_dir` (or `out_dir(job_id)`)
    until it is done."""
    started = time.monotonic()
    if sum(x is not None for x in (submit, attach, resume)) != 1:
        raise UsageError("give exactly one of submit (the job), attach or resume (a job id)")
    if submit is not None or resume is not None:
        request = client.submit(submit) if submit is not None else client.resume(resume)
        reply = client.wait_for(lambda m: m.parent_id == request and isinstance(m, (Accepted, Error)), timeout=30)
        if isinstance(reply, Error):
            raise RemoteJobError(reply.text)
        job_id = reply.job_id
    else:
        job_id = attach
        client.attach(job_id)
    if callable(out_dir):
        out_dir = out_dir(job_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    snapshots: list[Path] = []
    mesh_path = preview_path = None
    logs: list[str] = []
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for msg in client.poll(timeout=0.5):
            if on_message is not None:
                on_message(msg)
            if msg.job_id not in (job_id, None):
                continue
            if isinstance(msg, Progress) and on_progress is not None:
                on_progress(msg)
            elif isinstance(msg, MeshSnapshot) and len(msg.faces):
                mesh = Mesh(msg.vertices, msg.faces, None if msg.colors is None else msg.colors[:, :3],
                            frame="blender")
                if msg.final:
                    mesh_path = write_mesh(mesh, out_dir / final_name)
                elif keep_snapshots:
                    snapshots.append(write_mesh(mesh, out_dir / f"mesh_{msg.snapshot:03d}.glb"))
            elif isinstance(msg, Image):
                if msg.role == "result":  # the product of an image job
                    name = final_name if final_name.endswith(".png") else "image.png"
                else:
                    name = "preview.png" if msg.final else f"preview_{msg.step:06d}.png"
                path = write_png(out_dir / name, msg.pixels)
                if msg.final:
                    preview_path = path
            elif isinstance(msg, Log):
                logs.append(msg.text)
            elif isinstance(msg, Error):
                if msg.job_id is None and msg.parent_id is None:
                    continue
                errors.append(msg.text)
            elif isinstance(msg, Done):
                if msg.status == "failed":
                    raise RemoteJobError(f"job {job_id} failed: " + ("; ".join(errors) or "no reason given"))
                return RemoteResult(job_id, msg.status, mesh_path, preview_path, snapshots, logs,
                                    time.monotonic() - started)
    raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s")
