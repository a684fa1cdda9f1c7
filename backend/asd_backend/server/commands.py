"""Front end ⇄ worker commands: messages of their own, in the protocol's codec (frames.py), so the
worker's inputs are typed and validated like everything a client sends. They never leave the machine:
the worker socket is on loopback, and clients cannot send them (decode() on the client socket only
knows the public types).

    front end → worker   run_job (the resolved spec), cancel_job, stop_worker
    worker → front end   worker_ready, then the job's events: progress, mesh, image, texture, log, error, done
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from asd_protocol.fields import flag, spec_field
from asd_protocol.job_spec import PartialJobSpec
from asd_protocol.messages import CLIENT, MESSAGE_TYPES, SERVER, Message


@dataclasses.dataclass(kw_only=True)
class RunJob(Message):
    """Run one job with its resolved spec; `resume` continues from the job's checkpoint."""

    msg_type: ClassVar[str] = "run_job"
    sender: ClassVar[str] = SERVER
    needs_job: ClassVar[bool] = True
    spec: dict = spec_field(PartialJobSpec(doc="the resolved job spec"), factory=dict)
    resume: bool = flag(False)


@dataclasses.dataclass(kw_only=True)
class CancelJob(Message):
    """Stop the running job at the end of its step (a generate job checkpoints first)."""

    msg_type: ClassVar[str] = "cancel_job"
    sender: ClassVar[str] = SERVER
    needs_job: ClassVar[bool] = True


@dataclasses.dataclass(kw_only=True)
class StopWorker(Message):
    """Checkpoint any running job and exit."""

    msg_type: ClassVar[str] = "stop_worker"
    sender: ClassVar[str] = SERVER


@dataclasses.dataclass(kw_only=True)
class WorkerReady(Message):
    """The worker waits for a job."""

    msg_type: ClassVar[str] = "worker_ready"
    sender: ClassVar[str] = CLIENT


WORKER_TYPES: dict[str, type[Message]] = {
    **MESSAGE_TYPES, **{cls.msg_type: cls for cls in (RunJob, CancelJob, StopWorker, WorkerReady)}}
