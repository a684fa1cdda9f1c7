"""The results folder: records validated on load, bad ones quarantined, relative paths, one server."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from asd_backend.loopback import free_port
from asd_backend.server.jobs import Job
from asd_backend.server.store import QUARANTINE, BadRecord, ResultsInUse, ResultStore, load_record
from asd_backend.train.presets import resolve_spec
from asd_protocol import Done, Jobs, MeshSnapshot

from .live_server import running_server, start_server, stop_server
from .test_server import follow, submit


def good_job(job_id: str = "20261201-120000-aaaaaaaa", **changes) -> Job:
    spec = resolve_spec({"prompt": "a teapot", "preset": "smoke", "model": {"teacher": "tiny"}})
    job = Job(job_id=job_id, kind="generate", prompt="a teapot", spec=spec.to_json(), client="local", total=spec.steps)
    for key, value in changes.items():
        setattr(job, key, value)
    return job


BAD_RECORDS = {
    "a list": "[]",
    "null": "null",
    "a string": '"job"',
    "a number for a date": lambda d: {**d, "created": 5},
    "not a date": lambda d: {**d, "updated": "yesterday"},
    "an unknown status": lambda d: {**d, "status": "paused"},
    "a negative step": lambda d: {**d, "step": -1},
    "a step past the end": lambda d: {**d, "step": 10**9},
    "another job's id": lambda d: {**d, "job_id": "20261201-120000-bbbbbbbb"},
    "an id that climbs out": lambda d: {**d, "job_id": "../../x"},
    "a lone surrogate": lambda d: {**d, "prompt": "a \ud800 teapot"},
    "a spec out of range": lambda d: {**d, "spec": {**d["spec"], "seed": -5}},
    "an output outside": lambda d: {**d, "outputs": {"mesh": "../../../etc/passwd"}},
    "infinite seconds": lambda d: {**d, "seconds": 1e999},
}


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_a_bad_record_is_quarantined_with_its_reason_and_the_rest_load(tmp_path, name):
    store = ResultStore(tmp_path)
    store.save(good_job("20261201-110000-00000000"))
    folder = tmp_path / "20261201-120000-aaaaaaaa"
    folder.mkdir()
    bad = BAD_RECORDS[name]
    text = bad if isinstance(bad, str) else json.dumps(bad(good_job().to_json()))  # surrogates as \\ud800
    (folder / "job.json").write_text(text)
    (folder / "checkpoint.pt").write_bytes(b"kept")

    jobs = store.load_all()

    assert [j.job_id for j in jobs] == ["20261201-110000-00000000"]
    assert not folder.exists()
    (moved,) = (tmp_path / QUARANTINE).iterdir()
    assert moved.name.startswith(folder.name)
    assert (moved / "checkpoint.pt").read_bytes() == b"kept"  # moved aside whole, nothing deleted
    assert (moved / "reason.txt").read_text().strip()
    with pytest.raises(BadRecord):
        load_record(moved / "job.json")
    assert [j.job_id for j in store.load_all()] == ["20261201-110000-00000000"]  # the quarantine is not loaded


def test_a_failed_job_with_a_long_error_loads(tmp_path):
    """A worker's error may hold 4,000 characters; the listing shows 2,000. The record is not bad for it."""
    store = ResultStore(tmp_path)
    store.save(good_job(status="failed", error="RuntimeError: " + "x" * 3500))
    (job,) = store.load_all()
    assert job.status == "failed" and len(job.error) > 3000 and len(job.info().error) == 2000
    assert not (tmp_path / QUARANTINE).exists()


def test_a_record_written_with_absolute_paths_still_finds_its_files_after_a_move(tmp_path):
    old = tmp_path / "old" / "20261201-120000-aaaaaaaa"
    new_root = tmp_path / "new"
    (new_root / old.name).mkdir(parents=True)
    (new_root / old.name / "mesh.glb").write_bytes(b"glb")
    record = good_job(status="completed", outputs={"mesh": str(old / "mesh.glb")}).to_json()
    (new_root / old.name / "job.json").write_text(json.dumps(record))
    store = ResultStore(new_root)
    (job,) = store.load_all()
    assert job.outputs == {"mesh": "mesh.glb"}
    assert store.output_path(job, "mesh").read_bytes() == b"glb"


def test_records_are_written_whole_with_relative_outputs(tmp_path):
    store = ResultStore(tmp_path)
    job = good_job()
    job.outputs = store.relative_outputs(job.job_id, {"mesh": "mesh.glb", "stray": "../elsewhere.glb"})
    store.save(job)
    data = json.loads((tmp_path / job.job_id / "job.json").read_text())
    assert data["outputs"] == {"mesh": "mesh.glb"}
    assert sorted(p.name for p in (tmp_path / job.job_id).iterdir()) == ["job.json"]  # no temp file left


def test_one_server_per_results_folder(tmp_path):
    first, second = ResultStore(tmp_path), ResultStore(tmp_path)
    first.lock()
    try:
        with pytest.raises(ResultsInUse, match="another asd serve"):
            second.lock()
    finally:
        first.unlock()
    second.lock()  # free again once the first lets go
    second.unlock()


def test_a_moved_results_folder_with_bad_records_serves_its_meshes_and_refuses_a_second_server(tmp_path, asd_home):
    results = tmp_path / "results"
    with running_server(results, free_port()) as server, server.client() as client:
        job = submit(client, steps=8)
        assert follow(client, job)[-1][1].status == "completed"
    record = json.loads((results / job / "job.json").read_text())
    # The smoke preset's 8 turntable frames are outputs too (a server honours output.turntable).
    assert record["outputs"] == {"mesh": "mesh.glb", "preview": "preview.png"} | {
        f"turntable_{i:02d}": f"turntable/turntable_{i:02d}.png" for i in range(8)}
    moved = tmp_path / "moved"
    shutil.move(results, moved)
    (moved / "20260101-000000-deadbeef").mkdir()
    (moved / "20260101-000000-deadbeef" / "job.json").write_text("[]")

    with running_server(moved, free_port()) as server, server.client() as client:
        client.attach(job)
        got = [m for _, m in follow(client, job)]
        assert any(isinstance(m, MeshSnapshot) and m.final and len(m.faces) for m in got)
        assert isinstance(got[-1], Done) and got[-1].outputs["mesh"] == "mesh.glb"
        request = client.list_jobs()
        listing = client.wait_for(lambda m: m.parent_id == request, timeout=10)
        assert isinstance(listing, Jobs) and [j.job_id for j in listing.jobs] == [job]
        assert '"record_quarantined"' in server.log_text()

        second = start_server(moved, free_port(), wait=False)
        try:
            assert second.process.wait(timeout=60) != 0
        except subprocess.TimeoutExpired:
            stop_server(second)
            raise
        assert "another asd serve" in second.log_text() and "--results" in second.log_text()


def test_a_symlinked_job_folder_is_set_aside_and_what_it_points_at_is_untouched(tmp_path):
    """A job folder linking outside --results, with a running record, stopped the server from starting."""
    results, outside = tmp_path / "results", tmp_path / "elsewhere"
    store = ResultStore(results)
    store.save(good_job("20261201-110000-00000000"))
    outside.mkdir()
    (outside / "job.json").write_text(json.dumps(good_job("20261201-120000-aaaaaaaa", status="running").to_json()))
    (results / "20261201-120000-aaaaaaaa").symlink_to(outside, target_is_directory=True)

    assert [j.job_id for j in store.load_all()] == ["20261201-110000-00000000"]
    assert not (results / "20261201-120000-aaaaaaaa").exists()
    assert (outside / "job.json").is_file()  # the link was moved aside, not followed
    reasons = list((results / QUARANTINE).glob("*.reason.txt"))
    assert reasons and "symbolic link" in reasons[0].read_text()


def test_a_queued_record_past_the_server_limits_is_failed_on_restart_not_run(tmp_path, asd_home):
    """Records were not re-checked against the server's limits on load: a queued 1024³ mesh ran."""
    results = tmp_path / "results"
    store = ResultStore(results)
    spec = resolve_spec({"prompt": "a teapot", "preset": "smoke", "model": {"teacher": "tiny"},
                         "output": {"mc_resolution": 1024}})
    job = good_job("20261201-120000-aaaaaaaa", status="queued", spec=spec.to_json())
    store.save(job)
    with running_server(results, free_port()) as server, server.client() as client:
        request = client.list_jobs()
        listing = client.wait_for(lambda m: m.parent_id == request, timeout=10)
        (info,) = listing.jobs
        assert info.status == "failed" and "max_mc_resolution" in info.error, info
    assert json.loads((results / job.job_id / "job.json").read_text())["status"] == "failed"
