"""`asd serve` over real loopback sockets, with the tiny teacher and the smoke preset."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asd_backend.loopback import free_port
from asd_protocol import Accepted, Done, Error, Image, Jobs, Log, MeshSnapshot, Progress, Submit, Welcome, encode
from asd_protocol.client import LOST

from .live_server import partial_spec, running_server, start_server, stop_server


def submit(client, prompt="a teapot", **options) -> str:
    return accepted(client, prompt, **options).job_id


def accepted(client, prompt="a teapot", **options) -> Accepted:
    request = client.submit(partial_spec(prompt, preset="smoke", **options))
    reply = client.wait_for(lambda m: m.parent_id == request and isinstance(m, (Accepted, Error)), timeout=30)
    assert isinstance(reply, Accepted), reply
    return reply


def follow(client, job_id, timeout=180.0):
    """Every message about `job_id` until its `done`, with arrival times."""
    got = []
    done = client.wait_for(lambda m: m.job_id == job_id and isinstance(m, Done), timeout=timeout,
                           on_message=lambda m: got.append((time.monotonic(), m)))
    return [*got, (time.monotonic(), done)]


def raw_request(server, frames: list[bytes]) -> list[bytes]:
    """Frames sent as they are from a fresh DEALER (no client library, no hello); the one reply."""
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(server.address)
    try:
        raw.send_multipart(frames)
        assert raw.poll(10_000), "no reply"
        return raw.recv_multipart()
    finally:
        raw.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, asd_home):
    results = tmp_path_factory.mktemp("results")
    with running_server(results, free_port()) as live:
        yield live


def test_welcome_lists_capabilities_and_untrained_teacher(server):
    with server.client() as client:
        welcome = client.wait_for(lambda m: isinstance(m, Welcome), timeout=10)
    assert {"generate", "image"} <= set(welcome.capabilities)
    assert {t.name: t.trained for t in welcome.teachers}["tiny"] is False
    assert "smoke" in welcome.presets and welcome.default_teacher == "tiny"


def test_an_image_job_completes_with_its_result_and_frames(server):
    """The job runner's summary crosses the wire as it is (plain values only: `done.summary` refuses nested
    objects), and the image job's frames (image.every) are files in its folder."""
    with server.client() as client:
        job = submit(client, kind="image", spec={"image": {"steps": 4, "every": 2, "resolution": 64}})
        got = follow(client, job)
    done = got[-1][1]
    assert done.status == "completed" and done.outputs == {"image": "image.png"}, done
    assert done.summary["steps"] == 4 and all(not isinstance(v, dict) for v in done.summary.values())
    assert any(isinstance(m, Image) and m.role == "result" and m.final for _, m in got)
    assert (server.results / job / "image.png").is_file()
    assert (server.results / job / "frames" / "step_00002.png").is_file()


def test_a_server_job_writes_the_turntable_frames_it_was_asked_for(server):
    """The server honours every output setting the CLI does: the frames are files in the job's folder,
    named in `done`'s outputs, as `asd generate` writes them in NAME_run/."""
    from PIL import Image as PILImage

    with server.client() as client:
        job = submit(client, spec={"schedule": {"steps": 6}, "output": {"turntable": 3, "turntable_size": 24,
                                                                         "mesh_every": 0}})
        done = follow(client, job)[-1][1]
    assert done.status == "completed", done
    frames = {k: v for k, v in done.outputs.items() if k.startswith("turntable_")}
    assert sorted(frames) == ["turntable_00", "turntable_01", "turntable_02"]
    for relative in frames.values():
        with PILImage.open(server.results / job / relative) as frame:
            assert frame.size == (24, 24) and frame.info["prompt"] == "a teapot"


def test_generate_streams_progress_meshes_and_preview(server):
    with server.client() as client:
        job = submit(client)
        got = follow(client, job)
    messages = [m for _, m in got]
    meshes = [m for m in messages if isinstance(m, MeshSnapshot)]
    assert meshes and meshes[-1].final and len(meshes[-1].vertices) > 100
    assert meshes[-1].colors is not None and meshes[-1].colors.shape == (len(meshes[-1].vertices), 3)
    assert any(not m.final for m in meshes)  # a preview snapshot streamed before the end
    assert any(isinstance(m, Image) for m in messages)
    assert any(isinstance(m, Log) and "UNTRAINED" in m.text for m in messages)
    assert messages[-1].status == "completed" and messages[-1].outputs["mesh"].endswith("mesh.glb")
    # Progress at least once a second while the job runs.
    times = [t for t, m in got if isinstance(m, Progress)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) >= 5 and max(gaps) < 1.6, gaps
    # Everything persisted.
    folder = server.results / job
    assert (folder / "job.json").is_file() and (folder / "mesh.glb").is_file() and (folder / "checkpoint.pt").is_file()


def test_two_clients_are_served_in_queue_order(server):
    with server.client() as a, server.client() as b:
        first = submit(a, "first")
        second = submit(b, "second")
        a.wait_for(lambda m: m.job_id == first and isinstance(m, Done), timeout=180)
        b.wait_for(lambda m: m.job_id == second and isinstance(m, Done), timeout=180)
        b.list_jobs()
        jobs = b.wait_for(lambda m: isinstance(m, Jobs), timeout=10).jobs
    info = {j.job_id: j for j in jobs}
    assert info[first].status == info[second].status == "completed"
    assert info[first].created <= info[second].created
    log = server.log_text()
    assert log.index(f'"job_started", "job": "{first}"') < log.index(f'"job_started", "job": "{second}"')
    assert log.index(f'"job_completed", "job": "{first}"') < log.index(f'"job_started", "job": "{second}"')


def test_cancel_a_running_job(server):
    with server.client() as client:
        job = submit(client, steps=400)
        client.wait_for(lambda m: m.job_id == job and isinstance(m, Progress) and m.phase == "optimizing"
                        and m.step >= 2, timeout=120)
        client.cancel(job)
        done = client.wait_for(lambda m: m.job_id == job and isinstance(m, Done), timeout=60)
    assert done.status == "cancelled" and "resumable" not in done.summary  # nothing can resume it
    assert (server.results / job / "checkpoint.pt").is_file()


def test_a_queued_job_says_why_it_waits_and_can_be_cancelled(server):
    """A queued job's followers hear why it has no worker (a log), and list_jobs shows the same words."""
    with server.client() as client:
        running = submit(client, steps=400)
        client.wait_for(lambda m: m.job_id == running and isinstance(m, Progress) and m.phase != "starting",
                        timeout=120)
        queued = submit(client, "waiting")
        told = client.wait_for(lambda m: m.job_id == queued and isinstance(m, Log), timeout=10)
        assert told.text == "queued (position 1): every worker is busy (1 of 1): it starts when one finishes"
        request = client.list_jobs()
        listing = client.wait_for(lambda m: m.parent_id == request and isinstance(m, Jobs), timeout=10)
        waiting = {j.job_id: j.waiting for j in listing.jobs}
        assert waiting[queued] == told.text and waiting[running] == ""
        client.cancel(queued)
        done = client.wait_for(lambda m: m.job_id == queued and isinstance(m, Done), timeout=30)
        assert done.status == "cancelled"
        client.cancel(running)
        client.wait_for(lambda m: m.job_id == running and isinstance(m, Done), timeout=60)


def test_attach_after_disconnect_gets_state_and_newest_mesh(server):
    with server.client() as first:
        job = submit(first)
    # The submitting client is gone; its job goes on. Another client attaches.
    with server.client() as second:
        second.attach(job)
        state = second.wait_for(lambda m: isinstance(m, Jobs), timeout=10)
        assert state.jobs[0].job_id == job
        got = [m for _, m in follow(second, job)]
    assert any(isinstance(m, MeshSnapshot) and m.final for m in got)
    # A finished job can still be fetched: attach again after it is done.
    with server.client() as third:
        third.attach(job)
        mesh = third.wait_for(lambda m: isinstance(m, MeshSnapshot), timeout=30)
        done = third.wait_for(lambda m: isinstance(m, Done), timeout=30)
    assert mesh.final and len(mesh.faces) > 0 and done.status == "completed"


def test_bad_requests_get_errors_that_name_the_field(server):
    with server.client() as client:
        checks = [
            (Submit(spec={"prompt": "x", "preset": "ultra"}), "content.spec.preset"),
            (Submit(spec={"prompt": "x", "model": {"teacher": "sd:/etc"}}), "content.spec.model.teacher"),
            (Submit(spec={"prompt": "x", "guidance": {"method": "dds"}}), "content.spec.guidance.method"),
            (Submit(spec={"prompt": "x", "guidance": {"gamma": -1.0}}), "content.spec.guidance.gamma"),
            (Submit(spec={"prompt": "x", "edit": {"strength": 0.5}}), "content.spec.edit"),
            (Submit(spec={"kind": "image", "prompt": "x", "image": {"resolution": 100}}),
             "content.spec.image.resolution"),
        ]
        for msg, field in checks:
            client.send(msg)
            reply = client.wait_for(lambda m, msg=msg: m.parent_id == msg.msg_id, timeout=10)
            assert isinstance(reply, Error) and reply.field == field, reply
        client.attach("no-such-job")
        reply = client.wait_for(lambda m: isinstance(m, Error), timeout=10)
        assert reply.code == "unknown_job"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=300), min_size=0, max_size=5))
def test_arbitrary_frames_get_error_replies_and_the_server_stays_up(server, frames):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.address)
    try:
        sock.send_multipart(frames or [b""])
        assert sock.poll(5000), "no reply to a malformed message"
        reply = sock.recv_multipart()
        assert b'"error"' in reply[0]
        sock.send_multipart(encode(Submit(spec={"prompt": "x", "preset": "nope"})))
        assert sock.poll(5000), "the server stopped answering after a malformed message"
    finally:
        sock.close()


def test_server_restart_resumes_a_running_job(tmp_path, asd_home):
    port = free_port()
    results = tmp_path / "results"
    server = start_server(results, port)
    try:
        before = []
        with server.client() as client:
            job = submit(client, steps=40)
            # smoke checkpoints every 6 steps: wait until one exists, then kill the server outright.
            client.wait_for(lambda m: m.job_id == job and isinstance(m, Progress) and m.step >= 8, timeout=180,
                            on_message=before.append)
        old_workers = server.worker_pids()
        stop_server(server, signal.SIGKILL)
        # Its worker notices within a second (between steps, or inside meshing), checkpoints and leaves;
        # the new server's worker waits for the job folder's lock, so two never write one job.
        deadline = time.monotonic() + 10
        while any(running(pid) for pid in old_workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(running(pid) for pid in old_workers)
        server = start_server(results, port)
        with server.client() as client:
            client.attach(job)
            got = [m for _, m in follow(client, job)]
        steps = [m.step for m in got if isinstance(m, Progress) and m.phase == "optimizing"]
        assert steps and min(steps) >= 6, steps  # continued from the checkpoint, not from step 1
        assert got[-1].status == "completed" and got[-1].summary["resumed_from"] >= 6
        # Snapshot numbers only increase, across the restart too.
        numbers = [m.snapshot for m in before + got if isinstance(m, MeshSnapshot)]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
        assert '"job_requeued"' in server.log_text()
    finally:
        stop_server(server)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan waits for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killing_a_worker_fails_only_its_job(tmp_path, asd_home):
    with running_server(tmp_path / "results", free_port()) as server:
        with server.client() as client:
            job = submit(client, steps=400)
            client.wait_for(lambda m: m.job_id == job and isinstance(m, Progress) and m.step >= 1, timeout=180)
            os.kill(server.worker_pids()[-1], signal.SIGKILL)
            error = client.wait_for(lambda m: m.job_id == job and isinstance(m, Error), timeout=30)
            done = client.wait_for(lambda m: m.job_id == job and isinstance(m, Done), timeout=30)
            assert error.code == "worker_crashed" and "signal 9" in error.message and error.hint
            assert done.status == "failed" and "resumable" not in done.summary  # nothing resumes it
            # The server is up, a new worker runs the next job.
            nxt = submit(client, "after the crash")
            assert follow(client, nxt)[-1][1].status == "completed"
        assert len(server.worker_pids()) == 2


def test_client_notices_a_dead_server(tmp_path, asd_home):
    server = start_server(tmp_path / "results", free_port())
    client = server.client(dead_after=3.0)
    try:
        client.wait_for(lambda m: isinstance(m, Welcome), timeout=10)
        stop_server(server, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while client.state != LOST and time.monotonic() < deadline:
            client.poll(timeout=0.2)
        assert client.state == LOST and "stopped answering" in client.lost_reason()
    finally:
        client.close()


def test_a_client_first_polled_late_asks_the_backend_before_calling_it_lost(tmp_path, asd_home):
    """Its first hello cannot leave while the connection is still being made (ZMQ_IMMEDIATE); a client
    first polled long after (a busy UI, a test waiting on another client) must send it then and wait for
    the answer, not declare lost a backend it never asked."""
    with running_server(tmp_path / "results", free_port()) as server:
        with server.client(dead_after=2.0) as client:
            time.sleep(4.0)  # twice dead_after without a poll
            client.poll()
            assert client.state != LOST, client.lost_reason()
            client.wait_for(lambda m: isinstance(m, Welcome), timeout=10)
            request = client.submit(partial_spec("late", preset="smoke", steps=2))
            assert isinstance(client.wait_for(lambda m: m.parent_id == request, timeout=30), Accepted)


def test_unreachable_server_is_reported(free_port):
    from asd_protocol.client import AsdClient

    with AsdClient(f"tcp://127.0.0.1:{free_port}", dead_after=1.0) as client:
        with pytest.raises(ConnectionError, match="is `asd serve` running"):
            client.wait_for(lambda m: isinstance(m, Welcome), timeout=5)


def test_non_loopback_bind_needs_curve_or_insecure(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "asd_backend.cli", "serve", "--bind", "tcp://0.0.0.0:5999",
                             "--results", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "CURVE" in result.stderr and "--insecure" in result.stderr


def test_curve_allowed_key_works_unknown_key_and_plaintext_are_refused(tmp_path, asd_home):
    from asd_backend.server import auth

    curve = tmp_path / "curve"
    server_key_file = auth.init_keys(curve)
    allowed_public, allowed_secret = auth.create_client_keys(tmp_path / "alice", "alice")
    auth.allow_client(curve, str(allowed_public))
    _stranger_public, stranger_secret = auth.create_client_keys(tmp_path / "mallory", "mallory")
    from asd_protocol.client import AsdClient, load_keypair

    server_key = server_key_file.read_text().split('public-key = "')[1].split('"')[0]
    with running_server(tmp_path / "results", free_port(), "--curve-dir", str(curve)) as server:
        # wait_until_serving used a plaintext client: it must not have been let in, so check explicitly.
        def attempt(**keys) -> str:
            with AsdClient(server.address, dead_after=3.0, **keys) as client:
                try:
                    client.wait_for(lambda m: isinstance(m, Welcome), timeout=4)
                    return "welcome"
                except (TimeoutError, ConnectionError):
                    started = time.monotonic()
                    # A refused connection must not block the caller, nor keep the request for later.
                    with pytest.raises(ConnectionError, match="not sent"):
                        client.submit(partial_spec("still never blocks"))
                    assert time.monotonic() - started < 0.5
                    return client.lost_reason()

        pub, sec = load_keypair(allowed_secret)
        assert attempt(server_public_key=server_key, client_public_key=pub, client_secret_key=sec) == "welcome"
        pub, sec = load_keypair(stranger_secret)
        reason = attempt(server_public_key=server_key, client_public_key=pub, client_secret_key=sec)
        assert "refused this client's CURVE key" in reason
        assert attempt() != "welcome"  # plaintext
        assert '"auth_refused"' in server.log_text()


def test_submitted_settings_resolve_to_the_full_spec(server):
    """What the CLI's `asd submit` sends: only the fields set; `accepted` echoes everything that will run."""
    with server.client() as client:
        first = accepted(client, mesh_every=0, texture_size=64, steps=4)
        second = accepted(client, steps=4)
        for job in (first.job_id, second.job_id):
            got = [m for _, m in follow(client, job)]
            assert got[-1].status == "completed", got[-1]
    spec = first.spec
    assert spec["output"]["mesh_every"] == 0 and spec["output"]["texture_size"] == 64
    assert spec["schedule"]["steps"] == 4 and spec["nerf"]["samples_per_ray"] == 32  # the preset's value
    from asd_protocol.job_spec import JobSpec

    assert spec["guidance"] == JobSpec().to_json()["guidance"]  # every field, at its default
    assert spec["guidance"]["method"] == "asd" and spec["guidance"]["cfg"] == 7.5
    assert "image" not in spec and "edit" not in spec  # only the sections a generate job uses
    # No seed given: each job gets its own random one, recorded.
    assert isinstance(spec["seed"], int) and spec["seed"] != second.spec["seed"]
    # mesh_every 0: only the final mesh streamed (job.json holds the same resolved spec).
    import json

    stored = json.loads((server.results / first.job_id / "job.json").read_text())
    assert stored["spec"] == spec and stored["snapshots"] == 1


def test_an_edit_the_loop_would_refuse_is_refused_at_submit(server):
    import numpy as np

    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    arrays = {"vertices": vertices, "faces": np.array([[0, 1, 2]], np.uint32),
              "uvs": np.zeros((1, 3, 2), np.float32), "texture": np.zeros((8, 8, 3), np.uint8)}
    with server.client() as client:
        for bad, field in (({"strength": 0.01}, "content.spec.edit.strength"),
                           ({"steps": 0}, "content.spec.edit.steps")):
            msg = Submit(spec={"kind": "edit_texture", "prompt": "bronze", "edit": bad}, **arrays)
            with pytest.raises(Exception) as info:  # the client refuses to send it…
                client.send(msg)
            assert getattr(info.value, "field", None) == field
        # …and the server refuses it too, before anything is queued.
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(server.address)
        try:
            frames = [bytes(f) for f in encode(Submit(spec={"kind": "edit_texture", "prompt": "bronze"}, **arrays))]
            frames[1] = frames[1].replace(b'"prompt":"bronze"', b'"prompt":"bronze","edit":{"strength":0.01}')
            raw.send_multipart(frames)
            assert raw.poll(10000)
            reply = raw.recv_multipart()
            assert b'"error"' in reply[0] and b"content.spec.edit.strength" in reply[1]
        finally:
            raw.close()


def test_a_finished_jobs_mesh_and_image_leave_memory_and_come_back_from_disk(tmp_path, asd_home):
    """The front end in this process (its workers are real spawned processes): after `done`, no mesh or
    image of the job stays in its memory; attaching later reads the final mesh and preview from disk."""
    import threading

    from asd_backend.server.frontend import Server, ServerConfig

    server = Server(ServerConfig(bind=f"tcp://127.0.0.1:{free_port()}", results=tmp_path / "results",
                                 teacher="tiny", device="cpu"))
    address = server.start()
    running = threading.Event()
    running.set()

    def loop() -> None:
        while running.is_set():
            server.run_once(0.05)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        from asd_protocol.client import AsdClient

        with AsdClient(address, client_name="tests") as client:
            job = submit(client, steps=8)
            assert follow(client, job)[-1][1].status == "completed"
            deadline = time.monotonic() + 10
            while (server.latest_mesh or server.latest_image) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.latest_mesh == {} and server.latest_image == {}
            client.attach(job)
            got = [m for _, m in follow(client, job)]
        assert any(isinstance(m, MeshSnapshot) and m.final and len(m.faces) for m in got)
        assert any(isinstance(m, Image) and m.final for m in got)
        assert server.latest_mesh == {} and server.latest_image == {}  # read from disk, not cached again
    finally:
        running.clear()
        thread.join(timeout=10)
        server.stop()


def test_progress_resent_by_the_front_end_counts_the_workers_eta_down(server):
    # Steps slower than the front end's one-second resend: between two worker reports the client gets
    # re-sends. Each must carry the worker's estimate counted down (elapsed + eta unchanged), not a
    # second estimate from wall time since the job started (model loading included).
    with server.client() as client:
        request = client.submit(partial_spec("a slow vase", spec={"preset": "preview", "schedule": {
            "steps": 400, "resolution_schedule": [[0, 160]]}, "output": {"mesh_every": 0}}))
        reply = client.wait_for(lambda m: m.parent_id == request and isinstance(m, (Accepted, Error)), timeout=30)
        assert isinstance(reply, Accepted), reply
        by_step: dict[int, list[Progress]] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(len(v) >= 2 for k, v in by_step.items() if k >= 1):
            for msg in client.poll(timeout=0.5):
                if isinstance(msg, Progress) and msg.job_id == reply.job_id and msg.phase == "optimizing" \
                        and msg.eta_seconds is not None:
                    by_step.setdefault(msg.step, []).append(msg)
        client.cancel(reply.job_id)
        client.wait_for(lambda m: m.job_id == reply.job_id and isinstance(m, Done), timeout=120)
    repeated = [v for k, v in by_step.items() if k >= 1 and len(v) >= 2]
    assert repeated, f"no re-sent progress within two minutes: {sorted(by_step)}"
    for messages in repeated:
        totals = [m.elapsed_seconds + m.eta_seconds for m in messages]
        assert max(totals) - min(totals) < 0.05, totals
        assert [m.eta_seconds for m in messages] == sorted((m.eta_seconds for m in messages), reverse=True)


@pytest.mark.parametrize("escape", [rb"\ud800", rb"\u0000", rb"\u001b[2J", rb"\u0085"])
def test_text_that_no_reply_could_carry_is_refused_and_the_job_list_keeps_working(server, escape):
    """JSON escapes let a lone surrogate or a control character through the parser; stored in a prompt, a
    lone surrogate made every later reply that held it fail to encode, for every client."""
    frames = encode(Submit(spec={"prompt": "PLACEHOLDER", "preset": "smoke"}))
    frames = [bytes(f) for f in frames]
    frames[1] = frames[1].replace(b"PLACEHOLDER", b"a teapot " + escape)
    assert escape in frames[1]
    with server.client() as client:
        client.wait_for(lambda m: isinstance(m, Welcome), timeout=10)
        reply = raw_request(server, frames)
        assert b'"error"' in reply[0] and b'"content.spec.prompt"' in reply[1], reply
        request = client.list_jobs()
        listing = client.wait_for(lambda m: m.parent_id == request, timeout=10)
        assert isinstance(listing, Jobs), listing
        assert all("PLACEHOLDER" not in j.prompt and "\ufffd" not in j.prompt for j in listing.jobs)


@pytest.mark.parametrize("spec", [
    b'{"prompt": "a", "schedule": {"\\u0007": 1}}',
    b'{"prompt": "a", "\\ud800": 1}',
    b'{"prompt": "a", "guidance": {"x\\u001b[2J": {"\\u0000": 2}}}',
    b'{"prompt": "a", "nerf": {"grid": {"\\udfff\\u0085": 1}}}',
])
def test_a_poisoned_key_in_the_spec_is_refused_by_name_and_the_server_keeps_serving(server, spec):
    """A control character or lone surrogate in a spec *key* went into the error's field path, the error
    could not be encoded, and that exception stopped `asd serve` (exit 2), hello or not."""
    frames = [bytes(f) for f in encode(Submit(spec={"prompt": "PLACEHOLDER"}))]
    frames[1] = frames[1].replace(b'{"prompt": "PLACEHOLDER"}', spec).replace(b'{"prompt":"PLACEHOLDER"}', spec)
    assert spec in frames[1]
    reply = raw_request(server, frames)  # no hello: the first thing this peer sends is the poison
    assert b'"error"' in reply[0], reply
    error = json.loads(reply[1])
    assert error["code"] == "invalid_field" and error["field"].startswith("content.spec."), error
    assert "\\" in error["field"], error  # the bad character is shown escaped, not dropped
    assert server.process.poll() is None, server.log_text()
    with server.client() as client:  # and it still serves
        client.wait_for(lambda m: isinstance(m, Welcome), timeout=10)
        assert follow(client, submit(client, steps=2))[-1][1].status == "completed"


def test_a_client_cannot_make_the_server_open_a_discriminator_model_it_does_not_offer(server, tmp_path):
    """model.discriminator_model loaded any server path or hub id, and the error said whether a path existed."""
    existing = tmp_path / "a-real-folder"
    existing.mkdir()
    answers = []
    with server.client() as client:
        client.wait_for(lambda m: isinstance(m, Welcome), timeout=10)
        for name in ("/etc", "../../etc", str(existing), "/no/such/folder", "someone/some-repo"):
            request = client.submit(partial_spec("a teapot", preset="smoke", steps=2, discriminator_model=name))
            reply = client.wait_for(lambda m, r=request: m.parent_id == r, timeout=30)
            assert isinstance(reply, Error), reply
            answers.append((reply.code, reply.field, reply.message, reply.hint))
    assert answers[0][1] == "content.spec.model.discriminator_model"
    assert len(set(answers)) == 1, answers  # the same answer whether or not the path exists


def test_a_cancel_while_the_teacher_loads_ends_the_job_at_once_and_the_model_stays_for_the_next(tmp_path, asd_home):
    with running_server(tmp_path / "results", free_port()) as server, server.client() as client:
        job = submit(client, steps=400)  # the server's first job: the worker loads the teacher (cold)
        client.wait_for(lambda m: m.job_id == job and isinstance(m, Progress) and m.phase == "loading", timeout=60)
        client.cancel(job)
        got = [m for _, m in follow(client, job, timeout=60)]
        assert got[-1].status == "cancelled"
        assert not [m for m in got if isinstance(m, Progress) and m.phase == "optimizing"]  # never started
        nxt = submit(client, "the next one", steps=4)  # the load went on: this job gets the model
        assert follow(client, nxt)[-1][1].status == "completed"
        assert server.log_text().count("job_failed") == 0
