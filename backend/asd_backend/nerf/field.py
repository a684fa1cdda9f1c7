"""The radiance field: density and albedo over the bounding cube [-radius, radius]³.

Density = softplus(MLP(hash(x)) + blob bias). Magic3D's blob bias, 10·(1 − |x|/0.5), starts the
optimisation from a soft ball at the centre, so the first renders already show an object.
Albedo is view-independent (sigmoid of a second MLP head): the official ASD NeRF has no shading;
`normals` (differences of the density) let the renderer light it (nerf/shading.py).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from asd_protocol.job_spec import GridSpec

from .hash_grid import HashGrid


@dataclasses.dataclass
class FieldConfig:
    radius: float = 1.0
    """Half the side of the cube the field lives in (object units, metres in the export)."""
    grid: GridSpec = dataclasses.field(default_factory=GridSpec)
    hidden: int = 64
    """Width of the density and albedo MLPs (one hidden layer each, as the official config)."""
    density_blob_scale: float = 10.0
    density_blob_std: float = 0.5
    normal_eps: float = 0.01
    """Step of the differences that give normals (about the finest grid cell of the CPU grid)."""


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, outputs))


class NerfField(nn.Module):
    def __init__(self, config: FieldConfig | None = None, implementation: str = "fast") -> None:
        super().__init__()
        self.config = config = config or FieldConfig()
        self.encoding = HashGrid(config.grid, implementation)
        self.density_network = mlp(self.encoding.output_dim, config.hidden, 1)
        self.feature_network = mlp(self.encoding.output_dim, config.hidden, 3)

    @property
    def radius(self) -> float:
        return self.config.radius

    @property
    def device(self) -> torch.device:
        return self.encoding.embeddings.device

    def _encode(self, points: Float[Tensor, "N 3"]) -> Tensor:
        return self.encoding((points / self.radius + 1) / 2)

    def _density(self, points: Tensor, features: Tensor) -> Tensor:
        c = self.config
        bias = c.density_blob_scale * (1 - points.norm(dim=-1) / c.density_blob_std)
        return F.softplus(self.density_network(features).squeeze(-1) + bias)

    def forward(self, points: Float[Tensor, "N 3"]) -> tuple[Float[Tensor, " N"], Float[Tensor, "N 3"]]:
        """(density σ ≥ 0, albedo in [0, 1]) at world points."""
        features = self._encode(points)
        return self._density(points, features), torch.sigmoid(self.feature_network(features))

    def density(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, " N"]:
        return self._density(points, self._encode(points))

    def normals(self, points: Float[Tensor, "N 3"], density: Float[Tensor, " N"] | None = None
                ) -> Float[Tensor, "N 3"]:
        """Outward unit normals, −∇σ/|∇σ| by differences of the density, differentiable (a loss on shading
        reaches the density around each point). Given the density at the points (the renderer has it):
        forward differences, three evaluations a point; else central differences, six."""
        eps = self.config.normal_eps
        steps = torch.eye(3, device=points.device, dtype=points.dtype) * eps
        if density is not None:
            ahead = self.density((points[None] + steps[:, None]).reshape(-1, 3)).reshape(3, -1)
            return -F.normalize((ahead - density[None]).T, dim=-1)
        probes = torch.cat([points[None] + steps[:, None], points[None] - steps[:, None]]).reshape(-1, 3)
        sigma = self.density(probes).reshape(2, 3, -1)
        return -F.normalize((sigma[0] - sigma[1]).T, dim=-1)

    def albedo(self, points: Float[Tensor, "N 3"]) -> Float[Tensor, "N 3"]:
        return torch.sigmoid(self.feature_network(self._encode(points)))
