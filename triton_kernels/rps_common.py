"""The RPS mapping in Triton, mirroring csrc/include/osmos/rps_hash.h operation by operation.

The layer's config (LayerMap.config(), 15 ints) is passed as an int64 tensor so that every
intermediate is int64; the mapper kind and the sign switch are constexpr.
"""

import triton
import triton.language as tl

PRIME = tl.constexpr(2147483647)
HASHEDNET = tl.constexpr(0)
ROAST = tl.constexpr(1)
STABLE = tl.constexpr(2)


@triton.jit
def poly_hash(x, cfg_ptr, first: tl.constexpr):
    """((a3 x + a2) x + a1) x + a0 mod P with a = cfg[first : first + 4], x in [0, P)."""
    acc = tl.load(cfg_ptr + first + 3) + x * 0
    acc = (acc * x + tl.load(cfg_ptr + first + 2)) % PRIME
    acc = (acc * x + tl.load(cfg_ptr + first + 1)) % PRIME
    acc = (acc * x + tl.load(cfg_ptr + first)) % PRIME
    return acc


@triton.jit
def rps_index(r, c, cfg_ptr, KIND: tl.constexpr):
    """M index of elements (r, c) (int64 tensors that broadcast)."""
    m = tl.load(cfg_ptr + 1)
    if KIND == STABLE:
        i = tl.load(cfg_ptr + 2) + r * tl.load(cfg_ptr + 3) + c
        h = ((poly_hash((i // m) % PRIME, cfg_ptr, 6) * m) >> 31) + i % m
        index = tl.where(h >= m, h - m, h)
    elif KIND == ROAST:
        tile_r = tl.load(cfg_ptr + 4)
        tile_c = tl.load(cfg_ptr + 5)
        z = tile_r * tile_c
        span = tl.where(m > z, m - z, 1)
        rb = (r // tile_r) % PRIME
        cb = (c // tile_c) % PRIME
        start = ((((rb * tl.load(cfg_ptr + 8)) % PRIME + (cb * tl.load(cfg_ptr + 7)) % PRIME + tl.load(cfg_ptr + 6)) % PRIME) * span) >> 31
        index = (start + (r % tile_r) * tile_c + c % tile_c) % m
    else:
        i = tl.load(cfg_ptr + 2) + r * tl.load(cfg_ptr + 3) + c
        index = (poly_hash(i % PRIME, cfg_ptr, 6) * m) >> 31
    return index


@triton.jit
def rps_sign(r, c, cfg_ptr, USE_SIGN: tl.constexpr):
    """+1 / -1 (int64) of elements (r, c)."""
    i = tl.load(cfg_ptr + 2) + r * tl.load(cfg_ptr + 3) + c
    if USE_SIGN:
        sign = 1 - 2 * ((poly_hash((i // 16) % PRIME, cfg_ptr, 10) >> (i % 16)) & 1)
    else:
        sign = i * 0 + 1
    return sign
