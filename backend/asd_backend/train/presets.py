"""Named settings for text-to-3D, from seconds on a CPU (`smoke`) to the paper's 25k steps (`paper`).

`paper` is the official ASD NeRF configuration (configs/test_nerf.yaml); the others shorten it.
"""

from __future__ import annotations

import dataclasses

from ..nerf.hash_grid import HashGridConfig


@dataclasses.dataclass
class NerfPreset:
    name: str
    description: str
    steps: int
    resolution_schedule: tuple[tuple[int, int], ...]
    """(from step, render side in pixels), e.g. ((0, 64), (5000, 512))."""
    samples_per_ray: int
    grid: HashGridConfig
    occupancy_resolution: int = 64
    anneal_start_step: int | None = None
    """Step from which the largest timestep drops to 0.5 of T."""
    opaque_from_step: int | None = None
    """Step from which the opacity loss (binary entropy, weight 1000) is on."""
    lambda_sparsity: float = 10.0
    lambda_opaque: float = 1000.0
    mesh_every: int = 250
    """Preview mesh + render every N steps (streamed to Blender)."""
    preview_mc_resolution: int = 96
    preview_face_budget: int = 20_000
    mc_resolution: int = 256
    """Marching-cubes resolution of the final mesh."""
    preview_render: int = 256
    """Side of the preview render PNG."""
    checkpoint_every: int = 500
    lr_encoding: float = 0.01
    lr_networks: float = 1e-3
    lr_background: float = 1e-3
    lr_discriminator: float = 1e-4
    occupancy_update_every: int = 16
    occupancy_warmup_steps: int = 256

    def resolution_at(self, step: int) -> int:
        side = self.resolution_schedule[0][1]
        for start, value in self.resolution_schedule:
            if step >= start:
                side = value
        return side


OFFICIAL_GRID = HashGridConfig()  # 16 levels × 2, 2^19, base 16, scale 1.447
CPU_GRID = HashGridConfig(n_levels=8, n_features_per_level=2, log2_hashmap_size=14, base_resolution=16,
                          per_level_scale=1.5)

PRESETS: dict[str, NerfPreset] = {
    "smoke": NerfPreset(
        name="smoke", description="seconds on a CPU: proves the pipeline runs (tests, offline demo)",
        steps=12, resolution_schedule=((0, 32),), samples_per_ray=32, grid=CPU_GRID, occupancy_resolution=32,
        mesh_every=6, preview_mc_resolution=48, preview_face_budget=4000, mc_resolution=64, preview_render=64,
        checkpoint_every=6, occupancy_update_every=4, occupancy_warmup_steps=8),
    "preview": NerfPreset(
        name="preview", description="a quick look on a GPU (goal: under 3 minutes)",
        steps=1500, resolution_schedule=((0, 64),), samples_per_ray=96, grid=OFFICIAL_GRID,
        mesh_every=150, preview_mc_resolution=96, mc_resolution=192, checkpoint_every=500),
    "standard": NerfPreset(
        name="standard", description="good results on a GPU in about half an hour (fits in 16 GB)",
        steps=10_000, resolution_schedule=((0, 64), (5000, 256)), samples_per_ray=128, grid=OFFICIAL_GRID,
        anneal_start_step=5000, opaque_from_step=8000, mesh_every=250, mc_resolution=256, checkpoint_every=1000),
    "paper": NerfPreset(
        name="paper", description="the official ASD NeRF configuration: 25k steps, 512² renders from step 5000",
        steps=25_000, resolution_schedule=((0, 64), (5000, 512)), samples_per_ray=256, grid=OFFICIAL_GRID,
        occupancy_resolution=128, anneal_start_step=5000, opaque_from_step=10_000, mesh_every=500,
        mc_resolution=384, checkpoint_every=2000),
}


def get_preset(name: str) -> NerfPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
