"""The background behind the object: a small environment MLP over the view direction.

As in the official code, training sometimes replaces it by a random solid colour, so the field
cannot paint the object into the background (or the reverse).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


def spherical_harmonics_l2(d: Float[Tensor, "... 3"]) -> Float[Tensor, "... 9"]:
    """Real spherical harmonics up to degree 2 of unit vectors (constants as in tiny-cuda-nn)."""
    x, y, z = d.unbind(-1)
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * x * y, -1.0925484305920792 * y * z, 0.94617469575755997 * z * z - 0.31539156525252005,
        -1.0925484305920792 * x * z, 0.54627421529603959 * (x * x - y * y),
    ], dim=-1)


class EnvironmentBackground(nn.Module):
    def __init__(self, hidden: int = 16, random_color_probability: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(9, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, 3))
        self.random_color_probability = random_color_probability

    def forward(self, dirs: Float[Tensor, "B H W 3"], augment: bool = False,
                generator: torch.Generator | None = None) -> Float[Tensor, "B H W 3"]:
        if augment and float(torch.rand((), generator=generator)) < self.random_color_probability:
            color = torch.rand(dirs.shape[0], 1, 1, 3, generator=generator).to(dirs.device)
            return color.expand_as(dirs)
        return torch.sigmoid(self.net(spherical_harmonics_l2(dirs)))


class SolidBackground(nn.Module):
    """A fixed colour (benchmarks, turntables on white)."""

    def __init__(self, color: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.register_buffer("color", torch.tensor(color, dtype=torch.float32))

    def forward(self, dirs: Tensor, augment: bool = False, generator: torch.Generator | None = None) -> Tensor:
        return self.color.to(dirs.device).expand_as(dirs)
