"""A Linear with C rank-1 (one-dimensional) adapters, base GEMM and adapters in one kernel on a GPU.

    out = x @ W^T + bias + ((x @ D^T) * gamma[:, None, :]) @ U

i.e. adapter_inject(F.linear(x, W, bias), x, D, U, gamma) (osmos.ops.adapter_inject), what an
SPM-adapted Linear computes. At Stable Diffusion shapes the base Linear takes 10-15 us on an H100,
so a separate adapter kernel after it doubles the layer's time; the Triton kernel
(triton_kernels/adapted_linear.py) computes the adapters in the GEMM's K loop and epilogue.

Backends: on a CUDA tensor the Triton kernel with OSMOS_GPU_BACKEND=triton (opt-in until it has
been timed on a GPU; float32 runs ieee dots, slower than cuBLAS's), else F.linear +
torch_adapter_inject. On the CPU F.linear + the
native adapter_inject kernel, bitwise what base layer + adapter_inject_ give. Under
TRITON_INTERPRET=1, OSMOS_CPU_BACKEND=triton runs the Triton kernel on the CPU (tests).

Numerics: x, W, bias and the result share one dtype; D, U and gamma may be any float dtype; every
GEMM accumulates in float32. 16-bit inputs round the adapters differently per backend: the CPU
kernel keeps D, U, gamma and the projections in float32; the Triton kernel rounds D to x's dtype
and runs (projections * gamma) @ U in tf32; the torch path rounds D, U, gamma and the projections
to x's dtype (as PEFT does).

Inference only: not differentiable (SPM training uses base layer + adapter_inject).
"""

from __future__ import annotations

import os
from typing import Optional  # torch < 2.7 infers op schemas from typing generics only

import torch
import torch.nn.functional as F
from torch import Tensor

from osmos.ops._common import FLOAT_DTYPES, check_tensor, eager_cuda, gpu_uses_triton, triton_interpreting
from osmos.ops.adapter_inject import (
    _run_cpu, reference_adapter_inject, torch_adapter_inject, validate_adapters, validate_input,
)


def validate_adapted_linear(x: Tensor, weight: Tensor, bias: Tensor | None, down: Tensor, up: Tensor,
                            gamma: Tensor) -> None:
    validate_input(x)
    check_tensor("weight", weight, dtypes=(x.dtype,), ndim=2, contiguous=False)
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight must be [out, in] with in = x.shape[-1] = {x.shape[-1]}, got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, dtypes=(x.dtype,), ndim=1, contiguous=False)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must be [out] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")
    validate_adapters(x, weight.shape[0], down, up, gamma)


def reference_adapted_linear(x: Tensor, weight: Tensor, bias: Tensor | None, down: Tensor, up: Tensor,
                             gamma: Tensor) -> Tensor:
    """Pure-torch definition of the op (float32 math, result in x's dtype)."""
    y = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    return reference_adapter_inject(y, x, down, up, gamma).to(x.dtype)


def fused_on_gpu(x: Tensor) -> bool:
    """Whether a CUDA tensor x runs the Triton kernel: only with OSMOS_GPU_BACKEND=triton (and a
    usable Triton) until it has been timed on a GPU against the base Linear + torch path
    (benchmarks/bench_adapter_inject.py, column "fused"), as for the project's other untimed
    kernels; otherwise F.linear + the torch adapter path."""
    return gpu_uses_triton(default=False)


def _triton(x, weight, bias, down, up, gamma) -> Tensor:
    from osmos.triton_kernels.adapted_linear import adapted_linear as kernel

    return kernel(x, weight, bias, down, up, gamma)


def _run_cuda(x, weight, bias, down, up, gamma) -> Tensor:
    if fused_on_gpu(x):
        return _triton(x, weight, bias, down, up, gamma)
    return torch_adapter_inject(F.linear(x, weight, bias), x, down, up, gamma)


@torch.library.custom_op("osmos::adapted_linear", mutates_args=())
def _adapted_linear_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], down: Tensor, up: Tensor,
                       gamma: Tensor) -> Tensor:
    if x.device.type == "cuda":
        return _run_cuda(x, weight, bias, down, up, gamma)
    if triton_interpreting() and os.environ.get("OSMOS_CPU_BACKEND") == "triton":
        return _triton(x, weight, bias, down, up, gamma)
    y = F.linear(x, weight, bias)
    _run_cpu(y, y, x, down, up, gamma)  # in place, as adapter_inject_ after the base layer does
    return y


@_adapted_linear_op.register_fake
def _(x, weight, bias, down, up, gamma):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def adapted_linear(x: Tensor, weight: Tensor, bias: Tensor | None, down: Tensor, up: Tensor, gamma: Tensor) -> Tensor:
    """F.linear(x, weight, bias) + ((x @ down^T) * gamma) @ up, in one kernel on a GPU.

    Args:
        x: the layer's input [B, ..., in], contiguous, float32 / float16 / bfloat16.
        weight: W [out, in] (nn.Linear's layout), x's dtype.
        bias: [out] in x's dtype, or None.
        down: D [C, in] (rows d_k), any float dtype.
        up: U [C, out] (rows u_k; fold a strength s_k in here or in gamma).
        gamma: per-sample, per-adapter strengths [B, C].
    Returns:
        a new tensor [B, ..., out] in x's dtype. Inference only: raises RuntimeError when grad mode
        is on and an input requires grad (train with the layer followed by adapter_inject).
    """
    validate_adapted_linear(x, weight, bias, down, up, gamma)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, down, up, gamma)):
        raise RuntimeError("adapted_linear is inference only (not differentiable): call it under torch.no_grad() or "
                           "torch.inference_mode(), or train with the layer followed by osmos.ops.adapter_inject")
    if eager_cuda(x):  # the custom op's dispatch would cost more than the kernel
        return _run_cuda(x, weight, bias, down, up, gamma)
    return _adapted_linear_op(x, weight, bias, down, up, gamma)
