"""The worker pool: one spawned process per GPU (or one on `device`), each running one job at a time.

The pool owns the loopback ROUTER the workers connect to and speaks to them in the protocol's
codec (commands.py). A worker that dies is replaced under the same identity; `reap()` says which
died and with what job, so the front end can fail just that job.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from pathlib import Path
from typing import Any

import zmq

from asd_protocol import encode

from .commands import CancelJob, RunJob, StopWorker
from .worker import worker_main


@dataclasses.dataclass
class WorkerHandle:
    index: int
    identity: bytes
    process: Any
    env: dict[str, str]
    device: str
    ready: bool = False
    job_id: str | None = None

    @property
    def idle(self) -> bool:
        return self.ready and self.job_id is None and self.process.is_alive()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def death(self) -> str:
        code = self.process.exitcode
        return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'} {'is' if n == 1 else 'are'}"


class Pool:
    """What the front end needs of a worker pool, whatever runs the workers: `socket` (a ROUTER its loop
    polls; each worker a routing id on it), `workers` (identity → handle with `ready`, `job_id`, `idle`,
    `pid`, `death()`), and the methods below. Implementations: `WorkerPool` (local processes) and
    ray_pool.RayWorkerPool (Ray actors)."""

    socket: zmq.Socket
    workers: dict[bytes, Any]
    resumes_lost_jobs = False
    """Whether a lost worker's job goes back to the queue (a cluster node lost) or fails (a local
    worker dies of its job: out of memory, a crash, which a retry would repeat)."""
    cluster_error: str | None = None
    """Why no worker can be had now (a lost cluster head), or None."""

    def start(self, gpus: tuple[int, ...] | None, device: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def get(self, identity: bytes) -> Any | None:
        return self.workers.get(identity)

    def idle(self) -> Any | None:
        return next((w for w in self.workers.values() if w.idle), None)

    def running(self, job_id: str) -> Any | None:
        return next((w for w in self.workers.values() if w.job_id == job_id), None)

    def run(self, worker: Any, job_id: str, spec: dict, resume: bool) -> None:
        worker.ready, worker.job_id = False, job_id
        self.socket.send_multipart([worker.identity, *encode(RunJob(job_id=job_id, spec=spec, resume=resume))])

    def cancel(self, job_id: str) -> bool:  # pragma: no cover - abstract
        """Ask the worker running `job_id` to stop it; False when no worker runs it."""
        raise NotImplementedError

    def reap(self) -> list[Any]:  # pragma: no cover - abstract
        """Workers lost since the last call (replaced as the pool sees fit), with their job ids."""
        raise NotImplementedError

    def scale(self, queued: int) -> None:
        """Follow the queue's length (a fixed pool does nothing)."""

    def wait_reason(self) -> str:
        """Why a queued job has no worker now, in the words its followers read ("" when one is free)."""
        if self.cluster_error is not None:
            return self.cluster_error
        if self.idle() is not None:
            return ""
        starting = sum(1 for w in self.workers.values() if not w.ready and w.job_id is None)
        busy = sum(1 for w in self.workers.values() if w.job_id is not None)
        if starting:
            return f"{_count(starting, 'worker')} starting" + (f", {busy} busy" if busy else "")
        return f"every worker is busy ({busy} of {len(self.workers)}): it starts when one finishes"

    def stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class WorkerPool(Pool):
    """One spawned process per GPU (or one on `device`)."""

    def __init__(self, ctx: zmq.Context, results: Path) -> None:
        self.results = results
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker reuses its identity
        self.socket.bind("tcp://127.0.0.1:*")
        self.workers: dict[bytes, WorkerHandle] = {}
        self._mp = multiprocessing.get_context("spawn")

    def start(self, gpus: tuple[int, ...] | None, device: str) -> None:
        if gpus:
            for i, gpu in enumerate(gpus):
                self.spawn(i, "cuda", {"CUDA_VISIBLE_DEVICES": str(gpu)})
        else:
            self.spawn(0, device, {})

    def spawn(self, index: int, device: str, env: dict[str, str]) -> WorkerHandle:
        identity = f"w{index}".encode()
        address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        process = self._mp.Process(target=worker_main, name=f"asd-worker-{index}", daemon=True,
                                   args=(index, device, address, str(self.results), env))
        process.start()
        handle = self.workers[identity] = WorkerHandle(index, identity, process, env, device)
        return handle

    def cancel(self, job_id: str) -> bool:
        worker = self.running(job_id)
        if worker is None:
            return False
        self.socket.send_multipart([worker.identity, *encode(CancelJob(job_id=job_id))])
        return True

    def reap(self) -> list[WorkerHandle]:
        """Workers that died since the last call (each replaced by a fresh one), with their job ids."""
        dead = [w for w in self.workers.values() if not w.process.is_alive()]
        for worker in dead:
            del self.workers[worker.identity]
            self.spawn(worker.index, worker.device, worker.env)
        return dead

    def stop(self) -> None:
        for w in self.workers.values():
            try:
                self.socket.send_multipart([w.identity, *encode(StopWorker())], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        for w in self.workers.values():
            w.process.join(timeout=3)
            if w.process.is_alive():
                w.process.kill()
