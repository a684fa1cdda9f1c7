"""Texture editing in Blender: read a mesh object's geometry, UVs and base-colour image; apply edits.

Nothing is overwritten: every edit job makes a new image (named after the object, the prompt and
its number) and its own PNG, and the object keeps a history of edits, each with the look it
replaced: an image, a link (vertex colours, or any node), or a flat colour. `revert` steps back
one edit at a time and restores exactly that look. Main thread only.
"""

from __future__ import annotations

import json
from pathlib import Path

import bpy
import numpy as np

from .scene import write_image

MAX_SIDE = 2048  # before a server says its own (welcome.limits.max_edit_texture_side)
ORIGINAL = "asd_original_image"  # object property: the image the first edit started from
HISTORY = "asd_edit_history"  # JSON list, oldest first: {"job", "image", "before": a look}


def base_color_node(obj: bpy.types.Object, create: bool = True) -> bpy.types.ShaderNodeTexImage | None:
    """The Image Texture node feeding the first material's Principled Base Color (made if asked)."""
    material = obj.active_material
    if material is None:
        if not create:
            return None
        material = bpy.data.materials.new(f"{obj.name} material")
        obj.data.materials.append(material)
    if material.node_tree is None:
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        return None
    socket = bsdf.inputs["Base Color"]
    if socket.is_linked and socket.links[0].from_node.type == "TEX_IMAGE":
        return socket.links[0].from_node
    if not create:
        return None
    # Vertex colours or a flat colour: make an image of them, so there is an "original" to keep.
    vertex_colors = socket.is_linked and socket.links[0].from_node.type == "VERTEX_COLOR"
    image = bpy.data.images.new(f"{obj.name} base color", 1024 if vertex_colors else 512,
                                1024 if vertex_colors else 512, alpha=True)
    node = nodes.new("ShaderNodeTexImage")
    node.image = image
    node.location = (bsdf.location.x - 350, bsdf.location.y - 250)
    if vertex_colors:
        bake_base_color(obj, material, node)
    else:
        image.pixels.foreach_set(np.tile(np.array(tuple(socket.default_value), np.float32), 512 * 512))
    links.new(node.outputs["Color"], socket)
    return node


def bake_base_color(obj: bpy.types.Object, material: bpy.types.Material, node: bpy.types.ShaderNodeTexImage) -> None:
    """Bake what drives the Base Color (vertex colours) into `node`'s image with Cycles (diffuse colour pass)."""
    scene = bpy.context.scene
    engine, samples = scene.render.engine, scene.cycles.samples
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1  # a colour pass needs no light transport
    nodes = material.node_tree.nodes
    previous_active = nodes.active
    nodes.active = node  # Cycles bakes into the active image node
    view_layer = bpy.context.view_layer
    selected = [o for o in view_layer.objects if o.select_get()]
    for o in selected:
        o.select_set(False)
    obj.select_set(True)
    try:
        with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                                       selected_editable_objects=[obj]):
            bpy.ops.object.bake(type="DIFFUSE", pass_filter={"COLOR"}, margin=4, use_clear=True)
    finally:
        obj.select_set(False)
        for o in selected:
            o.select_set(True)
        nodes.active = previous_active
        scene.render.engine, scene.cycles.samples = engine, samples


def read_image(image: bpy.types.Image, max_side: int = MAX_SIDE) -> np.ndarray:
    """An image as H×W×4 uint8, rows top-down, at most `max_side` a side (the server's
    max_edit_texture_side, from its welcome)."""
    if max(image.size) > max_side:
        image = image.copy()
        scale = max_side / max(image.size)
        image.scale(max(8, int(image.size[0] * scale)), max(8, int(image.size[1] * scale)))
        copy = image
    else:
        copy = None
    w, h = image.size
    if w < 8 or h < 8:
        raise ValueError(f"image {image.name!r} is {w}×{h}: it has no pixels Blender can read (is the file missing?)")
    pixels = np.empty(w * h * 4, np.float32)
    image.pixels.foreach_get(pixels)
    if copy is not None:
        bpy.data.images.remove(copy)
    rgba = pixels.reshape(h, w, 4)[::-1]
    return np.ascontiguousarray(np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8))


def geometry(obj: bpy.types.Object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World-space vertices (N×3), triangles (M×3) and their corner UVs (M×3×2) of a mesh object."""
    mesh = obj.data
    if not mesh.uv_layers:
        raise ValueError(f"{obj.name!r} has no UV map: unwrap it, or tick 'Smart UV Project' in the Edit Texture "
                         "panel")
    mesh.calc_loop_triangles()
    n_tris = len(mesh.loop_triangles)
    if n_tris == 0:
        raise ValueError(f"{obj.name!r} has no faces")
    tri_vertices = np.empty(n_tris * 3, np.int32)
    tri_loops = np.empty(n_tris * 3, np.int32)
    mesh.loop_triangles.foreach_get("vertices", tri_vertices)
    mesh.loop_triangles.foreach_get("loops", tri_loops)
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    world = np.asarray(obj.matrix_world, np.float64)
    co = co.reshape(-1, 3) @ world[:3, :3].T + world[:3, 3]
    uv = np.empty(len(mesh.loops) * 2, np.float32)
    mesh.uv_layers.active.data.foreach_get("uv", uv)
    corner_uvs = uv.reshape(-1, 2)[tri_loops].reshape(n_tris, 3, 2)
    return co.astype(np.float32), tri_vertices.reshape(n_tris, 3).astype(np.uint32), corner_uvs


def smart_uv_project(obj: bpy.types.Object) -> None:
    """Blender's Smart UV Project on one object (the artist asked for it explicitly)."""
    view_layer = bpy.context.view_layer
    previous = view_layer.objects.active
    view_layer.objects.active = obj
    with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                                   selected_editable_objects=[obj]):
        bpy.ops.object.mode_set(mode="EDIT")
        bpy.ops.mesh.select_all(action="SELECT")
        bpy.ops.uv.smart_project()
        bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = previous


def _base_color_socket(obj: bpy.types.Object):
    material = obj.active_material
    if material is None or material.node_tree is None:
        return None
    bsdf = next((n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
    return None if bsdf is None else bsdf.inputs["Base Color"]


def current_look(obj: bpy.types.Object) -> dict:
    """What drives the Base Color now: an image node, another node's output, or a flat colour."""
    socket = _base_color_socket(obj)
    if socket is None:
        return {"kind": "none"}
    if socket.is_linked:
        link = socket.links[0]
        if link.from_node.type == "TEX_IMAGE" and link.from_node.image is not None:
            return {"kind": "image", "node": link.from_node.name, "image": link.from_node.image.name}
        return {"kind": "link", "node": link.from_node.name, "output": link.from_socket.identifier}
    return {"kind": "flat", "color": list(socket.default_value)}


def restore_look(obj: bpy.types.Object, look: dict) -> bool:
    """Make the Base Color what `look` describes; False if its node or image is gone."""
    socket = _base_color_socket(obj)
    if socket is None:
        return False
    tree = obj.active_material.node_tree
    if look["kind"] == "image":
        node, image = tree.nodes.get(look["node"]), bpy.data.images.get(look["image"])
        if node is None or image is None:
            return False
        node.image = image
        tree.links.new(node.outputs["Color"], socket)
    elif look["kind"] == "link":
        node = tree.nodes.get(look["node"])
        output = next((o for o in node.outputs if o.identifier == look["output"]), None) if node else None
        if output is None:
            return False
        tree.links.new(output, socket)
    elif look["kind"] == "flat":
        for link in list(socket.links):
            tree.links.remove(link)
        socket.default_value = look["color"]
    return True


def history(obj: bpy.types.Object) -> list[dict]:
    """The object's edits, oldest first."""
    return json.loads(obj.get(HISTORY, "[]"))


def prepare(obj: bpy.types.Object, smart_uv: bool, max_side: int = MAX_SIDE) -> dict:
    """Everything to send for one object: geometry, UVs, the current base-colour texture, and the
    look to come back to. The material looks as before afterwards (vertex colours or a flat colour
    are baked into an image to send, and stay linked as they were)."""
    if obj.type != "MESH":
        raise ValueError(f"{obj.name!r} is not a mesh")
    if not obj.data.uv_layers and smart_uv:
        smart_uv_project(obj)
    vertices, faces, uvs = geometry(obj)
    before = current_look(obj)
    node = base_color_node(obj)
    if node is None:
        raise ValueError(f"{obj.name!r}: its material has no Principled BSDF whose Base Color could be edited")
    texture = read_image(node.image, max_side)
    if before["kind"] != "image":
        restore_look(obj, before)  # the baked image only travels; the artist's material is unchanged
    original = obj.get(ORIGINAL) or node.image.name
    return {"vertices": vertices, "faces": faces, "uvs": uvs, "texture": texture, "original": original,
            "node": node.name, "before": before}


def _new_image_name(obj: bpy.types.Object, prompt: str, number: int) -> str:
    base = f"{obj.name} · {prompt.strip()[:40]}"
    while f"{base} {number}" in bpy.data.images:
        number += 1
    return f"{base} {number}"


def apply_edit(obj: bpy.types.Object, pixels: np.ndarray, width: int, height: int, edit: dict,
               job_id: str) -> bpy.types.Image:
    """Write an edit job's texture (flat RGBA floats, rows bottom-up) and show it. The job's first
    texture makes a new image and a history entry; its later ones (snapshots, the final) update it."""
    entries = history(obj)
    if entries and entries[-1]["job"] == job_id and entries[-1]["image"] in bpy.data.images:
        name = entries[-1]["image"]
    else:
        name = _new_image_name(obj, edit.get("prompt", "edit"), len(entries) + 1)
        entries.append({"job": job_id, "image": name, "before": edit["before"]})
    image = write_image(name, pixels, width, height)
    node = obj.active_material.node_tree.nodes.get(edit["node"])
    if node is not None:
        restore_look(obj, {"kind": "image", "node": node.name, "image": image.name})
    obj[HISTORY] = json.dumps(entries)
    obj[ORIGINAL], obj["asd_job_id"] = edit["original"], job_id
    return image


def save_png(image: bpy.types.Image, folder: Path) -> Path:
    """The image as a PNG of its own in `folder` (a number is added rather than overwrite a file)."""
    stem = bpy.path.clean_name(image.name)
    path, n = folder / f"{stem}.png", 2
    while path.exists() and Path(image.filepath_raw or "") != path:
        path, n = folder / f"{stem}_{n}.png", n + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    image.filepath_raw = str(path)
    image.file_format = "PNG"
    image.save()
    return path


def revert(obj: bpy.types.Object) -> bool:
    """Step back one edit: the look before the newest edit comes back exactly (the edit's image stays
    in the file, unused). False when the object has no edit left to revert."""
    entries = history(obj)
    if not entries or not restore_look(obj, entries[-1]["before"]):
        return False
    entries.pop()
    obj[HISTORY] = json.dumps(entries)
    return True
