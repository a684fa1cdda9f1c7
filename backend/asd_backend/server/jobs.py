"""Jobs and the queue: what was asked, by whom, where it stands.

The front end owns this table; workers only report. States:
    queued → running → completed | cancelled | failed
    (queued | running) → interrupted, when the server stopped under it; a restart queues it again.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from asd_protocol import JobInfo

ACTIVE = ("queued", "running")
FINISHED = ("completed", "cancelled", "failed")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_job_id() -> str:
    """Sortable by creation time, unguessable, safe as a folder name."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


@dataclasses.dataclass
class Job:
    job_id: str
    kind: str
    prompt: str
    spec: dict[str, Any]  # the resolved job spec (asd_protocol.job_spec) the worker runs, as JSON
    client: str  # whose job: the user of the submitting CURVE key, or "local" without CURVE
    status: str = "queued"
    created: str = dataclasses.field(default_factory=utc_now)
    updated: str = dataclasses.field(default_factory=utc_now)
    started_at: float | None = None  # time.time() when running began (this server run)
    step: int = 0
    total: int = 0
    snapshots: int = 0
    error: str = ""
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    resume: bool = False  # continue from the job's checkpoint when it runs
    attempts: int = 0  # times its (cluster) worker was lost under it
    seconds: float = 0.0
    waiting: str = ""  # a queued job: why no worker has taken it (this server run only; not in the record)

    def touch(self) -> None:
        self.updated = utc_now()

    def info(self, queue_position: int | None = None) -> JobInfo:
        return JobInfo(job_id=self.job_id, kind=self.kind, prompt=self.prompt, status=self.status,
                       created=self.created, updated=self.updated, step=self.step, total=self.total,
                       queue_position=queue_position, method=str(self.spec.get("guidance", {}).get("method", "")),
                       snapshots=self.snapshots, error=self.error[:2000],
                       waiting=self.waiting[:500] if self.status == "queued" else "")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("started_at")
        data.pop("waiting")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class JobTable:
    """All jobs of this server, and the FIFO of queued ones."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()

    def add(self, job: Job, front: bool = False) -> None:
        self.jobs[job.job_id] = job
        if job.status == "queued":
            (self.queue.appendleft if front else self.queue.append)(job.job_id)

    def queued_by(self, client: str) -> int:
        return sum(1 for j in self.queue if self.jobs[j].client == client)

    def position(self, job_id: str) -> int | None:
        """0 for running jobs, n ≥ 1 for the n-th in the queue, None otherwise."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.status == "running":
            return 0
        try:
            return self.queue.index(job_id) + 1
        except ValueError:
            return None

    def next_queued(self) -> Job | None:
        return self.jobs[self.queue.popleft()] if self.queue else None

    def remove_from_queue(self, job_id: str) -> bool:
        try:
            self.queue.remove(job_id)
            return True
        except ValueError:
            return False

    def listing(self, limit: int, user: str | None = None) -> list[JobInfo]:
        """The newest `limit` jobs, of `user` only unless None (an admin)."""
        jobs = [j for j in self.jobs.values() if user is None or j.client == user]
        newest = sorted(jobs, key=lambda j: j.created, reverse=True)[:limit]
        return [j.info(self.position(j.job_id)) for j in newest]
