"""Workers as Ray actors (`asd serve --ray local`): a real local Ray instance, CPU resources only,
started by the server under test on loopback; real actors, real jobs with the tiny teacher."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray")

from asd_backend.loopback import free_port
from asd_backend.server.ray_worker import remove_orphaned_scratch, scratch_root
from asd_protocol import Done, Image, Log, MeshSnapshot, Progress

from .live_server import partial_spec, running_server
from .test_server import follow, submit

RAY = ("--ray", "local", "--min-workers", "2", "--max-workers", "2", "--ray-resource", "asd_worker")


def events(server, name: str) -> list[dict]:
    return [json.loads(line) for line in server.log_text().splitlines()
            if line.startswith("{") and f'"event": "{name}"' in line]


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory, asd_home):
    with running_server(tmp_path_factory.mktemp("ray-results"), free_port(), *RAY) as live:
        deadline = time.monotonic() + 120
        while len(events(live, "ray_actor_started")) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield live


def kinds(messages) -> set[str]:
    out = set()
    for m in messages:
        if isinstance(m, Progress):
            out.add(f"progress:{m.phase}")
        elif isinstance(m, MeshSnapshot):
            out.add("mesh:final" if m.final else "mesh:preview")
        elif isinstance(m, (Image, Done)):
            out.add(m.msg_type)
    return out


def test_two_actors_take_two_jobs_at_once_and_their_files_reach_the_results_store(ray_server):
    with ray_server.client() as first, ray_server.client() as second, ray_server.client() as watcher:
        a = submit(first, "a vase on ray", steps=24)
        b = submit(second, "a cup on ray", steps=24)
        watcher.attach(a)
        got_a, got_b = [m for _, m in follow(first, a)], [m for _, m in follow(second, b)]
        watched = [m for _, m in follow(watcher, a)]
    assert got_a[-1].status == "completed" and got_b[-1].status == "completed"
    started = {e["job"]: e["ts"] for e in events(ray_server, "job_started")}
    finished = {e["job"]: e["ts"] for e in events(ray_server, "job_completed")}
    assert started[b] < finished[a] and started[a] < finished[b]  # they ran at the same time
    workers = {e["job"]: e["worker"] for e in events(ray_server, "job_started")}
    assert workers[a] != workers[b]
    for job in (a, b):  # shipped back from the actors' scratch folders: nothing is shared on disk
        folder = ray_server.results / job
        assert (folder / "mesh.glb").stat().st_size > 0 and (folder / "checkpoint.pt").is_file()
        assert list((folder / "snapshots").glob("snapshot_*.glb"))
    # An attached client sees the stream a local worker's client sees: progress, meshes, image, done.
    assert {"progress:optimizing", "mesh:preview", "mesh:final", "image", "done"} <= kinds(got_a)
    assert kinds(watched) >= {"progress:optimizing", "mesh:final", "image", "done"}


def test_asd_submit_to_a_ray_server_writes_the_mesh(ray_server, tmp_path):
    out = tmp_path / "smoke.glb"
    result = subprocess.run([sys.executable, "-m", "asd_backend.cli", "submit", "a smoke teapot", "--server",
                             ray_server.address, "--preset", "smoke", "-o", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.stat().st_size > 0 and "completed" in result.stdout


def test_a_cancel_reaches_the_actor_while_its_job_streams(ray_server):
    with ray_server.client() as client:
        job = submit(client, "a cancelled vase", steps=400)
        client.wait_for(lambda m: m.job_id == job and isinstance(m, Progress) and m.step >= 2, timeout=180)
        client.cancel(job)
        got = [m for _, m in follow(client, job, timeout=60)]
    assert got[-1].status == "cancelled"
    assert (ray_server.results / job / "checkpoint.pt").is_file()  # written at the stop, shipped back


def test_a_killed_actor_s_job_resumes_from_its_checkpoint_on_another_actor(ray_server):
    with ray_server.client() as client:
        job = submit(client, "a survivor", steps=40)
        client.wait_for(lambda m: m.job_id == job and isinstance(m, Progress) and m.step >= 8, timeout=180)
        worker = next(e["worker"] for e in events(ray_server, "job_started") if e["job"] == job)
        pid = next(e["pid"] for e in reversed(events(ray_server, "ray_actor_started")) if e["worker"] == worker)
        os.kill(pid, signal.SIGKILL)
        got = [m for _, m in follow(client, job, timeout=300)]
    lost = next(i for i, m in enumerate(got) if isinstance(m, Log) and "was lost" in m.text)
    assert "from its checkpoint" in got[lost].text
    after = [m.step for m in got[lost:] if isinstance(m, Progress) and m.phase == "optimizing"]
    assert after and min(after) >= 6  # continued from the checkpoint that reached the results folder
    assert got[-1].status == "completed" and got[-1].summary["steps"] == 40
    assert got[-1].summary["resumed_from"] >= 6
    requeued = [e for e in events(ray_server, "job_requeued") if e["job"] == job]
    assert requeued and requeued[0]["resume"] is True
    again = [e for e in events(ray_server, "job_started") if e["job"] == job]
    assert len(again) == 2 and again[1]["worker"] != worker
    # the killed actor could not remove its scratch folder; the actor that finished the job does, once the
    # stream's tail has run on it (the client may see "done" a moment before)
    deadline = time.monotonic() + 60
    while list(scratch_root().glob(f"worker-*-{pid}-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list(scratch_root().glob(f"worker-*-{pid}-*"))


def test_an_actor_removes_the_scratch_folders_of_actors_that_are_gone_and_no_other(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    gone = tmp_path / f"worker-0-{int(finished.stdout)}-abc"
    alive = tmp_path / f"worker-1-{os.getpid()}-def"
    foreign = tmp_path / "worker-notes-of-mine"  # matches the pattern, names no process: not ours
    for folder in (gone, alive, foreign):
        (folder / "job").mkdir(parents=True)
        (folder / "job" / "checkpoint.pt").write_bytes(b"x")
    assert remove_orphaned_scratch(tmp_path) == [gone]
    assert not gone.exists() and (alive / "job" / "checkpoint.pt").is_file() and foreign.is_dir()


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (its Ray head: gcs_server, raylet, the actors), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def test_losing_the_ray_head_fails_the_running_job_cleanly_and_the_job_list_still_answers(tmp_path, asd_home):
    ray_processes: list[int] = []
    with running_server(tmp_path / "results", free_port(), "--ray", "local", "--ray-resource", "asd_worker") as server:
        with server.client(dead_after=60.0) as client:
            job = submit(client, "a doomed vase", steps=400)
            client.wait_for(lambda m: m.job_id == job and isinstance(m, Progress) and m.step >= 2, timeout=180)
            ray_processes = _descendants(server.process.pid)
            head = [p for p in ray_processes if "gcs_server" in _command(p) or "raylet" in _command(p)]
            assert head, "no Ray head under the server"
            for pid in head:
                os.kill(pid, signal.SIGKILL)
            got = [m for _, m in follow(client, job, timeout=120)]
            assert got[-1].status == "failed"
            errors = [m for m in got if m.msg_type == "error"]
            assert errors and "Ray" in errors[-1].message
            request = client.list_jobs()  # the front end still serves
            listing = client.wait_for(lambda m: m.parent_id == request, timeout=20)
            assert [(j.job_id, j.status) for j in listing.jobs] == [(job, "failed")]
            request = client.submit(partial_spec("another", preset="smoke"))
            refused = client.wait_for(lambda m: m.parent_id == request, timeout=20)
            assert refused.msg_type == "error" and "Ray head" in refused.message and "cluster" in refused.hint
        assert server.process.poll() is None
    for pid in ray_processes:  # the head's helpers, orphaned by its loss: not left behind by the test
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_local_ray_instance_on_a_machine_without_gpus_uses_its_cpus(tmp_path, asd_home):
    """`asd serve --ray local` asked one GPU per actor by default: on a CPU-only box a job waited forever."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the default is right here")
    args = ("--ray", "local", "--min-workers", "1", "--max-workers", "1")  # no --ray-resource: the default
    with running_server(tmp_path / "results", free_port(), *args) as server, server.client() as client:
        job = submit(client, "a cup on a cpu-only ray", steps=4)
        assert follow(client, job, timeout=240)[-1][1].status == "completed"
        assert events(server, "ray_local_cpu")


def test_a_cluster_that_cannot_place_a_worker_says_why_the_job_waits(tmp_path):
    """On a cluster without the GPU the workers ask for, a queued job waited without a word: the pool now
    names the reason, which the front end sends to the job's followers and shows in list_jobs."""
    import ray
    import zmq

    from asd_backend.server.ray_pool import RayWorkerPool

    # A real one-node cluster with CPUs only, joined as a cluster is (not the server's private instance,
    # which would run its workers on the CPU instead).
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", namespace="asd-tests")
    ctx = zmq.Context()
    pool = RayWorkerPool(ctx, tmp_path, address="auto", min_workers=0, max_workers=1, resource="GPU")
    try:
        pool.start()
        assert pool.wait_reason() == "asking the Ray cluster for a worker"
        pool.scale(1)  # a job waits: an actor asking for one GPU, which this cluster cannot place
        deadline = time.monotonic() + 60
        while "has no GPU" not in pool.wait_reason() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pool.wait_reason() == ("the Ray cluster has no GPU (yet): the job waits for a node with one (an "
                                      "autoscaler may add one); for CPU workers start the server with "
                                      "--ray-resource CPU")
        assert pool.capacity == (0.0, 0.0)
    finally:
        pool.stop()
        ray.shutdown()
        ctx.destroy(linger=0)
