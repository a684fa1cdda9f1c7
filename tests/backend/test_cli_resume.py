"""`asd generate` as a user runs it: Ctrl-C, --resume, checkpoints and outputs on real files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from asd_backend.artifacts import atomic_path

GENERATE = [sys.executable, "-m", "asd_backend.cli", "generate", "--preset", "smoke", "--teacher", "tiny", "--device",
            "cpu", "--mc-resolution", "32", "--turntable", "0"]


def generate(*args, timeout=300):
    return subprocess.run([*GENERATE, *args], capture_output=True, text=True, timeout=timeout)


def test_an_interrupted_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of a new one")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_ctrl_c_checkpoints_says_how_to_resume_and_resume_finishes(tmp_path, asd_home):
    out = tmp_path / "fox.glb"
    run = tmp_path / "fox_run"
    process = subprocess.Popen([*GENERATE, "a red fox", "--steps", "400", "-o", str(out)], stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoint.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (run / "checkpoint.json").is_file(), "no checkpoint was written"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    stopped_at = json.loads((run / "checkpoint.json").read_text())["step"]
    assert 0 < stopped_at < 400 and not out.exists()
    assert not [p for p in run.iterdir() if ".part" in p.name]

    # A different prompt or setting: refused, naming what differs; nothing is changed.
    for change in (["a blue fox"], ["a red fox", "--cfg", "30"]):
        refused = generate(*change, "--steps", "400", "-o", str(out), "--resume")
        assert refused.returncode == 2 and "cannot resume" in refused.stderr and "Traceback" not in refused.stderr
    assert "prompt" in generate("a blue fox", "--steps", "400", "-o", str(out), "--resume").stderr
    # The same command (fewer steps would be nothing to do; more is fine): continues from the checkpoint.
    done = generate("a red fox", "--steps", str(stopped_at + 6), "-o", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    assert f"resuming {run} from step {stopped_at}" in done.stderr
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["resumed_from"] == stopped_at and record["steps_done"] == stopped_at + 6
    # The resumed run kept the checkpoint's seed (none was given either time).
    assert record["spec"]["seed"] == json.loads((run / "checkpoint.json").read_text())["spec"]["seed"]
    # Resumed at its last step: nothing more to optimise, the mesh is made again with today's output settings.
    again = generate("a red fox", "--steps", str(stopped_at + 6), "--mc-resolution", "48", "-o", str(out), "--resume")
    assert again.returncode == 0 and "making the mesh again" in again.stderr, again.stderr
    assert json.loads(out.with_suffix(".json").read_text())["spec"]["output"]["mc_resolution"] == 48
    fewer = generate("a red fox", "--steps", "2", "-o", str(out), "--resume")
    assert fewer.returncode == 2 and "past the 2 steps asked for" in fewer.stderr


def test_resume_without_a_checkpoint_says_so(tmp_path, asd_home):
    result = generate("a teapot", "--steps", "3", "-o", str(tmp_path / "pot.glb"), "--resume")
    assert result.returncode == 0, result.stderr
    assert "nothing to resume" in result.stderr and "starting from step 0" in result.stderr


def test_a_long_prompt_is_warned_about(tmp_path, asd_home):
    prompt = " ".join(["a very ornate ceramic teapot with gold leaf"] * 12)
    result = subprocess.run([sys.executable, "-m", "asd_backend.cli", "image", prompt, "--teacher", "tiny", "--device",
                             "cpu", "--steps", "1", "-o", str(tmp_path / "pot.png")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "the text encoder reads 77" in result.stderr and "shorten it" in result.stderr
