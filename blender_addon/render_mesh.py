"""Render a mesh file (.glb/.obj/.ply, as the backend writes them) with Cycles on the CPU, for docs.

    .venv/bin/python blender_addon/render_mesh.py MESH OUT.png [--size 480] [--samples 32]

Imports the file with Blender's own importer (so it also checks that our files import upright, with
their vertex colours), shades it with the colour attribute, frames it from the front-right.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mesh", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=480)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()

    import bpy
    from mathutils import Vector

    from asd_studio import scene as asd_scene

    bpy.ops.wm.read_factory_settings(use_empty=True)
    suffix = args.mesh.suffix.lower()
    if suffix == ".glb":
        bpy.ops.import_scene.gltf(filepath=str(args.mesh))
    elif suffix == ".obj":
        bpy.ops.wm.obj_import(filepath=str(args.mesh))
    elif suffix == ".ply":
        bpy.ops.wm.ply_import(filepath=str(args.mesh))
    else:
        raise SystemExit(f"cannot read {args.mesh}: use .glb, .obj or .ply")
    obj = next(o for o in bpy.context.scene.objects if o.type == "MESH")
    mesh = obj.data
    if mesh.color_attributes:
        attr = mesh.color_attributes[0]
        attr.name = asd_scene.COLOR_ATTRIBUTE
        mesh.materials.clear()
        mesh.materials.append(asd_scene.ensure_material("render material"))
    mesh.shade_smooth()
    corners = [obj.matrix_world @ Vector(c) for c in obj.bound_box]
    centre = sum(corners, Vector()) / 8
    radius = max((c - centre).length for c in corners)
    scn = bpy.context.scene
    scn.render.engine = "CYCLES"
    scn.cycles.device = "CPU"
    scn.cycles.samples = args.samples
    scn.render.resolution_x = scn.render.resolution_y = args.size
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scn.collection.objects.link(camera)
    direction = Vector((math.sin(math.radians(30)), -math.cos(math.radians(30)), 0.55)).normalized()
    camera.location = centre + direction * radius * 3.2
    camera.rotation_euler = (centre - camera.location).to_track_quat("-Z", "Y").to_euler()
    camera.data.lens = 50
    scn.camera = camera
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(40), 0, math.radians(30))
    scn.collection.objects.link(sun)
    world = bpy.data.worlds.new("world")
    world.color = (0.55, 0.57, 0.62)
    scn.world = world
    scn.render.filepath = str(args.out.resolve())
    bpy.ops.render.render(write_still=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
