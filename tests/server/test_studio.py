"""A server a studio shares: users own their jobs, quotas, revoked keys, private keys, bounded replies,
limits that fit the machine, and resume. Real `asd serve` subprocesses on loopback, real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import zmq

from asd_backend.bench.serve import fill_filesystem
from asd_backend.loopback import free_port
from asd_backend.server import auth
from asd_protocol import Accepted, Cancel, Done, Error, Jobs, ListJobs, Progress, Resume, Welcome, encode
from asd_protocol.client import LOST, AsdClient, load_keypair

from .live_server import partial_spec, running_server, start_server, stop_server
from .test_server import follow, submit


def reply_to(client: AsdClient, request: str, timeout: float = 15.0):
    return client.wait_for(lambda m: m.parent_id == request, timeout=timeout)


def try_submit(client: AsdClient, prompt: str, steps: int = 400):
    return reply_to(client, client.submit(partial_spec(prompt, preset="smoke", steps=steps)))


def listed(client: AsdClient) -> set[str]:
    reply = reply_to(client, client.list_jobs())
    assert isinstance(reply, Jobs), reply
    return {j.job_id for j in reply.jobs}


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextlib.contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_keys_are_private_from_the_moment_they_exist_whatever_the_umask(tmp_path):
    with umask(0):  # the worst case: every file would otherwise be created world-writable
        curve = tmp_path / "deep" / "curve"
        auth.init_keys(curve)
        public, secret = auth.create_client_keys(tmp_path / "alice", "alice")
        allowed = auth.allow_client(curve, str(public), admin=True)
    assert mode(curve) == 0o700 and mode(curve / auth.AUTHORIZED) == 0o700 and mode(tmp_path / "alice") == 0o700
    assert mode(curve / "server.key_secret") == 0o600 and mode(secret) == 0o600
    assert mode(curve / "server.key") & 0o022 == 0 and mode(allowed) & 0o022 == 0
    entry = auth.AllowList(curve / auth.AUTHORIZED).lookup(load_keypair(secret)[0])
    assert entry == auth.AllowedClient(user="alice", admin=True)
    auth.check_permissions(curve)  # as created: accepted


def test_the_results_folder_is_private_whatever_the_umask(tmp_path, asd_home):
    """Under umask 000 the results folder was 0777 and job.json 0666: any local user could rewrite a job's owner."""
    results = tmp_path / "results"
    results.mkdir(mode=0o777)
    os.chmod(results, 0o777)  # an existing, open folder is closed too
    with umask(0), running_server(results, free_port()) as server, server.client() as client:
        job = reply_to(client, client.submit(partial_spec("a teapot", preset="smoke", steps=2)))
        assert isinstance(job, Accepted), job
        client.wait_for(lambda m: m.job_id == job.job_id and isinstance(m, Done), timeout=120)
    paths = [results, *results.rglob("*")]
    assert len(paths) > 5, paths
    widened = [(str(p.relative_to(tmp_path)), oct(mode(p))) for p in paths if mode(p) & 0o077]
    assert not widened


@pytest.mark.parametrize(("target", "bad_mode", "fix"), [
    ("server.key_secret", 0o644, "chmod 600"),
    (auth.AUTHORIZED, 0o777, "chmod 700"),
    (f"{auth.AUTHORIZED}/alice.key", 0o666, "chmod 644"),
])
def test_the_server_refuses_keys_others_could_change(tmp_path, target, bad_mode, fix):
    curve = tmp_path / "curve"
    auth.init_keys(curve)
    auth.allow_client(curve, str(auth.create_client_keys(tmp_path / "alice", "alice")[0]))
    os.chmod(curve / target, bad_mode)
    with pytest.raises(auth.UnsafeKeys, match=fix):
        auth.check_permissions(curve)
    if target == auth.AUTHORIZED:  # the server itself says so and does not start
        result = subprocess.run([sys.executable, "-m", "asd_backend.cli", "serve", "--bind",
                                 f"tcp://127.0.0.1:{free_port()}", "--results", str(tmp_path / "results"),
                                 "--curve-dir", str(curve), "--device", "cpu", "--teacher", "tiny"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and fix in result.stderr


def test_users_see_only_their_own_jobs_admins_see_all_quotas_hold_and_a_removed_key_is_cut_off(tmp_path, asd_home):
    curve = tmp_path / "curve"
    server_key = auth.init_keys(curve).read_text().split('public-key = "')[1].split('"')[0]
    keys = {}
    for name in ("alice", "bob", "boss"):
        public, secret = auth.create_client_keys(tmp_path / name, name)
        auth.allow_client(curve, str(public), admin=name == "boss")
        keys[name] = load_keypair(secret)

    def client(name: str) -> AsdClient:
        pub, sec = keys[name]
        return AsdClient(server.address, client_name=name, server_public_key=server_key, client_public_key=pub,
                         client_secret_key=sec, dead_after=30.0)

    with running_server(tmp_path / "results", free_port(), "--curve-dir", str(curve), "--max-queued-per-user", "2",
                        "--max-queued", "3") as server, client("alice") as alice, client("bob") as bob, \
            client("boss") as boss:
        for c in (alice, bob, boss):
            c.wait_for(lambda m: isinstance(m, Welcome), timeout=30)
        running = submit(alice, "alice's vase", steps=400)
        alice.wait_for(lambda m: m.job_id == running and isinstance(m, Progress) and m.step >= 1, timeout=120)
        queued = [try_submit(alice, f"alice {i}") for i in range(3)]
        assert [type(r) for r in queued] == [Accepted, Accepted, Error]
        assert queued[2].code == "queue_full" and "you already have 2" in queued[2].message
        bobs = [try_submit(bob, f"bob {i}") for i in range(2)]
        assert isinstance(bobs[0], Accepted) and isinstance(bobs[1], Error)
        assert bobs[1].code == "queue_full" and "server's queue is full" in bobs[1].message

        alices = {running, queued[0].job_id, queued[1].job_id}
        assert listed(alice) == alices and listed(bob) == {bobs[0].job_id}
        assert listed(boss) == alices | {bobs[0].job_id}
        for request in (bob.attach(running), bob.cancel(running), bob.send(Resume(job_id=running))):
            reply = reply_to(bob, request)
            assert isinstance(reply, Error) and reply.code == "unknown_job", reply  # as if it did not exist
        alice.wait_for(lambda m: m.job_id == running and isinstance(m, Progress), timeout=10)  # still running
        boss.send(Cancel(job_id=queued[0].job_id))
        done = alice.wait_for(lambda m: m.job_id == queued[0].job_id and isinstance(m, Done), timeout=30)
        assert done.status == "cancelled"

        (curve / auth.AUTHORIZED / "bob.key").unlink()
        revoked = bob.wait_for(lambda m: isinstance(m, Error) and m.code == "access_revoked", timeout=15)
        assert "allow" in revoked.hint and bob.state == LOST and "no longer allows" in bob.lost_reason()
        with pytest.raises(ConnectionError, match="no longer allows"):  # refused at once, never sent later
            bob.send(ListJobs())
        assert '"access_revoked"' in server.log_text()
        assert listed(alice) == alices  # the others carry on
        for job in (running, queued[1].job_id, bobs[0].job_id):
            boss.cancel(job)


def test_without_curve_every_client_is_one_user_for_the_quota(tmp_path, asd_home):
    with running_server(tmp_path / "results", free_port(), "--max-queued-per-user", "1") as server, \
            server.client() as first, server.client() as second:
        running = submit(first, "a long one", steps=400)
        first.wait_for(lambda m: m.job_id == running and isinstance(m, Progress) and m.step >= 1, timeout=120)
        assert isinstance(try_submit(first, "queued"), Accepted)
        refused = try_submit(second, "from another socket")  # another routing id, the same user
        assert isinstance(refused, Error) and refused.code == "queue_full"
        assert running in listed(second)  # one user: it sees the first socket's jobs


def test_a_client_that_never_reads_has_its_backlog_dropped_and_is_told(tmp_path, asd_home):
    with running_server(tmp_path / "results", free_port(), "--max-pending-replies", "50") as server:
        ctx = zmq.Context.instance()
        slow = ctx.socket(zmq.DEALER)
        slow.setsockopt(zmq.LINGER, 0)
        slow.setsockopt(zmq.RCVHWM, 1)  # ZeroMQ's own buffers hold little: the server's backlog is what grows
        slow.connect(server.address)
        try:
            sent = 3000
            for _ in range(sent):
                slow.send_multipart(encode(ListJobs()))
            with server.client() as other:  # the server is busy with a slow reader, not stuck
                other.wait_for(lambda m: isinstance(m, Welcome), timeout=30)
            time.sleep(1.0)
            got, dropped = 0, []
            while slow.poll(2000):
                frames = slow.recv_multipart()
                got += 1
                if b'"backlog_dropped"' in frames[1]:
                    dropped.append(frames[1])
            assert dropped and b"were dropped" in dropped[0]
            assert got < sent / 2  # the rest was dropped, not kept
        finally:
            slow.close()


def test_limits_that_fit_the_machine_are_announced_and_enforced(tmp_path, asd_home):
    with running_server(tmp_path / "results", free_port(), "--max-mc-resolution", "256") as server, \
            server.client() as client:
        welcome = client.wait_for(lambda m: isinstance(m, Welcome), timeout=30)
        assert welcome.limits["max_mc_resolution"] == 256 and welcome.limits["max_image_resolution"] == 1024
        assert welcome.limits["max_queued_per_user"] == 8
        for options, field in [({"mc_resolution": 1024}, "content.spec.output.mc_resolution"),
                               ({"texture_size": 8192}, "content.spec.output.texture_size")]:
            reply = reply_to(client, client.submit(partial_spec("a teapot", preset="smoke", **options)))
            assert isinstance(reply, Error) and reply.code == "too_large" and reply.field == field, reply
            assert "at most" in reply.hint
        reply = reply_to(client, client.submit(partial_spec("a cat", kind="image", preset="smoke", resolution=2048)))
        assert isinstance(reply, Error) and reply.field == "content.spec.image.resolution", reply


def test_a_cancelled_job_resumes_from_its_checkpoint_with_asd_submit_resume(tmp_path, asd_home):
    with running_server(tmp_path / "results", free_port()) as server:
        with server.client() as client:
            job = submit(client, steps=30)
            client.wait_for(lambda m: m.job_id == job and isinstance(m, Progress) and m.step >= 8, timeout=180)
            client.cancel(job)
            assert client.wait_for(lambda m: m.job_id == job and isinstance(m, Done), timeout=60).status == "cancelled"
            image = submit(client, "a cat", kind="image", steps=2)
            assert follow(client, image)[-1][1].status == "completed"
            for target, code in ((image, "unsupported"), ("no-such-job", "unknown_job")):
                reply = reply_to(client, client.send(Resume(job_id=target)))
                assert isinstance(reply, Error) and reply.code == code, reply
        out = tmp_path / "resumed.glb"
        result = subprocess.run([sys.executable, "-m", "asd_backend.cli", "submit", "--server", server.address,
                                 "--resume", job, "-o", str(out)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert out.is_file() and out.stat().st_size > 0
        with server.client() as client:
            reply = reply_to(client, client.send(Resume(job_id=job)))  # completed now: nothing to resume
            assert isinstance(reply, Error) and "only failed, cancelled or interrupted" in reply.message
            client.attach(job)
            done = [m for _, m in follow(client, job)][-1]
        assert done.status == "completed"
        record = json.loads((server.results / job / "job.json").read_text())
        assert record["status"] == "completed" and record["step"] == 30
        events = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
        started = [e for e in events if e.get("event") == "job_started" and e.get("job") == job]
        assert [e["resume"] for e in started] == [False, True]  # the second run continued the checkpoint


def test_a_short_soak_ends_with_every_job_finished_and_the_server_never_restarted(asd_home):
    """`asd bench serve --scenario soak`, briefly: random jobs, fuzz, poisoned spec keys, a slow reader,
    routing ids that come and go, worker kills and moments of a full disk (where a tmpfs can be mounted)."""
    from asd_backend.bench import soak
    from asd_backend.errors import UsageError

    try:
        report = soak.run(seconds=20, seed=1, kill_every=8, drain_timeout=240, full_disk_every=6)
    except UsageError:  # not root: no filesystem of its own to fill; the rest of the mix still runs
        report = soak.run(seconds=20, seed=1, kill_every=8, drain_timeout=240)
    else:
        assert report["full_disk_moments"] >= 2
    assert report["accepted"] > 0 and report["fuzz_replies"] > 0 and report["worker_kills"] >= 1
    assert report["poisoned_specs"] > 0 and report["routing_ids"] > 0
    assert report["unfinished"] == 0 and sum(report["jobs_by_status"].values()) >= report["accepted"]
    assert report["server_restarts"] == 0 and report["server_alive_at_end"]
    assert report["request_failures"] == 0


def test_edit_work_is_bounded_by_views_times_pixels():
    """edit.views 256 × edit.resolution 1024 was accepted and a worker reached 3.6 GB in 5 s."""
    from asd_backend.server.limits import ServerLimits
    from asd_backend.train.presets import resolve_spec
    from asd_protocol import ProtocolError

    def edit(views: int, resolution: int | None):
        return resolve_spec({"kind": "edit_texture", "prompt": "a blue mug",
                             "edit": {"views": views, "resolution": resolution}})

    limits = ServerLimits()
    limits.check(edit(24, None))  # the default edit fits
    limits.check(edit(64, 512))
    with pytest.raises(ProtocolError) as refused:
        limits.check(edit(256, 1024))
    assert refused.value.code == "too_large" and refused.value.field == "content.spec.edit.views"
    assert "max_edit_pixels" in refused.value.message
    with pytest.raises(ProtocolError):
        limits.check(edit(65, None))  # an unset side counts as SD's 512


@contextlib.contextmanager
def small_filesystem(path, mib: int):
    """A real tmpfs of `mib` MiB at `path` (root can mount one here; elsewhere the test is skipped)."""
    from asd_backend.bench.serve import small_filesystem as mounted
    from asd_backend.errors import UsageError

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(mounted(path, mib))
        except UsageError as exc:
            pytest.skip(str(exc))
        yield path


def test_a_full_disk_refuses_the_submit_fails_the_checkpoint_clearly_and_the_server_keeps_serving(tmp_path, asd_home):
    """On a full disk a submit was queued without a record, a second save exited the server (rc 1), and a
    checkpoint that did not fit failed with torch's 'unexpected pos …'."""
    with small_filesystem(tmp_path / "disk", 48) as disk:
        results = disk / "results"
        with running_server(results, free_port()) as server, server.client() as client:
            filler = fill_filesystem(disk)
            refused = try_submit(client, "a teapot", steps=2)
            assert isinstance(refused, Error) and refused.code == "disk_full", refused
            assert "disk is full" in refused.message and server.process.poll() is None
            assert listed(client) == set()  # nothing queued without its record
            filler.unlink()
            job = try_submit(client, "a teapot", steps=12)
            assert isinstance(job, Accepted), job
            client.wait_for(lambda m: m.job_id == job.job_id and isinstance(m, Progress) and m.step >= 1, timeout=120)
            fill_filesystem(disk, leave_bytes=16 << 10)  # room for records, not for a checkpoint
            got = []
            client.wait_for(lambda m: m.job_id == job.job_id and isinstance(m, Done), timeout=120,
                            on_message=got.append)
            errors = [m for m in got if isinstance(m, Error)]
            assert errors and errors[0].code == "disk_full" and "disk is full" in errors[0].hint, got
            assert "unexpected pos" not in errors[0].message
            (disk / ".filler").unlink()
            again = try_submit(client, "still serving", steps=2)
            assert isinstance(again, Accepted), again
            client.wait_for(lambda m: m.job_id == again.job_id and isinstance(m, Done), timeout=120)
            assert server.process.poll() is None
        record = json.loads((results / job.job_id / "job.json").read_text())
        assert record["status"] == "failed"


def test_a_request_made_while_the_backend_is_gone_or_silent_is_refused_and_never_delivered_later(tmp_path, asd_home):
    """After a backend died, a click waited in ZeroMQ's pipe and a restarted server ran a job nobody confirmed."""
    results, port = tmp_path / "results", free_port()
    server = start_server(results, port)
    try:
        with AsdClient(server.address, client_name="tests", dead_after=6.0) as client:
            client.wait_for(lambda m: isinstance(m, Welcome), timeout=30)
            # A frozen backend (its connection still open) is silent: past stale_after nothing is sent.
            server.process.send_signal(signal.SIGSTOP)
            time.sleep(client.stale_after + 0.5)
            with pytest.raises(ConnectionError, match="not sent"):
                client.submit(partial_spec("asked of a frozen backend", preset="smoke", steps=2))
            server.process.send_signal(signal.SIGCONT)
            # A dead backend: the request cannot leave, and is not kept for whoever listens next.
            server.process.kill()
            server.process.wait()
            time.sleep(0.5)
            try:
                client.submit(partial_spec("asked of a dead backend", preset="smoke", steps=2))
            except ConnectionError as exc:
                assert "not sent" in str(exc)
            assert client.not_sent >= 1
            server = start_server(results, port)  # the same address and results folder
            deadline = time.monotonic() + 60  # lost, then greeted again by the new server
            while not any(isinstance(m, Welcome) for m in client.poll(timeout=0.5)):
                assert time.monotonic() < deadline, "no welcome from the restarted backend"
            time.sleep(2.0)
            assert listed(client) == set()  # neither request ran
    finally:
        stop_server(server)
