"""The results folder: one sub-folder per job, everything a restart needs to carry on.

    RESULTS/<job_id>/job.json          settings, status, timestamps (artifacts.write_json: atomic, durable)
    RESULTS/<job_id>/checkpoint.pt     latest training state (resume)
    RESULTS/<job_id>/snapshots/        preview meshes and renders, as they streamed
    RESULTS/<job_id>/mesh.glb          the final mesh; image.png / texture.png for other kinds
    RESULTS/.quarantine/<job_id>-…/    job folders whose record failed validation, with reason.txt
    RESULTS/.asd-serve.lock            held by the one server that uses the folder

Records are checked on load against the wire's rules (a record that loads is a record every reply
can carry); output paths are stored relative to the job's folder, so the results folder can move.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from asd_protocol import JobInfo, ProtocolError
from asd_protocol.fields import check_record, check_text
from asd_protocol.job_spec import JobSpec

from .. import job_layout
from ..artifacts import atomic_path, write_json
from ..errors import AsdError
from .jobs import ACTIVE, Job

log = logging.getLogger("asd.server")

QUARANTINE = ".quarantine"
LOCK_NAME = ".asd-serve.lock"
OWNER_NAME = ".asd-serve.owner"


class ResultsInUse(AsdError):
    """Another server holds the results folder."""


class BadRecord(ValueError):
    """A job.json that must not be loaded; the message says why."""


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT anywhere in the exception's chain (torch wraps them in its own errors)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class ResultStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Job records name their owners: only the server's user may enter, as for keys (whatever the umask).
        os.chmod(self.root, 0o700)
        self._lock: FileLock | None = None

    # -- the folder's one server -----------------------------------------------------------------

    def lock(self) -> None:
        """Take the folder for this process; a second server on the same folder is refused (two servers
        would run the same queued jobs into the same folders). Released when the process ends, however."""
        lock = FileLock(self.root / LOCK_NAME, timeout=0)
        try:
            lock.acquire()
        except Timeout:
            owner = (self.root / OWNER_NAME).read_text().strip() if (self.root / OWNER_NAME).is_file() else "?"
            raise ResultsInUse(f"another asd serve ({owner}) is using the results folder {self.root}; stop it, or "
                               "pass another --results folder") from None
        self._lock = lock
        (self.root / OWNER_NAME).write_text(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- writing -----------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        # job ids are validated by the protocol (letters, digits, '_', '-', '.') and made by us.
        path = (self.root / job_id).resolve()
        if path.parent != self.root or job_id.startswith("."):
            raise ValueError(f"job id {job_id!r} does not name a folder inside the results directory")
        return path

    def save(self, job: Job) -> None:
        folder = self.job_dir(job.job_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / job_layout.RECORD, job.to_json())

    def discard(self, job_id: str) -> None:
        """Remove the folder of a job that was never accepted (its record could not be written)."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def save_arrays(self, job_id: str, name: str, **arrays) -> Path:
        """Arrays in a .npz (no pickle: read back with allow_pickle=False), written atomically."""
        import numpy as np

        path = self.job_dir(job_id) / name
        with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        return path

    def relative_outputs(self, job_id: str, outputs: dict[str, str]) -> dict[str, str]:
        """Output paths as the job record keeps them: relative to the job's folder. Paths outside it are
        dropped (a worker only writes inside)."""
        folder = self.job_dir(job_id)
        out = {}
        for name, path in outputs.items():
            full = (folder / path).resolve()
            if full.is_relative_to(folder):
                out[name] = full.relative_to(folder).as_posix()
        return out

    def output_path(self, job: Job, name: str) -> Path | None:
        path = job.outputs.get(name)
        return None if path is None else self.job_dir(job.job_id) / path

    # -- loading -----------------------------------------------------------------------------------

    def load_all(self) -> list[Job]:
        """Every valid job on disk, oldest first. A record that fails validation is moved to the
        quarantine folder with its reason (the server starts anyway); jobs that were active when the
        server stopped are marked interrupted (to be queued again with resume)."""
        jobs = []
        for folder in sorted(p for p in self.root.iterdir() if not p.name.startswith(".")):
            if folder.is_symlink():
                # A job folder is always a real folder the server made; a link may point anywhere (outside
                # the results folder, at another user's files), so it is moved aside, never followed.
                self.quarantine(folder, f"{folder.name} is a symbolic link, not a job folder this server made")
                continue
            if not folder.is_dir():
                continue
            record = folder / job_layout.RECORD
            if not record.is_file():
                continue  # a folder a submit was writing when the server died, or not ours
            try:
                job = load_record(record)
            except BadRecord as exc:
                self.quarantine(folder, str(exc))
                continue
            except Exception as exc:  # whatever a record does, the server starts and says why it set it aside
                self.quarantine(folder, f"{type(exc).__name__}: {exc}")
                continue
            if job.status in ACTIVE:
                job.status = "interrupted"
            jobs.append(job)
        return sorted(jobs, key=lambda j: j.created)

    def quarantine(self, folder: Path, reason: str) -> Path:
        target_root = self.root / QUARANTINE
        target_root.mkdir(exist_ok=True)
        target = target_root / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while target.exists():
            n += 1
            target = target_root / f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        shutil.move(str(folder), target)
        reason_file = (target if target.is_dir() and not target.is_symlink() else target_root) / (
            "reason.txt" if target.is_dir() and not target.is_symlink() else f"{target.name}.reason.txt")
        reason_file.write_text(reason + "\n")
        log.warning(json.dumps({"ts": round(time.time(), 3), "event": "record_quarantined", "folder": folder.name,
                                "moved_to": str(target), "reason": reason}))
        return target


def _timestamp(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise BadRecord(f"{name} must be a date text, got {type(value).__name__}")
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRecord(f"{name} {value[:40]!r} is not an ISO 8601 date") from None
    return value


def load_record(path: Path) -> Job:
    """A job.json read and checked as strictly as the wire: JSON object, id equal to its folder, the
    JobInfo fields by the protocol's rules, a spec that resolves, sane numbers, outputs inside the
    job's folder. Raises BadRecord saying what is wrong."""
    folder = path.parent
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadRecord(f"unreadable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRecord(f"must be a JSON object, got {type(data).__name__}")
    if data.get("job_id") != folder.name:
        raise BadRecord(f"job_id {str(data.get('job_id'))[:80]!r} differs from its folder {folder.name!r}")
    try:
        # Checked as replies will carry it (Job.info: the listing's view, its error shortened), so a record
        # that loads is one every reply can encode.
        info = check_record(JobInfo, dataclasses.asdict(Job.from_json(data).info()), "job")
        spec = JobSpec.from_json(data.get("spec"), path="job.spec") if isinstance(data.get("spec"), dict) else None
        if spec is None:
            raise BadRecord("spec must be a JSON object")
        client = data.get("client")
        if not isinstance(client, str) or not client:
            raise BadRecord("client must be a non-empty text")
        check_text("job.client", client)
    except (ProtocolError, ValueError, TypeError) as exc:  # BadRecord is a ValueError: its text stays
        raise BadRecord(str(exc)) from None
    if info["status"] not in (*ACTIVE, "completed", "cancelled", "failed", "interrupted"):
        raise BadRecord(f"unknown status {info['status']!r}")
    if spec.kind != info["kind"]:
        raise BadRecord(f"kind {info['kind']!r} differs from the spec's {spec.kind!r}")
    for name in ("created", "updated"):
        _timestamp(data.get(name), f"job.{name}")
    if info.get("step", 0) > max(info.get("total", 0), spec.steps):
        raise BadRecord(f"step {info['step']} is past the job's {spec.steps} steps")
    seconds = data.get("seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise BadRecord(f"seconds must be a finite number ≥ 0, got {str(seconds)[:40]}")
    if not isinstance(data.get("resume", False), bool):
        raise BadRecord("resume must be true or false")
    attempts = data.get("attempts", 0)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise BadRecord(f"attempts must be an integer ≥ 0, got {str(attempts)[:40]}")
    outputs = data.get("outputs", {})
    if not isinstance(outputs, dict):
        raise BadRecord("outputs must be an object")
    relative = {}
    for name, value in outputs.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise BadRecord("outputs must map names to path texts")
        full = Path(value) if Path(value).is_absolute() else folder / value
        if Path(value).is_absolute() and not full.resolve().is_relative_to(folder.resolve()):
            # a record from before relative paths, its results folder since moved: the same file here
            full = folder / Path(value).name
        if not full.resolve().is_relative_to(folder.resolve()):
            raise BadRecord(f"output {name!r} points outside the job's folder: {value[:200]!r}")
        relative[name] = full.resolve().relative_to(folder.resolve()).as_posix()
    return Job.from_json({**data, "spec": spec.to_json(), "outputs": relative})
