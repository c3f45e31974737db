"""Shared plumbing of the op layer: argument validation, dtype codes, threads, streams.

Every op validates in Python before native code runs, raising ValueError / TypeError with a
message that names the argument, so bad input never reaches a kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch

# Mirrors csrc/include/osmos/dtype.h.
DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
    torch.int64: 4,
    torch.int32: 5,
    torch.uint8: 6,
}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def check_tensor(
    name: str,
    t,
    *,
    dtypes: Iterable[torch.dtype] | None = None,
    ndim: int | None = None,
    device: torch.device | None = None,
    contiguous: bool = True,
) -> None:
    """Raise TypeError / ValueError naming `name` when `t` is not what a kernel accepts."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            raise TypeError(f"{name} must have dtype {_names(dtypes)}, got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device}, got {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> None:
    """Raise TypeError / ValueError unless low <= value <= high."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


def num_threads() -> int:
    """Threads a CPU kernel may use: torch's intra-op setting."""
    return max(1, torch.get_num_threads())


def cuda_stream(t: torch.Tensor) -> int:
    """Raw handle of the current CUDA stream on t's device."""
    return torch.cuda.current_stream(t.device).cuda_stream


def triton_interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def gpu_uses_triton(default: bool) -> bool:
    """Whether an op with a Triton kernel and a torch path runs Triton on a CUDA tensor:
    OSMOS_GPU_BACKEND=triton or torch decides, else `default` (set per op from GPU measurements,
    benchmarks/RESULTS.md); never when Triton is unusable (osmos._native.triton_status)."""
    import os

    choice = os.environ.get("OSMOS_GPU_BACKEND", "")
    wanted = choice == "triton" if choice in ("triton", "torch") else default
    return wanted and _triton_usable()


@functools.lru_cache(maxsize=None)
def _triton_usable() -> bool:
    """osmos._native.triton_status()[0], once per process (it imports triton and asks CUDA for the
    device name: microseconds that ops deciding per call, e.g. adapted_linear, should not pay)."""
    from osmos import _native

    return _native.triton_status()[0]


def eager_cuda(t: torch.Tensor) -> bool:
    """A CUDA tensor outside torch.compile tracing: an op whose CUDA path is plain torch can run it
    directly there and skip the custom op's dispatch (tens of microseconds per call, more than the
    kernels at launch-bound sizes); under torch.compile the op stays one graph node."""
    return t.is_cuda and not torch.compiler.is_compiling()


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # not subclasses that trace or fake (FakeTensor, functional)


def _tracing_or_transformed() -> bool:
    """A Python dispatch mode (make_fx, export, FakeTensorMode) or a torch.func transform (vmap,
    grad) is active: the op must be called so that it is recorded / transformed."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode() is not None or torch._C._functorch.maybe_current_level() is not None


def eager_untracked(*tensors: torch.Tensor) -> bool:
    """An eager call on plain CPU / CUDA tensors that autograd does not record (inference, or no
    input needs a gradient): an op can run its kernel without the custom op's dispatch, which costs
    10-20 us per call on the CPU, as much as the kernel itself at small layers. Under torch.compile
    the op stays one graph node."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or _tracing_or_transformed():
        return False
    if any(type(t) not in _PLAIN or t.device.type not in ("cpu", "cuda") for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def gpu_backend(native_kernel: str) -> str:
    """Backend for an op on a CUDA tensor: OSMOS_GPU_BACKEND=cuda|triton|torch when set, else the
    osmos._cuda kernel `native_kernel` when built, else Triton when usable, else torch."""
    import os

    from osmos import _native

    choice = os.environ.get("OSMOS_GPU_BACKEND", "")
    if choice:
        return choice
    if _native.has_cuda_kernel(native_kernel):
        return "cuda"
    return "triton" if _native.triton_status()[0] else "torch"
