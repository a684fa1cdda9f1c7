"""Multi-resolution hash encoding (Müller et al. 2022) in plain PyTorch: CPU and CUDA, no extension.

Level l has a grid of resolution N_l = ⌊N_min·b^l⌋. Coarse levels whose (N_l+1)³ vertices fit in the
table are stored densely; finer ones hash vertex coordinates into a table of 2^log2_size entries.
A point's feature at a level is the trilinear blend of its cell's 8 vertex features; levels are
concatenated. Levels are processed one at a time so memory stays at [N, 8] indices per level.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from asd_protocol.job_spec import GridSpec

# Instant-NGP's primes for the spatial hash (the first is 1: no multiply for x).
PRIMES = (1, 2654435761, 805459861)


class HashGrid(nn.Module):
    def __init__(self, config: GridSpec | None = None) -> None:
        super().__init__()
        self.config = config = config or GridSpec()
        table = 2**config.log2_hashmap_size
        resolutions, sizes, dense = [], [], []
        for level in range(config.n_levels):
            res = math.floor(config.base_resolution * config.per_level_scale**level)
            n_vertices = (res + 1) ** 3
            resolutions.append(res)
            dense.append(n_vertices <= table)
            sizes.append(min(n_vertices, table))
        self.resolutions = resolutions
        self.sizes = sizes
        self.dense = dense
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        self.embeddings = nn.Parameter(torch.empty(self.offsets[-1], config.n_features_per_level).uniform_(-1e-4, 1e-4))
        # Corner c of a cell is (x, y, z) = (c & 1, c >> 1 & 1, c >> 2 & 1): dense-level index offsets.
        dense_offsets = torch.tensor([[(c & 1) + (res + 1) * ((c >> 1 & 1) + (res + 1) * (c >> 2 & 1))
                                       for c in range(8)] for res in resolutions])
        self.register_buffer("dense_offsets", dense_offsets, persistent=False)  # [L, 8]

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N F"]:
        """Features of points in [0, 1]³ (points outside are clamped to the cube)."""
        x = x.clamp(0.0, 1.0)
        n_features = self.embeddings.shape[1]
        features = []
        for level, res in enumerate(self.resolutions):
            pos = x * res
            cell = pos.floor().clamp(max=res - 1)
            frac = (pos - cell).unbind(-1)
            cx, cy, cz = cell.long().unbind(-1)
            # Trilinear weights of the 8 corners, ordered c = 4z + 2y + x like the indices below.
            wx, wy, wz = (torch.stack([1 - f, f], -1) for f in frac)
            w = (wz[:, :, None, None] * wy[:, None, :, None] * wx[:, None, None, :]).reshape(-1, 8)
            if self.dense[level]:
                r1 = res + 1
                index = (cx + r1 * (cy + r1 * cz))[:, None] + self.dense_offsets[level]
            else:
                hx = torch.stack([cx, cx + 1], -1) * PRIMES[0]
                hy = torch.stack([cy, cy + 1], -1) * PRIMES[1]
                hz = torch.stack([cz, cz + 1], -1) * PRIMES[2]
                hashed = hz[:, :, None, None] ^ hy[:, None, :, None] ^ hx[:, None, None, :]
                index = hashed.reshape(-1, 8) & (self.sizes[level] - 1)  # table sizes are powers of two
            index = index + self.offsets[level]
            # index_select: its backward (index_add) is several times faster on CPU than embedding's.
            vals = self.embeddings.index_select(0, index.reshape(-1)).reshape(-1, 8, n_features)
            features.append((vals * w[..., None].to(vals.dtype)).sum(1))
        return torch.cat(features, dim=-1)
