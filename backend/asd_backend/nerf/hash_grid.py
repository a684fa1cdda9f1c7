"""Multi-resolution hash encoding (Müller et al. 2022) in plain PyTorch: CPU and CUDA, no extension.

Level l has a grid of resolution N_l = ⌊N_min·b^l⌋. Coarse levels whose (N_l+1)³ vertices fit in the
table are stored densely; finer ones hash vertex coordinates into a table of 2^log2_size entries.
A point's feature at a level is the trilinear blend of its cell's 8 vertex features; levels are
concatenated.

The encoding is one autograd function (`_HashEncoding`) rather than a chain of tensor ops, because
autograd's generic backward of that chain costs more than the encoding itself: each level's gather
would get its own table-sized zero gradient, summed into the next (half the time of a step). Here
the corner indices and weights are computed once per point and level in the forward pass and kept
for the backward, which scatters every level into one gradient buffer. The table is stored feature
by feature (an [F, T] parameter): gathering and scattering one feature at a time along a contiguous
row is several times faster on the CPU than doing rows of F values, and a contiguous parameter lets
the optimizer use its fused kernel. Checkpoints of the first version's [T, F] table load unchanged.
The `reference` implementation is the first version (a [T, F] table, plain tensor ops), kept as the
oracle the tests and `asd bench speed --compare` measure against; the fast one also falls back to
it for inputs that need gradients themselves.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor, nn

from asd_protocol.job_spec import GridSpec

# Instant-NGP's primes for the spatial hash (the first is 1: no multiply for x).
PRIMES = (1, 2654435761, 805459861)
IMPLEMENTATIONS = ("fast", "reference")


class HashGrid(nn.Module):
    def __init__(self, config: GridSpec | None = None, implementation: str = "fast") -> None:
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"hash-grid implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}")
        self.implementation = implementation
        self.config = config = config or GridSpec()
        table_size = 2**config.log2_hashmap_size
        resolutions, sizes, dense = [], [], []
        for level in range(config.n_levels):
            res = math.floor(config.base_resolution * config.per_level_scale**level)
            n_vertices = (res + 1) ** 3
            resolutions.append(res)
            dense.append(n_vertices <= table_size)
            sizes.append(min(n_vertices, table_size))
        self.resolutions = resolutions
        self.sizes = sizes
        self.dense = dense
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        n_features = config.n_features_per_level
        table = torch.empty(self.offsets[-1], n_features).uniform_(-1e-4, 1e-4)
        # The fast path keeps the same initial values feature-major: [F, T].
        self.embeddings = nn.Parameter(table.t().contiguous() if implementation == "fast" else table)
        # Corner c of a cell is (x, y, z) = (c & 1, c >> 1 & 1, c >> 2 & 1): dense-level index offsets.
        dense_offsets = torch.tensor([[(c & 1) + (res + 1) * ((c >> 1 & 1) + (res + 1) * (c >> 2 & 1))
                                       for c in range(8)] for res in resolutions])
        self.register_buffer("dense_offsets", dense_offsets, persistent=False)  # [L, 8]
        self.dense_corner_offsets = dense_offsets.tolist()
        mask = table_size - 1
        self.reduced_primes = (PRIMES[1] & mask, PRIMES[2] & mask)
        # 32-bit indices are possible wherever the largest hashed product fits.
        self.int32_indices = max(resolutions) * table_size < 2**31 and self.offsets[-1] < 2**31

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    @property
    def table(self) -> Float[Tensor, "T F"]:
        """The feature table, one row per entry, whichever layout the implementation stores."""
        return self.embeddings.t() if self.implementation == "fast" else self.embeddings

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A table saved in the other layout (the first version's [T, F], or the reference's) loads
        # transposed; optimizer states follow in train/text_to_3d.load_checkpoint.
        key = prefix + "embeddings"
        saved = state_dict.get(key)
        if saved is not None and saved.shape != self.embeddings.shape and saved.t().shape == self.embeddings.shape:
            state_dict[key] = saved.t().contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N F"]:
        """Features of points in [0, 1]³ (points outside are clamped to the cube)."""
        if self.implementation == "reference" or x.requires_grad:
            return self.reference_forward(x)
        return _HashEncoding.apply(x.clamp(0.0, 1.0).t().contiguous(), self.embeddings, self)

    # -- one level's corners -------------------------------------------------------------------------

    def corners(self, xt: Float[Tensor, "3 N"], level: int, index_dtype: torch.dtype = torch.int64
                ) -> tuple[Tensor, Tensor]:
        """(table index [8·N], trilinear weight [8, N]) of the 8 corners around each point, corner-major
        (corner c = 4z + 2y + x). Every operation runs on contiguous length-N rows: broadcast ops
        over [N, 2, 2, 2] are several times slower on the CPU. int32 indices gather faster; the
        backward's scatter_add takes int64 only (and converting costs more than it saves)."""
        if index_dtype == torch.int32 and not self.int32_indices:
            index_dtype = torch.int64
        res, n = self.resolutions[level], xt.shape[1]
        cells, fracs = [], []
        for axis in range(3):
            pos = xt[axis] * res
            cell = pos.floor().clamp_(max=res - 1)
            fracs.append(pos - cell)
            cells.append(cell.to(index_dtype))
        cx, cy, cz = cells
        index = torch.empty(8, n, dtype=index_dtype, device=xt.device)
        if self.dense[level]:
            r1 = res + 1
            base = cx + r1 * (cy + r1 * cz) + self.offsets[level]
            for corner in range(8):
                torch.add(base, self.dense_corner_offsets[level][corner], out=index[corner])
        else:
            # The low bits of a product depend only on the low bits of its factors, so the primes are
            # reduced to the table size first: the same hash, and it fits 32-bit integers.
            p1, p2 = self.reduced_primes
            hx = (cx, cx + 1)
            hy0, hz0 = cy * p1, cz * p2
            hy, hz = (hy0, hy0 + p1), (hz0, hz0 + p2)
            for z in range(2):
                for y in range(2):
                    yz = hz[z] ^ hy[y]
                    for x in range(2):
                        torch.bitwise_xor(yz, hx[x], out=index[4 * z + 2 * y + x])
            index &= self.sizes[level] - 1  # table sizes are powers of two
            index += self.offsets[level]
        weights = torch.empty(8, n, dtype=xt.dtype, device=xt.device)
        wx, wy, wz = ((1 - f, f) for f in fracs)
        for z in range(2):
            for y in range(2):
                wyz = wz[z] * wy[y]
                for x in range(2):
                    torch.mul(wyz, wx[x], out=weights[4 * z + 2 * y + x])
        return index.view(-1), weights

    # -- the plain tensor-op version -----------------------------------------------------------------

    def reference_forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N F"]:
        """The encoding as ordinary tensor ops (autograd differentiates it, x included)."""
        x = x.clamp(0.0, 1.0)
        table = self.table
        n_features = table.shape[1]
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
                index = hashed.reshape(-1, 8) & (self.sizes[level] - 1)
            index = index + self.offsets[level]
            vals = table.index_select(0, index.reshape(-1)).reshape(-1, 8, n_features)
            features.append((vals * w[..., None].to(vals.dtype)).sum(1))
        return torch.cat(features, dim=-1)


class _HashEncoding(torch.autograd.Function):
    """Forward: gather and blend per level and feature; backward: scatter into one gradient."""

    @staticmethod
    def forward(ctx, xt: Tensor, table: Tensor, grid: HashGrid) -> Tensor:
        n, (f, t) = xt.shape[1], table.shape  # table: [F, T]
        levels = len(grid.resolutions)
        out = torch.empty(levels * f, n, dtype=table.dtype, device=xt.device)
        keep = ctx.needs_input_grad[1]  # (grad mode is off inside forward)
        saved: list[Tensor] = []
        for level in range(levels):
            index, weights = grid.corners(xt, level, torch.int64 if keep else torch.int32)
            weights = weights.to(table.dtype)
            for k in range(f):
                values = table[k].index_select(0, index).view(8, n)
                torch.sum(values.mul_(weights), 0, out=out[level * f + k])
            if keep:
                saved += [index, weights]
        ctx.save_for_backward(*saved)
        ctx.table_shape = (f, t)
        return out.t()

    @staticmethod
    def backward(ctx, grad: Tensor):
        saved = ctx.saved_tensors
        grad_rows = grad.t().contiguous()  # [L·F, N]
        table_grad = torch.zeros(ctx.table_shape, dtype=grad.dtype, device=grad.device)
        f = ctx.table_shape[0]
        for level in range(len(saved) // 2):
            index, weights = saved[2 * level], saved[2 * level + 1]
            for k in range(f):
                table_grad[k].scatter_add_(0, index, (weights * grad_rows[level * f + k]).view(-1))
        return None, table_grad, None
