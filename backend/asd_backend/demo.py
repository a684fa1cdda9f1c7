"""`asd demo` (`make demo`): the main job end to end, as an artist's Blender would run it.

Starts `asd serve` on loopback, submits a prompt through AsdClient (the add-on's client), writes
every streamed mesh under outputs/<job>/ and says where. The teacher is the real Stable Diffusion
2.1-base when its weights are in the Hugging Face cache (or, on a GPU machine, downloadable), and
otherwise the toy teacher trained here (a world of known objects: a real object on a CPU in minutes),
and the demo says which and what that means.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from .loopback import free_port
from .teachers.stable_diffusion import DEFAULT_MODEL


def choose_teacher() -> tuple[str, str, str]:
    """(teacher spec, preset, one line that says which teacher and what that means)."""
    import torch
    from huggingface_hub import snapshot_download

    gpu = torch.cuda.is_available()
    try:
        snapshot_download(DEFAULT_MODEL, local_files_only=True)
        cached = True
    except Exception:  # not cached (or no hub client configured): the tiny teacher will do
        cached = False
    if not cached and gpu:
        try:
            print(f"downloading {DEFAULT_MODEL} (about 5 GB, once)…", flush=True)
            snapshot_download(DEFAULT_MODEL)
            cached = True
        except Exception as exc:  # no network, no access: say so below
            reason = f"could not download it ({type(exc).__name__})"
    else:
        reason = "it is not in the Hugging Face cache" + ("" if gpu else " and this machine has no GPU to run it")
    if cached:
        preset = "preview" if gpu else "smoke"
        where = "on the GPU" if gpu else "on the CPU (slow: smoke preset, a rough shape only)"
        return "sd", preset, f"Teacher: Stable Diffusion 2.1-base ({DEFAULT_MODEL}), {where}."
    return "toy", "toy", (f"Teacher: the toy teacher, because {DEFAULT_MODEL} is unavailable ({reason}). It was "
                          "trained in this project on a world of 7 shapes in 8 colours (\"a red mug\", \"a blue "
                          "chair\") and makes those objects on a CPU in minutes. See README ▸ A GPU box for the "
                          "real model.")


def run(prompt: str, outputs: Path = Path("outputs")) -> int:
    from asd_protocol.client import AsdClient
    from asd_protocol.job_spec import partial_from_options

    from .remote_job import follow, wait_for_welcome

    teacher, preset, line = choose_teacher()
    print(line, flush=True)
    if teacher == "toy":
        from .toy.world import vocabulary_warning

        warning = vocabulary_warning(prompt)
        if warning:
            print(f"warning: {warning}", flush=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    outputs.mkdir(parents=True, exist_ok=True)
    log = outputs / "backend.log"
    print(f"starting a local backend on {address} (log: {log})…", flush=True)
    with open(log, "ab") as handle:
        server = subprocess.Popen([sys.executable, "-m", "asd_backend.cli", "serve", "--bind", address, "--results",
                                   str(outputs / ".backend"), "--teacher", teacher], stdout=handle,
                                  stderr=subprocess.STDOUT)
    try:
        with AsdClient(address, client_name="asd-demo", dead_after=60.0) as client:
            welcome = wait_for_welcome(client, timeout=120)
            print(f"connected to {welcome.server}; submitting {prompt!r} (preset {preset})", flush=True)
            last = {"time": 0.0, "state": None}

            def on_progress(p) -> None:
                state = (p.phase, p.step)
                if state != last["state"] and (time.monotonic() - last["time"] > 2 or p.phase != last["state"][0]
                                               if last["state"] else True):
                    last.update(time=time.monotonic(), state=state)
                    eta = "" if p.eta_seconds is None or p.step == p.total else f", about {p.eta_seconds:.0f} s left"
                    print(f"  {p.phase}: step {p.step}/{p.total}{eta}", flush=True)

            result = follow(client, submit=partial_from_options("generate", prompt=prompt, preset=preset,
                                                                     teacher=teacher),
                            out_dir=lambda job: outputs / job, on_progress=on_progress)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    folder = result.mesh_path.parent if result.mesh_path else outputs
    print(f"done in {result.seconds:.0f} s: {len(result.snapshots)} streamed snapshot(s) and the final mesh in "
          f"{folder}/")
    for path in [*result.snapshots, result.mesh_path, result.preview_path]:
        if path is not None:
            print(f"  {path}")
    for message in result.messages:
        print(f"note from the backend: {message}")
    return 0 if result.status == "completed" else 1
