"""NeRF renderer, hash grid, marching cubes and mesh files, against analytic answers."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh
from torch import nn

from asd_backend.mesh.export import read_mesh, to_blender_frame, write_mesh
from asd_backend.mesh.extract import ExtractionConfig, Mesh, auto_threshold, extract_mesh
from asd_backend.mesh.raycast import raycast
from asd_backend.nerf.background import SolidBackground
from asd_backend.nerf.cameras import CameraConfig, orbit_cameras, project, sample_cameras
from asd_backend.nerf.hash_grid import HashGrid
from asd_backend.nerf.occupancy import OccupancyGrid
from asd_backend.nerf.renderer import VolumeRenderer
from asd_protocol.job_spec import GridSpec

CENTRE = torch.tensor([0.25, -0.1, 0.15])
RADIUS = 0.12


class SphereField(nn.Module):
    """A solid red ball of density 200 at CENTRE: an analytic stand-in for the NeRF field."""

    radius = 1.0  # the field's bounding radius (the renderer's sphere), not the ball's

    def __init__(self, ball_radius: float = RADIUS) -> None:
        super().__init__()
        self.ball_radius = ball_radius

    def forward(self, points):
        inside = (points - CENTRE).norm(dim=-1) < self.ball_radius
        density = torch.where(inside, 200.0, 0.0)
        return density, torch.tensor([1.0, 0.0, 0.0]).expand(len(points), 3)

    def density(self, points):
        return self.forward(points)[0]


def test_a_sphere_renders_where_it_projects():
    renderer = VolumeRenderer(SphereField(), SolidBackground((0.0, 0.0, 1.0)), None, samples_per_ray=256)
    cameras = orbit_cameras(torch.tensor([10.0, 40.0, -5.0]), torch.tensor([0.0, 120.0, -70.0]),
                            torch.tensor([1.3, 1.5, 1.1]), torch.tensor([50.0, 40.0, 65.0]))
    out = renderer(cameras, 64, 64)
    expected = project(CENTRE[None], cameras, 64, 64)[:, 0]  # (column, row) per camera
    rows, cols = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    for i in range(3):
        weight = out.opacity[i, ..., 0]
        assert weight.sum() > 5  # the ball is in view
        centroid = torch.stack([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()
        assert (centroid - expected[i]).abs().max() < 1.0, (i, centroid, expected[i])
        # Red where the ball is, the blue background elsewhere.
        assert out.rgb[i, ..., 0][weight > 0.99].min() > 0.98 and out.rgb[i, 0, 0, 2] > 0.99
    # The ray caster (teachers, texture editing) agrees with the volume renderer about coverage.
    ball = trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)
    ball.apply_translation(CENTRE.numpy())
    hits = raycast(ball, cameras, 64, 64).hit
    volume = (out.opacity[..., 0] > 0.5).numpy()
    assert (hits & volume).sum() / (hits | volume).sum() > 0.9


def test_random_cameras_follow_the_official_ranges():
    cams = sample_cameras(256, CameraConfig(), torch.Generator().manual_seed(0))
    assert cams.distance.min() >= 1.0 and cams.distance.max() <= 1.5
    assert cams.fovy_deg.min() >= 40 and cams.fovy_deg.max() <= 70
    assert cams.elevation_deg.min() >= -10 - 1e-4 and cams.elevation_deg.max() <= 45 + 1e-4
    assert cams.azimuth_deg.min() >= -180 and cams.azimuth_deg.max() <= 180
    # Cameras sit on their orbit and look at the origin (their -Z axis points at it).
    torch.testing.assert_close(cams.positions.norm(dim=-1), cams.distance, rtol=1e-5, atol=1e-5)
    forward = -cams.c2w[:, :3, 2]
    torch.testing.assert_close(forward, -torch.nn.functional.normalize(cams.positions, dim=-1), atol=1e-5, rtol=0)


def test_hash_grid_interpolates_trilinearly():
    grid = HashGrid(GridSpec(n_levels=4, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0))
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(1))
    out = grid(x)
    assert out.shape == (500, 8)
    res = grid.resolutions[0]
    pos = x * res
    cell = pos.floor().clamp(max=res - 1)
    frac, c = pos - cell, cell.long()
    expected = torch.zeros(500, 2)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                index = (c[:, 0] + dx) + (res + 1) * ((c[:, 1] + dy) + (res + 1) * (c[:, 2] + dz))
                w = ((frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                     * (frac[:, 2] if dz else 1 - frac[:, 2]))
                expected += w[:, None] * grid.embeddings[index]
    torch.testing.assert_close(out[:, :2], expected)
    # Continuous across cell boundaries, and trainable.
    eps = torch.tensor([[1e-6, 0, 0]])
    a = torch.tensor([[0.5, 0.3, 0.7]])
    torch.testing.assert_close(grid(a - eps), grid(a + eps), atol=1e-6, rtol=0)
    out.sum().backward()
    assert grid.embeddings.grad.abs().sum() > 0


def test_occupancy_grid_skips_empty_space():
    grid = OccupancyGrid(radius=1.0, resolution=16, warmup_steps=0)
    assert grid.occupied_fraction == 1.0
    # A ball several cells wide, so the cell around its centre is inside it wherever the update samples.
    grid.update(0, SphereField(ball_radius=0.3).density, step_size=0.01)
    assert 0 < grid.occupied_fraction < 0.05
    assert grid.query(CENTRE[None]).item() and not grid.query(torch.tensor([[-0.6, 0.6, -0.6]])).item()


def test_marching_cubes_on_an_analytic_sdf_is_within_one_voxel():
    def density(p):  # positive inside a sphere of radius 0.5
        return 100 * (0.5 - p.norm(dim=-1))

    config = ExtractionConfig(resolution=64, threshold=0.0, refine=False)
    mesh = extract_mesh(density, 1.0, config, color_fn=lambda p: (p + 1) / 2)
    voxel = 2.0 / 63
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - 0.5).max() < voxel
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight and tm.volume > 0  # closed, and wound outwards
    np.testing.assert_allclose(tm.volume, 4 / 3 * np.pi * 0.5**3, rtol=0.03)
    # Vertex colours are the colour field at the vertices.
    expected = np.round(np.clip((mesh.vertices + 1) / 2, 0, 1) * 255)
    assert np.abs(mesh.colors.astype(float) - expected).max() <= 1
    # The refined second pass is tighter.
    refined = extract_mesh(density, 1.0, ExtractionConfig(resolution=64, threshold=0.0))
    assert np.abs(np.linalg.norm(refined.vertices, axis=1) - 0.5).max() < voxel / 1.5


def test_small_components_and_empty_fields():
    def two_balls(p):
        big = (p - torch.tensor([0.3, 0.0, 0.0])).norm(dim=-1) < 0.4
        speck = (p - torch.tensor([-0.7, 0.0, 0.0])).norm(dim=-1) < 0.06
        return (big | speck).float() * 50

    mesh = extract_mesh(two_balls, 1.0, ExtractionConfig(resolution=64, threshold=25.0))
    assert mesh.vertices[:, 0].min() > -0.2  # the floater is gone
    empty = extract_mesh(lambda p: torch.zeros(len(p)), 1.0, ExtractionConfig(resolution=16, threshold=1.0))
    assert len(empty.vertices) == 0 and len(empty.faces) == 0
    with pytest.raises(ValueError, match="empty"):
        write_mesh(empty, "/tmp/never-written.glb")


def test_auto_threshold_tracks_the_interior_density():
    grid = np.zeros((8, 8, 8))
    grid[2:6, 2:6, 2:6] = 40.0
    assert auto_threshold(grid) == 20.0
    assert auto_threshold(np.full((4, 4, 4), 0.5)) == 0.5  # faint fields: mean positive density


def test_decimation_keeps_to_the_face_budget():
    config = ExtractionConfig(resolution=64, threshold=0.0, face_budget=1000)
    mesh = extract_mesh(lambda p: 100 * (0.5 - p.norm(dim=-1)), 1.0, config, color_fn=lambda p: (p + 1) / 2)
    assert len(mesh.faces) <= 1000 and mesh.colors.shape == (len(mesh.vertices), 3)


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_mesh_files_round_trip_in_blenders_frame(tmp_path, suffix):
    mesh = extract_mesh(lambda p: 100 * (0.4 - (p - torch.tensor([0.3, 0.0, 0.0])).norm(dim=-1)), 1.0,
                        ExtractionConfig(resolution=48, threshold=0.0), color_fn=lambda p: (p + 1) / 2)
    blender = to_blender_frame(mesh)
    # The NeRF's front (+X) becomes Blender's front (-Y); Z stays up.
    assert blender.vertices[:, 1].mean() < -0.25 and abs(blender.vertices[:, 0].mean()) < 0.02
    assert to_blender_frame(blender) is blender  # converting twice is a no-op, not a second rotation
    path = write_mesh(mesh, tmp_path / f"ball{suffix}")  # files are always in Blender's frame
    back = read_mesh(path)
    assert back.faces.shape == blender.faces.shape
    np.testing.assert_allclose(np.sort(back.vertices, axis=0), np.sort(blender.vertices, axis=0), atol=1e-5)
    order = np.lexsort(blender.vertices.T)
    back_order = np.lexsort(back.vertices.T)
    assert np.abs(back.colors[back_order].astype(int) - blender.colors[order].astype(int)).max() <= 2


def test_glb_is_y_up_for_importers(tmp_path):
    mesh = Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 0, 1]], np.float32), np.array([[0, 1, 2]], np.uint32),
                frame="blender")
    path = write_mesh(mesh, tmp_path / "tri.glb")
    raw = trimesh.load(path, force="mesh", process=False)
    # Z-up (0, 0, 1) is stored as glTF's Y-up (0, 1, 0); Blender's importer turns it back.
    assert [0, 1, 0] in np.round(np.asarray(raw.vertices)).tolist()


def test_asd_generate_smoke_end_to_end(tmp_path, asd_home):
    out = tmp_path / "teapot.glb"
    result = subprocess.run([sys.executable, "-m", "asd_backend.cli", "generate", "a teapot", "--preset", "smoke",
                             "--teacher", "tiny", "--device", "cpu", "-o", str(out), "--turntable", "4",
                             "--turntable-size", "48"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    mesh = read_mesh(out)
    assert len(mesh.vertices) > 100 and mesh.colors is not None and mesh.colors.shape == (len(mesh.vertices), 3)
    run = json.loads(out.with_suffix(".json").read_text())
    assert run["teacher"]["trained"] is False and "UNTRAINED" in run["notice"]
    assert run["steps_done"] == 12 and run["spec"]["guidance"]["method"] == "asd" and "torch" in run["versions"]
    assert len(list((tmp_path / "teapot_frames").glob("turntable_*.png"))) == 4
    assert (tmp_path / "teapot_run" / "checkpoint.pt").is_file()
    assert "UNTRAINED" in result.stderr


def test_resume_continues_exactly(tmp_path, asd_home):
    from asd_backend.teachers import load_teacher
    from asd_backend.train.presets import resolve_spec
    from asd_backend.train.text_to_3d import generate

    config = resolve_spec({"prompt": "a teapot", "preset": "smoke", "seed": 0, "schedule": {"steps": 8},
                           "output": {"mesh_every": 0, "mc_resolution": 32}})
    teacher = load_teacher("tiny", "cpu")
    straight = generate(teacher, config, workdir=tmp_path / "a")
    stop_after = iter([False, False, False, True])  # stop at step 4 (a checkpoint is written)
    first = generate(teacher, config, workdir=tmp_path / "b", should_stop=lambda: next(stop_after, False))
    assert first.stopped and first.steps_done == 4
    resumed = generate(teacher, config, workdir=tmp_path / "b", resume=True)
    assert resumed.steps_done == 8 and not resumed.stopped
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    np.testing.assert_array_equal(straight.mesh.vertices, resumed.mesh.vertices)


def test_bench_3d_reports_its_metrics():
    result = subprocess.run([sys.executable, "-m", "asd_backend.cli", "bench", "3d", "--target", "torus", "--steps",
                             "30", "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"chamfer_l1_rel", "iou", "fscore", "seconds", "steps"} <= set(report)
    assert report["steps"] == 30 and 0 < report["chamfer_l1_rel"] < 0.5 and 0 <= report["iou"] <= 1


def test_baked_texture_holds_the_colour_field_and_survives_glb(tmp_path):
    from asd_backend.mesh.bake import bake_texture

    def colour(p):
        return (p + 1) / 2

    mesh = extract_mesh(lambda p: 100 * (0.5 - p.norm(dim=-1)), 1.0, ExtractionConfig(resolution=32, threshold=0.0),
                        color_fn=colour)
    baked = bake_texture(mesh, colour, size=256)
    assert baked.uvs.shape == (len(baked.vertices), 2) and baked.texture.shape == (256, 256, 3)
    assert baked.uvs.min() >= 0 and baked.uvs.max() <= 1
    # The texel under each triangle's UV centroid has the colour field's value at the triangle's 3D
    # centroid (rows top-down, v up). Centroids sit inside their chart, away from the seams.
    uv_tri = baked.uvs[baked.faces]
    area = 0.5 * np.abs(np.cross(uv_tri[:, 1] - uv_tri[:, 0], uv_tri[:, 2] - uv_tri[:, 0])) * 256**2
    big = area > 4  # triangles covering a few texels
    centre_uv = uv_tri[big].mean(1)
    centre_xyz = baked.vertices[baked.faces[big]].mean(1)
    col = np.clip((centre_uv[:, 0] * 256).astype(int), 0, 255)
    row = np.clip(((1 - centre_uv[:, 1]) * 256).astype(int), 0, 255)
    expected = np.round(np.clip((centre_xyz + 1) / 2, 0, 1) * 255)
    error = np.abs(baked.texture[row, col].astype(float) - expected)
    assert big.mean() > 0.5 and np.percentile(error, 99) <= 4
    back = read_mesh(write_mesh(baked, tmp_path / "baked.glb"))
    np.testing.assert_allclose(back.uvs, baked.uvs, atol=1e-6)
    np.testing.assert_array_equal(back.texture, baked.texture)
