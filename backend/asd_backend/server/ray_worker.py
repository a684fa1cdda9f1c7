"""The worker as a Ray actor: the same `Worker` code, its events streamed back as a generator.

No shared filesystem is assumed: the actor works in a scratch folder on its own node. The files a
job needs (a checkpoint to resume from, an edit's inputs) arrive with the job; every file the job
writes (snapshots, checkpoints, the final mesh) is shipped back, ahead of the event that names it,
as it changes. Items of the stream: ("file", relative path, bytes) and ("event", frames).

This module does not import Ray: `ray_pool.py` wraps `StreamingWorker` with `ray.remote`, so the class
travels to the cluster by reference (asd-studio is installed on every node).
"""

from __future__ import annotations

import getpass
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from asd_protocol import Message, decode, encode

from .. import job_layout
from .commands import WORKER_TYPES, RunJob
from .worker import Worker

SKIP = (job_layout.RECORD,)  # the front end's own record, never shipped either way (nor hidden files: locks, temps)


def scratch_root() -> Path:
    """Where this node's actors keep their scratch folders, one each: worker-INDEX-PID-RANDOM. One root per
    user, so that two users' servers on one node neither share nor fight over it."""
    owner = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    return Path(tempfile.gettempdir()) / f"asd-ray-workers-{owner}"


def remove_orphaned_scratch(root: Path) -> list[Path]:
    """Removes the scratch folders whose actor process is gone (an actor killed mid-job never removes its
    own, and a server that loses actors for weeks would fill the node's disk); returns what it removed."""
    removed: list[Path] = []
    if os.name != "posix":
        return removed  # os.kill(pid, 0) asks only on POSIX; on Windows it would end the process
    for folder in root.glob("worker-*-*-*"):
        try:
            pid = int(folder.name.split("-")[2])
        except ValueError:
            continue  # not one of ours
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        except PermissionError:
            pass  # alive, another user's
    return removed


def shippable(folder: Path) -> dict[str, tuple[int, int]]:
    """Files of a job folder worth shipping, relative path → (mtime, size); temporary files left out."""
    out = {}
    for path in folder.rglob("*"):
        if path.is_file() and path.name not in SKIP and not path.name.startswith("."):
            stat = path.stat()
            out[path.relative_to(folder).as_posix()] = (stat.st_mtime_ns, stat.st_size)
    return out


class QueueWorker(Worker):
    """A worker whose events go into a queue, each preceded by the job's files that changed since."""

    def __init__(self, index: int, device: str, results: Path) -> None:
        super().__init__(index, device, results)
        self.events: queue.Queue = queue.Queue()
        self.shipped: dict[str, dict[str, tuple[int, int]]] = {}

    def emit(self, msg: Message) -> None:
        if msg.job_id:
            self.ship_changed(msg.job_id)
        self.events.put(("event", [bytes(memoryview(f)) for f in encode(msg)]))

    def ship_changed(self, job_id: str) -> None:
        folder = self.results / job_id
        if not folder.is_dir():
            return
        sent = self.shipped.setdefault(job_id, {})
        for name, stamp in shippable(folder).items():
            if sent.get(name) != stamp:
                try:
                    data = (folder / name).read_bytes()
                except FileNotFoundError:  # replaced between the listing and the read: the next event ships it
                    continue
                self.events.put(("file", name, data))
                sent[name] = stamp


class StreamingWorker:
    """The Ray actor. `run` is a streaming generator (one item per file or event); `cancel` runs
    beside it (the actor is threaded), as a CancelJob command does for a local worker."""

    def __init__(self, index: int, device: str) -> None:
        root = scratch_root()
        root.mkdir(parents=True, exist_ok=True)
        remove_orphaned_scratch(root)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"worker-{index}-{os.getpid()}-", dir=root))
        self.worker = QueueWorker(index, device, self.scratch)

    def pid(self) -> int:
        return os.getpid()

    def cancel(self, job_id: str) -> None:
        self.worker.cancelled.add(job_id)

    def run(self, frames: list[bytes], files: dict[str, bytes]) -> Iterator[tuple]:
        job = decode(frames, types=WORKER_TYPES)
        if not isinstance(job, RunJob):
            raise TypeError(f"expected run_job, got {job.msg_type}")
        folder = self.scratch / job.job_id
        shutil.rmtree(folder, ignore_errors=True)  # a job resumed here again starts from what was sent
        folder.mkdir(parents=True)
        for name, data in files.items():
            target = (folder / name).resolve()
            if not target.is_relative_to(folder.resolve()):
                raise ValueError(f"file {name!r} would land outside the job folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self.worker.shipped[job.job_id] = shippable(folder)  # what the front end already has
        finished = threading.Event()

        def work() -> None:
            try:
                self.worker.run(job)
            finally:
                finished.set()
                self.worker.events.put(None)

        threading.Thread(target=work, name=f"job-{job.job_id}", daemon=True).start()
        while True:
            item = self.worker.events.get()
            if item is None:
                break
            yield item
        finished.wait()
        self.worker.shipped.pop(job.job_id, None)
        shutil.rmtree(folder, ignore_errors=True)
        # A job lands here after an actor was lost as often as not; by its end the lost one's process is
        # surely reaped (a killed process not yet waited for still answers signal 0), so clear up now.
        remove_orphaned_scratch(self.scratch.parent)
