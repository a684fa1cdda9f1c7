"""A worker process: one per GPU (or one on the CPU), one job at a time.

It talks to the front end over a DEALER socket on loopback, in the protocol's codec both ways:
commands (commands.py: run_job, cancel_job, stop_worker) come in, `worker_ready` and the job's
events (the same typed messages clients receive) go out, so arrays cross without copies or pickles.
A job that raises is reported and the worker carries on; a worker that dies is noticed and replaced
by the front end.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import time
import traceback
from pathlib import Path
from typing import Any

import zmq
from filelock import FileLock, Timeout

from asd_protocol import (
    Done,
    Error,
    Image,
    Log,
    MeshSnapshot,
    Message,
    Progress,
    ProtocolError,
    Texture,
    decode,
    encode,
)
from asd_protocol import errors as codes
from asd_protocol.fields import clean_text
from asd_protocol.job_spec import JobSpec

from ..job_events import JobEvents
from .commands import WORKER_TYPES, CancelJob, RunJob, StopWorker, WorkerReady

log = logging.getLogger("asd.worker")

JOB_LOCK_WAIT = 30.0  # seconds a worker waits for another one to leave a job's folder
PROGRESS_INTERVAL = 0.5  # seconds between progress events (the front end re-sends every second anyway)


class JobCancelled(Exception):
    pass


class Worker:
    """Runs jobs, one at a time, keeping its teacher loaded between them. How it talks is a subclass's
    business: `emit` sends an event, `_drain_commands` reads cancel/stop commands without blocking."""

    def __init__(self, index: int, device: str, results: str | Path) -> None:
        self.index = index
        self.device = device
        self.results = Path(results)
        self.teachers: dict[str, Any] = {}
        self._loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="teacher-loader")
        self._loading: tuple[str, concurrent.futures.Future] | None = None
        self.cancelled: set[str] = set()
        self.stopping = False

    def emit(self, msg: Message) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _drain_commands(self) -> None:
        """Commands that arrived while a job runs (a transport without its own channel has none)."""


    # -- jobs -------------------------------------------------------------------------------------

    @property
    def still_loading(self) -> bool:
        return self._loading is not None

    def teacher(self, spec: str, should_stop=None):
        """The teacher `spec`, loaded once and kept for the next jobs. Loading (seconds to minutes for a
        real model) runs in a thread while this one watches `should_stop`: a cancel ends the job at once,
        and the load carries on for whichever job needs the model next."""
        from ..teachers import load_teacher

        if spec in self.teachers:
            return self.teachers[spec]
        if self._loading is not None and self._loading[0] != spec:
            concurrent.futures.wait([self._loading[1]])  # a thread cannot be stopped: let the other load end
            self._loading = None
        if self._loading is None:
            self.teachers.clear()  # one model in memory at a time
            self._loading = (spec, self._loader.submit(load_teacher, spec, self.device))
        future = self._loading[1]
        while not concurrent.futures.wait([future], timeout=0.1).done:
            if should_stop is not None and should_stop():
                raise JobCancelled
        self._loading = None
        self.teachers[spec] = future.result()  # a failed load raises here, for the job that asked
        return self.teachers[spec]

    def run(self, job: RunJob) -> None:
        from ..job_runner import run_job

        job_id = job.job_id
        started = time.time()
        try:
            if job_id in self.cancelled:
                raise JobCancelled
            spec = JobSpec.from_json(job.spec)
            lock = self._job_folder_lock(job_id)
            try:
                teacher = self._teacher_for(job_id, spec)
                result = run_job(teacher, spec, self.results / job_id, _WorkerEvents(self, job_id, spec),
                                 resume=job.resume)
            finally:
                lock.release()
            if result.stopped:
                raise JobCancelled
            self.emit(Done(job_id=job_id, status="completed", seconds=time.time() - started, outputs=result.outputs,
                           summary=result.summary))
        except JobCancelled:
            self.emit(Done(job_id=job_id, status="cancelled", seconds=time.time() - started))
        except Exception as exc:  # one job's failure must not take the worker down
            code, hint = classify_failure(exc)
            log.error("job %s failed: %s", job_id, traceback.format_exc())
            message = clean_text(f"{type(exc).__name__}: {exc}")[:4000]  # any text a library raised
            self.emit(Error(job_id=job_id, code=code, message=message, hint=hint))
            self.emit(Done(job_id=job_id, status="failed", seconds=time.time() - started))
            if code == codes.OUT_OF_MEMORY:
                self.teachers.clear()
                _empty_cuda_cache()
        finally:
            self.cancelled.discard(job_id)

    def _job_folder_lock(self, job_id: str) -> FileLock:
        """One worker in a job's folder at a time: after a fast restart, a worker of the old server may
        still be writing its last checkpoint (it stops within a second of noticing)."""
        (self.results / job_id).mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.results / job_id / ".worker.lock", timeout=JOB_LOCK_WAIT)
        try:
            lock.acquire()
        except Timeout:
            raise RuntimeError(f"another worker has held job {job_id}'s folder for {JOB_LOCK_WAIT:.0f} s; "
                               "is a second server running on this results folder?") from None
        return lock

    def should_stop(self, job_id: str) -> bool:
        self._drain_commands()
        if _server_gone():
            self.stopping = True  # checkpoint and leave; a restarted server resumes the job
        return job_id in self.cancelled or self.stopping

    def _teacher_for(self, job_id: str, spec: JobSpec):
        """Load (or reuse) the job's teacher, saying so, and warn when it is untrained or the prompt is
        longer than its text encoder reads."""
        from ..artifacts import teacher_notice

        name = spec.model.teacher
        self.emit(Progress(job_id=job_id, phase="loading", message=f"loading teacher {name}"))
        teacher = self.teacher(name, lambda: self.should_stop(job_id))
        for notice in (teacher_notice(teacher), teacher.prompt_warning(spec.prompt)):
            if notice:
                self.emit(Log(job_id=job_id, level="warning", text=clean_text(notice)[:4000]))
        return teacher


class _WorkerEvents(JobEvents):
    """A job's events as protocol messages to the front end (progress at most every PROGRESS_INTERVAL)."""

    def __init__(self, worker: Worker, job_id: str, spec: JobSpec) -> None:
        self.worker, self.job_id, self.spec = worker, job_id, spec
        self.last_progress = 0.0
        self.step = 0
        self.first_step: int | None = None  # a resumed job starts past 1: its rate counts this run's steps only

    def should_stop(self) -> bool:
        return self.worker.should_stop(self.job_id)

    def progress(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.step = step
        if self.first_step is None:
            self.first_step = step
        now = time.monotonic()
        if now - self.last_progress < PROGRESS_INTERVAL and step != total:
            return
        self.last_progress = now
        elapsed = float(metrics.get("seconds", 0.0))  # since this run's loop began
        done_here = step - self.first_step + 1
        eta = elapsed / done_here * (total - step) if step else None
        losses = {k: float(v) for k, v in metrics.items() if k.startswith("loss") and isinstance(v, float)}
        self.worker.emit(Progress(job_id=self.job_id, phase="optimizing", step=step, total=total,
                                  loss=metrics.get("loss"), losses=losses, eta_seconds=eta, elapsed_seconds=elapsed))

    def phase(self, name: str, message: str) -> None:
        self.worker.emit(Progress(job_id=self.job_id, phase=name, step=self.step, total=self.spec.steps,
                                  message=message))

    def snapshot(self, snapshot) -> None:
        from ..mesh.export import to_blender_frame

        wire = to_blender_frame(snapshot.mesh)  # the protocol's frame: metres, Z up, front towards −Y
        self.worker.emit(MeshSnapshot(job_id=self.job_id, vertices=wire.vertices, faces=wire.faces,
                                      colors=wire.colors, snapshot=snapshot.index, step=snapshot.step,
                                      final=snapshot.final))
        self.worker.emit(Image(job_id=self.job_id, pixels=snapshot.preview, role="preview", step=snapshot.step,
                               final=snapshot.final))

    def frame(self, frame) -> None:
        if hasattr(frame, "texture"):  # an edit's TextureFrame
            self.worker.emit(Texture(job_id=self.job_id, pixels=frame.texture, step=frame.step, final=frame.final))
        else:
            self.worker.emit(Image(job_id=self.job_id, pixels=frame.image, role="result" if frame.final else "preview",
                                   step=frame.step, final=frame.final))


class ZmqWorker(Worker):
    """The local pool's worker process: a DEALER on the front end's loopback worker socket."""

    def __init__(self, index: int, device: str, address: str, results: str) -> None:
        super().__init__(index, device, results)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, f"w{index}".encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.connect(address)

    def emit(self, msg: Message) -> None:
        self.sock.send_multipart(encode(msg), copy=False)

    def _receive(self) -> Message | None:
        try:
            return decode(self.sock.recv_multipart(copy=False), types=WORKER_TYPES)
        except ProtocolError as exc:  # only the front end talks here; say so and carry on
            log.error("worker %s: a bad command from the front end: %s", self.index, exc)
            return None

    def _drain_commands(self) -> None:
        """Read cancel/stop commands that arrived while a job runs (never blocks)."""
        while self.sock.poll(0, zmq.POLLIN):
            cmd = self._receive()
            if isinstance(cmd, CancelJob):
                self.cancelled.add(cmd.job_id)
            elif isinstance(cmd, StopWorker):
                self.stopping = True

    def serve(self) -> None:
        self.emit(WorkerReady())
        while not self.stopping:
            if not self.sock.poll(1000, zmq.POLLIN):
                if _server_gone():
                    break  # the front end died (kill -9): do not linger as an orphan
                continue
            cmd = self._receive()
            if isinstance(cmd, StopWorker):
                break
            if isinstance(cmd, RunJob):
                self.run(cmd)
                self.emit(WorkerReady())
        self.sock.close()
        self.ctx.term()


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """An error code and what the artist can do about it."""
    import torch

    from ..errors import AsdError, UsageError

    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return codes.OUT_OF_MEMORY, ("the GPU ran out of memory: choose a lighter preset (preview), a lower "
                                     "marching-cubes resolution, or free the GPU of other programs")
    from .store import is_disk_full

    if is_disk_full(exc):
        return codes.DISK_FULL, ("the server's disk is full: free space there, then resume the job (its last "
                                 "checkpoint is kept)")
    if isinstance(exc, UsageError):
        return codes.INVALID_FIELD, "fix the setting named in the message and submit again"
    if isinstance(exc, AsdError):
        return codes.JOB_FAILED, "the message says what went wrong and what to do"
    # Anything else is a bug (or a library's failure), whatever its type: not the artist's setting.
    return codes.JOB_FAILED, "see the server log for details; try again, or a lighter preset"


def _server_gone() -> bool:
    parent = multiprocessing.parent_process()
    return parent is not None and not parent.is_alive()


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def worker_main(index: int, device: str, address: str, results: str,
                env: dict[str, str] | None = None) -> None:
    """Entry point of a spawned worker process."""
    os.environ.update(env or {})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    worker = ZmqWorker(index, device, address, results)
    worker.serve()
    if worker.still_loading:  # a model still loading for nobody: do not wait for it to finish
        logging.shutdown()
        os._exit(0)
