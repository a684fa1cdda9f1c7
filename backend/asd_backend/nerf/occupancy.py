"""An occupancy grid that lets the renderer skip empty space.

The bounding cube is split into res³ cells; each keeps an exponential moving average of the
density seen at random points inside it (as nerfacc's OccGridEstimator). A sample whose cell is not
occupied is given zero density without evaluating the field, which is most samples once the object
has taken shape. The grid starts fully occupied and is refreshed every `update_every` steps (the
training loop also refreshes it before the first step). Only cells that meet the bounding sphere
are ever measured: the renderer samples nowhere else, so the cube's corners (48 % of its volume)
stay empty without a field call (`sphere_only=False` measures them too, as before).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn


class OccupancyGrid(nn.Module):
    def __init__(self, radius: float, resolution: int = 64, decay: float = 0.95, threshold: float = 0.01,
                 update_every: int = 16, warmup_steps: int = 256, sphere_only: bool = True) -> None:
        super().__init__()
        if resolution < 2:
            raise ValueError(f"occupancy resolution must be at least 2; got {resolution}")
        self.radius = radius
        self.resolution = resolution
        self.decay = decay
        self.threshold = threshold
        self.update_every = update_every
        self.warmup_steps = warmup_steps
        self.register_buffer("density_ema", torch.full((resolution,) * 3, float("inf")))
        self.register_buffer("occupied", torch.ones((resolution,) * 3, dtype=torch.bool))
        r = resolution
        cells = torch.stack(torch.meshgrid(*(torch.arange(r),) * 3, indexing="ij"), -1).reshape(-1, 3)
        if sphere_only:
            # A cell meets the sphere when its point nearest the centre is inside it.
            lo = cells / r * 2 - 1
            nearest = torch.minimum(lo.abs(), (lo + 2 / r).abs()) * ((lo < 0) & (lo + 2 / r > 0)).logical_not()
            cells = cells[nearest.norm(dim=-1) <= 1.0]
        self.register_buffer("measured_cells", cells, persistent=False)  # [M, 3]: the cells refresh() visits

    def cell_index(self, points: Float[Tensor, "N 3"]) -> Tensor:
        cell = ((points / self.radius + 1) / 2 * self.resolution).long()
        return cell.clamp(0, self.resolution - 1)

    def query(self, points: Float[Tensor, "N 3"]) -> Bool[Tensor, " N"]:
        inside = (points.abs() <= self.radius).all(-1)
        c = self.cell_index(points)
        return inside & self.occupied[c[:, 0], c[:, 1], c[:, 2]]

    @torch.no_grad()
    def update(self, step: int, density_fn: Callable[[Tensor], Tensor], step_size: float,
               generator: torch.Generator | None = None) -> bool:
        """Refresh the grid if it is due; returns whether it was. Density×step_size is what is kept."""
        if step % self.update_every != 0:
            return False
        r = self.resolution
        device = self.density_ema.device
        grid = self.measured_cells
        if step < self.warmup_steps:
            cells = grid  # every cell while the shape forms
        else:
            # A quarter of the cells at random, plus every occupied one, as nerfacc does.
            pick = torch.randperm(len(grid), generator=generator)[: len(grid) // 4].to(device)
            occupied = self.occupied[grid[:, 0], grid[:, 1], grid[:, 2]]
            cells = torch.cat([grid[pick], grid[occupied]])
        jitter = torch.rand(cells.shape, generator=generator).to(device)
        points = ((cells + jitter) / r * 2 - 1) * self.radius
        values = torch.cat([density_fn(chunk) for chunk in points.split(65536)]).float() * step_size
        index = (cells[:, 0] * r + cells[:, 1]) * r + cells[:, 2]
        ema = self.density_ema.reshape(-1).clone()
        ema[ema.isinf()] = 0  # never measured yet (and, outside the sphere, never will be)
        # Decay the visited cells, then keep the larger of old and new (duplicates: the largest).
        ema[index] = ema[index] * self.decay
        ema.scatter_reduce_(0, index, values, reduce="amax")
        self.density_ema.copy_(ema.reshape(r, r, r))
        threshold = min(self.threshold, float(self.density_ema.mean()))
        self.occupied.copy_(self.density_ema > threshold)
        return True

    @property
    def occupied_fraction(self) -> float:
        return float(self.occupied.float().mean())
