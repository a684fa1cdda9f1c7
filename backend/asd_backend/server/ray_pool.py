"""The worker pool on a Ray cluster: one Ray actor per worker, anywhere in the cluster.

The front end sees the same pool as with local processes (workers.py): a ROUTER socket its loop
polls, handles with `ready`/`job_id`, `run`, `cancel`, `reap`. Behind it, one bridge thread per actor
owns a DEALER on that socket (in-process), turns `run_job` into a streaming call of the actor
(ray_worker.StreamingWorker), writes the files it ships into the results folder and forwards its
events. An actor that dies (its node lost, its process killed) is reaped like a dead process; the
front end queues its job again, to resume from the last checkpoint that reached the results folder.

The pool follows the queue: it starts actors up to `max_workers` while jobs wait, and stops idle ones
down to `min_workers` after `idle_seconds`, so an autoscaling cluster can add and remove GPU nodes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from asd_protocol import Done, Error, decode, encode
from asd_protocol import errors as codes

from ..artifacts import atomic_path
from ..errors import AsdError, UsageError
from .commands import WORKER_TYPES, RunJob, StopWorker, WorkerReady
from .ray_worker import SKIP, StreamingWorker
from .workers import Pool

log = logging.getLogger("asd.server")

ACTOR_START_TIMEOUT = 600.0  # an autoscaling cluster may need minutes to bring a GPU node up
HEAD_PROBE_EVERY = 5.0
HEAD_TIMEOUT = 10.0
HEAD_LOST = "lost the Ray head"


@dataclasses.dataclass
class RayWorkerHandle:
    index: int
    identity: bytes
    actor: Any
    device: str
    ready: bool = False
    job_id: str | None = None
    pid: int | None = None
    node: str = ""
    dead: str | None = None  # why the actor was lost
    idle_since: float = dataclasses.field(default_factory=time.monotonic)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def idle(self) -> bool:
        return self.ready and self.job_id is None and self.dead is None

    def death(self) -> str:
        return self.dead or "stopped"


class RayWorkerPool(Pool):
    """`address`: "local" (start a Ray instance in this process, loopback only), "auto" (the cluster this
    machine belongs to) or "ray://HOST:PORT" (Ray Client). `resource`: what each actor asks for, "GPU"
    (one GPU each) or a custom resource name (CPU clusters and tests)."""

    resumes_lost_jobs = True

    def __init__(self, ctx: zmq.Context, results: Path, address: str = "local", *, min_workers: int = 1,
                 max_workers: int = 1, resource: str = "GPU", idle_seconds: float = 60.0) -> None:
        if not 0 <= min_workers <= max_workers or max_workers < 1:
            raise UsageError(f"need 0 ≤ --min-workers ≤ --max-workers and --max-workers ≥ 1; got {min_workers}, "
                             f"{max_workers}")
        try:
            import ray
        except ImportError:
            raise AsdError("--ray needs Ray on this machine: pip install 'asd-studio[cluster]' (and on every node "
                           "of the cluster; docs/cluster.md)") from None
        self.ray = ray
        self.ctx = ctx
        self.results = Path(results)
        self.address = address
        self.min_workers, self.max_workers = min_workers, max_workers
        self.resource = resource
        self.idle_seconds = idle_seconds
        self.endpoint = f"inproc://asd-ray-workers-{uuid.uuid4().hex}"
        self.socket = ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.endpoint)
        self.workers: dict[bytes, RayWorkerHandle] = {}
        self._next_index = 0
        self._actor_class = None
        self.cluster_error: str | None = None  # set while the cluster cannot be reached
        # (total, free) of `resource` in the cluster, read by the head watch's thread: a call to a lost head
        # would block the front end's loop, so it never asks Ray itself.
        self.capacity: tuple[float, float] | None = None
        self._stopped = threading.Event()

    # -- life cycle --------------------------------------------------------------------------------

    def start(self, gpus: tuple[int, ...] | None = None, device: str = "auto") -> None:
        ray = self.ray
        # A Ray driver exits its process when the head (GCS) stays unreachable for 60 s; this process is
        # the front end, which must keep serving the job list: let it wait instead, and watch the head.
        os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(10 * 365 * 24 * 3600))
        if not ray.is_initialized():
            if self.address == "local":
                # A private instance on loopback, sized for max_workers actors.
                resources = {} if self.resource in ("GPU", "CPU") else {self.resource: float(self.max_workers)}
                ray.init(address="local", num_cpus=self.max_workers + 1, resources=resources,
                         include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
                         namespace="asd-studio")
            else:
                ray.init(address=self.address, namespace="asd-studio", log_to_driver=False)
        if self.address == "local" and self.resource == "GPU" and not ray.cluster_resources().get("GPU"):
            # A private instance has exactly this machine's resources: without a GPU no actor asking for one
            # would ever start and every job would wait for good. Use what the machine has.
            self.resource = "CPU"
            log.warning(json.dumps({"event": "ray_local_cpu", "message": "this machine has no GPU: the local Ray "
                                    "instance runs its workers on the CPU"}))
        options: dict[str, Any] = {"max_concurrency": 2, "max_restarts": 0}  # cancel runs beside run
        if self.resource == "GPU":
            options["num_gpus"] = 1
        elif self.resource == "CPU":
            options["num_cpus"] = 1
        else:
            options.update(num_cpus=1, resources={self.resource: 1})
        if self.resource == "GPU" and not ray.cluster_resources().get("GPU"):
            log.warning(json.dumps({"event": "ray_no_gpu", "message": "the Ray cluster has no GPU (yet): actors wait "
                                    "for one (an autoscaler may add a node); for CPU workers pass --ray-resource CPU"}))
        self._actor_class = ray.remote(**options)(StreamingWorker)
        self._device = "cuda" if self.resource == "GPU" else "cpu"
        for _ in range(self.min_workers):  # 0: none until a job waits (an autoscaler adds the node then)
            self.spawn()
        threading.Thread(target=self._watch_head, name="ray-head-watch", daemon=True).start()

    def _probe(self, answered: threading.Event) -> None:
        try:
            self.ray.nodes()
            answered.set()
            self.capacity = (float(self.ray.cluster_resources().get(self.resource, 0.0)),
                             float(self.ray.available_resources().get(self.resource, 0.0)))
        except Exception:  # unreachable: the event stays unset
            pass

    def _watch_head(self) -> None:
        """Every few seconds, a call the head must answer; no answer within HEAD_TIMEOUT sets
        `cluster_error` (running jobs whose actors are lost then fail instead of waiting)."""
        while not self._stopped.is_set():
            answered = threading.Event()
            threading.Thread(target=self._probe, args=(answered,), daemon=True).start()
            if answered.wait(HEAD_TIMEOUT):
                if self.cluster_error and self.cluster_error.startswith(HEAD_LOST):
                    self.cluster_error = None
                    log.warning(json.dumps({"event": "ray_head_back"}))
            elif self.cluster_error is None:
                self.cluster_error = f"{HEAD_LOST} (no answer from it for {HEAD_TIMEOUT:.0f} s)"
                log.error(json.dumps({"event": "ray_head_lost", "address": self.address}))
            self._stopped.wait(HEAD_PROBE_EVERY)

    def spawn(self) -> RayWorkerHandle | None:
        """A new actor; None (and `cluster_error` set) when the cluster cannot be asked for one."""
        try:
            actor = self._actor_class.remote(self._next_index, self._device)
        except Exception as exc:  # the head or the connection to it is gone: keep serving, say why
            if self.cluster_error is None:
                log.error(json.dumps({"event": "ray_unavailable", "error": str(exc)[:500]}))
            self.cluster_error = f"the Ray cluster cannot be reached ({type(exc).__name__}: {str(exc)[:200]})"
            return None
        index = self._next_index
        self._next_index += 1
        identity = f"w{index}".encode()
        handle = self.workers[identity] = RayWorkerHandle(index, identity, actor, self._device)
        threading.Thread(target=self._bridge, args=(handle,), name=f"ray-bridge-{index}", daemon=True).start()
        return handle

    def stop(self) -> None:
        self._stopped.set()
        if self.cluster_error is not None:  # calls to a lost head would wait for it: leave without them
            self.workers.clear()
            return
        for handle in list(self.workers.values()):
            self._retire(handle)
        self.workers.clear()
        if self.address == "local" and self.ray.is_initialized():
            self.ray.shutdown()

    def _retire(self, handle: RayWorkerHandle) -> None:
        handle.stop.set()
        try:
            self.socket.send_multipart([handle.identity, *encode(StopWorker())], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        try:
            self.ray.kill(handle.actor)
        except Exception as exc:  # a lost cluster: nothing left to kill
            log.warning("could not stop Ray actor %s: %s", handle.index, exc)

    # -- what the front end calls ------------------------------------------------------------------

    def cancel(self, job_id: str) -> bool:
        worker = self.running(job_id)
        if worker is None:
            return False
        worker.actor.cancel.remote(job_id)  # a method call that runs beside the job (threaded actor)
        return True

    def reap(self) -> list[RayWorkerHandle]:
        """Actors lost since the last call (replaced while at least min_workers are wanted)."""
        dead = [w for w in self.workers.values() if w.dead is not None]
        for handle in dead:
            del self.workers[handle.identity]
            try:
                self.ray.kill(handle.actor)
            except Exception:  # already gone with its node
                pass
        for _ in range(max(0, min(self.min_workers, self.max_workers) - len(self.workers))):
            self.spawn()
        return dead

    def scale(self, queued: int) -> None:
        """Actors for the queue: more while jobs wait (up to max_workers); idle ones stop after
        idle_seconds (down to min_workers)."""
        waiting_for = queued - sum(1 for w in self.workers.values() if w.idle)
        starting = sum(1 for w in self.workers.values() if not w.ready and w.job_id is None and w.dead is None)
        for _ in range(min(waiting_for - starting, self.max_workers - len(self.workers))):
            self.spawn()
        now = time.monotonic()
        for handle in [w for w in self.workers.values() if w.idle]:
            if len(self.workers) <= self.min_workers or queued:
                break
            if now - handle.idle_since > self.idle_seconds:
                del self.workers[handle.identity]
                self._retire(handle)
                log.info(json.dumps({"event": "ray_actor_stopped", "worker": handle.index, "reason": "idle"}))

    def wait_reason(self) -> str:
        """Why a queued job has no actor now: the cluster lost, every actor busy at --max-workers, or actors
        asked for that the cluster cannot place (no such resource, or all of it in use)."""
        if self.cluster_error is not None:
            return self.cluster_error
        if self.idle() is not None:
            return ""
        live = [w for w in self.workers.values() if w.dead is None]
        busy = sum(1 for w in live if w.job_id is not None)
        starting = len(live) - busy
        if not starting:
            if len(live) >= self.max_workers:
                return (f"every Ray worker is busy ({busy} of --max-workers {self.max_workers}): it starts when "
                        "one finishes")
            return "asking the Ray cluster for a worker"
        total, free = self.capacity if self.capacity is not None else (None, None)
        if total is not None and total < 1:
            hint = "; for CPU workers start the server with --ray-resource CPU" if self.resource == "GPU" else ""
            return (f"the Ray cluster has no {self.resource} (yet): the job waits for a node with one (an "
                    f"autoscaler may add one){hint}")
        if free is not None and free < 1:
            return (f"every {self.resource} of the Ray cluster is in use ({total - free:g} of {total:g}): the job "
                    "waits for one to be free")
        return f"the Ray cluster is starting {starting} worker{'s' if starting != 1 else ''}"

    # -- one actor's bridge ------------------------------------------------------------------------

    def _bridge(self, handle: RayWorkerHandle) -> None:
        ray = self.ray
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, handle.identity)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        try:
            handle.pid = ray.get(handle.actor.pid.remote(), timeout=ACTOR_START_TIMEOUT)
            self.cluster_error = None
            log.info(json.dumps({"ts": round(time.time(), 3), "event": "ray_actor_started", "worker": handle.index,
                                 "pid": handle.pid}))
            sock.send_multipart(encode(WorkerReady()))
            while not handle.stop.is_set():
                if not sock.poll(200, zmq.POLLIN):
                    continue
                cmd = decode(sock.recv_multipart(), types=WORKER_TYPES)
                if isinstance(cmd, StopWorker):
                    break
                if isinstance(cmd, RunJob):
                    self._stream(handle, sock, cmd)
                    handle.idle_since = time.monotonic()
                    sock.send_multipart(encode(WorkerReady()))
        except Exception as exc:  # the actor, its node or the cluster is gone; the front end reaps it
            if not handle.stop.is_set():
                handle.dead = f"the Ray actor was lost ({type(exc).__name__}: {str(exc)[:300]})"
                log.warning(json.dumps({"event": "ray_actor_lost", "worker": handle.index, "job": handle.job_id,
                                        "error": str(exc)[:500]}))
        finally:
            sock.close()

    def _stream(self, handle: RayWorkerHandle, sock: zmq.Socket, cmd: RunJob) -> None:
        folder = self.results / cmd.job_id
        stream = handle.actor.run.options(num_returns="streaming").remote(
            [bytes(memoryview(f)) for f in encode(cmd)], self._files_for(folder))
        done = False
        for ref in stream:
            item = self.ray.get(ref)
            if item[0] == "file":
                _, name, data = item
                target = (folder / name).resolve()
                if not target.is_relative_to(folder.resolve()):
                    log.error("Ray worker %s sent a file outside its job folder: %r", handle.index, name)
                    continue
                with atomic_path(target) as tmp:  # readers see the old file or the new one, never half
                    tmp.write_bytes(data)
            else:
                done = done or b'"msg_type":"done"' in item[1][0]
                sock.send_multipart(item[1])
        if not done:  # the actor's job thread ended without a word: never leave the job "running"
            for msg in (Error(job_id=cmd.job_id, code=codes.WORKER_CRASHED, message="the Ray worker ended the job "
                              "without finishing it", hint="see the Ray worker's log; submit the job again"),
                        Done(job_id=cmd.job_id, status="failed")):
                sock.send_multipart(encode(msg))

    @staticmethod
    def _files_for(folder: Path) -> dict[str, bytes]:
        """What a job needs on a node with nothing of it: its checkpoint and inputs (not its snapshots)."""
        if not folder.is_dir():
            return {}
        return {p.name: p.read_bytes() for p in folder.iterdir()
                if p.is_file() and p.name not in SKIP and not p.name.startswith(".")}
