"""The add-on in real Blender (bpy 5.0.1), against a real `asd serve` subprocess on loopback."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402  (bundled with bpy)

from tests.server.live_server import running_server  # noqa: E402

ADDON = "asd_studio"
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def addon():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable(ADDON, default_set=True, handle_error=None)
    from asd_studio import connection

    yield connection
    connection.shutdown()
    addon_utils.disable(ADDON, default_set=True)


def tick_until(connection, condition, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection.tick()
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"condition not met within {timeout} s; status: {bpy.context.scene.asd.status}")


def test_register_and_unregister_twice():
    for _ in range(2):
        addon_utils.enable(ADDON, default_set=True, handle_error=None)
        assert hasattr(bpy.types.Scene, "asd")
        assert hasattr(bpy.types, "VIEW3D_PT_asd") and hasattr(bpy.ops.asd, "generate")
        assert bpy.context.preferences.addons[ADDON].preferences.address.startswith("tcp://127.0.0.1")
        addon_utils.disable(ADDON, default_set=True)
        assert not hasattr(bpy.types.Scene, "asd")
        assert not hasattr(bpy.types, "VIEW3D_PT_asd")


def test_generate_streams_into_one_object_with_colours(addon, tmp_path, asd_home):
    connection = addon
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.output_dir = str(tmp_path / "meshes")
    with running_server(tmp_path / "results", free_port()) as server:
        prefs.address = server.address
        props = bpy.context.scene.asd
        props.prompt, props.preset, props.seed = "a ceramic teapot", "smoke", 7
        bpy.context.scene.cursor.location = (2.0, 0.0, 0.0)
        assert bpy.ops.asd.generate() == {"FINISHED"}
        # The first snapshot creates the object...
        tick_until(connection, lambda: any(o.get("asd_job_id") for o in bpy.data.objects))
        obj = next(o for o in bpy.data.objects if o.get("asd_job_id"))
        mesh_name, first_count = obj.data.name, len(obj.data.vertices)
        job_id = obj["asd_job_id"]
        # ...and the final one updates the same datablock.
        tick_until(connection, lambda: props.jobs and props.jobs[0].status == "completed")
        tick_until(connection, lambda: "asd_file" in obj)
    assert obj.data.name == mesh_name and bpy.data.objects[obj.name].data == obj.data
    assert len(obj.data.vertices) > 100 and len(obj.data.vertices) != first_count
    assert tuple(obj.location) == (2.0, 0.0, 0.0) and obj.name.startswith("ASD ceramic teapot")
    assert obj["asd_prompt"] == "a ceramic teapot" and obj["asd_seed"] == 7 and obj["asd_method"] == "asd"
    assert obj["asd_job_id"] == job_id and obj["asd_server"] == server.address
    colors = obj.data.color_attributes["Col"]
    values = np.empty(len(colors.data) * 4, np.float32)
    colors.data.foreach_get("color_srgb", values)
    assert values.reshape(-1, 4)[:, :3].std() > 0  # real per-vertex colours, not a constant
    material = obj.data.materials[0]
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    assert bsdf.inputs["Base Color"].links[0].from_node.layer_name == "Col"
    assert "sharp_face" not in obj.data.attributes  # the final mesh is smooth-shaded
    assert Path(obj["asd_file"]).is_file() and Path(obj["asd_file"]).suffix == ".glb"
    assert props.jobs[0].object_name == obj.name
    render_for_docs(obj, tmp_path)


def render_for_docs(obj, tmp_path):
    """The final object rendered with Cycles on the CPU, kept for the README."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.render.resolution_x = scene.render.resolution_y = 320
    scene.render.film_transparent = False
    cam_data = bpy.data.cameras.new("docs camera")
    camera = bpy.data.objects.new("docs camera", cam_data)
    scene.collection.objects.link(camera)
    camera.location = (obj.location.x + 0.0, obj.location.y - 3.2, obj.location.z + 1.6)
    direction = obj.location - camera.location
    camera.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    scene.camera = camera
    light = bpy.data.objects.new("docs light", bpy.data.lights.new("docs light", "SUN"))
    light.rotation_euler = (0.6, 0.2, 0.8)
    scene.collection.objects.link(light)
    world = bpy.data.worlds.new("docs world")
    world.color = (0.8, 0.8, 0.85)
    scene.world = world
    out = tmp_path / "render.png"
    scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)
    assert out.is_file() and out.stat().st_size > 1000
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    (DOCS_IMAGES / "blender_render.png").write_bytes(out.read_bytes())


def test_cancel_from_blender(addon, tmp_path, asd_home):
    connection = addon
    prefs = bpy.context.preferences.addons[ADDON].preferences
    with running_server(tmp_path / "results", free_port()) as server:
        prefs.address = server.address
        props = bpy.context.scene.asd
        props.prompt, props.preset = "a slow vase", "preview"  # long: 1500 steps
        bpy.ops.asd.generate()
        tick_until(connection, lambda: props.active_job and props.jobs and props.jobs[0].status == "running"
                   and props.jobs[0].step >= 1)
        assert bpy.ops.asd.cancel() == {"FINISHED"}
        tick_until(connection, lambda: props.jobs[0].status == "cancelled", timeout=60)
        assert props.status == "cancelled"


def test_bad_address_gives_a_clear_report(addon):
    connection = addon
    prefs = bpy.context.preferences.addons[ADDON].preferences
    props = bpy.context.scene.asd
    prefs.address = "localhost:5555"
    props.prompt = "a teapot"
    with pytest.raises(RuntimeError, match="tcp://HOST:PORT"):
        bpy.ops.asd.generate()  # the operator reports ERROR: Blender raises it as RuntimeError in background mode
    assert "tcp://HOST:PORT" in props.status
    # A well-formed address where nothing listens: the test reports that no backend answered.
    prefs.address = f"tcp://127.0.0.1:{free_port()}"
    connection.TEST_TIMEOUT = 1.5
    bpy.ops.asd.test_connection()
    tick_until(connection, lambda: "no answer" in props.status, timeout=10)
    assert "asd serve" in props.status


def test_test_connection_reports_the_server(addon, tmp_path, asd_home):
    connection = addon
    prefs = bpy.context.preferences.addons[ADDON].preferences
    with running_server(tmp_path / "results", free_port()) as server:
        prefs.address = server.address
        bpy.ops.asd.test_connection()
        tick_until(connection, lambda: bpy.context.scene.asd.status.startswith("connected"), timeout=20)
        assert "tiny (untrained)" in bpy.context.scene.asd.status


def test_remote_address_needs_online_access(addon):
    from asd_studio.session import check_address

    assert check_address("tcp://10.0.0.5:5555", online_access=False).startswith("Blender's online access is off")
    assert check_address("tcp://127.0.0.1:5555", online_access=False) is None
    assert check_address("tcp://gpu-box:5555", online_access=True) is None
