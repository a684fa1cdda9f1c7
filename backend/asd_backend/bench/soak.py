"""`asd bench serve --scenario soak`: a shared server under everything at once, for a bounded time.

Three artists submit random valid jobs (generate, image and texture-edit jobs, tiny teacher) and
cancel, resume, attach and list at random; a fuzzer sends random and mutated frames, and specs whose
keys hold control characters or lone surrogates; a slow reader asks for job lists and never reads,
and so do fresh routing ids that come and go; the worker is killed every `kill_every` seconds and the
results folder's disk is full for 2 s every `full_disk_every` seconds. Then the
artists stop and the queue drains. The report: jobs by final status (every job must end completed,
cancelled or failed), error replies, server-side request failures, worker kills, server restarts
(must be zero) and the front end's resident memory over time (flat, with the backlog cap).
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from asd_protocol import Accepted, Error, Jobs, ListJobs, Submit, encode
from asd_protocol.client import AsdClient
from asd_protocol.job_spec import partial_from_options

from .serve import fill_filesystem, memory_mib, serving

FINISHED = ("completed", "cancelled", "failed")


def _edit_arrays() -> dict[str, np.ndarray]:
    """A unit quad (two triangles) with UVs and an 16×16 texture: the smallest valid edit job."""
    vertices = np.array([[-0.5, 0, -0.5], [0.5, 0, -0.5], [0.5, 0, 0.5], [-0.5, 0, 0.5]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)
    corner_uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    texture = np.full((16, 16, 3), 128, np.uint8)
    return {"vertices": vertices, "faces": faces, "uvs": corner_uv[faces], "texture": texture}


def _random_job(rng: random.Random) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    kind = rng.choice(["generate", "generate", "image", "edit_texture"])
    if kind == "generate":
        return kind, {"preset": "smoke", "steps": rng.randint(2, 14), "mesh_every": rng.choice([0, 3, 6]),
                      "seed": rng.randint(0, 99)}, {}
    if kind == "image":
        return kind, {"preset": "smoke", "steps": rng.randint(1, 4), "seed": rng.randint(0, 99)}, {}
    return kind, {"steps": rng.randint(1, 3), "views": 2, "resolution": 64}, _edit_arrays()


def _fuzz_frames(rng: random.Random) -> list[bytes]:
    if rng.random() < 0.5:
        return [rng.randbytes(rng.randint(0, 200)) for _ in range(rng.randint(1, 4))]
    frames = [bytes(f) for f in encode(Submit(spec={"prompt": "fuzzed teapot", "preset": "smoke", "seed": 1}))]
    target = rng.randrange(len(frames))
    data = bytearray(frames[target])
    for _ in range(rng.randint(1, 4)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    frames[target] = bytes(data)
    return frames


def _poisoned_spec(rng: random.Random) -> list[bytes]:
    """A submit whose spec has a key with a control character or a lone surrogate, at some depth (one such
    message used to stop the server)."""
    key = rng.choice([r"\u0007", r"\ud800", r"x\u001b[2J", r"\u0085\udfff", r"\u0000"]).encode()
    spec = rng.choice([b'{"prompt": "a", "KEY": 1}', b'{"prompt": "a", "schedule": {"KEY": 1}}',
                       b'{"prompt": "a", "nerf": {"grid": {"KEY": 2}}}']).replace(b"KEY", key)
    frames = [bytes(f) for f in encode(Submit(spec={"prompt": "PLACEHOLDER"}))]
    frames[1] = frames[1].replace(b'{"prompt": "PLACEHOLDER"}', spec).replace(b'{"prompt":"PLACEHOLDER"}', spec)
    return frames


def _worker_pids(log: Path) -> list[int]:
    return [json.loads(line)["pid"] for line in log.read_text().splitlines()
            if line.startswith("{") and '"worker_started"' in line]


def _events(log: Path, name: str) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.startswith("{") and f'"event": "{name}"' in line)


def run(seconds: float = 180.0, seed: int = 0, kill_every: float = 45.0,
        drain_timeout: float = 300.0, full_disk_every: float = 0.0) -> dict[str, Any]:
    """`full_disk_every` > 0: the results folder is a 256 MiB filesystem of its own (root only), filled to
    the last byte for 2 s every that many seconds."""
    import zmq

    rng = random.Random(seed)
    with serving("--max-pending-replies", "200", "--max-queued-per-user", "6",
                 disk_mib=256 if full_disk_every > 0 else 0) as bench:
        server, address, log = bench.process, bench.address, bench.log
        counts = {"submitted": 0, "accepted": 0, "refused": 0, "cancels": 0, "resumes": 0, "attaches": 0,
                  "lists": 0, "fuzz_frames": 0, "fuzz_replies": 0, "slow_requests": 0, "worker_kills": 0,
                  "poisoned_specs": 0, "routing_ids": 0, "full_disk_moments": 0}
        filler, last_fill = None, time.monotonic()
        passers: list = []  # fresh routing ids that ask for a list and never read
        memory: list[float] = []
        artists: list[AsdClient] = []
        ctx = zmq.Context.instance()
        fuzzer, slow = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        try:
            for s in (fuzzer, slow):
                s.setsockopt(zmq.LINGER, 0)
                s.connect(address)
            slow.setsockopt(zmq.RCVHWM, 1)
            artists = [AsdClient(address, client_name=f"soak-{i}", dead_after=120.0) for i in range(3)]
            for a in artists:
                a.wait_for(lambda m: m.msg_type == "welcome", 60)
            jobs: list[str] = []
            pending: dict[str, AsdClient] = {}  # request id -> who waits for its reply
            started = last_kill = last_sample = time.monotonic()
            while time.monotonic() - started < seconds:
                now = time.monotonic()
                artist = rng.choice(artists)
                action = rng.random()
                if action < 0.015:  # about one job a second: more than the one worker finishes
                    kind, spec, arrays = _random_job(rng)
                    request = artist.submit(partial_from_options(kind, prompt=f"soak {kind} {counts['submitted']}",
                                                                 **spec), **arrays)
                    pending[request] = artist
                    counts["submitted"] += 1
                elif action < 0.025 and jobs:
                    artist.cancel(rng.choice(jobs))
                    counts["cancels"] += 1
                elif action < 0.03 and jobs:
                    pending[artist.resume(rng.choice(jobs))] = artist
                    counts["resumes"] += 1
                elif action < 0.04 and jobs:
                    artist.attach(rng.choice(jobs))
                    counts["attaches"] += 1
                elif action < 0.06:
                    artist.list_jobs()
                    counts["lists"] += 1
                elif action < 0.25:
                    fuzzer.send_multipart(_fuzz_frames(rng))
                    counts["fuzz_frames"] += 1
                elif action < 0.35:
                    slow.send_multipart(encode(ListJobs(limit=10_000)))
                    counts["slow_requests"] += 1
                elif action < 0.37:
                    fuzzer.send_multipart(_poisoned_spec(rng))
                    counts["poisoned_specs"] += 1
                elif action < 0.38:
                    passer = ctx.socket(zmq.DEALER)
                    passer.setsockopt(zmq.LINGER, 0)
                    passer.setsockopt(zmq.RCVHWM, 1)
                    passer.connect(address)
                    for _ in range(20):
                        passer.send_multipart(encode(ListJobs(limit=10_000)))
                    passers.append(passer)
                    counts["routing_ids"] += 1
                    if len(passers) > 24:  # they come and go
                        passers.pop(0).close()
                while fuzzer.poll(0):
                    fuzzer.recv_multipart()
                    counts["fuzz_replies"] += 1
                for a in artists:
                    for msg in a.poll(timeout=0.0):
                        if msg.parent_id in pending and isinstance(msg, (Accepted, Error)):
                            del pending[msg.parent_id]
                            if isinstance(msg, Accepted):
                                counts["accepted"] += msg.job_id not in jobs
                                if msg.job_id not in jobs:
                                    jobs.append(msg.job_id)
                            else:
                                counts["refused"] += 1
                if now - last_kill > kill_every:
                    last_kill = now
                    pids = _worker_pids(log)
                    if pids:
                        try:
                            os.kill(pids[-1], signal.SIGKILL)
                            counts["worker_kills"] += 1
                        except ProcessLookupError:
                            pass
                if full_disk_every > 0 and filler is None and now - last_fill > full_disk_every:
                    filler, last_fill = fill_filesystem(bench.results), now  # not a byte left for anything
                    counts["full_disk_moments"] += 1
                elif filler is not None and now - last_fill > 2.0:
                    filler.unlink()
                    filler, last_fill = None, now
                if now - last_sample > 1.0:
                    last_sample = now
                    memory.append(memory_mib(server.pid)["rss"])
                time.sleep(0.02)
            if filler is not None:
                filler.unlink()
            # Drain: nobody submits any more; every job must end.
            lister = artists[0]
            deadline = time.monotonic() + drain_timeout
            statuses: dict[str, str] = {}
            while time.monotonic() < deadline:
                request = lister.list_jobs(limit=10_000)
                reply = lister.wait_for(lambda m, r=request: m.parent_id == r and isinstance(m, Jobs), 60)
                statuses = {j.job_id: j.status for j in reply.jobs}
                if all(s in FINISHED for s in statuses.values()):
                    break
                memory.append(memory_mib(server.pid)["rss"])
                time.sleep(1.0)
            peak = memory_mib(server.pid)["peak"]
            alive = server.poll() is None
        finally:
            for a in artists:
                a.close()
            fuzzer.close()
            slow.close()
            for passer in passers:
                passer.close()
        by_status: dict[str, int] = {}
        for status in statuses.values():
            by_status[status] = by_status.get(status, 0) + 1
        half = len(memory) // 2
        return {
            "benchmark": "serve.soak", "seconds": seconds, "seed": seed, **counts,
            "jobs_by_status": by_status,
            "unfinished": sum(1 for s in statuses.values() if s not in FINISHED),
            "request_failures": _events(log, "request_failed"),
            "server_restarts": _events(log, "server_started") - 1 + (0 if alive else 1),
            "server_alive_at_end": alive,
            "rss_mib": {"first_half_median": statistics.median(memory[:half]) if half else None,
                        "second_half_median": statistics.median(memory[half:]) if memory else None,
                        "max": max(memory) if memory else None, "peak": peak},
        }
