"""Streamed data into Blender: one object per job, its mesh datablock updated in place.

Only called on the main thread (from the timer tick or an operator), as Blender requires.
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np

from .mesh_data import MeshBuffers, object_name

COLOR_ATTRIBUTE = "Col"
JOB_PROPERTY = "asd_job_id"
PREVIEW_IMAGE = "ASD Preview"
JOB_PREVIEW = "ASD Preview {job_id}"  # each job's newest preview render, shown in the job list


def find_object(job_id: str) -> bpy.types.Object | None:
    for obj in bpy.data.objects:
        if obj.get(JOB_PROPERTY) == job_id:
            return obj
    return None


def ensure_object(job_id: str, prompt: str, scene: bpy.types.Scene, location, properties: dict) -> bpy.types.Object:
    """The job's object, created at `location` in `scene` the first time, with its provenance as properties."""
    obj = find_object(job_id)
    if obj is not None:
        return obj
    name = object_name(prompt)
    mesh = bpy.data.meshes.new(name)
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    scene.collection.objects.link(obj)
    obj[JOB_PROPERTY] = job_id
    for key, value in properties.items():
        if value is not None:
            obj[f"asd_{key}"] = value
    obj.data.materials.append(ensure_material(name))
    return obj


def ensure_material(name: str) -> bpy.types.Material:
    """A Principled BSDF whose Base Color reads the vertex colours."""
    material = bpy.data.materials.get(name) or bpy.data.materials.new(name)
    if material.node_tree is None:  # Blender < 5 creates materials without nodes
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None) or nodes.new("ShaderNodeBsdfPrincipled")
    attr = next((n for n in nodes if n.type == "VERTEX_COLOR"), None) or nodes.new("ShaderNodeVertexColor")
    attr.layer_name = COLOR_ATTRIBUTE
    attr.location = (bsdf.location.x - 300, bsdf.location.y)
    if not bsdf.inputs["Base Color"].is_linked:
        links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = 0.6
    return material


def stand_on(obj: bpy.types.Object, location, buffers: MeshBuffers) -> None:
    """Place the object so that it stands on `location` (the 3D cursor when it was asked for): its lowest
    point there, its centre above it, as a thing put on a table (meshes arrive centred on their origin)."""
    co = np.asarray(buffers.co, dtype=np.float32).reshape(-1, 3)
    lowest = float(co[:, 2].min()) if len(co) else 0.0
    obj.location = (location[0], location[1], location[2] - lowest)


def apply_mesh(obj: bpy.types.Object, buffers: MeshBuffers, smooth: bool = False) -> None:
    """Write the buffers into the object's mesh datablock in place (same datablock, name and material).

    Uses the attribute API (`position`, `.corner_vert`), whose foreach_set copies arrays directly:
    an order of magnitude faster than `vertices.co` / `loops.vertex_index` for large meshes.
    """
    mesh = obj.data
    counts_match = len(mesh.vertices) == buffers.n_vertices and len(mesh.polygons) == buffers.n_faces
    if not counts_match:
        mesh.clear_geometry()
        mesh.vertices.add(buffers.n_vertices)
        mesh.loops.add(len(buffers.vertex_index))
        mesh.polygons.add(buffers.n_faces)
        mesh.polygons.foreach_set("loop_start", buffers.loop_start)
    mesh.attributes["position"].data.foreach_set("vector", buffers.co)
    corner_vert = mesh.attributes.get(".corner_vert")
    same_faces = False
    if corner_vert is not None:
        if counts_match:
            current = np.empty(len(buffers.vertex_index), np.int32)
            corner_vert.data.foreach_get("value", current)
            same_faces = bool(np.array_equal(current, buffers.vertex_index))
        if not same_faces:
            corner_vert.data.foreach_set("value", buffers.vertex_index)
    else:  # Blender versions without the corner attribute
        mesh.loops.foreach_set("vertex_index", buffers.vertex_index)
    if buffers.color_srgb is not None:
        attr = mesh.color_attributes.get(COLOR_ATTRIBUTE)
        if attr is None or attr.domain != "POINT" or attr.data_type != "BYTE_COLOR":
            if attr is not None:
                mesh.color_attributes.remove(attr)
            attr = mesh.color_attributes.new(COLOR_ATTRIBUTE, "BYTE_COLOR", "POINT")
        attr.data.foreach_set("color_srgb", buffers.color_srgb)
        mesh.color_attributes.active_color = attr
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
    set_smooth(mesh, smooth)
    mesh.update(calc_edges=not same_faces)


def set_smooth(mesh: bpy.types.Mesh, smooth: bool) -> None:
    """Smooth or flat shading for every face (the `sharp_face` attribute; absent means smooth)."""
    sharp = mesh.attributes.get("sharp_face")
    if smooth:
        if sharp is not None:
            mesh.attributes.remove(sharp)
        return
    if sharp is None:
        sharp = mesh.attributes.new("sharp_face", "BOOLEAN", "FACE")
    sharp.data.foreach_set("value", np.ones(len(mesh.polygons), dtype=bool))


def write_image(name: str, pixels, width: int, height: int) -> bpy.types.Image:
    """Flat RGBA floats (rows bottom-up) into the image `name`, made or resized as needed, in place."""
    image = bpy.data.images.get(name)
    if image is None or tuple(image.size) != (width, height):
        if image is not None:
            bpy.data.images.remove(image)
        image = bpy.data.images.new(name, width, height, alpha=True)
    image.pixels.foreach_set(pixels)
    image.update()
    return image


def update_preview(pixels, width: int, height: int, name: str = PREVIEW_IMAGE) -> bpy.types.Image:
    image = write_image(name, pixels, width, height)
    if image.preview is not None:
        image.preview.reload()
    return image


def output_folder(setting: str) -> Path:
    """Resolve the preferences' output folder ('//' is the .blend's folder, or the temp dir if unsaved)."""
    if setting.startswith("//") and not bpy.data.filepath:
        base = Path(bpy.app.tempdir or ".") / setting[2:]
    else:
        base = Path(bpy.path.abspath(setting))
    base.mkdir(parents=True, exist_ok=True)
    return base


def export_glb(obj: bpy.types.Object, path: Path) -> Path:
    """Save one object as .glb with Blender's own glTF exporter (vertex colours included)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    view_layer = bpy.context.view_layer
    with bpy.context.temp_override(selected_objects=[obj], active_object=obj, object=obj):
        previous = [o for o in view_layer.objects if o.select_get()]
        for o in previous:
            o.select_set(False)
        obj.select_set(True)
        try:
            bpy.ops.export_scene.gltf(filepath=str(path), export_format="GLB", use_selection=True,
                                      export_vertex_color="ACTIVE", export_materials="EXPORT")
        finally:
            obj.select_set(False)
            for o in previous:
                o.select_set(True)
    return path
