"""The front end of `asd serve`: the loop that answers clients and follows the workers.

It never touches a GPU and never blocks on one. Each turn it reads client requests (validated by
the protocol, answered here), reads worker events, starts queued jobs on idle workers, and flushes
what is due to each client. Its parts: the job table and queue (jobs.py), the results folder
(store.py), the worker pool (workers.py) and delivery to peers (delivery.py). Progress goes out at
least once a second per running job.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import zmq

from asd_protocol import (
    PROTOCOL_VERSION,
    RESUMABLE_STATES,
    Accepted,
    Attach,
    Cancel,
    Done,
    Error,
    FrameLimits,
    Heartbeat,
    Hello,
    Image,
    Jobs,
    ListJobs,
    Log,
    MeshSnapshot,
    Message,
    Progress,
    ProtocolError,
    Resume,
    Submit,
    TeacherInfo,
    Texture,
    Welcome,
    decode,
    encode,
)
from asd_protocol import errors as codes
from asd_protocol.client import is_loopback
from asd_protocol.fields import clean_text
from asd_protocol.job_spec import DEFAULT_TEACHER, METHODS, JobSpec, merge
from asd_protocol.messages import now_iso

from .. import __version__, job_layout
from ..errors import UsageError
from ..teachers.registry import TEACHERS, describe, usage
from ..train.presets import PRESETS, resolve_spec
from . import auth
from .commands import WORKER_TYPES, WorkerReady
from .delivery import Delivery, Peer
from .jobs import ACTIVE, FINISHED, Job, JobTable, new_job_id
from .limits import ServerLimits
from .store import ResultStore, is_disk_full
from .workers import Pool, WorkerPool

log = logging.getLogger("asd.server")

KINDS = ("generate", "image", "edit_texture")
PROGRESS_EVERY = 1.0
LOCAL_USER = "local"  # the user of every client on a server without CURVE (loopback, or --insecure)


def event(name: str, **fields: Any) -> None:
    """One structured log line per event (JSON), always with the job id when there is one."""
    log.info(json.dumps({"ts": round(time.time(), 3), "event": name, **fields}, default=str))


def _setting(default: Any, help: str, **metadata: Any) -> Any:
    """A ServerConfig field with the help its `asd serve` flag shows (cli.py generates the flags)."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return dataclasses.field(**factory, metadata={"help": help, **metadata})


def _gpu_list(text: str) -> tuple[int, ...]:
    """--gpus text to indices (argparse shows an ArgumentTypeError's message as the flag's error)."""
    import argparse

    try:
        return tuple(int(g) for g in text.split(",") if g.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give GPU indices separated by commas, e.g. 0,1") from None


@dataclasses.dataclass
class ServerConfig:
    """Everything `asd serve` can be told; each field is its flag (`--max-queued` …) with this help."""

    bind: str = _setting("tcp://127.0.0.1:5555", "address to listen on (loopback by default)")
    # _setting returns dataclasses.field (RUF009 cannot see it); its defaults are immutable or factories.
    results: Path = _setting(Path("asd-results"), "folder for jobs, meshes and checkpoints")  # noqa: RUF009
    teacher: str = _setting(DEFAULT_TEACHER, f"default teacher: {usage()}; the built-in ones are always offered")
    discriminator_models: tuple[str, ...] = _setting(
        (), "a model jobs may name as model.discriminator_model (hub id or folder; repeatable). None by default: "
            "a client must not make the server open paths or download repositories of its choosing",
        flag="discriminator_model", repeatable=True, metavar="ID_OR_PATH")
    device: str = _setting("auto", "auto | cpu | cuda[:N] (one worker)")
    gpus: tuple[int, ...] | None = _setting(
        None, "one worker per listed GPU, e.g. 0,1 (unset: one worker on --device)", parse=_gpu_list)
    curve_dir: Path | None = _setting(None, "CURVE keys (asd keys init); required off loopback")  # noqa: RUF009
    insecure: bool = _setting(False, "allow a non-loopback bind without CURVE (a trusted LAN only)")
    heartbeat_interval: float = _setting(2.0, "seconds between heartbeats to each client")
    max_queued_per_user: int = _setting(8, "queued jobs one user may have (a CURVE key's user; on loopback without "
                                           "CURVE, the one local user)", aliases=("--max-queued-per-client",))
    max_queued: int = _setting(64, "queued jobs on the whole server")
    max_message_bytes: int = _setting(256 * 1024 * 1024, "the largest message a client may send, in bytes")
    max_pending_replies: int = _setting(1000, "reliable replies kept for a client that does not read; past it (or "
                                              "--max-pending-mib) its backlog is dropped and it is told so")
    max_pending_mib: int = _setting(64, "the same cap in MiB of waiting replies, per client")
    max_pending_total_mib: int = _setting(256, "MiB of waiting replies over all clients together (routing ids "
                                               "cost nothing without CURVE); past it the largest backlog is dropped")
    limits: ServerLimits = _setting(ServerLimits,  # noqa: RUF009
                                    "what jobs may ask of this machine (its own flags: --max-steps …)")
    ray: str | None = _setting(None, "run the workers as Ray actors: local, auto or ray://HOST:PORT (pip install "
                                     "'asd-studio[cluster]'; docs/cluster.md); unset: local processes")
    min_workers: int = _setting(1, "--ray: actors kept even when idle")
    max_workers: int = _setting(1, "--ray: actors at most, started while jobs wait")
    ray_resource: str = _setting("GPU", "--ray: what each actor asks for: GPU (one each), CPU, or a custom "
                                        "resource's name")
    max_attempts: int = _setting(3, "--ray: times a job whose worker was lost goes back to the queue before it "
                                    "fails")

    def __post_init__(self) -> None:
        self.results = Path(self.results)
        if self.curve_dir is not None:
            self.curve_dir = Path(self.curve_dir)
        if not is_loopback(self.bind) and self.curve_dir is None and not self.insecure:
            raise UsageError(f"refusing to listen on {self.bind} without CURVE: anyone who can reach it could run "
                             "jobs. Run `asd keys init`, pass --curve-dir, and allow clients with `asd keys allow`; "
                             "or pass --insecure on a trusted network")


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.server_id = uuid.uuid4().hex
        self.store = ResultStore(config.results)
        self.table = JobTable()
        self.delivery: Delivery | None = None
        self.pool: Pool | None = None
        self.latest_mesh: dict[str, list] = {}
        self.latest_image: dict[str, list] = {}
        # job id -> (the worker's newest progress, when it arrived, when it was last sent): re-sent every
        # second with its ETA counted down from the worker's (the one place an ETA is computed).
        self.last_progress: dict[str, tuple[Progress, float, float]] = {}
        # The default, and the teachers that ship with the product (no download, small: the toy and tiny).
        self.teachers = list(dict.fromkeys([config.teacher, *(e.name for e in TEACHERS.values() if e.builtin)]))
        self.ctx = zmq.Context()
        self.authenticator = None
        self.allow_list: auth.AllowList | None = None
        self._refused_at: dict[bytes, float] = {}
        self.clients: zmq.Socket | None = None
        self.address = config.bind
        self._last_heartbeat = 0.0
        self._last_supervise = 0.0
        # Jobs whose newest record could not be written (a full disk): written again every half second
        # until it fits, so a job that ends while the disk is full is not left 'running' on disk.
        self._unsaved: set[str] = set()

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> str:
        """Bind, start workers, reload jobs from the results folder. Returns the bound address."""
        # Everything this server and the workers it spawns write (records, locks, checkpoints, meshes) is
        # private to its user whatever umask it was started with: a record says who owns a job.
        os.umask(0o077)
        self.store.lock()  # first: a second server on this folder stops here, before it binds anything
        self.clients = self.ctx.socket(zmq.ROUTER)
        s = self.clients
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # full or gone peers raise instead of silently dropping
        s.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting client keeps its identity and stream
        s.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        s.setsockopt(zmq.SNDHWM, 64)
        s.setsockopt(zmq.RCVHWM, 256)
        s.setsockopt(zmq.LINGER, 0)
        if self.config.curve_dir is not None:
            self.authenticator, self.allow_list = auth.secure_socket(self.ctx, s, self.config.curve_dir)
        elif not is_loopback(self.config.bind):
            log.warning("WARNING: --insecure: listening on %s WITHOUT authentication or encryption; anyone who "
                        "can reach this port can run jobs and read results", self.config.bind)
        s.bind(self.config.bind)
        self.address = s.getsockopt_string(zmq.LAST_ENDPOINT)
        self.delivery = Delivery(s, self.config.max_pending_replies, self.config.max_pending_mib << 20,
                                 self.config.max_pending_total_mib << 20)
        if self.config.ray is not None:
            from .ray_pool import RayWorkerPool

            self.pool = RayWorkerPool(self.ctx, self.store.root, self.config.ray, min_workers=self.config.min_workers,
                                      max_workers=self.config.max_workers, resource=self.config.ray_resource)
        else:
            self.pool = WorkerPool(self.ctx, self.store.root)
        for job in self.store.load_all():
            if job.status in ("queued", "interrupted"):
                try:  # a record written under other limits (or edited by hand) must not run past this server's
                    self.config.limits.check(JobSpec.from_json(job.spec), path="spec")
                except ProtocolError as exc:
                    job.status, job.error = "failed", f"not run: {exc} (this server's limits, checked on restart)"
                    self._save(job)
                    event("job_refused_on_load", job=job.job_id, reason=str(exc))
            if job.status == "interrupted":
                job.status, job.resume = "queued", True
                self._save(job)
                event("job_requeued", job=job.job_id, reason="server restart", resume=True)
            self.table.add(job)
        self.pool.start(self.config.gpus, self.config.device)
        for w in self.pool.workers.values():
            event("worker_started", worker=w.index, pid=w.pid, device=w.device)
        event("server_started", address=self.address, results=str(self.store.root), teacher=self.config.teacher,
              workers=len(self.pool.workers), curve=self.config.curve_dir is not None, jobs=len(self.table.jobs))
        return self.address

    def serve_forever(self) -> None:
        try:
            while True:
                self.run_once(0.1)
        except KeyboardInterrupt:
            event("server_stopping", reason="interrupt")
        finally:
            self.stop()

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop()
        for job in self.table.jobs.values():
            if job.status == "running":  # its checkpoint is on disk; a restart resumes it
                job.status = "interrupted"
                self._save(job)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.store.unlock()
        self.ctx.destroy(linger=0)

    # -- the loop --------------------------------------------------------------------------------

    def run_once(self, timeout: float = 0.1) -> None:
        poller = zmq.Poller()
        poller.register(self.clients, zmq.POLLIN)
        poller.register(self.pool.socket, zmq.POLLIN)
        ready = dict(poller.poll(int(timeout * 1000)))
        if self.clients in ready:
            for _ in range(100):
                try:
                    frames = self.clients.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_client(frames)
        if self.pool.socket in ready:
            for _ in range(100):
                try:
                    frames = self.pool.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_worker(frames)
        now = time.monotonic()
        if now - self._last_supervise > 0.5:
            self._last_supervise = now
            self._supervise_workers()
            self._resend_progress(now)
            self._end_revoked_peers()
            self._save_unsaved()
            self._explain_waits()
        if now - self._last_heartbeat > self.config.heartbeat_interval:
            self._last_heartbeat = now
            self.delivery.heartbeat(now, lambda job_id: self.table.jobs.get(job_id) is not None
                                    and self.table.jobs[job_id].status in ACTIVE)
        self._dispatch()
        self.delivery.flush()

    # -- clients -----------------------------------------------------------------------------------

    def _on_client(self, frames: list) -> None:
        """One client message. Nothing a client sends may leave this: the server outlives every request."""
        try:
            self._handle_client(frames)
        except Exception:
            log.exception("a client message could not be handled")
            event("request_failed", error="a client message could not be handled (see the server log)")

    def _handle_client(self, frames: list) -> None:
        identity = bytes(frames[0].buffer)
        if self.allow_list is not None:
            # ZAP checks a key once, at the handshake; a key removed since keeps its connection, so every
            # message is checked against the allow-list as it is now.
            key = frames[0].get("User-Id")
            allowed = self.allow_list.lookup(key)
            if allowed is None:
                self._refuse(identity, key)
                return
            peer = self.delivery.peer(identity, allowed.user, allowed.admin, key)
        else:
            peer = self.delivery.peer(identity, LOCAL_USER, admin=True)  # one user: the machine's
        try:
            msg = decode(frames[1:], limits=FrameLimits(max_message_bytes=self.config.max_message_bytes),
                         expect_sender="client")
        except ProtocolError as exc:
            event("bad_message", client=peer.user, code=exc.code, field=exc.field, error=exc.message)
            self.delivery.send(peer, Error.from_exception(exc), reliable=True)
            return
        try:
            handler = {Hello: self._hello, Submit: self._submit, Cancel: self._cancel, Attach: self._attach,
                       Resume: self._resume, ListJobs: self._list, Heartbeat: self._heartbeat_in}[type(msg)]
            handler(peer, msg)
        except ProtocolError as exc:
            self.delivery.send(peer, Error.from_exception(exc, parent_id=msg.msg_id, job_id=msg.job_id), reliable=True)
        except Exception as exc:  # a server never dies of one request
            log.exception("request failed")
            event("request_failed", client=peer.user, msg_type=msg.msg_type, job=msg.job_id, error=str(exc))
            # Cleaned as the worker cleans a failure: an exception's text may hold newlines, and the reply must encode.
            text = clean_text(f"the server could not handle this {msg.msg_type}: {type(exc).__name__}: {exc}")[:4000]
            self.delivery.send(peer, Error(code=codes.SERVER_ERROR, message=text, hint="see the server log; the "
                                           "server is still running", parent_id=msg.msg_id, job_id=msg.job_id),
                               reliable=True)

    def _refuse(self, identity: bytes, key: str) -> None:
        """A key no longer allowed: forget its peer (its subscriptions and backlog) and tell it, at most
        every few seconds (it keeps saying hello)."""
        self.delivery.forget(identity)
        now = time.monotonic()
        if now - self._refused_at.get(identity, -1e9) < 5.0:
            return
        self._refused_at[identity] = now
        event("access_revoked", client_key=key)
        error = Error(code=codes.ACCESS_REVOKED, message="this client's key was removed from the server's allow-list",
                      hint="ask the server's admin to allow your key again (asd keys allow)")
        try:
            self.clients.send_multipart([identity, *encode(error)], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            pass  # gone or not reading: it is refused either way

    def _end_revoked_peers(self) -> None:
        if self.allow_list is None:
            return
        now = time.monotonic()
        self._refused_at = {i: t for i, t in self._refused_at.items() if now - t < 60.0}  # bounded
        for identity, peer in list(self.delivery.peers.items()):
            if peer.key is not None and self.allow_list.lookup(peer.key) is None:
                self._refuse(identity, peer.key)

    def _save(self, job: Job) -> None:
        """A job's record after a change. A write that fails (a full disk) is logged and the server keeps
        serving from memory; the record is written again every half second until it fits."""
        try:
            self.store.save(job)
        except OSError as exc:
            if job.job_id not in self._unsaved:
                event("record_not_saved", job=job.job_id, disk_full=is_disk_full(exc), error=str(exc))
            self._unsaved.add(job.job_id)
        else:
            self._unsaved.discard(job.job_id)

    def _save_unsaved(self) -> None:
        for job_id in list(self._unsaved):
            job = self.table.jobs.get(job_id)
            if job is None:
                self._unsaved.discard(job_id)
            else:
                self._save(job)

    def _visible(self, peer: Peer, job: Job) -> bool:
        return peer.admin or job.client == peer.user

    def _hello(self, peer: Peer, msg: Hello) -> None:
        event("hello", client=peer.user, client_name=msg.client, protocol=msg.protocol_version)
        teachers = [TeacherInfo(name=t, description=describe(t)[0], trained=describe(t)[1]) for t in self.teachers]
        self.delivery.send(peer, msg.reply(
            Welcome, server=f"asd-backend/{__version__}", server_id=self.server_id, protocol_version=PROTOCOL_VERSION,
            capabilities=list(KINDS), teachers=teachers, default_teacher=self.config.teacher,
            methods=list(METHODS), presets=list(PRESETS), heartbeat_interval=self.config.heartbeat_interval,
            limits={"max_queued_per_user": self.config.max_queued_per_user, "max_queued": self.config.max_queued,
                    "max_message_bytes": self.config.max_message_bytes,
                    "max_pending_replies": self.config.max_pending_replies, **self.config.limits.to_json()}),
            reliable=True)

    def _heartbeat_in(self, peer: Peer, msg: Heartbeat) -> None:
        pass  # last_seen is already updated; our own heartbeats go out on a timer

    def _submit(self, peer: Peer, msg: Submit) -> None:
        if msg.kind not in KINDS:
            raise ProtocolError(codes.UNSUPPORTED, f"this server does not run {msg.kind!r} jobs yet",
                                field="content.spec.kind", hint=f"supported: {', '.join(KINDS)}")
        self._check_quotas(peer)
        if self.pool.cluster_error is not None:
            raise ProtocolError(codes.SERVER_ERROR, f"no worker can take jobs now: {self.pool.cluster_error}",
                                hint="the job list and results still work; submit again once the cluster is back")
        # Everything is checked here, before the job is queued: a queued job runs with exactly this spec.
        spec = resolve_spec(merge({"model": {"teacher": self.config.teacher}}, msg.spec), path="content.spec")
        if spec.model.teacher not in self.teachers:
            raise ProtocolError(codes.INVALID_FIELD, f"teacher {spec.model.teacher!r} is not offered by this server",
                                field="content.spec.model.teacher", hint=f"use one of {', '.join(self.teachers)}")
        model = spec.model.discriminator_model
        if model is not None and model not in self.config.discriminator_models:
            # Refused before anything looks at the name: the answer says nothing of what exists here.
            offered = ", ".join(self.config.discriminator_models) or "none (asd serve --discriminator-model offers one)"
            raise ProtocolError(codes.INVALID_FIELD, "this server does not offer that discriminator model",
                                field="content.spec.model.discriminator_model",
                                hint=f"leave it unset (ε_φ is a LoRA on the teacher), or use one of: {offered}")
        self.config.limits.check(spec)
        side = self.config.limits.max_edit_texture_side
        if msg.kind == "edit_texture" and max(msg.texture.shape[:2]) > side:
            raise ProtocolError(codes.TOO_LARGE, f"textures up to {side}² are edited here; got "
                                f"{msg.texture.shape[1]}×{msg.texture.shape[0]}", field="content.texture",
                                hint="scale the image down in Blender first")
        resolved = spec.to_json()
        job = Job(job_id=new_job_id(), kind=spec.kind, prompt=spec.prompt, spec=resolved, client=peer.user,
                  total=spec.steps)
        try:  # on disk before it is queued: a job the server accepted survives a restart
            if msg.kind == "edit_texture":  # the inputs outlive this message: the worker (and a resume) read them
                self.store.save_arrays(job.job_id, job_layout.EDIT_INPUTS, vertices=msg.vertices, faces=msg.faces,
                                       uvs=msg.uvs, texture=msg.texture)
            self.store.save(job)
        except OSError as exc:
            self.store.discard(job.job_id)
            full = is_disk_full(exc)
            event("submit_not_saved", client=peer.user, disk_full=full, error=str(exc))
            raise ProtocolError(codes.DISK_FULL if full else codes.SERVER_ERROR,
                                ("the server's disk is full: " if full else "the server could not save the job: ")
                                + f"{type(exc).__name__}: {exc}",
                                hint="nothing was queued; ask the server's admin to free space, then submit again"
                                if full else "nothing was queued; see the server log") from None
        self.table.add(job)
        peer.subscriptions.add(job.job_id)
        event("submit", job=job.job_id, client=peer.user, kind=job.kind, prompt=job.prompt[:200], spec=msg.spec)
        self.delivery.send(peer, msg.reply(Accepted, job_id=job.job_id, kind=job.kind,
                                   queue_position=self.table.position(job.job_id) or 0, spec=resolved),
                   reliable=True)

    def _check_quotas(self, peer: Peer) -> None:
        if self.table.queued_by(peer.user) >= self.config.max_queued_per_user:
            raise ProtocolError(codes.QUEUE_FULL, f"you already have {self.config.max_queued_per_user} queued jobs",
                                hint="wait for one to start, or cancel one")
        if len(self.table.queue) >= self.config.max_queued:
            raise ProtocolError(codes.QUEUE_FULL, f"the server's queue is full ({self.config.max_queued} jobs)",
                                hint="try again when some have started")

    def _resume(self, peer: Peer, msg: Resume) -> None:
        job = self._job(peer, msg)
        if job.kind != "generate":
            raise ProtocolError(codes.UNSUPPORTED, f"job {job.job_id} is an {job.kind} job; only generate jobs keep "
                                "checkpoints", field="header.job_id", hint="submit it again")
        if job.status not in RESUMABLE_STATES:
            raise ProtocolError(codes.INVALID_FIELD, f"job {job.job_id} is {job.status}; only failed, cancelled or "
                                "interrupted jobs resume", field="header.job_id")
        if not self._has_checkpoint(job):
            raise ProtocolError(codes.INVALID_FIELD, f"job {job.job_id} stopped before its first checkpoint",
                                field="header.job_id", hint="submit it again")
        self._check_quotas(peer)
        job.status, job.resume, job.error = "queued", True, ""
        job.touch()
        self.table.add(job)
        self._save(job)
        peer.subscriptions.add(job.job_id)
        event("resume", job=job.job_id, client=peer.user, step=job.step)
        self.delivery.send(peer, msg.reply(Accepted, job_id=job.job_id, kind=job.kind,
                                           queue_position=self.table.position(job.job_id) or 0, spec=job.spec),
                           reliable=True)

    def _has_checkpoint(self, job: Job) -> bool:
        return (self.store.job_dir(job.job_id) / job_layout.CHECKPOINT).is_file()

    def resume_hint(self, job: Job) -> str:
        """What to tell the artist about a failed job: resuming, when it can; otherwise nothing."""
        if job.kind == "generate" and self._has_checkpoint(job):
            return (f"it can continue from its last checkpoint: `asd submit --resume {job.job_id}`, or Resume in "
                    "Blender's job list")
        return ""

    def _job(self, peer: Peer, msg: Message) -> Job:
        job = self.table.jobs.get(msg.job_id)
        if job is None or not self._visible(peer, job):  # another user's job is not there for this one
            raise ProtocolError(codes.UNKNOWN_JOB, f"no job {msg.job_id!r} on this server", field="header.job_id",
                                hint="list jobs to see their ids")
        return job

    def _cancel(self, peer: Peer, msg: Cancel) -> None:
        job = self._job(peer, msg)
        event("cancel", job=job.job_id, client=peer.user, status=job.status)
        if job.status in FINISHED:
            raise ProtocolError(codes.INVALID_FIELD, f"job {job.job_id} has already {job.status}",
                                field="header.job_id")
        if job.status == "queued" and self.table.remove_from_queue(job.job_id):
            self._finish(job, Done(job_id=job.job_id, status="cancelled"))
            return
        self.pool.cancel(job.job_id)

    def _attach(self, peer: Peer, msg: Attach) -> None:
        job = self._job(peer, msg)
        peer.subscriptions.add(job.job_id)
        event("attach", job=job.job_id, client=peer.user, status=job.status)
        self.delivery.send(peer, msg.reply(Jobs, jobs=[job.info(self.table.position(job.job_id))]), reliable=True)
        finals = self._finals_from_disk(job) if job.status == "completed" else []
        for frames in finals or [self.latest_mesh.get(job.job_id), self.latest_image.get(job.job_id)]:
            if frames is not None:
                self.delivery.send_frames(peer, frames, reliable=True)
        if job.status in FINISHED:
            self.delivery.send(peer, Done(job_id=job.job_id, status=job.status, seconds=job.seconds,
                                          outputs=job.outputs), reliable=True)
        elif job.job_id in self.last_progress:
            self.delivery.send(peer, self.last_progress[job.job_id][0])

    def _finals_from_disk(self, job: Job) -> list[list]:
        """A finished job's results read back from its folder, encoded (nothing is kept in memory)."""
        import numpy as np
        from PIL import Image as PILImage

        from ..mesh.export import read_mesh

        out = []
        for name in job.outputs:
            path = self.store.output_path(job, name)
            if not path.is_file():
                continue
            if name == "mesh":
                mesh = read_mesh(path)
                out.append(encode(MeshSnapshot(job_id=job.job_id, vertices=mesh.vertices, faces=mesh.faces,
                                               colors=mesh.colors, snapshot=job.snapshots, step=job.step, final=True)))
            elif name in ("image", "texture", "preview"):
                with PILImage.open(path) as picture:
                    pixels = np.asarray(picture.convert("RGBA" if name == "texture" else "RGB"))
                if name == "texture":
                    out.append(encode(Texture(job_id=job.job_id, pixels=pixels, step=job.step, final=True)))
                else:
                    out.append(encode(Image(job_id=job.job_id, pixels=pixels, step=job.step, final=True,
                                            role="result" if name == "image" else "preview")))
        return out

    def _list(self, peer: Peer, msg: ListJobs) -> None:
        listing = self.table.listing(msg.limit, None if peer.admin else peer.user)
        self.delivery.send(peer, msg.reply(Jobs, jobs=listing), reliable=True)

    # -- workers -----------------------------------------------------------------------------------

    def _on_worker(self, frames: list) -> None:
        identity = bytes(frames[0].buffer)
        worker = self.pool.get(identity)
        if worker is None:
            return
        try:
            msg = decode(frames[1:], types=WORKER_TYPES)
        except ProtocolError as exc:
            log.error("worker %s sent a bad event: %s", worker.index, exc)
            return
        if isinstance(msg, WorkerReady):
            worker.ready, worker.job_id = True, None
            return
        job = self.table.jobs.get(msg.job_id or "")
        if job is None:
            return
        encoded = encode(msg)
        if isinstance(msg, Progress):
            job.step, job.total = msg.step, msg.total or job.total
            now = time.monotonic()
            self.last_progress[job.job_id] = (msg, now, now)
            self._publish(job, encoded, latest="progress")
        elif isinstance(msg, MeshSnapshot):
            job.snapshots = max(job.snapshots, msg.snapshot)
            self.latest_mesh[job.job_id] = encoded
            if msg.final:
                self.delivery.drop_latest(job.job_id, "mesh")
            self._publish(job, encoded, latest=None if msg.final else "mesh")
            event("snapshot", job=job.job_id, index=msg.snapshot, step=msg.step, faces=len(msg.faces), final=msg.final)
        elif isinstance(msg, (Image, Texture)):
            self.latest_image[job.job_id] = encoded
            self._publish(job, encoded, latest=None if msg.final else "image")
        elif isinstance(msg, (Log, Error)):
            if isinstance(msg, Error):
                job.error = msg.message
                if resume := self.resume_hint(job):  # the worker does not know what the front end offers
                    msg = dataclasses.replace(msg, hint=f"{msg.hint}; or {resume}" if msg.hint else resume)
                    encoded = encode(msg)
            event("job_" + msg.msg_type, job=job.job_id, text=getattr(msg, "text", None) or msg.message[:500])
            self._publish(job, encoded)
        elif isinstance(msg, Done):
            worker.job_id = None
            job.outputs = self.store.relative_outputs(job.job_id, dict(msg.outputs))
            job.seconds = msg.seconds
            self._finish(job, msg)
        job.touch()

    def _finish(self, job: Job, done: Done) -> None:
        job.status = done.status
        job.touch()
        self._save(job)
        self.last_progress.pop(job.job_id, None)
        # The final mesh and image are on disk now (attach reads them there): keep no copy in memory.
        self.latest_mesh.pop(job.job_id, None)
        self.latest_image.pop(job.job_id, None)
        event("job_" + done.status, job=job.job_id, seconds=round(done.seconds, 2), error=job.error[:300] or None)
        self._publish(job, encode(done))

    def _dispatch(self) -> None:
        while (worker := self.pool.idle()) is not None:
            job = self.table.next_queued()
            if job is None:
                return
            job.status, job.started_at, job.error, job.waiting = "running", time.time(), "", ""
            job.touch()
            self._save(job)
            event("job_started", job=job.job_id, worker=worker.index, resume=job.resume)
            self.pool.run(worker, job.job_id, job.spec, job.resume)
            starting = Progress(job_id=job.job_id, phase="starting", step=job.step, total=job.total)
            now = time.monotonic()
            self.last_progress[job.job_id] = (starting, now, now)  # re-sent every second from now on
            self._publish(job, encode(starting), latest="progress")

    def _supervise_workers(self) -> None:
        before = {id(w) for w in self.pool.workers.values()}
        for worker in self.pool.reap():
            event("worker_died", worker=worker.index, reason=worker.death(), job=worker.job_id)
            job = self.table.jobs.get(worker.job_id or "")
            if job is None or job.status != "running":
                continue
            if (self.pool.resumes_lost_jobs and job.attempts < self.config.max_attempts
                    and self.pool.cluster_error is None):
                # A cluster worker lost with its node: the job goes back to the queue's front and continues
                # from the last checkpoint that reached the results folder, on another worker.
                job.attempts += 1
                job.status, job.resume = "queued", self._has_checkpoint(job)
                job.touch()
                self.table.add(job, front=True)
                self._save(job)
                self.last_progress.pop(job.job_id, None)
                event("job_requeued", job=job.job_id, reason=worker.death(), resume=job.resume, attempt=job.attempts)
                self._publish(job, encode(Log(job_id=job.job_id, level="warning", text=(
                    f"the worker running this job was lost ({worker.death()}); it continues on another worker "
                    + (f"from its checkpoint (attempt {job.attempts + 1} of {self.config.max_attempts + 1})"
                       if job.resume else "from the start")))))
                continue
            job.error = f"the worker process died ({worker.death()}) while running this job"
            if self.pool.cluster_error is not None:
                job.error += f"; {self.pool.cluster_error}"
            elif self.pool.resumes_lost_jobs:
                job.error += f"; it was lost {job.attempts + 1} times"
            resume = self.resume_hint(job)
            self._publish(job, encode(Error(
                job_id=job.job_id, code=codes.WORKER_CRASHED, message=job.error,
                hint="the server restarted the worker; " + (resume or "submit the job again")
                     + " (a lighter preset if it ran out of memory)")))
            self._finish(job, Done(job_id=job.job_id, status="failed"))
        if self.pool.cluster_error is not None:
            self._fail_lost_jobs(self.pool.cluster_error)
        self.pool.scale(len(self.table.queue))
        for w in self.pool.workers.values():
            if id(w) not in before:  # replacements, and actors started for the queue
                event("worker_started", worker=w.index, pid=w.pid, device=w.device)

    def _fail_lost_jobs(self, reason: str) -> None:
        """The cluster is unreachable: jobs put back in the queue when their workers were lost fail now,
        with the reason, instead of waiting for it (jobs that never started wait for it to come back)."""
        for job_id in list(self.table.queue):
            job = self.table.jobs[job_id]
            if job.attempts == 0:
                continue
            self.table.remove_from_queue(job_id)
            job.error = f"{reason}; this job's worker was lost with it"
            self._publish(job, encode(Error(job_id=job_id, code=codes.WORKER_CRASHED, message=job.error,
                                            hint=self.resume_hint(job) or "submit it again once the cluster is back")))
            self._finish(job, Done(job_id=job_id, status="failed"))

    def _explain_waits(self) -> None:
        """Each queued job says why it has no worker (list_jobs' `waiting`); its followers hear it as a log
        when the words change: every worker busy, a cluster without the GPU the workers ask for, a lost head."""
        if not self.table.queue:
            return
        reason = self.pool.wait_reason()
        for position, job_id in enumerate(self.table.queue, start=1):
            job = self.table.jobs[job_id]
            waiting = f"queued (position {position}): {reason}" if reason else ""
            if waiting and waiting != job.waiting:
                event("job_waiting", job=job_id, reason=reason, position=position)
                self._publish(job, encode(Log(job_id=job_id, level="info", text=waiting[:4000])))
            job.waiting = waiting

    def _publish(self, job: Job, frames: list, latest: str | None = None) -> None:
        self.delivery.publish(job.job_id, frames, latest)

    def _resend_progress(self, now: float) -> None:
        for job_id, (msg, arrived, sent) in list(self.last_progress.items()):
            job = self.table.jobs.get(job_id)
            if job is None or job.status != "running" or now - sent < PROGRESS_EVERY:
                continue
            waited = now - arrived
            fresh = dataclasses.replace(
                msg, msg_id=uuid.uuid4().hex, timestamp=now_iso(),
                elapsed_seconds=msg.elapsed_seconds + waited,
                eta_seconds=None if msg.eta_seconds is None else max(msg.eta_seconds - waited, 0.0))
            self.last_progress[job_id] = (msg, arrived, now)
            self._publish(job, encode(fresh), latest="progress")
