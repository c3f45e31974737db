"""Sliced GroupNorm in two passes, exact for any slicing along the last axis.

GroupNorm's statistics span the whole spatial extent, so normalising a spatial slice with its
own statistics is wrong (the defect of the Streamlined Inference reference code). Here:

1. `group_norm_stats(slice, G)` per slice -> [N, G, 3] float64 (count, sum, sum of squares);
   the statistics of several slices add up to those of the whole tensor.
2. `group_norm_apply(slice, total_stats, weight, bias, eps, silu)` normalises one slice with the
   totals (and applies SiLU, fused), so only one slice's output is alive at a time.

Tensors are viewed as x [N, C, L] with unit stride along L; N and C may have any strides, so a
slice `x[..., a:b]` of a larger tensor is read in place.
"""

from __future__ import annotations

from typing import Optional  # torch < 2.7 infers op schemas from typing generics only
import torch
from torch import Tensor

from osmos import _native
from osmos.ops._common import (FLOAT_DTYPES, check_int, check_tensor, dtype_code, gpu_uses_triton, num_threads,
                               triton_interpreting)


def _check_x(x: Tensor, num_groups: int) -> None:
    check_tensor("x", x, dtypes=FLOAT_DTYPES, ndim=3, contiguous=False)
    if x.shape[2] > 1 and x.stride(2) != 1:
        raise ValueError("x must have unit stride along its last axis (slice it, don't transpose it)")
    check_int("num_groups", num_groups, low=1)
    if x.shape[1] % num_groups:
        raise ValueError(f"num_groups ({num_groups}) must divide the channel count ({x.shape[1]})")


def _check_stats(stats: Tensor, x: Tensor) -> None:
    check_tensor("stats", stats, dtypes=(torch.float64,), ndim=3)
    if stats.shape[0] != x.shape[0] or stats.shape[2] != 3 or x.shape[1] % max(stats.shape[1], 1):
        raise ValueError(f"stats must be [N, G, 3] with N = {x.shape[0]} and G dividing {x.shape[1]}, got {tuple(stats.shape)}")
    if stats.device != x.device:
        raise ValueError(f"stats must be on x's device {x.device}, got {stats.device}")


def _check_affine(name: str, t, x: Tensor) -> None:
    if t is None:
        return
    check_tensor(name, t, dtypes=(torch.float32,), ndim=1)
    if t.shape[0] != x.shape[1] or t.device != x.device:
        raise ValueError(f"{name} must be a float32 vector of length {x.shape[1]} on {x.device}")


# ---------------------------------------------------------------- references
def reference_group_norm_stats(x: Tensor, num_groups: int) -> Tensor:
    n, c, l = x.shape
    g = x.double().reshape(n, num_groups, (c // num_groups) * l)
    count = torch.full((n, num_groups), float(g.shape[2]), dtype=torch.float64, device=x.device)
    return torch.stack([count, g.sum(2), (g * g).sum(2)], dim=2)


def mean_rstd(stats: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """float32 mean and 1/sqrt(var + eps) per (n, g) from accumulated (count, sum, sumsq)."""
    count = stats[..., 0].clamp_min(1.0)
    mean = stats[..., 1] / count
    var = (stats[..., 2] / count - mean * mean).clamp_min(0.0)
    return mean.float().contiguous(), torch.rsqrt(var + eps).float().contiguous()


def reference_group_norm_apply(x, stats, weight, bias, eps: float, silu: bool) -> Tensor:
    n, c, l = x.shape
    g = stats.shape[1]
    mean, rstd = mean_rstd(stats, eps)
    y = (x.float().reshape(n, g, c // g, l) - mean[:, :, None, None]) * rstd[:, :, None, None]
    y = y.reshape(n, c, l)
    if weight is not None:
        y = y * weight[None, :, None]
    if bias is not None:
        y = y + bias[None, :, None]
    if silu:
        y = torch.nn.functional.silu(y)
    return y.to(x.dtype)


# ---------------------------------------------------------------- ops
@torch.library.custom_op("osmos::group_norm_stats", mutates_args=())
def _stats_op(x: Tensor, num_groups: int) -> Tensor:
    raise NotImplementedError(f"osmos::group_norm_stats has no kernel for {x.device.type}")


@_stats_op.register_fake
def _(x, num_groups):
    return x.new_empty((x.shape[0], num_groups, 3), dtype=torch.float64)


@torch.library.custom_op("osmos::group_norm_apply", mutates_args=())
def _apply_op(x: Tensor, stats: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, silu: bool) -> Tensor:
    raise NotImplementedError(f"osmos::group_norm_apply has no kernel for {x.device.type}")


@_apply_op.register_fake
def _(x, stats, weight, bias, eps, silu):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _use_triton_on_cpu() -> bool:
    import os

    return triton_interpreting() and os.environ.get("OSMOS_CPU_BACKEND") == "triton"


@_stats_op.register_kernel("cpu")
def _(x, num_groups):
    if _use_triton_on_cpu():
        from osmos.triton_kernels.group_norm import group_norm_stats as kernel

        return kernel(x, num_groups)
    if not _native.has_cpu_kernel("group_norm_stats"):
        return reference_group_norm_stats(x, num_groups)
    n, c, l = x.shape
    out = torch.zeros((n, num_groups, 3), dtype=torch.float64)
    sums = torch.zeros((n, num_groups, 2), dtype=torch.float64)
    if x.numel():
        _native.C.group_norm_stats(x.data_ptr(), dtype_code(x), n, c, l, x.stride(0), x.stride(1), num_groups,
                                   sums.data_ptr(), num_threads())
    out[..., 0] = float((c // num_groups) * l)
    out[..., 1:] = sums
    return out


@_apply_op.register_kernel("cpu")
def _(x, stats, weight, bias, eps, silu):
    if _use_triton_on_cpu():
        from osmos.triton_kernels.group_norm import group_norm_apply as kernel

        return kernel(x, stats, weight, bias, eps, silu)
    if not _native.has_cpu_kernel("group_norm_apply"):
        return reference_group_norm_apply(x, stats, weight, bias, eps, silu)
    n, c, l = x.shape
    mean, rstd = mean_rstd(stats, eps)
    y = torch.empty((n, c, l), dtype=x.dtype)
    if x.numel():
        _native.C.group_norm_apply(
            x.data_ptr(), dtype_code(x), n, c, l, x.stride(0), x.stride(1), stats.shape[1],
            mean.data_ptr(), rstd.data_ptr(), 0 if weight is None else weight.data_ptr(),
            0 if bias is None else bias.data_ptr(), silu, y.data_ptr(), num_threads(),
        )
    return y


@_stats_op.register_kernel("cuda")
def _(x, num_groups):
    if not gpu_uses_triton(default=True):
        return reference_group_norm_stats(x, num_groups)
    from osmos.triton_kernels.group_norm import group_norm_stats as kernel

    return kernel(x, num_groups)


@_apply_op.register_kernel("cuda")
def _(x, stats, weight, bias, eps, silu):
    if not gpu_uses_triton(default=True):
        return reference_group_norm_apply(x, stats, weight, bias, eps, silu)
    from osmos.triton_kernels.group_norm import group_norm_apply as kernel

    return kernel(x, stats, weight, bias, eps, silu)


# ---------------------------------------------------------------- public API
def group_norm_stats(x: Tensor, num_groups: int) -> Tensor:
    """Per (sample, group) statistics of x [N, C, L]: [N, G, 3] float64 (count, sum, sum of
    squares). Add the results of several slices to get the statistics of their union."""
    _check_x(x, num_groups)
    return _stats_op(x, num_groups)


def group_norm_apply(
    x: Tensor, stats: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
    eps: float = 1e-5, silu: bool = False,
) -> Tensor:
    """Normalise x [N, C, L] with accumulated `stats` (from group_norm_stats), then the affine
    weight / bias [C] (float32) and optionally SiLU. Returns a contiguous tensor in x's dtype."""
    _check_x(x, 1)
    _check_stats(stats, x)
    _check_affine("weight", weight, x)
    _check_affine("bias", bias, x)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return _apply_op(x, stats, weight, bias, float(eps), bool(silu))


def sliced_group_norm(
    x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None,
    eps: float = 1e-5, silu: bool = False, slices: int = 1, out: Tensor | None = None,
) -> Tensor:
    """GroupNorm(+SiLU) of x [N, C, L] computed slice by slice along L, exactly equal (to float
    rounding) to the unsliced GroupNorm. Writes into `out` when given."""
    _check_x(x, num_groups)
    check_int("slices", slices, low=1, high=max(x.shape[2], 1))
    bounds = [x.shape[2] * i // slices for i in range(slices + 1)]
    stats = sum(group_norm_stats(x[:, :, a:b], num_groups) for a, b in zip(bounds, bounds[1:]))
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for a, b in zip(bounds, bounds[1:]):
        out[:, :, a:b] = group_norm_apply(x[:, :, a:b], stats, weight, bias, eps, silu)
    return out
