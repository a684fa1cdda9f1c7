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

from .recording import Recording

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


def test_a_render_can_be_repeated_with_another_renders_jitter():
    """Training renders jitter each sample in its stratum and return where they fell; a render given
    those offsets (ε_φ's NeRF, rendering the generator's view) places its samples there."""
    renderer = VolumeRenderer(SphereField(0.3), SolidBackground((0.0, 0.0, 1.0)), None, samples_per_ray=8)
    cameras = orbit_cameras(torch.tensor([10.0]), torch.tensor([30.0]), torch.tensor([1.3]), torch.tensor([50.0]))
    first = renderer(cameras, 24, 24, training=True, generator=torch.Generator().manual_seed(0))
    second = renderer(cameras, 24, 24, training=True, generator=torch.Generator().manual_seed(1))
    assert first.offsets.shape == (24 * 24, 8) and 0 <= float(first.offsets.min()) < float(first.offsets.max()) < 1
    assert not torch.equal(first.rgb, second.rgb)  # 8 samples a ray: where they fall shows at the ball's edge
    again = renderer(cameras, 24, 24, offsets=first.offsets)
    assert torch.equal(again.rgb, first.rgb) and torch.equal(again.opacity, first.opacity)
    assert renderer(cameras, 24, 24).offsets is None  # stratum centres
    with pytest.raises(ValueError, match=r"offsets must be \[rays, samples\]"):
        renderer(cameras, 12, 12, offsets=first.offsets)


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
                expected += w[:, None] * grid.table[index]
    torch.testing.assert_close(out[:, :2], expected)
    # Continuous across cell boundaries, and trainable.
    eps = torch.tensor([[1e-6, 0, 0]])
    a = torch.tensor([[0.5, 0.3, 0.7]])
    torch.testing.assert_close(grid(a - eps), grid(a + eps), atol=1e-6, rtol=0)
    out.sum().backward()
    assert grid.embeddings.grad.abs().sum() > 0


def test_fast_hash_encoding_equals_the_reference_with_its_gradients():
    # Dense and hashed levels (17³ > 2^12 from level 2 on), points on cell edges included.
    spec = GridSpec(n_levels=6, log2_hashmap_size=12, base_resolution=4, per_level_scale=2.0)
    torch.manual_seed(3)
    fast = HashGrid(spec, "fast")
    torch.manual_seed(3)
    reference = HashGrid(spec, "reference")
    assert fast.embeddings.shape == (2, fast.offsets[-1]) and reference.embeddings.shape == (fast.offsets[-1], 2)
    torch.testing.assert_close(fast.table, reference.table, rtol=0, atol=0)  # the same initial values
    with torch.no_grad():  # a trained-looking table, so the comparison is not of near-zeros
        reference.embeddings.normal_(generator=torch.Generator().manual_seed(4))
        fast.embeddings.copy_(reference.embeddings.t())
    x = torch.rand(3000, 3, generator=torch.Generator().manual_seed(5))
    x[:100] = torch.round(x[:100] * 16) / 16  # exactly on lattice planes
    x[100:110] = torch.tensor([0.0, 1.0, 1.0])  # the cube's faces
    upstream = torch.randn(3000, 12, generator=torch.Generator().manual_seed(6))
    (fast(x) * upstream).sum().backward()
    (reference(x) * upstream).sum().backward()
    torch.testing.assert_close(fast(x), reference(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast.embeddings.grad.t(), reference.embeddings.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the no-grad path (32-bit indices) too
        torch.testing.assert_close(fast(x), reference(x), rtol=1e-6, atol=1e-6)
    # A point that needs its own gradient (normals, say) goes through the differentiable reference.
    p = x[:5].clone().requires_grad_()
    fast(p).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    # Either layout loads the other's state (checkpoints of the first version hold [T, F]).
    loaded = HashGrid(spec, "fast")
    loaded.load_state_dict(reference.state_dict())
    torch.testing.assert_close(loaded.table, reference.table, rtol=0, atol=0)
    assert loaded.embeddings.is_contiguous()


def test_hashing_uses_64_bit_indices_where_32_would_overflow():
    # 2^20 table entries at resolution 4096: the product of a coordinate and a reduced prime passes 2^31.
    grid = HashGrid(GridSpec(n_levels=2, log2_hashmap_size=20, base_resolution=2048, per_level_scale=2.0))
    assert not grid.int32_indices
    reference = HashGrid(grid.config, "reference")
    with torch.no_grad():
        reference.embeddings.copy_(grid.table)
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(grid(x), reference(x))


def test_occupancy_grid_never_measures_cells_the_renderer_cannot_reach():
    grid = OccupancyGrid(radius=1.0, resolution=16, warmup_steps=1000)
    seen = []

    def everywhere_dense(points):
        seen.append(points)
        return torch.full((len(points),), 100.0)

    grid.update(0, everywhere_dense, step_size=0.01)
    points = torch.cat(seen)
    # Only cells that meet the bounding sphere were evaluated, and only they can be occupied.
    assert len(points) == len(grid.measured_cells) < 0.7 * 16**3  # (52 % of the cube, plus the boundary cells)
    assert (points.norm(dim=-1) <= 1.0 + 2 * 3**0.5 / 16).all()
    assert grid.query(torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.0, 0.0]])).all()
    corner = torch.tensor([[0.97, 0.97, 0.97]])  # inside the cube, outside the sphere
    assert not grid.query(corner).item()
    everything = OccupancyGrid(radius=1.0, resolution=16, warmup_steps=1000, sphere_only=False)
    assert len(everything.measured_cells) == 16**3


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


def torus_density(p: torch.Tensor) -> torch.Tensor:
    """Positive inside a torus (major 0.45, minor 0.12, tilted), smooth outside: a NeRF-like field."""
    q = p @ torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]])
    ring = torch.stack([q[:, :2].norm(dim=-1) - 0.45, q[:, 2]], -1).norm(dim=-1)
    return 40 * torch.sigmoid(60 * (0.12 - ring))


class CountingField:
    def __init__(self, fn):
        self.fn, self.points = fn, 0

    def __call__(self, p):
        self.points += len(p)
        return self.fn(p)


def test_band_extraction_gives_the_full_grids_mesh_from_a_fraction_of_the_field():
    # Over the same lattice (no bounding-box pass), the band grid agrees with the full grid at every
    # cell that holds the surface, so marching cubes returns the same mesh.
    full_field, band_field = CountingField(torus_density), CountingField(torus_density)
    full = extract_mesh(full_field, 1.0, ExtractionConfig(resolution=192, threshold=20.0, refine=False, method="full"))
    band = extract_mesh(band_field, 1.0, ExtractionConfig(resolution=192, threshold=20.0, refine=False))
    assert len(full.faces) > 5000
    np.testing.assert_array_equal(band.faces, full.faces)
    np.testing.assert_allclose(band.vertices, full.vertices, atol=1e-5)  # (lattice coordinates rounded apart)
    assert band_field.points < 0.1 * full_field.points
    # With the bounding-box pass both refine inside the object's box: same surface within a voxel.
    full = extract_mesh(torus_density, 1.0, ExtractionConfig(resolution=96, method="full"),
                        color_fn=lambda p: (p + 1) / 2)
    band = extract_mesh(torus_density, 1.0, ExtractionConfig(resolution=96), color_fn=lambda p: (p + 1) / 2)
    voxel = 2.0 / 95
    from scipy.spatial import cKDTree

    assert cKDTree(full.vertices).query(band.vertices)[0].max() < voxel
    assert cKDTree(band.vertices).query(full.vertices)[0].max() < voxel
    assert band.colors.shape == (len(band.vertices), 3)
    assert trimesh.Trimesh(band.vertices, band.faces, process=False).is_watertight


def test_band_extraction_keeps_separate_parts_and_empty_fields_empty():
    def two_balls(p):  # two parts far apart, the smaller one 3 coarse cells wide
        a = (p - torch.tensor([0.4, 0.0, 0.0])).norm(dim=-1) < 0.3
        b = (p - torch.tensor([-0.6, 0.3, 0.0])).norm(dim=-1) < 0.2
        return (a | b).float() * 50

    mesh = extract_mesh(two_balls, 1.0, ExtractionConfig(resolution=96, threshold=25.0, min_component_fraction=0))
    assert len(trimesh.Trimesh(mesh.vertices, mesh.faces).split(only_watertight=False)) == 2
    empty = extract_mesh(lambda p: torch.zeros(len(p)), 1.0, ExtractionConfig(resolution=96, threshold=1.0))
    assert len(empty.faces) == 0


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


def test_pockets_hidden_inside_are_filled_and_open_ones_kept():
    # A NeRF's interior is never rendered, so its density can dip inside the object: a ball whose
    # density is low in a hidden core gives one outer surface, not a shell around a cavity.
    def hollow_ball(p):
        r = p.norm(dim=-1)
        return 50 * ((r < 0.5) & (r > 0.3)).float()

    filled = extract_mesh(hollow_ball, 1.0, ExtractionConfig(resolution=64, threshold=25.0))
    tm = trimesh.Trimesh(filled.vertices, filled.faces, process=False)
    assert len(tm.split(only_watertight=False)) == 1
    assert np.linalg.norm(filled.vertices, axis=1).min() > 0.45
    np.testing.assert_allclose(tm.volume, 4 / 3 * np.pi * 0.5**3, rtol=0.05)
    shells = extract_mesh(hollow_ball, 1.0, ExtractionConfig(resolution=64, threshold=25.0, fill_cavities=False))
    assert len(trimesh.Trimesh(shells.vertices, shells.faces, process=False).split(only_watertight=False)) == 2
    # An open cup's hollow reaches the outside: it stays hollow (the mesh's volume is the wall's).
    def cup(p):
        rho, z = p[:, :2].norm(dim=-1), p[:, 2]
        solid = (rho < 0.4) & (z.abs() < 0.4)
        hollow = (rho < 0.3) & (z > -0.3)
        return 50 * (solid & ~hollow).float()

    cup_mesh = extract_mesh(cup, 1.0, ExtractionConfig(resolution=96, threshold=25.0))
    wall = np.pi * 0.4**2 * 0.8 - np.pi * 0.3**2 * 0.7
    np.testing.assert_allclose(trimesh.Trimesh(cup_mesh.vertices, cup_mesh.faces).volume, wall, rtol=0.1)


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
    # Colours travel with their vertices (matched by position: files round coordinates).
    from scipy.spatial import cKDTree

    distance, nearest = cKDTree(blender.vertices).query(back.vertices)
    assert distance.max() < 1e-5
    assert np.abs(back.colors.astype(int) - blender.colors[nearest].astype(int)).max() <= 2


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
    assert len(list((tmp_path / "teapot_run" / "turntable").glob("turntable_*.png"))) == 4
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
    first = generate(teacher, config, workdir=tmp_path / "b", events=Recording(lambda: next(stop_after, False)))
    assert first.stopped and first.steps_done == 4
    resumed = generate(teacher, config, workdir=tmp_path / "b", resume=True)
    assert resumed.steps_done == 8 and not resumed.stopped
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    np.testing.assert_array_equal(straight.mesh.vertices, resumed.mesh.vertices)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_checkpoint_fails_the_resume_with_a_clear_error_and_is_set_aside(tmp_path, asd_home, damage):
    """A torn checkpoint failed a resume with "IndexError…"/"EOFError", and the hint offered resume again."""
    from asd_backend.errors import AsdError
    from asd_backend.teachers import load_teacher
    from asd_backend.train.presets import resolve_spec
    from asd_backend.train.text_to_3d import check_resume, generate

    config = resolve_spec({"prompt": "a teapot", "preset": "smoke", "seed": 0, "schedule": {"steps": 6},
                           "output": {"mesh_every": 0, "mc_resolution": 32}})
    teacher = load_teacher("tiny", "cpu")
    stop_after = iter([False, True])
    generate(teacher, config, workdir=tmp_path, events=Recording(lambda: next(stop_after, False)))
    checkpoint = tmp_path / "checkpoint.pt"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 100)
    with pytest.raises(AsdError, match=r"damaged.*set aside as checkpoint\.pt\.damaged.*Start the job again"):
        generate(teacher, config, workdir=tmp_path, resume=True)
    assert not checkpoint.exists() and (tmp_path / "checkpoint.pt.damaged").is_file()
    assert check_resume(tmp_path, config) == 0  # nothing offers to resume it again
    assert not getattr(teacher.unet, "_hf_peft_config_loaded", False)  # the guidance was closed


def test_a_checkpoint_of_the_first_versions_layout_resumes_on_the_fast_path(tmp_path):
    # The reference implementation stores the hash table as the first version did ([T, F]); its
    # checkpoint (table and Adam moments) resumes on the fast path ([F, T]) and trains on.
    from asd_backend.teachers import load_teacher
    from asd_backend.train.presets import resolve_spec
    from asd_backend.train.text_to_3d import generate

    config = resolve_spec({"prompt": "a teapot", "preset": "smoke", "seed": 0, "schedule": {"steps": 5},
                           "output": {"mesh_every": 0, "mc_resolution": 32}})
    teacher = load_teacher("tiny", "cpu")
    stop_after = iter([False, False, True])
    first = generate(teacher, config, workdir=tmp_path, events=Recording(lambda: next(stop_after, False)),
                     implementation="reference")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    table = saved["model"]["field.encoding.embeddings"]
    assert first.steps_done == 3 and table.shape[0] > table.shape[1]  # [T, F]
    resumed = generate(teacher, config, workdir=tmp_path, resume=True)
    assert resumed.steps_done == 5 and resumed.resumed_from == 3 and len(resumed.mesh.faces) > 0
    grid = resumed.model.field.encoding
    assert grid.embeddings.shape == table.t().shape and not torch.equal(grid.table, table)  # loaded, then trained


def test_empty_space_is_skipped_from_the_first_step():
    from asd_backend.teachers import load_teacher
    from asd_backend.train.presets import resolve_spec
    from asd_backend.train.text_to_3d import generate

    config = resolve_spec({"prompt": "a teapot", "preset": "smoke", "seed": 0, "schedule": {"steps": 2},
                           "output": {"mesh_every": 0, "mc_resolution": 32}})
    seen = Recording()
    generate(load_teacher("tiny", "cpu"), config, events=seen)
    first = seen.metrics[1]
    # The initial field is a ball: the grid marks the rest empty before the first render.
    assert first["occupied"] < 0.5 and first["samples_evaluated"] < 0.6 * first["samples_total"]


def test_bench_3d_reports_its_metrics():
    result = subprocess.run([sys.executable, "-m", "asd_backend.cli", "bench", "3d", "--target", "torus", "--steps",
                             "30", "--json"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"chamfer_l1_rel", "iou", "fscore", "render_psnr", "saturated", "seconds", "steps"} <= set(report)
    assert report["settings"]["uncond_shrink"] == 0.05 and report["settings"]["colourway_shift"] == 0.6
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


def test_a_reused_teacher_starts_every_asd_job_with_a_fresh_discriminator():
    # The worker keeps one teacher between jobs; ε_φ (LoRA and camera embedding) must start from
    # zero each time, so a job's result does not depend on the job before it.
    from asd_backend.teachers import load_teacher
    from asd_backend.train.presets import resolve_spec
    from asd_backend.train.text_to_3d import generate

    teacher = load_teacher("tiny", "cpu")
    spec = resolve_spec({"prompt": "a teapot", "preset": "smoke", "seed": 3, "schedule": {"steps": 4},
                         "output": {"mesh_every": 0, "mc_resolution": 32}})
    other = resolve_spec({"prompt": "a chair", "preset": "smoke", "seed": 9, "schedule": {"steps": 6},
                          "output": {"mesh_every": 0, "mc_resolution": 32}})
    alone = generate(load_teacher("tiny", "cpu"), spec)
    generate(teacher, other)  # trains ε_φ on the shared teacher
    after = generate(teacher, spec)
    assert spec.guidance.method == "asd"
    a, b = alone.model.state_dict(), after.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    np.testing.assert_array_equal(alone.mesh.vertices, after.mesh.vertices)


def test_the_first_preview_mesh_comes_after_a_time_budget_not_a_step_count():
    from asd_backend.teachers import load_teacher
    from asd_backend.train.presets import resolve_spec
    from asd_backend.train.text_to_3d import generate

    teacher = load_teacher("tiny", "cpu")
    for budget in (0.5, 0.0):
        spec = resolve_spec({"prompt": "a teapot", "preset": "smoke", "seed": 0, "schedule": {"steps": 30},
                             "output": {"mesh_every": 1000, "first_mesh_seconds": budget, "mc_resolution": 32}})
        events = Recording()
        generate(teacher, spec, events=events)
        seconds = {step: m["seconds"] for step, m in events.metrics.items()}
        previews = [s for s in events.snapshots if not s.final]
        if budget:
            # One preview, at the first step past the budget, long before step 1000.
            assert len(previews) == 1
            step = previews[0].step
            assert seconds[step] >= budget and (step == 1 or seconds[step - 1] < budget)
        else:
            assert previews == []  # 0: only every mesh_every steps


def test_extraction_stops_between_chunks_when_asked():
    from asd_backend.interrupt import Interrupted

    calls, points = [0], [0]

    def density(p):
        points[0] += len(p)
        return 10.0 * (0.3 - p.norm(dim=-1)).clamp(min=0)

    def stop_on_third_check() -> bool:
        calls[0] += 1
        return calls[0] >= 3

    for method in ("band", "full"):
        calls[0] = points[0] = 0
        config = ExtractionConfig(resolution=128, chunk=4096, method=method)
        with pytest.raises(Interrupted):
            extract_mesh(density, 0.5, config, should_stop=stop_on_third_check)
        assert calls[0] == 3 and points[0] == 2 * 4096  # two chunks evaluated, then it stopped
    mesh = extract_mesh(density, 0.5, ExtractionConfig(resolution=64, chunk=4096), should_stop=lambda: False)
    assert len(mesh.faces) > 0


def test_a_job_stopped_inside_its_final_extraction_resumes_straight_to_it(tmp_path, asd_home):
    """A cancel (or a worker whose server died) lands inside marching cubes, not after it: the last
    step's checkpoint is on disk, so a resume skips the optimisation and extracts."""
    from asd_backend.teachers import load_teacher
    from asd_backend.train.presets import resolve_spec
    from asd_backend.train.text_to_3d import generate

    spec = resolve_spec({"prompt": "a teapot", "preset": "smoke", "seed": 0, "schedule": {"steps": 6},
                         "output": {"mesh_every": 0, "mc_resolution": 64}})
    teacher = load_teacher("tiny", "cpu")
    events = Recording()
    events.stop = lambda: "extracting" in events.phases
    stopped = generate(teacher, spec, workdir=tmp_path, events=events)
    assert events.phases == ["extracting"] and stopped.stopped and stopped.mesh is None and stopped.steps_done == 6
    again = Recording()
    resumed = generate(teacher, spec, workdir=tmp_path, resume=True, events=again)
    assert not resumed.stopped and resumed.resumed_from == 6 and again.metrics == {}
    assert len(resumed.mesh.faces) > 0
