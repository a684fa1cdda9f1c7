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
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"  # ignored by git, kept by CI


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


def connect(connection, timeout=60.0):
    """Start the add-on's session and tick until its backend has answered (as the timer does)."""
    connection.session()
    tick_until(connection, lambda: connection.session().connected, timeout=timeout)


def test_register_and_unregister_twice():
    for _ in range(2):
        addon_utils.enable(ADDON, default_set=True, handle_error=None)
        assert hasattr(bpy.types.Scene, "asd")
        assert hasattr(bpy.types, "VIEW3D_PT_asd") and hasattr(bpy.ops.asd, "generate")
        assert bpy.context.preferences.addons[ADDON].preferences.address.startswith("tcp://127.0.0.1")
        addon_utils.disable(ADDON, default_set=True)
        assert not hasattr(bpy.types.Scene, "asd")
        assert not hasattr(bpy.types, "VIEW3D_PT_asd")


def test_every_icon_the_panels_draw_is_one_blender_has():
    import re

    from asd_studio import panels

    source = Path(panels.__file__).read_text()
    names = set(re.findall(r'icon="([A-Z_]+)"', source))
    names |= set(panels.ASD_UL_jobs.ICONS.values()) | set(panels.ASD_UL_jobs.KINDS.values())
    names |= set(panels.ICONS.values()) | set(re.findall(r'else "([A-Z_0-9]+)"', source))
    names |= set(re.findall(r'else "([A-Z_]+)"', source))  # icon="ERROR" if … else "INFO"
    known = set(bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys())
    assert names - known == set()  # an unknown name fails only when the panel is drawn, in the artist's UI
    assert {"MESH_MONKEY", "BRUSH_DATA", "ERROR", "INFO"} <= names


def test_the_panel_offers_what_the_server_says(addon, tmp_path, asd_home):
    """Methods, presets and limits come from the server's welcome; the CFG range is the job spec's (the panel
    capped it at 100 where a job may ask 200); an edit's texture is shrunk to the server's own limit."""
    from asd_studio import properties, texture_edit

    connection = addon
    prefs = bpy.context.preferences.addons[ADDON].preferences
    props = bpy.context.scene.asd
    props.cfg = 150.0
    assert props.cfg == 150.0
    with running_server(tmp_path / "results", free_port(), "--max-edit-texture-side", "16") as server:
        prefs.address = server.address
        connect(connection)
        welcome = connection.state.session.welcome
        offered = [item[0] for item in properties.method_items(props, bpy.context)]
        assert offered == [m for m in welcome.methods if m != "dds"]
        presets = [item[0] for item in properties.preset_items(props, bpy.context)]
        assert presets == list(welcome.presets) and "toy" in presets
        suggested = [name for name, _ in properties.teacher_suggestions(props, bpy.context, "")]
        assert suggested == [t.name for t in welcome.teachers] and "toy" in suggested
        assert [n for n, _ in properties.teacher_suggestions(props, bpy.context, "TO")] == ["toy"]
        props.preset = "toy"  # any preset the server offers can be chosen
        assert props.preset == "toy"
        obj, _, _ = _textured_sphere()  # a 64×32 texture
        prepared = texture_edit.prepare(obj, False, welcome.limits["max_edit_texture_side"])
        assert prepared["texture"].shape == (8, 16, 4)  # H×W: 64 wide, 32 high, halved twice


def test_generate_streams_into_one_object_with_colours(addon, tmp_path, asd_home):
    connection = addon
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.output_dir = str(tmp_path / "meshes")
    with running_server(tmp_path / "results", free_port()) as server:
        prefs.address = server.address
        props = bpy.context.scene.asd
        props.prompt, props.preset, props.seed = "a ceramic teapot", "smoke", 7
        bpy.context.scene.cursor.location = (2.0, 0.0, 0.0)
        connect(connection)
        assert bpy.ops.asd.generate() == {"FINISHED"}
        # The first snapshot creates the object...
        tick_until(connection, lambda: any(o.get("asd_job_id") for o in bpy.data.objects))
        obj = next(o for o in bpy.data.objects if o.get("asd_job_id"))
        mesh_name, first_count = obj.data.name, len(obj.data.vertices)
        job_id = obj["asd_job_id"]
        # ...and the final one updates the same datablock.
        tick_until(connection, lambda: props.jobs and props.jobs[0].status == "completed")
        tick_until(connection, lambda: "asd_file" in obj)
        connection.tick()
        # The bar says what is true now: done, full, no stale "extracting 12/12".
        assert props.progress_text == "done" and props.status == "done" and props.progress == 1.0
        assert not props.status_error
        # The job's row has its own preview render.
        item = props.jobs[0]
        assert item.kind == "generate" and item.preview == f"ASD Preview {item.job_id}"
        assert tuple(bpy.data.images[item.preview].size) == (64, 64)
    assert obj.data.name == mesh_name and bpy.data.objects[obj.name].data == obj.data
    assert len(obj.data.vertices) > 100 and len(obj.data.vertices) != first_count
    # It stands on the 3D cursor: its lowest point there, not half of it below the floor.
    lowest = min((obj.matrix_world @ v.co).z for v in obj.data.vertices)
    assert tuple(obj.location)[:2] == (2.0, 0.0) and abs(lowest) < 1e-5 and obj.location.z > 0.01
    assert obj.name.startswith("ASD ceramic teapot")
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
    """The final object rendered with Cycles on the CPU, kept in build/test-artifacts for the docs."""
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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "blender_render.png").write_bytes(out.read_bytes())


def test_cancel_from_blender(addon, tmp_path, asd_home):
    connection = addon
    prefs = bpy.context.preferences.addons[ADDON].preferences
    with running_server(tmp_path / "results", free_port()) as server:
        prefs.address = server.address
        props = bpy.context.scene.asd
        props.prompt, props.preset = "a slow vase", "preview"  # long: 1500 steps
        assert not bpy.ops.asd.cancel.poll()  # nothing to cancel yet
        connect(connection)
        bpy.ops.asd.generate()
        tick_until(connection, lambda: props.active_job and props.jobs and props.jobs[0].status == "running"
                   and props.jobs[0].step >= 1)
        assert bpy.ops.asd.cancel() == {"FINISHED"}
        # "cancelling…" stays until the job has ended (progress keeps arriving meanwhile).
        seen = set()

        def ended():
            seen.add(props.progress_text)
            return props.jobs[0].status == "cancelled"

        tick_until(connection, ended, timeout=60)
        connection.tick()
        assert "cancelling…" in seen and seen <= {"cancelling…", "cancelled"}
        assert props.status == "cancelled" and props.progress_text == "cancelled"
        assert not bpy.ops.asd.cancel.poll()  # and nothing left to cancel
        # Resume from the job list: it continues from the checkpoint written at the cancel.
        stopped_at = props.jobs[0].step
        props.jobs_index = 0
        assert bpy.ops.asd.resume.poll()
        assert bpy.ops.asd.resume() == {"FINISHED"}
        steps = []

        def moved_on() -> bool:
            if props.jobs[0].status == "running":
                steps.append(props.jobs[0].step)
            return bool(steps) and steps[-1] > stopped_at

        tick_until(connection, moved_on, timeout=120)
        assert min(s for s in steps if s > 0) >= stopped_at  # not from step 1 (0: while the model loads)
        assert not bpy.ops.asd.resume.poll()  # running: nothing to resume
        bpy.ops.asd.cancel()
        tick_until(connection, lambda: props.jobs[0].status == "cancelled", timeout=60)


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


def test_progress_text_tells_the_phase_without_stale_counters():
    from asd_studio.session import JobView, duration_text, progress_text, status_text

    assert duration_text(45) == "45s" and duration_text(125) == "2:05"
    assert duration_text(83_895) == "23:18:15"  # was "1398:15"
    job = JobView("j", status="running", phase="loading")
    assert progress_text(job) == "loading the model…"  # not "loading 0/0"
    job.phase, job.step, job.total, job.eta_seconds = "optimizing", 120, 1500, 5000.0
    assert progress_text(job) == "optimizing 120/1500, 1:23:20 left"
    job.phase, job.step = "extracting", 1500
    assert progress_text(job) == "extracting the mesh…"
    job.status = "completed"
    assert progress_text(job) == "done"
    job = JobView("k", status="running", phase="optimizing", step=2, total=1500, cancelling=True)
    assert progress_text(job) == "cancelling…"
    job.status, job.error = "failed", "out of memory"
    assert status_text(job) == ("failed: out of memory", True)


def test_operators_refuse_what_cannot_work(addon):
    props = bpy.context.scene.asd
    for o in list(bpy.data.objects):
        bpy.data.objects.remove(o)
    # Nothing typed, nothing selected, no job, no edit: every button is greyed out.
    assert not bpy.ops.asd.generate.poll() and not bpy.ops.asd.edit_texture.poll()
    assert not bpy.ops.asd.cancel.poll() and not bpy.ops.asd.attach.poll()
    assert not bpy.ops.asd.revert_texture.poll()
    props.prompt = "a teapot"
    assert bpy.ops.asd.generate.poll()
    props.edit_prompt = "weathered bronze"
    assert not bpy.ops.asd.edit_texture.poll()  # still nothing selected
    bpy.ops.mesh.primitive_cube_add()
    assert bpy.ops.asd.edit_texture.poll() and not bpy.ops.asd.revert_texture.poll()


def test_generate_without_a_backend_is_refused_shown_as_an_error_and_never_sent_later(addon, tmp_path, asd_home):
    connection = addon
    prefs = bpy.context.preferences.addons[ADDON].preferences
    props = bpy.context.scene.asd
    port = free_port()
    prefs.address = f"tcp://127.0.0.1:{port}"
    props.prompt = "a teapot"
    with pytest.raises(RuntimeError, match="No backend has answered"):
        bpy.ops.asd.generate()  # an ERROR report, not FINISHED
    assert "No backend has answered" in props.status and props.active_request == ""
    connection.tick()
    assert props.status_error and "No backend has answered" in props.status  # drawn as an error, kept
    # A backend appears on that address: the session connects, the error is cleared, and the refused
    # job never reaches it.
    with running_server(tmp_path / "results", port) as server:
        connect(connection)
        connection.tick()
        assert not props.status_error and props.status.startswith("connected")
        assert not [m for m in connection.recent_messages() if m[0] != "INFO"]
        connection.session().list_jobs()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            connection.tick()
            time.sleep(0.05)
        assert len(props.jobs) == 0
        from asd_protocol.messages import Jobs

        client = server.client()
        try:
            request = client.list_jobs()
            reply = client.wait_for(lambda m: isinstance(m, Jobs) and m.parent_id == request, timeout=20)
            assert reply.jobs == []
        finally:
            client.close()


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


def _textured_sphere(name: str = "Statue"):
    bpy.ops.mesh.primitive_uv_sphere_add(radius=1.0, location=(0.0, 0.0, 0.0), segments=24, ring_count=12)
    obj = bpy.context.active_object
    obj.name = name
    material = bpy.data.materials.new(f"{name} material")
    if material.node_tree is None:
        material.use_nodes = True
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    image = bpy.data.images.new("paint", 64, 32, alpha=True)
    image.pixels.foreach_set(np.tile(np.array([0.8, 0.1, 0.1, 1.0], np.float32), 64 * 32))
    node = material.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = image
    material.node_tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])
    obj.data.materials.append(material)
    return obj, node, image


def test_edits_make_new_images_and_files_and_revert_steps_back(addon, tmp_path, asd_home):
    connection = addon
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.output_dir = str(tmp_path / "textures")
    obj, node, original = _textured_sphere()
    before = np.empty(64 * 32 * 4, np.float32)
    original.pixels.foreach_get(before)
    props = bpy.context.scene.asd
    with running_server(tmp_path / "results", free_port()) as server:
        prefs.address = server.address
        props.edit_steps = 4
        for o in bpy.context.view_layer.objects:
            o.select_set(o is obj)
        assert not bpy.ops.asd.revert_texture.poll()  # no edit to revert yet
        connect(connection)
        images = []
        for i, prompt in enumerate(["weathered bronze", "mossy stone"]):
            props.edit_prompt = prompt
            assert bpy.ops.asd.edit_texture() == {"FINISHED"}
            tick_until(connection, lambda i=i: len(props.jobs) > i and props.jobs[-1].status in ("completed", "failed")
                       and len(texture_edit_history(obj)) == i + 1)
            assert props.jobs[-1].status == "completed", props.status
            tick_until(connection, lambda: Path(node.image.filepath_raw or "/nonexistent").is_file(), timeout=10)
            images.append(node.image)
    # Two edits: two new images, named after the prompt and numbered, each with its own file.
    first, second = images
    assert first is not second and first is not original and second is not original
    assert first.name == "Statue · weathered bronze 1" and second.name == "Statue · mossy stone 2"
    assert Path(first.filepath_raw).is_file() and Path(second.filepath_raw).is_file()
    assert first.filepath_raw != second.filepath_raw
    kept = np.empty(64 * 32 * 4, np.float32)
    original.pixels.foreach_get(kept)
    np.testing.assert_array_equal(kept, before)  # the original was never written
    # Revert steps back one edit at a time, to exactly the look before each.
    assert bpy.ops.asd.revert_texture() == {"FINISHED"} and node.image is first
    assert bpy.ops.asd.revert_texture() == {"FINISHED"} and node.image is original
    assert not bpy.ops.asd.revert_texture.poll()


def test_an_edit_of_several_objects_is_followed_and_cancelled_as_one(addon, tmp_path, asd_home):
    """With several objects selected the panel followed only the last one's job (and Cancel stopped only it)."""
    connection = addon
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.output_dir = str(tmp_path / "textures")
    first, _, _ = _textured_sphere("Left")
    second, _, _ = _textured_sphere("Right")
    for o in bpy.context.view_layer.objects:
        o.select_set(o in (first, second))
    props = bpy.context.scene.asd
    with running_server(tmp_path / "results", free_port()) as server:
        prefs.address = server.address
        connect(connection)
        props.edit_prompt, props.edit_steps = "weathered bronze", 400
        assert bpy.ops.asd.edit_texture() == {"FINISHED"}
        tick_until(connection, lambda: len(connection.batch_jobs()) == 2
                   and any(j.status == "running" for j in connection.batch_jobs()))
        assert props.progress_text.startswith("2 objects: ") and props.status == props.progress_text
        assert bpy.ops.asd.cancel() == {"FINISHED"}  # both, not only the last
        tick_until(connection, lambda: all(j.finished for j in connection.batch_jobs()), timeout=60)
        assert sorted(j.status for j in connection.batch_jobs()) == ["cancelled", "cancelled"]
        props.edit_steps = 3
        assert bpy.ops.asd.edit_texture() == {"FINISHED"}
        tick_until(connection, lambda: len(connection.batch_jobs()) == 2
                   and all(j.finished for j in connection.batch_jobs()))
        connection.tick()
        assert props.progress_text == "2 objects: 2 done" and props.progress == 1.0, props.progress_text
        assert len(texture_edit_history(first)) == 1 and len(texture_edit_history(second)) == 1


def texture_edit_history(obj):
    from asd_studio import texture_edit

    return texture_edit.history(obj)


def test_revert_restores_vertex_colours_and_flat_colours(addon):
    from asd_studio import scene as asd_scene
    from asd_studio import texture_edit

    bpy.ops.mesh.primitive_uv_sphere_add(segments=16, ring_count=8)
    painted = bpy.context.active_object
    painted.data.color_attributes.new(asd_scene.COLOR_ATTRIBUTE, "BYTE_COLOR", "POINT")
    painted.data.materials.append(asd_scene.ensure_material("painted"))
    bpy.ops.mesh.primitive_uv_sphere_add(segments=16, ring_count=8, location=(3, 0, 0))
    flat = bpy.context.active_object
    material = bpy.data.materials.new("flat")
    if material.node_tree is None:
        material.use_nodes = True
    bsdf = next(n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (0.2, 0.6, 0.3, 1.0)
    flat.data.materials.append(material)
    for obj in (painted, flat):
        look = texture_edit.current_look(obj)
        data = texture_edit.prepare(obj, smart_uv=False)
        assert texture_edit.current_look(obj) == look  # preparing an edit leaves the material as it was
        pixels = np.full(64 * 64 * 4, 0.5, np.float32)
        texture_edit.apply_edit(obj, pixels, 64, 64, {**data, "prompt": "gold"}, job_id="job-1")
        assert texture_edit.current_look(obj)["kind"] == "image"
        assert texture_edit.revert(obj)
        assert texture_edit.current_look(obj) == look, obj.name
    assert texture_edit.current_look(painted)["kind"] == "link"
    assert texture_edit.current_look(flat)["kind"] == "flat"


def test_edit_texture_needs_uvs_or_smart_uv_project(addon):
    from asd_studio import texture_edit

    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    while cube.data.uv_layers:
        cube.data.uv_layers.remove(cube.data.uv_layers[0])
    with pytest.raises(ValueError, match="Smart UV Project"):
        texture_edit.prepare(cube, smart_uv=False)
    data = texture_edit.prepare(cube, smart_uv=True)
    assert cube.data.uv_layers and data["uvs"].shape == (12, 3, 2) and data["faces"].shape == (12, 3)
    assert data["texture"].shape == (512, 512, 4)  # the flat base colour, made into an image to keep


def test_vertex_colours_are_baked_into_the_original_image(addon):
    from asd_studio import scene as asd_scene
    from asd_studio import texture_edit

    bpy.ops.mesh.primitive_uv_sphere_add(segments=24, ring_count=12)
    obj = bpy.context.active_object
    mesh = obj.data
    attr = mesh.color_attributes.new(asd_scene.COLOR_ATTRIBUTE, "BYTE_COLOR", "POINT")
    z = np.array([v.co.z for v in mesh.vertices])
    colours = np.where((z > 0)[:, None], [0.9, 0.1, 0.1, 1.0], [0.1, 0.1, 0.9, 1.0]).astype(np.float32)
    attr.data.foreach_set("color_srgb", colours.ravel())
    mesh.materials.append(asd_scene.ensure_material("painted"))
    data = texture_edit.prepare(obj, smart_uv=False)
    texture = data["texture"][..., :3].reshape(-1, 3).astype(int)
    reddish = ((texture[:, 0] > 150) & (texture[:, 2] < 100)).mean()
    bluish = ((texture[:, 2] > 150) & (texture[:, 0] < 100)).mean()
    assert reddish > 0.1 and bluish > 0.1  # both halves' colours made it into the image
    assert data["texture"].shape == (1024, 1024, 4)


def test_undo_and_a_reopened_file_show_the_backends_job_states_and_keep_the_previews(addon, tmp_path, asd_home):
    """One Ctrl-Z rolled the rows back to running for good; a reopened .blend showed a frozen 'optimizing
    1/12' until a button was pressed, without the job previews."""
    from asd_studio import handlers

    connection = addon
    assert handlers.after_undo in bpy.app.handlers.undo_post and handlers.after_load in bpy.app.handlers.load_post
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.output_dir = str(tmp_path / "meshes")
    with running_server(tmp_path / "results", free_port()) as server:
        prefs.address = server.address
        props = bpy.context.scene.asd
        props.prompt, props.preset = "a ceramic teapot", "smoke"
        connect(connection)
        assert bpy.ops.asd.generate() == {"FINISHED"}
        tick_until(connection, lambda: props.jobs and props.jobs[0].status == "completed" and props.jobs[0].preview)
        item = props.jobs[0]
        job_id, preview = item.job_id, item.preview
        # What undo does to the rows: an older state comes back. The handler puts the backend's back.
        item.status, item.step = "running", 1
        handlers.after_undo()
        assert item.status == "completed" and item.step == item.total
        # A file saved while the job ran, opened in a fresh session.
        item.status, props.active_job, props.progress_text = "running", job_id, "optimizing 1/12, 2:01 left"
        path = tmp_path / "scene.blend"
        bpy.ops.wm.save_as_mainfile(filepath=str(path))
        connection.shutdown()
        bpy.ops.wm.open_mainfile(filepath=str(path))  # load_post runs after_load
        props = bpy.context.scene.asd
        assert props.jobs[0].status == "unknown" and props.progress_text == ""
        assert bpy.data.images[preview].packed_file is not None  # the preview travelled inside the file
        tick_until(connection, lambda: props.jobs[0].status == "completed", timeout=60)
