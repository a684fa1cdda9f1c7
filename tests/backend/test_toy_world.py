"""The toy world: exact shapes where the issue puts them, renders through the product's cameras, the
trainer's checkpoint and resume, and the scores of `asd bench toy` on answers known exactly."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import trimesh

from asd_backend.nerf.background import SolidBackground
from asd_backend.nerf.cameras import orbit_cameras
from asd_backend.nerf.field import FieldConfig, NerfField
from asd_backend.nerf.renderer import VolumeRenderer
from asd_backend.nerf.shading import Light
from asd_backend.toy.light import AMBIENT, LIGHT_DIRECTION, light_angles
from asd_backend.toy.render import render_objects
from asd_backend.toy.world import COLOURS, SHAPES, WorldObject, all_objects, output_to_field, parse_prompt
from asd_backend.train.presets import resolve_spec


def inside(shape: str, *points) -> list[bool]:
    return (WorldObject(shape, "red").sdf(torch.tensor(points, dtype=torch.float32)) < 0).tolist()


def test_the_shapes_are_where_the_issue_puts_them():
    assert inside("cube", (0.24, 0.24, 0.24), (0.26, 0, 0)) == [True, False]
    assert inside("sphere", (0, 0, 0.34), (0.25, 0.25, 0.0)) == [True, False]  # |·| = 0.354
    assert inside("cylinder", (0.24, 0, 0.29), (0, 0, 0.31), (0.26, 0, 0)) == [True, False, False]
    assert inside("cone", (0.29, 0, -0.29), (0, 0, 0.29), (0.2, 0, 0.1)) == [True, True, False]
    assert inside("torus", (0.26, 0, 0.09), (0, 0, 0), (0.26, 0, 0.11)) == [True, False, False]
    # The mug: hollow above its 0.04 base, a 0.03 wall, the handle on +X (the right, seen from the front).
    assert inside("mug", (0, 0, -0.2), (0, 0, 0), (0.185, 0, 0), (0.3, 0, 0), (-0.3, 0, 0)) == [
        True, False, True, True, False]
    # The chair faces −Y: its backrest is at +Y, above the seat; legs in the corners.
    assert inside("chair", (0, 0.2, 0.3), (0, -0.2, 0.3), (0.2, 0.2, -0.3), (0, 0, -0.3)) == [True, False, True, False]


def test_captions_and_prompts():
    assert len(all_objects()) == 56
    assert WorldObject("mug", "orange").caption == "an orange mug"
    assert WorldObject("cube", "red").caption == "a red cube"
    assert parse_prompt("A blue chair, front view") == WorldObject("chair", "blue")
    assert parse_prompt("a ceramic teapot") is None
    assert parse_prompt("a red blue cube") is None


def covered_columns(shape: str, azimuth: float, size: int = 64) -> torch.Tensor:
    cameras = orbit_cameras(torch.tensor([0.0]), torch.tensor([azimuth]), torch.tensor([1.3]), torch.tensor([50.0]))
    coverage = render_objects([WorldObject(shape, "red")], cameras, size).coverage[0, 0]
    return coverage.sum(0)  # covered pixels per image column


def test_renders_use_the_product_cameras_and_frame():
    # Seen from the front (azimuth 0 in the NeRF's frame), the mug's handle is on the right of the image.
    columns = covered_columns("mug", 0.0)
    centre = columns.argmax()  # the cup is the tallest part
    occupied = torch.nonzero(columns > 0.5).flatten()
    assert occupied.max() - centre > centre - occupied.min() + 3
    # The sphere's silhouette has the radius the pinhole camera predicts: tan(asin(r/d)) / tan(fov/2) · S/2.
    size, d, r = 64, 1.3, 0.35
    area = float(render_objects([WorldObject("sphere", "red")], orbit_cameras(
        torch.tensor([10.0]), torch.tensor([33.0]), torch.tensor([d]), torch.tensor([50.0])), size).coverage.sum())
    radius_px = math.tan(math.asin(r / d)) / math.tan(math.radians(25)) * size / 2
    assert area == pytest.approx(math.pi * radius_px**2, rel=0.03)
    # The frame: the chair's backrest (+Y, the output frame's back) is at the field's −X.
    assert output_to_field(torch.tensor([[0.0, 1.0, 0.0]])).tolist() == [[-1.0, 0.0, 0.0]]


def test_shading_follows_the_fixed_light_and_paints_are_exact():
    cameras = orbit_cameras(torch.zeros(2), torch.tensor([0.0, 180.0]), torch.full((2,), 1.3), torch.full((2,), 50.0))
    render = render_objects([WorldObject("cube", "blue")] * 2, cameras, 32)
    image = render.over(torch.ones(3))
    centre = image[:, :, 14:18, 14:18].mean((2, 3))
    # Front face lit by the front light; the back face gets the ambient only: same hue, darker.
    assert (centre[0] > centre[1]).all()
    blue = torch.tensor(COLOURS["blue"]) / 255
    assert torch.argmax(centre[0]) == torch.argmax(blue) == torch.argmax(centre[1])


def test_the_trainer_runs_checkpoints_resumes_and_saves_a_pipeline_the_product_loads(tmp_path, asd_home):
    from asd_backend.teachers import load_teacher
    from asd_backend.toy.train_teacher import ToyTeacherTrainer, ToyTrainingConfig

    def config(decoder_steps: int, steps: int = 3) -> ToyTrainingConfig:
        return ToyTrainingConfig(out=tmp_path / "run", views_per_object=1, vae_steps=4, vae_batch=4, steps=steps,
                                 batch=4, checkpoint_every=2, validate_every=2, warmup_steps=2,
                                 validation_steps=2, decoder_steps=decoder_steps)

    first = ToyTeacherTrainer(config(2), cache=tmp_path / "cache", progress=False)
    first.run()
    # The same command with a longer last stage continues where the checkpoint is, not from scratch.
    second = ToyTeacherTrainer(config(4), cache=tmp_path / "cache", progress=False)
    assert second.load_checkpoint() and second.stage == "decoder" and second.step == 2
    torch.testing.assert_close(second.unet.state_dict(), first.unet.state_dict())
    folder = second.run()
    assert second.stage == "decoder" and second.step == 4
    assert {p.name for p in (tmp_path / "run" / "validation").glob("*.png")} >= {"unet_000002.png",
                                                                                   "decoder_000004.png"}
    record = json.loads((folder / "training.json").read_text())
    assert record["unet_steps"] == 3 and record["data_version"] >= 1
    assert record["command"].startswith("asd toy train --views-per-object 1")
    with pytest.raises(ValueError, match="finished its 3 UNet steps"):
        ToyTeacherTrainer(config(4, steps=5), cache=tmp_path / "cache", progress=False).load_checkpoint()
    teacher = load_teacher(f"sd:{folder}", "cpu")  # the same from_pretrained as Stable Diffusion
    assert teacher.native_resolution == 32 and teacher.trained
    # A run with other data settings refuses the checkpoint instead of mixing them.
    other = ToyTeacherTrainer(ToyTrainingConfig(out=tmp_path / "run", views_per_object=2), cache=tmp_path / "cache",
                              progress=False)
    with pytest.raises(ValueError, match="other settings"):
        other.load_checkpoint()


def test_a_fine_tune_starts_from_a_saved_pipeline_keeps_its_vae_and_records_the_chain(tmp_path, asd_home):
    from asd_backend.errors import TeacherLoadError
    from asd_backend.toy.train_teacher import ToyTeacherTrainer, ToyTrainingConfig, load_models

    tiny = dict(views_per_object=1, vae_batch=4, batch=4, checkpoint_every=1, validate_every=1, warmup_steps=1,
                validation_steps=2, decoder_steps=0)
    source = ToyTeacherTrainer(ToyTrainingConfig(out=tmp_path / "scratch", vae_steps=2, steps=1, **tiny),
                               cache=tmp_path / "cache", progress=False).run()
    tune = ToyTeacherTrainer(ToyTrainingConfig(out=tmp_path / "tune", init_from=str(source), seed=1, steps=2, **tiny),
                             cache=tmp_path / "cache", progress=False)
    assert tune.stage == "unet"  # no VAE stage: the source's latents are what its UNet knows
    vae, unet, _ = load_models(source)
    torch.testing.assert_close(tune.unet.state_dict(), unet.state_dict())  # starts from the saved weights
    folder = tune.run()
    tuned_vae, tuned_unet, _ = load_models(folder)
    torch.testing.assert_close(tuned_vae.state_dict(), vae.state_dict())
    assert tuned_vae.config.scaling_factor == vae.config.scaling_factor
    before, after = unet.state_dict(), tuned_unet.state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    record = json.loads((folder / "training.json").read_text())
    assert f"--init-from {source}" in record["command"] and "--seed 1" in record["command"]
    assert record["init_from_training"]["unet_steps"] == 1  # the source's own record travels with the weights
    with pytest.raises(TeacherLoadError, match=r"no model_index\.json"):
        ToyTeacherTrainer(ToyTrainingConfig(out=tmp_path / "bad", init_from=str(tmp_path)), cache=tmp_path / "cache")


def test_bench_scores_are_right_on_known_answers():
    from asd_backend.bench.toy import ToyBenchConfig, held_out_cameras, mesh_colour_psnr, render_scores, shape_scores
    from asd_backend.mesh.extract import Mesh
    from asd_backend.toy.render import render_objects as render

    cfg = ToyBenchConfig(prompt="a green cone", exact_resolution=96, samples=4000, iou_grid=32)
    from asd_backend.bench.toy import exact_mesh

    cone = exact_mesh("cone", 128)
    mesh = Mesh(vertices=cone.vertices.astype("float32"), faces=cone.faces.astype("int64"))
    scores = shape_scores(mesh, WorldObject("cone", "green"), cfg)
    assert scores["nearest_shape"] == "cone" and scores["chamfer_l1_rel"] < 0.012 and scores["iou"] > 0.95
    assert scores["width_ratio"] == pytest.approx(1, abs=0.02) and scores["height_ratio"] == pytest.approx(1, abs=0.02)
    assert abs(scores["below_bottom"]) < 0.01 and abs(scores["above_top"]) < 0.01
    assert scores["area_ratio"] == pytest.approx(1, abs=0.03)
    # A cone half as wide again with a lump hanging 0.15 below its base (what the distilled cones look
    # like) is read as wider, taller, and reaching below the bottom, not above the top.
    lump = trimesh.creation.icosphere(subdivisions=2, radius=0.15)
    lump.apply_translation([0.0, 0.0, -0.3])
    grown = trimesh.util.concatenate([cone.copy().apply_scale([1.5, 1.5, 1.0]), lump])
    grown_scores = shape_scores(Mesh(vertices=grown.vertices.astype("float32"), faces=grown.faces.astype("int64")),
                                WorldObject("cone", "green"), cfg)
    assert grown_scores["width_ratio"] == pytest.approx(1.5, abs=0.03)
    assert grown_scores["height_ratio"] == pytest.approx(0.75 / 0.6, abs=0.03)
    assert grown_scores["below_bottom"] == pytest.approx(0.15, abs=0.01) and abs(grown_scores["above_top"]) < 0.01
    assert grown_scores["area_ratio"] > 1.5
    cameras = held_out_cameras(4)
    exact = render([WorldObject("cone", "green")] * 4, cameras, 32).over(torch.ones(3))
    good = render_scores(exact, WorldObject("cone", "green"), cameras, 32)
    assert good["nearest_colour"] == "green" and good["render_psnr"] > 40 and good["saturated"] == 0
    wrong = render([WorldObject("cone", "purple")] * 4, cameras, 32).over(torch.ones(3))
    bad = render_scores(wrong, WorldObject("cone", "green"), cameras, 32)
    assert bad["nearest_colour"] == "purple" and bad["render_psnr"] < good["render_psnr"] - 15
    # A black cone a shade darker than the truth fills `saturated` with its shadows (0.03 in the exact
    # render, under 0.02 here) but is not over-saturated; a red cube whose red is pushed to 1 is, by both.
    black = render([WorldObject("cone", "black")] * 4, cameras, 32)
    darker = black.over(torch.ones(3)) * (1 - 0.7 * black.coverage)
    dark = render_scores(darker, WorldObject("cone", "black"), cameras, 32)
    assert dark["saturated"] > 0.3 and dark["saturated_far"] == 0 and dark["chroma_excess"] == 0
    red = render([WorldObject("cube", "red")] * 4, cameras, 32)
    vivid = red.over(torch.ones(3)).clone()
    vivid[:, 0] = torch.where(red.coverage[:, 0] > 0.5, 1.0, vivid[:, 0])
    pushed = render_scores(vivid, WorldObject("cube", "red"), cameras, 32)
    assert pushed["saturated_far"] > 0.25 and pushed["saturated"] >= pushed["saturated_far"]
    assert pushed["chroma_excess"] > 0.1 and good["chroma_excess"] == 0
    # Duller than the truth (half-way to grey) is error, not over-saturation.
    dull = render_scores(0.5 * exact + 0.25, WorldObject("cone", "green"), cameras, 32)
    assert dull["chroma_excess"] == 0 and dull["render_psnr"] < 20
    # The mesh's own colours against the paint: exact paint scores high, the paint with shading baked in
    # (what an unlit NeRF's mesh carries) far lower, no colours no score.
    green = np.asarray(COLOURS["green"], np.uint8)
    painted = dataclasses.replace(mesh, colors=np.tile(green, (len(mesh.vertices), 1)))
    baked = dataclasses.replace(mesh, colors=(painted.colors * 0.6).astype(np.uint8))
    assert mesh_colour_psnr(painted, WorldObject("cone", "green")) > 40
    assert mesh_colour_psnr(baked, WorldObject("cone", "green")) < 20
    assert mesh_colour_psnr(mesh, WorldObject("cone", "green")) is None
    # The paint an artist gets: the one nearest the vertex colours' median, some shading baked in or a
    # few stray vertices of another colour notwithstanding.
    from asd_backend.bench.toy import nearest_mesh_colour

    strays = painted.colors.copy()
    strays[: len(strays) // 5] = 255
    assert nearest_mesh_colour(painted) == "green" and nearest_mesh_colour(mesh) is None
    assert nearest_mesh_colour(baked) == "green"  # 0.6 of the paint: a shadowed green is still green
    assert nearest_mesh_colour(dataclasses.replace(mesh, colors=strays)) == "green"
    assert nearest_mesh_colour(dataclasses.replace(mesh, colors=np.tile(np.asarray(COLOURS["purple"], np.uint8),
                                                                       (len(mesh.vertices), 1)))) == "purple"
    # Seen from above, a cube fills its square, a solid of revolution π/4 of it, at any turn.
    from asd_backend.bench.toy import top_square_fill

    def as_mesh(tm) -> Mesh:
        return Mesh(vertices=tm.vertices.astype("float32"), faces=tm.faces.astype("int64"))

    cube, cylinder = exact_mesh("cube", 96), exact_mesh("cylinder", 96)
    turned = cube.copy().apply_transform(trimesh.transformations.rotation_matrix(0.5, [0, 0, 1]))
    assert top_square_fill(as_mesh(cube)) > 0.97 and top_square_fill(as_mesh(turned)) > 0.95
    assert top_square_fill(as_mesh(cylinder)) == pytest.approx(math.pi / 4, abs=0.03)
    with pytest.raises(ValueError, match="names no world object"):
        ToyBenchConfig(prompt="a ceramic teapot")
    # The bench's schedule flags reach the job spec; unset, the preset's stand.
    from asd_backend.bench.toy import bench_spec

    annealed = bench_spec(ToyBenchConfig(anneal_start_step=400, anneal_max_timestep=0.3)).schedule
    plain = bench_spec(ToyBenchConfig()).schedule
    assert (annealed.anneal_start_step, annealed.anneal_max_timestep) == (400, 0.3)
    assert (plain.anneal_start_step, plain.anneal_max_timestep, plain.steps) == (None, 0.5, 1200)
    # The toy preset's sparsity weight, and the official one back through the flag.
    assert plain.lambda_sparsity == 100.0
    assert bench_spec(ToyBenchConfig(lambda_sparsity=10)).schedule.lambda_sparsity == 10.0
    assert bench_spec(ToyBenchConfig(preset="preview")).schedule.lambda_sparsity == 10.0
    # The opacity (binary entropy) loss: off in the toy preset, on from a step through the flag.
    assert plain.opaque_from_step is None
    opaque = bench_spec(ToyBenchConfig(opaque_from_step=600, lambda_opaque=100)).schedule
    assert (opaque.opaque_from_step, opaque.lambda_opaque) == (600, 100.0)


def test_bench_toy_runs_the_product_loop_and_reports_how_it_was_run():
    # The whole bench, a few steps: generate() on the shipped toy teacher, then every score; the row
    # names the settings its flags changed, so a table built from rows can tell annealed runs apart.
    from asd_backend.bench.toy import ToyBenchConfig, run

    report = run(ToyBenchConfig(prompt="a red cube", method="asd", steps=3, views=2, render_size=32,
                                exact_resolution=64, samples=2000, iou_grid=24, anneal_start_step=1,
                                anneal_max_timestep=0.3, discriminator_steps=2))
    assert (report["prompt"], report["method"], report["steps"], report["seed"]) == ("a red cube", "asd", 3, 0)
    assert (report["anneal_start_step"], report["anneal_max_timestep"]) == (1, 0.3)
    assert (report["discriminator_steps"], report["gamma_schedule"]) == (2, "constant")
    assert report["lambda_sparsity"] == 100.0 and report["opaque_from_step"] is None
    assert report["lambda_opaque"] == 1000.0
    assert report["nearest_shape"] in SHAPES and 0.0 < report["chamfer_l1_rel"] < 1.0
    assert 0.0 <= report["judge_shape_accuracy"] <= 1.0 and 0.0 <= report["top_square_fill"] <= 1.0
    assert 0.0 <= report["judge_colour_probability"] <= 1.0 and 0.0 <= report["saturated_far"] <= report["saturated"]
    assert 0.0 <= report["chroma_excess"] <= 1.0 and report["nearest_mesh_colour"] in COLOURS
    # Three steps make no cube: the teacher explains the exact cube better than the fog it started from.
    assert report["caption_gain_exact"] > report["caption_gain"]
    assert report["loss_discriminator_last_quarter"] > 0.0


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_renders_something_inside_its_bounds(shape):
    cameras = orbit_cameras(torch.tensor([20.0]), torch.tensor([40.0]), torch.tensor([1.3]), torch.tensor([50.0]))
    coverage = render_objects([WorldObject(shape, "white")], cameras, 32).coverage
    assert 0.05 < float(coverage.mean()) < 0.6
    assert float(coverage[..., 0, :].sum() + coverage[..., -1, :].sum()) == 0  # nothing touches the frame


def test_toy_sweep_plans_matched_and_equal_time_rows_and_tabulates_seeds():
    from asd_backend.bench.toy_sweep import ToySweepConfig, matched_cfg, plan, table

    assert matched_cfg(30, -0.75) == 8.25 and matched_cfg(7.5, -0.75) == 2.625
    runs = plan(ToySweepConfig(prompts=("a red mug",), methods=("asd",), cfgs=(30.0,), seeds=2, matched=True), [])
    assert [(r.method, r.cfg, r.seed) for r in runs] == [("asd", 30.0, 0), ("sds", 8.25, 0), ("vsd", 8.25, 0),
                                                         ("asd", 30.0, 1), ("sds", 8.25, 1), ("vsd", 8.25, 1)]
    row = {"prompt": "a red mug", "cfg": 30.0, "steps": 1200, "steps_requested": 0, "gamma_schedule": "",
           "render_psnr": 18.0, "saturated": 0.4, "judge_shape_accuracy": 1.0, "judge_colour_accuracy": 1.0,
           "chamfer_l1_rel": 0.03, "iou": 0.2, "nearest_shape": "mug"}
    rows = [row | {"method": "asd", "seed": 0, "seconds": 180.0}, row | {"method": "asd", "seed": 1, "seconds": 170.0,
                                                                        "render_psnr": 20.0},
            row | {"method": "sds", "seed": 0, "seconds": 60.0}]
    # SDS given ASD's time: its steps scaled by the mean time ratio (175 s / 60 s × 1200 steps).
    timed = plan(ToySweepConfig(prompts=("a red mug",), methods=("sds",), cfgs=(30.0,), seeds=1,
                                sds_equal_time=True), rows)
    assert [(r.method, r.steps) for r in timed] == [("sds", 0), ("sds", 3500)]
    text = table(rows)
    assert "| a red mug | asd | 30 | 1200 | 2 | 19.00 ± 1.41 | 40.0 ± 0.0 | – | – |" in text and "| 2/2 |" in text


def test_toy_sweep_skips_the_runs_a_file_holds_however_a_row_spells_the_default_schedule():
    import dataclasses

    from asd_backend.bench.toy_sweep import ToySweepConfig, pending, plan
    from asd_backend.errors import UsageError

    grid = ToySweepConfig(prompts=("a red mug",), methods=("sds", "asd"), cfgs=(7.5,), seeds=1)
    official = dataclasses.replace(grid, gamma_schedule="official")
    # only ASD takes the sweep's schedule: SDS has no γ
    assert [(r.method, r.gamma_schedule) for r in plan(official, [])] == [("sds", ""), ("asd", "official")]
    base = {"prompt": "a red mug", "cfg": 7.5, "seed": 0, "steps_requested": 0}
    sds_row = base | {"method": "sds", "gamma_schedule": "constant"}
    # `asd bench toy` names the resolved default ("constant"), older sweeps left it empty: both are its run
    for spelt in ("constant", ""):
        assert pending(grid, [base | {"method": "asd", "gamma_schedule": spelt}, sds_row]) == []
    # the other schedule's row is another run, for ASD only: an official sweep finds SDS's run done
    still_to_run = pending(official, [base | {"method": "asd", "gamma_schedule": "constant"}, sds_row])
    assert [(r.method, r.gamma_schedule) for r in still_to_run] == [("asd", "official")]
    assert [r.method for r in pending(grid, [base | {"method": "asd", "gamma_schedule": "official"}])] == ["sds", "asd"]
    with pytest.raises(UsageError, match=r"constant, official.*'offical'"):
        ToySweepConfig(gamma_schedule="offical")


def test_toy_sweep_compares_two_methods_paired_by_prompt_cfg_and_seed(tmp_path, capsys):
    from asd_backend.cli import main

    def row(method, prompt, cfg, seed, psnr, chamfer, shape):
        return {"prompt": prompt, "method": method, "cfg": cfg, "seed": seed, "steps": 1200, "render_psnr": psnr,
                "chamfer_l1_rel": chamfer, "nearest_shape": shape}

    cube, mug = "a red cube", "a blue mug"
    rows = [row("asd", cube, 7.5, 0, 18.0, 0.03, "cube"), row("sds", cube, 7.5, 0, 17.0, 0.04, "sphere"),
            row("asd", cube, 7.5, 1, 16.0, 0.03, "cube"), row("sds", cube, 7.5, 1, 17.0, 0.03, "cube"),
            row("asd", mug, 7.5, 0, 19.0, 0.05, "mug"), row("sds", mug, 7.5, 0, 18.5, 0.04, "mug"),
            row("asd", cube, 30.0, 0, 15.0, 0.03, "cube"), row("sds", cube, 30.0, 0, 14.0, 0.02, "cube"),
            row("asd", cube, 30.0, 1, 15.0, 0.03, "cube"),  # no SDS run to pair it with: left out
            row("sds", cube, 7.5, 0, 19.0, 0.02, "cube") | {"steps": 2200, "steps_requested": 2200}]
    runs = tmp_path / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["bench", "toy-sweep", "--out", str(runs), "--compare", "asd,sds"]) == 0
    text = capsys.readouterr().out
    assert "| 7.5 | 3 | render PSNR dB | 17.67 | 17.50 | 2/3 |" in text
    assert "| 7.5 | 3 | Chamfer % | 3.67 | 3.67 | 1/3 |" in text  # the equal pair is neither side's
    assert "| 7.5 | 3 | nearest shape right | 3/3 | 2/3 |" in text
    assert "| 30 | 1 | render PSNR dB | 15.00 | 14.00 | 1/1 |" in text and "IoU" not in text  # no row has it
    # Each side at its own CFG (ASD at 30 against SDS at 7.5), and SDS given more steps: the rows asked for.
    assert main(["bench", "toy-sweep", "--out", str(runs), "--compare", "asd@30,sds@7.5"]) == 0
    assert "| 30 / 7.5 | 2 | render PSNR dB | 15.00 | 17.00 | 0/2 |" in capsys.readouterr().out
    assert main(["bench", "toy-sweep", "--out", str(runs), "--compare", "asd,sds:2200"]) == 0
    assert "| 7.5 | 1 | render PSNR dB | 18.00 | 19.00 | 0/1 |" in capsys.readouterr().out
    for bad in ("asd", "asd,asd", "asd,sds@high"):
        assert main(["bench", "toy-sweep", "--out", str(runs), "--compare", bad]) == 2
    assert "METHOD[/GAMMA][@CFG][:STEPS]" in capsys.readouterr().err
    assert main(["bench", "toy-sweep", "--out", str(runs), "--compare", "asd,vsd"]) == 2  # no VSD run in the file
    assert "the file holds asd@30, asd@7.5, sds@30, sds@7.5, sds@7.5:2200" in capsys.readouterr().err
    # An ASD run of the same prompt, seed and CFG under the official γ schedule is another run, not a rerun:
    # `asd` stays the default schedule's runs (a row's empty schedule is the default, 'constant'), and
    # `asd/official` names the other, against the default's or against SDS (whose rows' schedule means nothing).
    official = row("asd", cube, 7.5, 0, 20.0, 0.03, "cube") | {"gamma_schedule": "official"}
    constant = row("asd", mug, 7.5, 1, 17.0, 0.05, "mug") | {"gamma_schedule": "constant"}
    sds_mug = row("sds", mug, 7.5, 1, 16.0, 0.04, "mug") | {"gamma_schedule": "official"}
    runs.write_text(runs.read_text() + "".join(json.dumps(r) + "\n" for r in (official, constant, sds_mug)))
    assert main(["bench", "toy-sweep", "--out", str(runs), "--compare", "asd,sds"]) == 0
    assert "| 7.5 | 4 | render PSNR dB | 17.50 | 17.12 | 3/4 |" in capsys.readouterr().out
    assert main(["bench", "toy-sweep", "--out", str(runs), "--compare", "asd/official,asd"]) == 0
    assert "| 7.5 | 1 | render PSNR dB | 20.00 | 18.00 | 1/1 |" in capsys.readouterr().out
    assert main(["bench", "toy-sweep", "--out", str(runs), "--compare", "asd/official,vsd"]) == 2
    held = capsys.readouterr().err
    assert "asd/official@7.5" in held and "sds/official" not in held
    # The table of means tells the schedules apart the same way: ASD's official run on a line of its own, the
    # default's empty and spelt-out schedules one line, SDS's one line whatever its rows record.
    assert main(["bench", "toy-sweep", "--out", str(runs), "--table"]) == 0
    text = capsys.readouterr().out
    assert "| a red cube | asd (official) | 7.5 | 1200 | 1 |" in text
    assert "| a blue mug | asd | 7.5 | 1200 | 2 |" in text
    assert "| a blue mug | sds | 7.5 | 1200 | 2 |" in text and "(constant)" not in text
    assert main(["bench", "toy-sweep", "--out", str(runs), "--compare", "asd/offical,asd"]) == 2
    assert "constant, official" in capsys.readouterr().err


def ball_field(albedo: tuple[float, float, float]) -> NerfField:
    """A real NerfField whose networks are silenced: density is the blob bias alone (a ball of radius
    0.35, steep at its surface) and albedo one colour, so its answer is the world's sphere."""
    field = NerfField(FieldConfig(density_blob_scale=300.0, density_blob_std=0.35))
    with torch.no_grad():
        for network in (field.density_network, field.feature_network):
            network[-1].weight.zero_()
            network[-1].bias.zero_()
        field.feature_network[-1].bias.copy_(torch.logit(torch.tensor(albedo)))
    return field


def test_a_lambertian_nerf_is_lit_as_the_world_is():
    """The toy preset's shading: the NeRF lit by the world's light (nerf/shading.py) renders the world's
    sphere as the world's renderer does; unlit (the official NeRF) it is one flat colour."""
    sphere = WorldObject("sphere", "red")
    field = ball_field(tuple(c / 255 for c in COLOURS["red"]))
    cameras = orbit_cameras(torch.tensor([10.0, 30.0, 0.0]), torch.tensor([0.0, 100.0, -150.0]),
                            torch.tensor([1.3, 1.2, 1.4]), torch.tensor([50.0, 55.0, 45.0]))
    exact = render_objects([sphere] * 3, cameras, 32)
    white = torch.ones(3)
    inner = exact.coverage[:, 0] > 0.99
    elevation, azimuth = light_angles()
    errors = {}
    for name, light in (("lit", Light.from_angles(elevation, azimuth, AMBIENT)), ("albedo", None)):
        renderer = VolumeRenderer(field, SolidBackground(), None, samples_per_ray=256, light=light)
        with torch.no_grad():
            rgb = renderer(cameras, 32, 32).rgb.permute(0, 3, 1, 2)
        errors[name] = float((rgb - exact.over(white)).abs().permute(0, 2, 3, 1)[inner].mean())
    assert errors["lit"] < 0.02 and errors["albedo"] > 4 * errors["lit"], errors  # measured: 0.015 and 0.094


def test_normals_come_from_the_density_and_carry_its_gradient():
    field = ball_field((0.5, 0.5, 0.5))
    points = torch.tensor([[0.3, 0.0, 0.0], [0.0, -0.2, 0.2], [0.1, 0.1, -0.3]])
    normals = field.normals(points)
    assert torch.allclose(normals, torch.nn.functional.normalize(points, dim=-1), atol=1e-3)  # the ball's, outwards
    ahead = field.normals(points, field.density(points))  # the renderer's: forward differences
    assert torch.allclose(ahead, normals, atol=0.02)
    normals[:, 0].sum().backward()  # a loss on shading reaches the density network
    assert field.density_network[-1].weight.grad.abs().sum() > 0


def test_the_toy_preset_lights_its_nerf_as_the_world_is_lit():
    spec = resolve_spec({"kind": "generate", "prompt": "a red cube", "model": {"teacher": "toy"}})
    lighting = spec.nerf.lighting
    assert lighting.shading == "lambertian" and lighting.ambient == AMBIENT
    world = torch.tensor(LIGHT_DIRECTION) / torch.tensor(LIGHT_DIRECTION).norm()  # Blender's frame
    assert torch.allclose(torch.tensor(Light.from_spec(lighting).direction), output_to_field(world), atol=1e-3)
    # The same light in Blender's frame, for a lit edit (the toy preset's edits stay unlit: they measured worse lit).
    assert torch.allclose(torch.tensor(Light.from_spec(lighting, frame="blender").direction), world, atol=1e-3)
    edit = resolve_spec({"kind": "edit_texture", "prompt": "a blue mug", "model": {"teacher": "toy"}}).edit.lighting
    assert Light.from_spec(edit) is None
    # Stable Diffusion's presets keep the official, unlit NeRF and edits.
    assert Light.from_spec(resolve_spec({"kind": "generate", "prompt": "a teapot"}).nerf.lighting) is None


def test_presets_resolve_without_torch():
    """The server's front end resolves specs with the presets and never loads torch: the toy preset reads
    its light from a torch-free module."""
    import subprocess
    import sys

    code = ("import sys, asd_backend.train.presets as p; "
            "p.resolve_spec({'kind': 'generate', 'prompt': 'a red mug', 'model': {'teacher': 'toy'}}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_gallery_pictures_a_mesh_file_as_the_exact_object_is_pictured(tmp_path, capsys):
    """A mesh of the exact mug, painted its paint and written as an artist's PLY (Blender's frame), is
    pictured like the exact object from the same views: same pixels covered, same lit colour; a mesh
    turned half round about Z (handle on the left) is not."""
    from PIL import Image

    from asd_backend.bench.toy import exact_mesh
    from asd_backend.cli import main
    from asd_backend.mesh.export import read_mesh, write_mesh
    from asd_backend.mesh.extract import Mesh
    from asd_backend.toy.gallery import gallery_cameras, render_mesh

    mug = WorldObject("mug", "red")
    exact = exact_mesh("mug", 128)
    paint = np.tile(np.round(np.asarray(mug.albedo) * 255).astype(np.uint8), (len(exact.vertices), 1))
    mesh = Mesh(exact.vertices.astype(np.float32), exact.faces.astype(np.uint32), paint)
    turned = dataclasses.replace(mesh, vertices=mesh.vertices * np.array([-1, -1, 1], np.float32))
    write_mesh(mesh, tmp_path / "mug.ply")
    write_mesh(turned, tmp_path / "turned.ply")

    cameras = gallery_cameras()
    truth = render_objects([mug] * len(cameras), cameras, 48)
    differences = {}
    for path in ("mug.ply", "turned.ply"):
        picture = render_mesh(read_mesh(tmp_path / path), cameras, 48)
        both = (picture.coverage > 0.99) & (truth.coverage > 0.99)
        colour_error = float((picture.colour - truth.colour).abs().amax(dim=1, keepdim=True)[both].mean())
        differences[path] = float((picture.coverage - truth.coverage).abs().mean())
        if path == "mug.ply":
            assert colour_error < 0.03, colour_error
    # The handle is a few pixels of each view: turned, it leaves them and covers others.
    assert differences["mug.ply"] < 0.004 and differences["turned.ply"] > 3 * differences["mug.ply"], differences
    # A textured .glb (what generate writes with a baked texture) is pictured in its texture's paint.
    texture = np.tile(np.round(np.asarray(mug.albedo) * 255).astype(np.uint8), (8, 8, 1))
    texture[:, :4] = 0  # the left half black: the UVs below sample the right half only
    uvs = np.full((len(mesh.vertices), 2), 0.75, np.float32)
    write_mesh(dataclasses.replace(mesh, colors=None, uvs=uvs, texture=texture), tmp_path / "textured.glb")
    textured = render_mesh(read_mesh(tmp_path / "textured.glb"), cameras, 48)
    both = (textured.coverage > 0.99) & (truth.coverage > 0.99)
    assert float((textured.colour - truth.colour).abs().amax(dim=1, keepdim=True)[both].mean()) < 0.03

    out = tmp_path / "gallery.png"
    assert main(["toy", "gallery", f"a red mug={tmp_path / 'mug.ply'},{tmp_path / 'turned.ply'}",
                 f"a red mug={tmp_path / 'turned.ply'}", "--out", str(out), "--size", "32"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2
    assert Image.open(out).size == (3 * 3 * 32, 2 * (32 + 14))  # the widest row: exact and two meshes
    for bad, says in ((["toy", "gallery", "a red mug", "--out", str(out)], "PROMPT=MESH"),
                      (["toy", "gallery", f"a red mug={tmp_path / 'none.ply'}", "--out", str(out)], "no such mesh"),
                      (["toy", "gallery", f"a red vase={tmp_path / 'mug.ply'}", "--out", str(out)], "names no world"),
                      (["toy", "gallery", f"a red mug={out}", "--out", str(out)], "use one of .glb"),
                      (["toy", "gallery", f"a red mug={tmp_path / 'mug.ply'}", "--out", str(tmp_path / "g.jpg")],
                       "ending in .png"),
                      (["toy", "gallery", f"a red mug={tmp_path / 'mug.ply'}", "--out", str(out), "--size", "0"],
                       "--size must be")):
        assert main(bad) != 0
        assert says in capsys.readouterr().err
