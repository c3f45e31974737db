"""Randomized parameter sharing (RPS) mappings: which entry of the shared array M, and which sign,
each weight element reads.

The definition lives in csrc/include/osmos/rps_hash.h; `reference_indices` here is its torch
mirror (int64 tensor ops, identical results) and `LayerMap.config()` packs a layer's mapping into
the list of ints every kernel takes. Hash coefficients are derived from the seed here, in Python,
once; kernels only receive them.

A layer's weight is viewed as [rows, cols]; element (r, c) has the global index
i = offset + r * cols + c, and W[r, c] = scale * sign(i) * M[h(r, c)], M of size m.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PRIME = 2**31 - 1
MAPPERS = {"hashednet": 0, "roast": 1, "stable": 2}
CONFIG_LEN = 15


def _splitmix64(state: int) -> tuple[int, int]:
    state = (state + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return state, z ^ (z >> 31)


def hash_coefficients(seed: int, stream: int) -> tuple[int, int, int, int]:
    """Four coefficients in [1, P) for hash `stream` (0: index hash, 1: sign hash, 2 + k: ROAST layer k)."""
    state = (seed * 0x100000001B3 + stream * 0x5851F42D4C957F2D) & 0xFFFFFFFFFFFFFFFF
    out = []
    for _ in range(4):
        state, z = _splitmix64(state)
        out.append(1 + z % (PRIME - 1))
    return tuple(out)


@dataclass(frozen=True)
class LayerMap:
    """The mapping of one layer's [rows, cols] weight into M (see module docstring).

    kind: "hashednet" | "roast" | "stable"; m: size of M; offset: global index of W[0, 0];
    tile: ROAST tile (tile_r, tile_c); layer: ROAST layer number (salts its tile hash);
    seed: hash seed; use_sign: multiply by the sign hash.
    """

    kind: str
    m: int
    offset: int
    rows: int
    cols: int
    seed: int = 0
    layer: int = 0
    tile: tuple[int, int] = (16, 16)
    use_sign: bool = True

    def config(self) -> list[int]:
        """The 15 ints of osmos::rps::Map, in order."""
        if self.kind not in MAPPERS:
            raise ValueError(f"mapper must be one of {sorted(MAPPERS)}, got {self.kind!r}")
        if self.kind == "roast":
            _, r2, r3, _ = hash_coefficients(self.seed, 0)
            a = (hash_coefficients(self.seed, 2 + self.layer)[0], r2, r3, 0)
        else:
            a = hash_coefficients(self.seed, 0)
        s = hash_coefficients(self.seed, 1)
        return [MAPPERS[self.kind], self.m, self.offset, self.cols, self.tile[0], self.tile[1], *a, *s,
                int(self.use_sign)]


def _poly(x: Tensor, a: list[int]) -> Tensor:
    acc = torch.full_like(x, a[3])
    for coef in (a[2], a[1], a[0]):
        acc = (acc * x + coef) % PRIME
    return acc


def reference_indices(config: list[int], rows: int, cols: int, device="cpu") -> tuple[Tensor, Tensor]:
    """(index int64 [rows, cols], sign int8 [rows, cols]) by int64 torch ops mirroring rps_hash.h."""
    kind, m, offset, _, tile_r, tile_c = config[:6]
    a, s, use_sign = config[6:10], config[10:14], config[14]
    r = torch.arange(rows, dtype=torch.int64, device=device)[:, None]
    c = torch.arange(cols, dtype=torch.int64, device=device)[None, :]
    i = offset + r * cols + c
    if kind == MAPPERS["stable"]:
        h = (_poly((i // m) % PRIME, a) * m >> 31) + i % m
        index = torch.where(h >= m, h - m, h)
    elif kind == MAPPERS["roast"]:
        z = tile_r * tile_c
        span = m - z if m > z else 1
        rb, cb = (r // tile_r) % PRIME, (c // tile_c) % PRIME
        start = ((rb * a[2]) % PRIME + (cb * a[1]) % PRIME + a[0]) % PRIME * span >> 31
        index = (start + (r % tile_r) * tile_c + c % tile_c) % m
    else:
        index = _poly(i % PRIME, a) * m >> 31
    if use_sign:
        sign = (1 - 2 * ((_poly((i // 16) % PRIME, s) >> (i % 16)) & 1)).to(torch.int8)
    else:
        sign = torch.ones_like(i, dtype=torch.int8)
    return index.expand(rows, cols).contiguous(), sign.expand(rows, cols).contiguous()
