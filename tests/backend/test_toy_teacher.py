"""The shipped toy teacher and judge: loaded through the product's own paths, and they know their world."""

from __future__ import annotations

import json

import pytest
import torch

from asd_backend.teachers.registry import TEACHERS, TOY_TEACHER_DIR, default_preset, find_teacher
from asd_backend.toy.judge import JUDGE_DIR, load_judge
from asd_backend.toy.world import COLOURS, SHAPES, WorldObject


def test_the_registry_names_the_toy_teacher_its_preset_and_refuses_unknown_specs():
    assert find_teacher("toy")[0] is TEACHERS["toy"] and TEACHERS["toy"].trained and TEACHERS["toy"].builtin
    assert find_teacher("sd:/some/folder") == (TEACHERS["sd"], "/some/folder")
    with pytest.raises(ValueError, match="unknown teacher 'toy:x'"):
        find_teacher("toy:x")
    with pytest.raises(ValueError, match="sd\\[:ID_OR_PATH\\] \\| toy"):
        find_teacher("midjourney")
    assert default_preset("toy") == "toy" and default_preset("sd") is None
    from asd_backend.train.presets import resolve_spec

    # A job that names the toy teacher and no preset runs the toy's; a preset it names wins.
    assert resolve_spec({"prompt": "a red mug", "model": {"teacher": "toy"}}).schedule.resolution_schedule == [[0, 32]]
    assert resolve_spec({"prompt": "a red mug", "model": {"teacher": "toy"}, "preset": "smoke"}).preset == "smoke"
    # At a high CFG the toy preset anneals the timesteps (measured to help SDS and ASD there, to hurt ASD at
    # 7.5); what the job sets itself wins, and another preset is left alone.
    def schedule(**extra):
        job = {"prompt": "a red mug", "model": {"teacher": "toy"}} | extra
        s = resolve_spec(job).schedule
        return s.anneal_start_step, s.anneal_max_timestep

    assert schedule() == schedule(guidance={"cfg": 14.9}) == (None, 0.5)
    assert schedule(guidance={"cfg": 30}) == schedule(guidance={"cfg": 100.0}) == (400, 0.3)
    assert schedule(guidance={"cfg": 30}, schedule={"anneal_start_step": None}) == (None, 0.3)
    assert schedule(guidance={"cfg": 30}, schedule={"anneal_max_timestep": 0.5}) == (400, 0.5)
    assert schedule(guidance={"cfg": 30}, preset="smoke") == (None, 0.5)
    with pytest.raises(ValueError, match=r"guidance\.cfg"):
        schedule(guidance={"cfg": "thirty"})
    # Jobs of other kinds have no schedule to anneal and are not refused for one they never sent.
    for kind in ("image", "edit_texture"):
        job = {"kind": kind, "prompt": "a blue mug", "model": {"teacher": "toy"}, "guidance": {"cfg": 30}}
        assert resolve_spec(job).guidance.cfg == 30


def test_the_shipped_weights_are_small_safetensors_with_their_record():
    files = [p for p in (*TOY_TEACHER_DIR.rglob("*"), *JUDGE_DIR.rglob("*")) if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 30 << 20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    record = json.loads((TOY_TEACHER_DIR / "training.json").read_text())
    assert record["data_version"] >= 1 and record["config"]["seed"] == 0 and "command" in record
    judge = json.loads((JUDGE_DIR / "judge.json").read_text())
    assert judge["held_out_shape_accuracy"] > 0.95 and judge["held_out_colour_accuracy"] > 0.95


def test_the_toy_teacher_loads_as_the_product_loads_a_teacher_and_warns_outside_its_world(asd_home):
    from asd_backend.teachers import load_teacher

    teacher = load_teacher("toy", "cpu")
    assert teacher.trained and teacher.native_resolution == 32 and teacher.name == "toy"
    assert teacher.prompt_warning("a red mug") is None
    warning = teacher.prompt_warning("a ceramic teapot")
    assert warning and "mug" in warning and "purple" in warning and "going ahead" in warning


def test_the_judge_names_exact_renders():
    from asd_backend.nerf.cameras import orbit_cameras
    from asd_backend.toy.render import render_objects

    objects = [WorldObject("chair", "blue"), WorldObject("mug", "red"), WorldObject("torus", "yellow"),
               WorldObject("cone", "white")]
    cameras = orbit_cameras(torch.full((4,), 15.0), torch.tensor([30.0, -60.0, 100.0, 170.0]),
                            torch.full((4,), 1.3), torch.full((4,), 50.0))
    verdict = load_judge().judge(render_objects(objects, cameras, 32).over(torch.ones(3)))
    assert verdict["shape"] == [o.shape for o in objects] and verdict["colour"] == [o.colour for o in objects]
    assert abs(verdict["azimuth"][0] - 30) < 25 and abs(verdict["azimuth"][1] + 60) < 25
    # Its probabilities are distributions whose largest is the name it gives.
    for kind, names in (("shape", SHAPES), ("colour", list(COLOURS))):
        probabilities = verdict[f"{kind}_probabilities"]
        assert torch.allclose(probabilities.sum(-1), torch.ones(4))
        assert [names[i] for i in probabilities.argmax(-1).tolist()] == verdict[kind]


def test_images_sampled_from_the_toy_teacher_show_the_asked_for_object():
    """The teacher proven in 2D through the diffusers pipeline (fewer steps than `asd toy check`)."""
    from asd_backend.toy.evaluate import load_pipeline
    from asd_backend.toy.train_teacher import sample_images

    prompts = ["a red cube", "a blue sphere", "a green cylinder", "a yellow cone", "an orange torus",
               "a purple mug", "a white chair"]
    images = sample_images(load_pipeline(TOY_TEACHER_DIR), prompts, seed=0, steps=20)
    verdict = load_judge().judge(images)
    right = [f"{c} {s}" in p for p, s, c in zip(prompts, verdict["shape"], verdict["colour"], strict=True)]
    assert sum(right) >= 6, list(zip(prompts, verdict["shape"], verdict["colour"], strict=True))


def test_the_2d_check_reports_its_misses_by_the_background_the_teacher_drew():
    """`asd toy check` (few steps, one seed): every prompt judged once, and the share right split by the
    background each sample was drawn on, which together give the overall share."""
    from asd_backend.toy.evaluate import CheckConfig, check_teacher, load_pipeline

    report = check_teacher(load_pipeline(TOY_TEACHER_DIR), load_judge(), CheckConfig(seeds=1, steps=8))
    counts, right = report["samples_by_background"], report["right_by_background"]
    assert counts["white"] + counts["colour"] == report["prompts"] == len(SHAPES) * len(COLOURS)
    assert counts["white"] > 0 and counts["colour"] > 0  # it was trained on both
    overall = sum(right[k] * counts[k] for k in counts) / report["prompts"]
    assert overall == pytest.approx(report["right"], abs=2e-3)
    assert set(report["views_right"]) == {"mug, front view", "mug, back view", "chair, front view", "chair, back view"}


def test_the_2d_check_measures_apparent_size_on_white_and_skips_other_backgrounds():
    """`asd toy check`'s size_by_shape: the rows and columns an object fills on white, as exact renders give them."""
    from asd_backend.nerf.cameras import CameraConfig, sample_cameras
    from asd_backend.toy.evaluate import exact_extents, object_extent
    from asd_backend.toy.render import render_objects
    from asd_backend.toy.world import parse_prompt

    cube, sphere = parse_prompt("a red cube"), parse_prompt("a black sphere")
    render = render_objects([cube, sphere] * 4, sample_cameras(8, CameraConfig(), torch.Generator().manual_seed(3)), 32)
    extent, white = object_extent(render.over(torch.ones(3)).clamp(0, 1))
    assert white.all()
    # The rows and columns of the pixels it half covers, up to a pixel of soft edge on each side.
    half = render.coverage[:, 0] > 0.5
    rows, cols = half.any(dim=2).float().sum(dim=1), half.any(dim=1).float().sum(dim=1)
    assert ((extent - (rows * cols).sqrt()).abs() <= 2).all() and extent.min() > 4
    image = torch.ones(1, 3, 32, 32)
    image[:, :, 5:15, 8:28] = 0.2  # a 10 × 20 box
    assert object_extent(image)[0].item() == pytest.approx(200 ** 0.5)
    image[:, :, 30, 2] = 0.0  # a stray speckle is not size
    assert object_extent(image)[0].item() == pytest.approx(200 ** 0.5)
    assert object_extent(torch.ones(1, 3, 32, 32))[0].item() == 0  # nothing drawn
    _, on_colour = object_extent(render.over(torch.tensor([0.2, 0.6, 0.3])).clamp(0, 1))
    assert not on_colour.any()  # its object cannot be told from a coloured background by this rule
    # The world's sphere (radius 0.35) is larger than its cone (0.6 high, base radius 0.3) from the same cameras.
    cone_size, sphere_size = exact_extents([parse_prompt("a red cone"), sphere], 32).tolist()
    assert 4 < cone_size < sphere_size < 32


def test_the_teacher_prefers_the_object_its_caption_names_and_scores_turned_copies_alike():
    """`asd toy prefers`: the implicit classifier separates a wrong shape from the right one; a cube turned
    90° renders the same images, so with common random numbers it scores exactly the same."""
    from asd_backend.errors import UsageError
    from asd_backend.teachers import load_teacher
    from asd_backend.toy.preference import PreferenceConfig, caption_gains, prefers

    teacher = load_teacher("toy", "cpu")
    rows = prefers(teacher, WorldObject("cube", "red"), PreferenceConfig(views=8, timesteps=4))
    exact = rows["the object"]["caption_gain"]
    assert exact > 0
    others = {name: r["caption_gain"] for name, r in rows.items() if name.startswith("a ")}
    assert set(others) == {"a sphere", "a cylinder", "a cone", "a torus", "a mug", "a chair"}
    assert max(others.values()) < exact, rows
    assert rows["turned 90°"]["caption_gain"] == pytest.approx(exact, abs=1e-5)
    assert rows["turned 30°"]["caption_gain"] != pytest.approx(exact, abs=1e-5)
    with pytest.raises(UsageError, match="one image per caption"):
        caption_gains(teacher, {"x": torch.ones(2, 3, 32, 32)}, ["a red cube"], PreferenceConfig(timesteps=1))


def test_world_objects_turn_and_scale_about_the_centre():
    points = torch.tensor([[0.0, 0.19, 0.3], [0.3, 0.0, 0.0], [0.0, 0.37, 0.0]])
    chair, turned = WorldObject("chair", "red"), WorldObject("chair", "red", turn_deg=90.0)
    # The backrest (at +Y) turned anticlockwise seen from above comes to −X.
    assert (chair.sdf(points[:1]) < 0).item() and (turned.sdf(torch.tensor([[-0.19, 0.0, 0.3]])) < 0).item()
    assert not (turned.sdf(points[:1]) < 0).item()
    # The filled mug (a what-if, not a world shape) is solid where the mug is hollow, the same elsewhere.
    cavity, wall = torch.tensor([[0.0, 0.0, 0.1]]), torch.tensor([[0.185, 0.0, 0.0]])
    mug, filled = WorldObject("mug", "red"), WorldObject("filled mug", "red")
    assert (mug.sdf(cavity) > 0).item() and (filled.sdf(cavity) < 0).item()
    assert (filled.sdf(wall) < 0).item() and (mug.sdf(wall) < 0).item()
    big = WorldObject("sphere", "red", scale=1.5)
    assert (WorldObject("sphere", "red").sdf(points[2:]) > 0).item() and (big.sdf(points[2:]) < 0).item()
    assert big.caption == "a red sphere" and big.geometry == ("sphere", 0.0, 1.5, 1.0)
    # Stretched vertically about the centre (a what-if): taller, no wider; the distance stays a bound.
    above, beside = torch.tensor([[0.0, 0.0, 0.33]]), torch.tensor([[0.27, 0.0, 0.0]])
    cylinder, tall = WorldObject("cylinder", "red"), WorldObject("cylinder", "red", height=1.2)
    assert (cylinder.sdf(above) > 0).item() and (tall.sdf(above) < 0).item()
    assert (tall.sdf(beside) > 0).item()
    # Never more than the true distance (sphere tracing needs a bound), whichever way it is stretched.
    squat = WorldObject("cylinder", "red", height=0.85)
    assert 0 < squat.sdf(torch.tensor([[0.0, 0.0, 0.5]])).item() <= 0.5 - 0.255 + 1e-6
    assert 0 < tall.sdf(torch.tensor([[0.35, 0.0, 0.0]])).item() <= 0.35 - 0.25 + 1e-6
    # The round cube (a what-if) is the circle through the cube's vertical edges, as tall as the cube.
    round_cube = WorldObject("round cube", "red")
    inside = torch.tensor([[0.0, 0.34, 0.0], [0.24, 0.24, 0.0], [0.0, 0.0, 0.24]])
    outside = torch.tensor([[0.0, 0.36, 0.0], [0.26, 0.26, 0.0], [0.0, 0.0, 0.26]])
    assert (round_cube.sdf(inside) < 0).all() and (round_cube.sdf(outside) > 0).all()


def test_the_teacher_is_asked_about_the_what_ifs_each_shape_needs():
    from asd_backend.toy.preference import candidates

    cube, mug = candidates(WorldObject("cube", "red")), candidates(WorldObject("mug", "red"))
    assert {"×1.2 tall", "×0.85 tall", "round from above"} <= set(cube) and "filled" not in cube
    assert {"×1.2 tall", "filled"} <= set(mug) and "round from above" not in mug
    assert cube["×1.2 tall"].height == 1.2 and cube["round from above"].shape == "round cube"
    assert "a cube" not in cube and "a cube" in mug  # every other world shape, in the object's paint
