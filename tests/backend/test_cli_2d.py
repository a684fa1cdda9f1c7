"""`asd image` and `asd bench 2d` as a user runs them: real subprocesses, real files."""

import json
import subprocess
import sys

import pytest
from PIL import Image


def asd(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "asd_backend.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_asd_image_end_to_end_on_the_tiny_teacher(tmp_path, asd_home):
    out = tmp_path / "fox.png"
    result = asd("image", "a red fox", "--teacher", "tiny", "--device", "cpu", "--steps", "6", "--every", "3",
                 "-o", str(out))
    assert result.returncode == 0, result.stderr
    image = Image.open(out)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert image.info["teacher_trained"] == "False" and "UNTRAINED" in image.info["notice"]
    assert "UNTRAINED" in result.stderr  # the user is told on the console too
    assert (tmp_path / "fox_run" / "frames" / "step_00003.png").is_file()
    run = json.loads((tmp_path / "fox.json").read_text())
    assert run["teacher"]["trained"] is False and run["spec"]["guidance"]["method"] == "asd"
    assert run["final_metrics"]["loss_discriminator"] > 0


def test_asd_image_bad_input_is_a_clear_error(tmp_path, asd_home):
    result = asd("image", "a fox", "--teacher", "tiny", "--device", "cpu", "-o", str(tmp_path / "fox.jpg"))
    assert result.returncode == 2 and "ending in .png" in result.stderr and "Traceback" not in result.stderr
    result = asd("image", "a fox", "--teacher", "sd:/no/such/model", "-o", str(tmp_path / "x.png"))
    assert result.returncode == 2 and "no such folder" in result.stderr and "Traceback" not in result.stderr


def test_bench_2d_json_schema_and_ordering():
    result = asd("bench", "2d", "--json", "--steps", "400", "--cfg", "30", "--methods", "sds,asd", "--workers", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["settings"]["steps"] == 400
    rows = {r["method"]: r for r in report["results"]}
    assert set(rows) == {"sds", "asd"}
    for r in rows.values():
        assert set(r) == {"method", "cfg", "sliced_w1", "coverage", "norm_ratio", "seconds"}
    # At high CFG, SDS over-saturates and ASD stays closer to the data (the paper's claim).
    assert rows["asd"]["sliced_w1"] < rows["sds"]["sliced_w1"]
    assert rows["sds"]["norm_ratio"] > 1.2


def test_bench_speed_reports_timing_and_the_discriminator_loss_trend(asd_home):
    result = asd("bench", "speed", "--preset", "smoke", "--teacher", "tiny", "--device", "cpu", "--steps", "6",
                 "--warmup", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["seconds_per_step"] > 0 and report["steps_timed"] == 6 and report["weights_dtype"] == "float32"
    assert report["warmup_steps"] == 3 and report["warmup_seconds_per_step"] > 0
    trend = report["discriminator_loss_trend"]
    assert trend["steps"] == 6 and trend["first"] > 0 and trend["last"] > 0
    # Where the time goes, and what the final extraction costs.
    phases = report["phases"]
    assert {"render_forward", "render_backward", "encode_forward", "teacher", "discriminator_forward",
            "guidance_backward", "optimizer", "occupancy", "other"} <= set(phases)
    assert phases["render_forward"] > 0 and phases["render_backward"] > 0 and phases["teacher"] > 0
    assert sum(phases.values()) == pytest.approx(report["seconds_per_step_mean"], rel=0.05)
    # Empty space is skipped from the first step: fewer samples evaluated than generated.
    assert 0 < report["samples_evaluated"] < report["samples_generated"]
    assert report["extract_seconds"] > 0 and report["mesh_faces"] > 0 and report["mc_resolution"] == 64


def test_bench_speed_compares_the_reference_path_with_the_fast_one(asd_home):
    result = asd("bench", "speed", "--preset", "smoke", "--teacher", "tiny", "--device", "cpu", "--steps", "3",
                 "--warmup", "2", "--compare", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["reference"]["implementation"] == "reference" and report["fast"]["implementation"] == "fast"
    speedup = report["speedup"]
    assert speedup["seconds_per_step"] > 0 and speedup["extract_seconds"] > 0
    assert set(speedup["phases"]) == set(report["reference"]["phases"])
    # Both paths train the same model from the same start: same kind of mesh, similar sample counts.
    assert report["reference"]["mesh_faces"] > 0 and report["fast"]["mesh_faces"] > 0
