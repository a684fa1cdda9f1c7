"""Benchmark: applying a streamed mesh snapshot to the scene in real Blender (bpy), as JSON.

    .venv/bin/python blender_addon/bench_scene.py [--triangles 200000] [--repeats 10]

Times `scene.apply_mesh` (what every snapshot costs the UI thread) for a new topology (marching
cubes meshes change every snapshot) and for the same topology, after converting the protocol
arrays (`mesh_data.mesh_buffers`). Goal: 200k triangles in at most 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def grid_mesh(triangles: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A valid triangulated height field with about `triangles` faces, jittered by `seed`."""
    side = int(np.sqrt(triangles / 2)) + 2  # enough quads, then cut to exactly `triangles`
    xs, ys = np.meshgrid(np.arange(side), np.arange(side))
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=0.01, size=side * side)
    vertices = np.stack([xs.ravel() / side, ys.ravel() / side, z], 1).astype(np.float32)
    q = (ys[:-1, :-1] * side + xs[:-1, :-1]).ravel()
    faces = np.concatenate([np.stack([q, q + 1, q + side], 1), np.stack([q + 1, q + side + 1, q + side], 1)])
    faces = faces[:triangles].astype(np.uint32)
    colors = rng.integers(0, 256, size=(len(vertices), 3), dtype=np.uint8)
    return vertices, faces, colors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triangles", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import bpy

    from asd_studio import mesh_data, scene

    bpy.ops.wm.read_factory_settings(use_empty=True)
    obj = scene.ensure_object("bench", "benchmark mesh", bpy.context.scene, (0, 0, 0), {})
    new_topology, same_topology, convert = [], [], []
    for i in range(args.repeats + 1):
        # Alternate two meshes of slightly different size: every apply is a topology change.
        vertices, faces, colors = grid_mesh(args.triangles - (i % 2) * 2, seed=i)
        start = time.perf_counter()
        buffers = mesh_data.mesh_buffers(vertices, faces, colors)
        converted = time.perf_counter()
        scene.apply_mesh(obj, buffers)
        applied = time.perf_counter()
        scene.apply_mesh(obj, buffers)  # the same snapshot again: positions and colours only
        again = time.perf_counter()
        if i:  # the first round warms up allocators
            convert.append(converted - start)
            new_topology.append(applied - converted)
            same_topology.append(again - applied)

    def ms(values: list[float]) -> dict[str, float]:
        return {"median_ms": round(1000 * statistics.median(values), 2), "max_ms": round(1000 * max(values), 2)}

    print(json.dumps({
        "benchmark": "blender_scene", "blender": bpy.app.version_string, "triangles": args.triangles,
        "vertices": len(obj.data.vertices), "convert": ms(convert), "apply_new_topology": ms(new_topology),
        "apply_same_topology": ms(same_topology), "goal_ms": 50,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
