"""The results folder: one sub-folder per job, everything a restart needs to carry on.

    RESULTS/<job_id>/job.json          settings, status, timestamps (written atomically)
    RESULTS/<job_id>/checkpoint.pt     latest training state (resume)
    RESULTS/<job_id>/snapshots/        preview meshes and renders, as they streamed
    RESULTS/<job_id>/mesh.glb          the final mesh; image.png / texture.png for other kinds
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..artifacts import atomic_path, write_json
from .jobs import ACTIVE, Job

log = logging.getLogger("asd.server")


class ResultStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        # job ids are validated by the protocol (letters, digits, '_', '-', '.') and made by us.
        path = (self.root / job_id).resolve()
        if path.parent != self.root:
            raise ValueError(f"job id {job_id!r} does not name a folder inside the results directory")
        return path

    def save(self, job: Job) -> None:
        folder = self.job_dir(job.job_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "job.json", job.to_json())

    def save_arrays(self, job_id: str, name: str, **arrays) -> Path:
        """Arrays in a .npz (no pickle: read back with allow_pickle=False), written atomically."""
        import numpy as np

        path = self.job_dir(job_id) / name
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        return path

    def load_all(self) -> list[Job]:
        """Every job on disk, oldest first; jobs that were active when the server stopped are marked
        interrupted (to be queued again with resume)."""
        jobs = []
        for path in sorted(self.root.glob("*/job.json")):
            try:
                job = Job.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                log.warning("skipping unreadable job file %s: %s", path, exc)
                continue
            if job.status in ACTIVE:
                job.status = "interrupted"
            jobs.append(job)
        return sorted(jobs, key=lambda j: j.created)
