"""The job spec: one typed record from flag to training loop (asd_protocol/job_spec.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from asd_backend.cli import build_parser
from asd_backend.spec_flags import partial_from_args
from asd_backend.train.presets import PRESETS, resolve_spec
from asd_protocol import ProtocolError, Submit, decode, encode
from asd_protocol.job_spec import JobSpec, leaves, partial_from_options


def asd(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "asd_backend.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_presets_are_partial_specs_under_what_the_user_sets():
    smoke = resolve_spec({"prompt": "a teapot", "preset": "smoke"})
    assert smoke.schedule.steps == 12 and smoke.nerf.grid.n_levels == 8 and smoke.output.mesh_every == 6
    mine = resolve_spec({"prompt": "a teapot", "preset": "smoke", "schedule": {"steps": 30}})
    assert mine.schedule.steps == 30 and mine.nerf.grid.n_levels == 8  # the user's field wins, the rest stays
    # The defaults are the preview preset: it overrides nothing.
    assert PRESETS["preview"].overrides == {}
    preview = resolve_spec({"prompt": "a teapot"}, seed=1)
    assert preview.to_json() == JobSpec(prompt="a teapot", seed=1).to_json()
    # Every preset value is a valid setting (checked by the same rules as a user's).
    for name in PRESETS:
        assert resolve_spec({"prompt": "x", "preset": name}).preset == name


def test_unknown_fields_are_errors_that_name_them_and_missing_ones_take_defaults():
    with pytest.raises(ProtocolError) as info:
        resolve_spec({"prompt": "x", "guidance": {"cfgg": 3}})
    assert info.value.field == "spec.guidance.cfgg" and "cfg" in info.value.hint
    with pytest.raises(ProtocolError) as info:
        resolve_spec({"kind": "image", "prompt": "x", "schedule": {"steps": 3}})
    assert info.value.field == "spec.schedule" and "image" in info.value.message
    spec = resolve_spec({"prompt": "x", "guidance": {"cfg": 30}})
    assert spec.guidance.cfg == 30 and spec.guidance.gamma == -0.75 and spec.guidance.method == "asd"


def test_a_flag_and_a_submitted_job_resolve_to_the_same_spec():
    argv = ["generate", "a red fox", "--preset", "smoke", "--cfg", "30", "--mesh-every", "0", "--texture-size", "128",
            "--method", "vsd", "--resolution-schedule", "0:32,6:48", "--no-perp-neg"]
    from_flags = partial_from_args(build_parser().parse_args(argv), "generate")
    from_client = partial_from_options("generate", prompt="a red fox", preset="smoke", cfg=30.0, mesh_every=0,
                                       texture_size=128, method="vsd", resolution_schedule=[[0, 32], [6, 48]],
                                       perp_neg=False)
    assert from_flags == from_client
    # Through the wire and back: the server resolves exactly what the flags would.
    wire = decode([bytes(f) for f in encode(Submit(spec=from_client))])
    assert resolve_spec(wire.spec, seed=7).to_json() == resolve_spec(from_flags, seed=7).to_json()
    # …and a resolved spec read back from JSON (job.json, a checkpoint record) is the same spec.
    spec = resolve_spec(from_flags, seed=7)
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_every_setting_has_a_doc_line_and_one_default():
    for path, _, rule in leaves():
        assert rule.doc, path
    # The training loops' own configs take their defaults from the spec instead of restating them.
    from asd_backend.guidance.score_distillation import GuidanceConfig

    g = GuidanceConfig()
    assert (g.method, g.cfg, g.gamma) == (JobSpec().guidance.method, JobSpec().guidance.cfg, JobSpec().guidance.gamma)


def test_help_shows_defaults_grouped_by_section():
    text = " ".join(asd("generate", "--help").stdout.split())  # argparse wraps lines
    assert "guidance settings" in text and "output settings" in text and "nerf settings" in text
    assert "--cfg X" in text and "(default: 7.5)" in text
    assert "preset smoke 12, toy 1200, standard 10000, paper 25000" in text  # --steps: what each preset sets
    assert "--mesh-every" in text and "--turntable-size" in text


@pytest.mark.parametrize(("flags", "said"), [
    (["--cfg", "nan"], "--cfg: must be a finite number"),
    (["--cfg", "inf"], "--cfg: must be a finite number"),
    (["--mc-resolution", "100000"], "--mc-resolution: must be between 32 and 1024"),
    (["--texture-size", "100000"], "--texture-size: must be between 0 and 8192"),
    (["--texture-size", "16"], "--texture-size: must be 0"),
    (["--turntable", "-1"], "--turntable: must be between 0 and 360"),
    (["--turntable-size", "100000"], "--turntable-size: must be between 16 and 2048"),
    (["--gamma", "-1"], "--gamma: ASD needs -1 < gamma < 0"),
    (["--method", "dds"], "--method: dds is a texture-editing method"),
    (["--resolution-schedule", "5:64"], "--resolution-schedule: must start at step 0"),
    (["--steps", "0"], "--steps: must be between 1"),
    (["-o", "OUT/thing.stl"], "give a path ending in .glb or .obj or .ply"),
    (["-o", "OUT"], "that is a folder"),
    (["-o", "FILE/model.glb"], "is a file, not a folder"),
    (["-o", "/proc/asd/model.glb"], "cannot write in /proc"),
])
def test_bad_generate_settings_are_refused_at_once_with_one_line_and_nothing_written(tmp_path, flags, said):
    (tmp_path / "OUT").mkdir()
    (tmp_path / "FILE").write_text("not a folder")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    flags = [f.replace("OUT", str(tmp_path / "OUT")).replace("FILE", str(tmp_path / "FILE")) for f in flags]
    if "-o" not in flags:
        flags += ["-o", str(tmp_path / "OUT" / "model.glb")]
    result = asd("generate", "a teapot", "--teacher", "tiny", "--device", "cpu", *flags)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no _run/, no .part


@pytest.mark.parametrize(("flags", "said"), [
    (["--resolution", "0"], "--resolution: must be between 64 and 2048"),
    (["--resolution", "100000"], "--resolution: must be between 64 and 2048"),
    (["--resolution", "100"], "--resolution: must be a multiple of 8"),
    (["--mesh-every", "3"], "unrecognized arguments"),
])
def test_bad_image_settings_are_refused(tmp_path, flags, said):
    result = asd("image", "a fox", "--teacher", "tiny", "--device", "cpu", "-o", str(tmp_path / "x.png"), *flags)
    assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())


def test_submit_sends_texture_size_and_refuses_flags_the_kind_does_not_use(tmp_path):
    result = asd("submit", "a fox", "-o", str(tmp_path / "fox.png"), "--mc-resolution", "64")
    assert result.returncode == 2 and "--mc-resolution is not used by image jobs" in result.stderr
    args = build_parser().parse_args(["submit", "a fox", "--texture-size", "256", "--mesh-every", "0"])
    assert partial_from_args(args, "generate") == {"kind": "generate", "prompt": "a fox",
                                                   "output": {"texture_size": 256, "mesh_every": 0}}
    # No --seed: none is sent, so the server picks a random one.
    assert "seed" not in partial_from_args(args, "generate")


def test_a_presets_high_cfg_part_lies_between_the_preset_and_the_client():
    from asd_protocol.job_spec import Preset, resolve

    # The CFG that decides is the client's, else the preset's own, else the default (7.5).
    presets = {"loud": Preset("cfg 20 by itself", {"guidance": {"cfg": 20.0}, "schedule": {"steps": 50}},
                              high_cfg=(15.0, {"schedule": {"steps": 60, "anneal_start_step": 10}})),
               "plain": Preset("default cfg", {"schedule": {"steps": 50}},
                               high_cfg=(15.0, {"schedule": {"steps": 60}}))}

    def schedule(**job):
        s = resolve({"prompt": "a red mug", **job}, presets).schedule
        return s.steps, s.anneal_start_step

    assert schedule(preset="loud") == (60, 10)
    assert schedule(preset="loud", guidance={"cfg": 7.5}) == (50, None)
    assert schedule(preset="plain") == (50, None)
    assert schedule(preset="plain", guidance={"cfg": 15}) == (60, None)
    assert schedule(preset="plain", guidance={"cfg": 15}, schedule={"steps": 70}) == (70, None)
    # A job kind without a schedule takes the preset as it is, and is not refused for it.
    assert resolve({"kind": "image", "prompt": "a red mug", "preset": "plain", "guidance": {"cfg": 30}},
                   presets).guidance.cfg == 30
