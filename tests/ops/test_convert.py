"""osmos/dtype.h's float16 / bfloat16 conversions (through _C.convert) against torch, bit for bit.

NaN results are compared as NaN-ness: torch itself gives different NaN payloads on its scalar and
vectorised paths (e.g. bfloat16 0x7fc0 vs 0xffff), so only "is a NaN" is a contract.
"""

import pytest
import torch

from osmos import _native
from osmos.ops._common import dtype_code

pytestmark = pytest.mark.skipif(not _native.has_cpu_kernel("convert"), reason="osmos._C not built")

HALF_TYPES = (torch.float16, torch.bfloat16)
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def convert(src: torch.Tensor, dtype: torch.dtype, threads: int = 2) -> torch.Tensor:
    out = torch.empty(src.shape, dtype=dtype)
    _native.C.convert(src.data_ptr(), dtype_code(src), out.data_ptr(), dtype_code(out), src.numel(), threads)
    return out


def assert_bits_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    g, w = got.view(INT_VIEW[got.dtype])[~nan], want.view(INT_VIEW[want.dtype])[~nan]
    bad = (g != w).nonzero().flatten()
    assert bad.numel() == 0, f"{bad.numel()} mismatches, e.g. got {g[bad[:4]].tolist()} want {w[bad[:4]].tolist()}"


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_every_16_bit_pattern_widens_like_torch(dtype):
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    assert_bits_equal(convert(patterns, torch.float32), patterns.float())


def _hard_floats() -> torch.Tensor:
    """Random bit patterns (every exponent, subnormals, inf, NaN) plus the rounding edges."""
    g = torch.Generator().manual_seed(1)
    random_bits = torch.randint(-(2**31), 2**31, (1 << 20,), generator=g, dtype=torch.int64).to(torch.int32)
    # Patterns near f16 / bf16 rounding boundaries: low mantissa bits at and around the halfway point.
    base = torch.randint(0, 2**31, (1 << 16,), generator=g, dtype=torch.int64)
    near_half = torch.cat([(base & ~0x1FFF) | t for t in (0x0FFF, 0x1000, 0x1001, 0x3000)])
    near_bf16 = torch.cat([(base & ~0xFFFF) | t for t in (0x7FFF, 0x8000, 0x8001, 0x18000)])
    # f16 subnormal / underflow range and overflow edge (65504 is the largest half; 65520 rounds to inf).
    tiny = torch.linspace(0, 2**-13, 50_000, dtype=torch.float64).float().view(torch.int32)
    edges = torch.tensor([65504.0, 65519.99, 65520.0, 65536.0, 3.4028235e38, float("inf"), float("nan"),
                          -0.0, 0.0, 2**-24, 2**-25, 1.5 * 2**-25, 2**-14, 2**-14 - 2**-24]).view(torch.int32)
    ints = torch.cat([random_bits.to(torch.int64), near_half, near_bf16, tiny.to(torch.int64), edges.to(torch.int64)])
    bits = ints.to(torch.int32)
    return torch.cat([bits, bits ^ torch.tensor(-(2**31), dtype=torch.int32)]).view(torch.float32)


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_float32_narrows_like_torch(dtype):
    src = _hard_floats()
    assert_bits_equal(convert(src, dtype), src.to(dtype))


def test_half_bfloat16_cross_and_single_thread():
    src = torch.randn(100_003) * 1e3
    assert_bits_equal(convert(src.half(), torch.bfloat16, threads=1), src.half().to(torch.bfloat16))
    assert_bits_equal(convert(src.bfloat16(), torch.float16), src.bfloat16().to(torch.float16))


def test_convert_rejects_non_float_dtypes():
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        convert(torch.zeros(4, dtype=torch.int32), torch.float32)
