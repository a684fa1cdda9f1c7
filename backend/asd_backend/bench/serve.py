"""`asd bench serve`: many clients following one streaming job on a real server over loopback.

A server subprocess runs a tiny-teacher job that streams a preview mesh every few steps; N clients
(one submits, the others attach) poll their own DEALER sockets round-robin, as N Blenders would.
Latency is arrival time minus the message's header timestamp (same machine, same clock): for
`progress` messages, and for `mesh` snapshots (preview and final).

`time_to_first_mesh` is what an artist waits after pressing Generate: from the submit to the first
mesh in the client, for a `preview` job, cold (the server's first job: the worker loads the
teacher) and warm (the next one, teacher loaded); each is cancelled once its first mesh is in.

`cancel_latency` (`--scenario cancel`): seconds from a cancel to the job's `done`, sent while the
worker loads its teacher (the server's first job), while the job optimises, and while it is inside
a long final phase (a 512³ extraction and a 1024² preview render).
`slow_reader` (`--scenario slow-reader`): a client that sends list_jobs requests and never reads the
replies, on a server holding many jobs; reports the front end's resident memory before and at its
peak (VmHWM), which the per-client backlog cap bounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from asd_protocol import Accepted, Done, MeshSnapshot, Progress
from asd_protocol.client import AsdClient
from asd_protocol.job_spec import partial_from_options

from ..errors import UsageError
from ..loopback import free_port


def _age_ms(timestamp: str) -> float:
    sent = datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    return 1000 * (time.time() - sent)


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {"count": len(values), "p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
            "max_ms": round(ordered[-1], 2)}


def _time_to_first_mesh(client: AsdClient, timeout: float = 300.0) -> float:
    """Seconds from submitting a `preview` job to its first mesh at this client; the job is then cancelled."""
    started = time.monotonic()
    request = client.submit(partial_from_options("generate", prompt="a first-mesh teapot", preset="preview"))
    accepted = client.wait_for(lambda m: m.parent_id == request and isinstance(m, Accepted), 30)
    client.wait_for(lambda m: m.job_id == accepted.job_id and isinstance(m, MeshSnapshot), timeout)
    seconds = time.monotonic() - started
    client.cancel(accepted.job_id)
    client.wait_for(lambda m: m.job_id == accepted.job_id and isinstance(m, Done), 120)
    return round(seconds, 2)


@dataclasses.dataclass
class BenchServer:
    process: subprocess.Popen
    address: str
    log: Path
    results: Path

    def log_text(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def serving(*extra: str, prepare: Callable[[Path], None] | None = None,
            wait: bool = True, disk_mib: int = 0) -> Iterator[BenchServer]:
    """An `asd serve` subprocess on a free loopback port (tiny teacher, CPU, `extra` flags) over a fresh
    results folder (`prepare(results)` fills it first), stopped when the block ends. `disk_mib`: the results
    folder is a filesystem of its own of that size (a tmpfs; root only, else UsageError), so a benchmark
    can fill it without touching any other disk."""
    with tempfile.TemporaryDirectory(prefix="asd-bench-") as tmp, contextlib.ExitStack() as mounts:
        folder = Path(tmp)
        if disk_mib:
            mounts.enter_context(small_filesystem(folder / "results", disk_mib))
        if prepare is not None:
            prepare(folder / "results")
        address = f"tcp://127.0.0.1:{free_port()}"
        log = folder / "server.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen([sys.executable, "-m", "asd_backend.cli", "serve", "--bind", address,
                                        "--results", str(folder / "results"), "--teacher", "tiny", "--device",
                                        "cpu", *extra], stdout=handle, stderr=subprocess.STDOUT)
        server = BenchServer(process, address, log, folder / "results")
        try:
            if wait:
                deadline = time.monotonic() + 120
                while "asd serve: listening on" not in server.log_text():
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"asd serve did not start:\n{server.log_text()[-2000:]}")
                    time.sleep(0.1)
            yield server
        finally:
            stop(process)


@contextlib.contextmanager
def small_filesystem(path: Path, mib: int) -> Iterator[Path]:
    """A tmpfs of `mib` MiB mounted at `path` for the block (root only: UsageError elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        why = mounted.stderr.strip() or "mount failed"
        raise UsageError(f"cannot mount a {mib} MiB tmpfs for the results ({why}): full-disk moments need root; "
                         "leave them out (--full-disk-every 0)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_filesystem(path: Path, leave_bytes: int = 0) -> Path:
    """Fill the filesystem holding `path` to within `leave_bytes` of full; returns the filler file."""
    filler = path / ".filler"
    stat = os.statvfs(path)
    with open(filler, "ab") as handle:
        handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave_bytes))
    return filler


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of a process now and at its peak (Linux /proc), MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss" if key == "VmRSS" else "peak"] = round(int(value.split()[0]) / 1024, 1)
    return out


def _cancel_latency(client: AsdClient, phase: str) -> tuple[float, str]:
    """Seconds from a cancel to `done`, sent once the job reports `phase`, and how the job ended (a job
    that ignores the cancel ends `completed`)."""
    if phase in ("loading", "optimizing"):
        spec = {"preset": "preview"}
    else:  # a long last phase: a big extraction, then a big preview render
        spec = {"preset": "smoke", "steps": 2, "mesh_every": 0, "mc_resolution": 512, "preview_render": 1024}
    request = client.submit(partial_from_options("generate", prompt=f"a cancelled teapot ({phase})", **spec))
    job = client.wait_for(lambda m: m.parent_id == request and isinstance(m, Accepted), 30).job_id
    client.wait_for(lambda m: m.job_id == job and isinstance(m, Progress) and m.phase == phase
                    and (phase != "optimizing" or m.step >= 2), 300)
    started = time.monotonic()
    client.cancel(job)
    done = client.wait_for(lambda m: m.job_id == job and isinstance(m, Done), 300)
    return round(time.monotonic() - started, 3), done.status


def cancel_latency(repeats: int = 3) -> dict[str, Any]:
    with serving() as server, AsdClient(server.address, client_name="bench-cancel", dead_after=60.0) as client:
        out = {}
        for phase in ("loading", "optimizing", "extracting"):  # loading: once, the worker's cold start
            runs = [_cancel_latency(client, phase) for _ in range(1 if phase == "loading" else repeats)]
            times = [t for t, _ in runs]
            out[phase] = {"median_s": statistics.median(times), "max_s": max(times), "runs": times,
                          "ended": sorted({status for _, status in runs})}
    return {"benchmark": "serve.cancel_latency", **out,
            "note": "cancel sent → done received; 'extracting': during a 512³ final extraction and 1024² render"}


def _throughput(extra: tuple[str, ...], jobs: int, steps: int) -> dict[str, Any]:
    """Jobs per minute on a fresh server with `extra` flags (once its workers are up and warm), and the
    latency of mesh snapshots (arrival minus the worker's header timestamp)."""
    with serving(*extra) as server, AsdClient(server.address, client_name="bench-ray", dead_after=120.0) as client:
        warm = client.submit(partial_from_options("generate", prompt="a warm-up teapot", preset="smoke", steps=2,
                                                  mesh_every=0))
        warm_id = client.wait_for(lambda m: m.parent_id == warm and isinstance(m, Accepted), 60).job_id
        client.wait_for(lambda m: m.job_id == warm_id and isinstance(m, Done), 300)
        started = time.monotonic()
        ids = []
        for i in range(jobs):
            request = client.submit(partial_from_options("generate", prompt=f"a throughput teapot {i}", preset="smoke",
                                                         steps=steps, mesh_every=3))
            ids.append(client.wait_for(lambda m, r=request: m.parent_id == r and isinstance(m, Accepted),
                                       60).job_id)
        left, mesh_ms = set(ids), []

        def note(msg) -> None:
            if isinstance(msg, MeshSnapshot) and msg.job_id in left:
                mesh_ms.append(_age_ms(msg.timestamp))

        while left:
            done = client.wait_for(lambda m: isinstance(m, Done) and m.job_id in left, 600, on_message=note)
            left.discard(done.job_id)
        seconds = time.monotonic() - started
    return {"jobs": jobs, "seconds": round(seconds, 2), "jobs_per_minute": round(60 * jobs / seconds, 2),
            "mesh_latency": _summary(mesh_ms)}


def ray_throughput(jobs: int = 6, steps: int = 24) -> dict[str, Any]:
    """`asd bench serve --scenario ray`: the same jobs on local workers (one process) and on Ray actors
    (`--ray local`, 1 and 2 actors, CPU resources): jobs per minute and the cost per shipped snapshot."""
    ray_flags = ("--ray", "local", "--ray-resource", "asd_worker")
    out = {"benchmark": "serve.ray", "steps_per_job": steps, "local_1_worker": _throughput((), jobs, steps)}
    for n in (1, 2):
        out[f"ray_{n}_actors"] = _throughput((*ray_flags, "--min-workers", str(n), "--max-workers", str(n)), jobs,
                                             steps)
    return out


def _settled_memory(pid: int, quiet: float = 4.0, timeout: float = 180.0) -> dict[str, float]:
    """Memory once it has stopped growing for `quiet` seconds (the server is through its requests)."""
    deadline = time.monotonic() + timeout
    last, since = memory_mib(pid), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.5)
        now = memory_mib(pid)
        if now["rss"] > last["rss"] + 1.0:
            last, since = now, time.monotonic()
    return memory_mib(pid)


def _seed_jobs(results: Path, count: int) -> None:
    """`count` finished job records in a results folder, so that each list_jobs reply is large."""
    from ..server.jobs import Job
    from ..server.store import ResultStore
    from ..train.presets import resolve_spec

    store = ResultStore(results)
    spec = resolve_spec({"prompt": "x", "preset": "smoke", "model": {"teacher": "tiny"}}).to_json()
    for i in range(count):
        job = Job(job_id=f"20260101-000000-{i:08x}", kind="generate", prompt=f"seeded job {i} " + "x" * 200,
                  spec=spec, client="local", status="completed", total=12, step=12)
        store.save(job)


def slow_reader(requests: int = 4000, jobs: int = 500, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """`extra`: more `asd serve` flags (e.g. a cap so high it is off, to see what it prevents)."""
    import zmq

    from asd_protocol import ListJobs, encode

    with serving(*extra, prepare=lambda results: _seed_jobs(results, jobs)) as server:
        pid = server.process.pid
        before = memory_mib(pid)
        slow = zmq.Context.instance().socket(zmq.DEALER)
        slow.setsockopt(zmq.LINGER, 0)
        slow.setsockopt(zmq.RCVHWM, 1)
        slow.connect(server.address)
        try:
            slow.send_multipart(encode(ListJobs(limit=10_000)))
            reply_bytes = sum(len(f) for f in slow.recv_multipart())  # one reply, read, for its size
            for _ in range(requests):
                slow.send_multipart(encode(ListJobs(limit=10_000)))
            after = _settled_memory(pid)  # the server answers everything it was asked; nobody reads
            with AsdClient(server.address, client_name="bench-other", dead_after=30.0) as other:
                started = time.monotonic()
                other.wait_for(lambda m: m.msg_type == "welcome", 30)
                other_ms = round(1000 * (time.monotonic() - started), 1)
        finally:
            slow.close()
        alive = server.process.poll() is None
    return {"benchmark": "serve.slow_reader", "server_flags": list(extra), "requests_unread": requests,
            "jobs_listed": jobs,
            "reply_kib": round(reply_bytes / 1024, 1), "unread_mib_if_kept": round(requests * reply_bytes / 2**20, 1),
            "server_rss_mib": {"before": before["rss"], "after": after["rss"], "peak": after["peak"]},
            "another_client_welcomed_ms": other_ms, "server_alive": alive}


def run(clients: int = 20, steps: int = 60, mesh_every: int = 5, timeout: float = 600.0) -> dict[str, Any]:
    if clients < 1:
        raise UsageError("clients must be at least 1")
    with serving(wait=False) as server:
        followers = [AsdClient(server.address, client_name=f"bench-{i}", dead_after=60.0) for i in range(clients)]
        try:
            deadline = time.monotonic() + 120
            while any(c.welcome is None for c in followers):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server did not greet every client:\n{server.log_text()[-2000:]}")
                for c in followers:
                    c.poll(timeout=0.01)
            first_mesh = {"cold": _time_to_first_mesh(followers[0])}
            request = followers[0].submit(partial_from_options("generate", prompt="a benchmark teapot", preset="smoke",
                                                               steps=steps, mesh_every=mesh_every))
            accepted = followers[0].wait_for(lambda m: m.parent_id == request and isinstance(m, Accepted), 30)
            job = accepted.job_id
            for c in followers[1:]:
                c.attach(job)
            progress_ms: list[float] = []
            mesh_ms: list[float] = []
            snapshots_seen = [set() for _ in followers]
            done = [False] * clients
            started = time.monotonic()
            while not all(done):
                if time.monotonic() - started > timeout:
                    raise TimeoutError("the job did not finish in time")
                for i, c in enumerate(followers):
                    for msg in c.poll(timeout=0.0 if i else 0.005):
                        if msg.job_id != job:
                            continue
                        if isinstance(msg, Progress):
                            progress_ms.append(_age_ms(msg.timestamp))
                        elif isinstance(msg, MeshSnapshot):
                            mesh_ms.append(_age_ms(msg.timestamp))
                            snapshots_seen[i].add(msg.snapshot)
                        elif isinstance(msg, Done):
                            done[i] = True
            seconds = time.monotonic() - started
            first_mesh["warm"] = _time_to_first_mesh(followers[0])
        finally:
            for c in followers:
                c.close()
    per_client = [len(s) for s in snapshots_seen]
    return {"benchmark": "serve", "clients": clients, "steps": steps, "mesh_every": mesh_every,
            "job_seconds": round(seconds, 2), "progress_latency": _summary(progress_ms),
            "mesh_latency": _summary(mesh_ms), "snapshots_per_client": {"min": min(per_client),
                                                                       "max": max(per_client)},
            "time_to_first_mesh_seconds": first_mesh,
            "note": "latency = arrival minus the header timestamp (set where the message was made: the worker)"}


# -- the command line (flags generated from ServeBenchConfig) -------------------------------------------

@dataclasses.dataclass
class ServeBenchConfig:
    scenario: str = "latency"
    """latency | cancel (cancel to done, in long phases too) | slow-reader (memory with a client that never reads)
    | soak (random jobs, fuzz, slow readers, worker kills) | ray (jobs per minute on local workers and on 1 and 2
    Ray actors); comma-separated."""
    clients: int = 20
    """latency: clients following one job."""
    steps: int = 60
    """latency: the job's steps."""
    mesh_every: int = 5
    """latency: a preview mesh every N steps."""
    requests: int = 4000
    """slow-reader: unread list_jobs requests."""
    jobs: int = 500
    """slow-reader: finished jobs the server lists."""
    compare: bool = False
    """slow-reader: also run with the backlog cap off."""
    soak_seconds: float = 180.0
    """soak: how long."""
    full_disk_every: float = 30.0
    """soak: fill the results folder (a 256 MiB tmpfs of its own; root only) to the last byte for 2 s every
    this many seconds (0: never)."""
    ray: str | None = None
    """local: the same as --scenario ray."""
    seed: int = 0


def _scenarios(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _command(args: Any) -> int:
    import json

    from ..dataclass_flags import dataclass_from_args

    cfg = dataclass_from_args(ServeBenchConfig, args)

    def _print_json(report: dict) -> None:
        print(json.dumps(report, indent=2), flush=True)

    if cfg.ray is not None and cfg.ray != "local":
        raise UsageError("asd bench serve --ray: only 'local' (the benchmark starts its own Ray instances)")
    for scenario in _scenarios("ray" if cfg.ray else cfg.scenario):
        if scenario == "latency":
            _print_json(run(clients=cfg.clients, steps=cfg.steps, mesh_every=cfg.mesh_every))
        elif scenario == "cancel":
            _print_json(cancel_latency())
        elif scenario == "slow-reader":
            _print_json(slow_reader(cfg.requests, cfg.jobs))
            if cfg.compare:  # the same without the cap: what it prevents
                _print_json(slow_reader(cfg.requests, cfg.jobs, ("--max-pending-replies", str(10**9),
                                                                 "--max-pending-mib", str(10**6))))
        elif scenario == "ray":
            _print_json(ray_throughput())
        elif scenario == "soak":
            from . import soak

            _print_json(soak.run(seconds=cfg.soak_seconds, seed=cfg.seed, full_disk_every=cfg.full_disk_every))
        else:
            raise UsageError(f"--scenario {scenario!r}: choose from latency, cancel, slow-reader, soak, ray")
    return 0


def add_cli(kinds: Any) -> None:
    from ..dataclass_flags import add_dataclass_flags

    p = kinds.add_parser("serve", help="latency of progress and mesh delivery to many clients over loopback")
    add_dataclass_flags(p, ServeBenchConfig)
    p.set_defaults(handler=_command)
