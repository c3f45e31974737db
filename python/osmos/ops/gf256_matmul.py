"""GF(2^8) matrix times blocks: the hot path of Reed-Solomon erasure coding (`osmos.ft.ec`).

    out[r, i] = XOR_j  matrix[r, j] * blocks[j, i]

with multiplication in GF(2^8) modulo x^8 + x^4 + x^3 + x^2 + 1 (0x11D, ISA-L's polynomial;
the field, its tables and the generator matrices are defined once in
csrc/include/osmos/gf256.h). matrix [r, k] uint8, blocks [k, L] uint8 -> out [r, L] uint8.
Encoding multiplies the data blocks by the parity rows of the generator; decoding by rows of
the inverted survivor matrix.

Kernels: CPU (osmos._C; GFNI, AVX-512 and AVX2 split tables, packed scalar, chosen at run time,
threads over byte ranges of L) and CUDA (osmos._cuda). `reference_gf256_matmul` is the
pure-torch definition (log / exp tables built here, independently of the C++ tables).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from osmos import _native
from osmos.ops._common import check_tensor, cuda_stream, num_threads

POLYNOMIAL = 0x11D
MAX_ROWS = 256  # r and k are at most 256 (k + m <= 256 for an RS code)


@functools.cache
def _log_exp_tables() -> tuple[Tensor, Tensor]:
    """(exp [512], log [256]) int64: exp[i] = 2^i (repeated), log[exp[i]] = i, log[0] = 0."""
    exp = [0] * 512
    log = [0] * 256
    v = 1
    for i in range(255):
        exp[i] = exp[i + 255] = v
        log[v] = i
        v <<= 1
        if v & 0x100:
            v ^= POLYNOMIAL
    exp[510], exp[511] = exp[0], exp[1]
    return torch.tensor(exp, dtype=torch.int64), torch.tensor(log, dtype=torch.int64)


def reference_gf256_matmul(matrix: Tensor, blocks: Tensor) -> Tensor:
    """Pure-torch definition of the op by log / exp table lookups (slow; any device)."""
    exp, log = (t.to(matrix.device) for t in _log_exp_tables())
    rows, k = matrix.shape
    out = torch.zeros(rows, blocks.shape[1], dtype=torch.uint8, device=blocks.device)
    log_m = log[matrix.long()]
    log_b = log[blocks.long()]
    for j in range(k):
        product = exp[log_m[:, j : j + 1] + log_b[j : j + 1, :]]
        nonzero = (matrix[:, j : j + 1] != 0) & (blocks[j : j + 1, :] != 0)
        out ^= torch.where(nonzero, product, 0).to(torch.uint8)
    return out


def validate(matrix: Tensor, blocks: Tensor, out: Tensor | None = None) -> None:
    check_tensor("matrix", matrix, dtypes=(torch.uint8,), ndim=2)
    check_tensor("blocks", blocks, dtypes=(torch.uint8,), ndim=2)
    rows, k = matrix.shape
    if rows > MAX_ROWS or k > MAX_ROWS:
        raise ValueError(f"matrix must have at most {MAX_ROWS} rows and columns, got {tuple(matrix.shape)}")
    if blocks.shape[0] != k:
        raise ValueError(f"blocks must have matrix.shape[1] = {k} rows, got shape {tuple(blocks.shape)}")
    if blocks.device != matrix.device:
        raise ValueError(f"blocks must be on matrix's device {matrix.device}, got {blocks.device}")
    if out is not None:
        check_tensor("out", out, dtypes=(torch.uint8,), ndim=2, device=blocks.device)
        if tuple(out.shape) != (rows, blocks.shape[1]):
            raise ValueError(f"out must have shape {(rows, blocks.shape[1])}, got {tuple(out.shape)}")
        if _overlaps(out, blocks):
            raise ValueError("out must not overlap blocks")


def _overlaps(a: Tensor, b: Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


def cpu_kernels() -> list[str]:
    """CPU kernels this machine can run, best first (empty when osmos._C is not built)."""
    return list(_native.C.gf256_matmul_kernels()) if _native.has_cpu_kernel("gf256_matmul") else []


def _rows(t: Tensor) -> list[int]:
    base, stride = t.data_ptr(), t.stride(0)
    return [base + i * stride for i in range(t.shape[0])]


def matmul_addresses(
    matrix: Tensor, src: Sequence[int], dst: Sequence[int], length: int, device_index: int = -1, kernel: str = "auto"
) -> None:
    """Unchecked fast path for callers that hold separate buffers (osmos.ft.ec): dst[r] =
    sum_j matrix[r, j] * src[j] over `length` bytes at the given addresses, in CPU memory
    (device_index -1) or on CUDA device `device_index`. matrix [len(dst), len(src)] uint8,
    contiguous, on that device; len(src) >= 1; outputs must not overlap sources. `kernel`
    forces a CPU kernel (tests, benchmarks)."""
    rows, k = len(dst), len(src)
    if rows == 0 or length == 0:
        return
    if device_index < 0:
        _native.C.gf256_matmul(matrix.data_ptr(), rows, k, src, dst, length, num_threads(), kernel)
        return
    device = torch.device("cuda", device_index)
    addresses = torch.tensor(list(src) + list(dst), dtype=torch.int64).to(device, non_blocking=True)
    aligned16 = all(a % 16 == 0 for a in src) and all(a % 16 == 0 for a in dst)
    with torch.cuda.device(device):
        _native.CUDA.gf256_matmul(
            matrix.data_ptr(), rows, k, addresses.data_ptr(), addresses.data_ptr() + 8 * k, length,
            aligned16, torch.cuda.current_stream(device).cuda_stream,
        )


def bind_addresses(
    matrix: Tensor, src: Sequence[int], dst: Sequence[int], length: int, device_index: int = -1, kernel: str = "auto"
) -> Callable[[], None]:
    """matmul_addresses on buffers that stay put (snapshot slots, re-encoded every snapshot),
    planned once: returns a call that runs the product. On the CPU the kernel is chosen, its
    per-coefficient constants and the pointer arrays built here, so a call costs the kernel and
    one native call (the thread count is torch's at call time). The caller keeps the buffers
    alive; the matrix is copied."""
    if device_index < 0 and len(dst) and length:
        plan = _native.C.Gf256Plan(matrix.data_ptr(), len(dst), len(src), list(src), list(dst), length, kernel)
        get_num_threads = torch.get_num_threads
        return lambda: plan(get_num_threads())
    return functools.partial(matmul_addresses, matrix, list(src), list(dst), length, device_index, kernel)


def gf256_matmul_cpu(matrix: Tensor, blocks: Tensor, out: Tensor, kernel: str = "auto") -> Tensor:
    """The C++ kernels into out (the reference when osmos._C is not built). kernel: 'auto' or
    one of cpu_kernels()."""
    if not _native.has_cpu_kernel("gf256_matmul"):
        out.copy_(reference_gf256_matmul(matrix, blocks))
    elif matrix.shape[1] == 0:
        out.zero_()
    else:
        matmul_addresses(matrix, _rows(blocks), _rows(out), blocks.shape[1], -1, kernel)
    return out


def gf256_matmul_cuda(matrix: Tensor, blocks: Tensor, out: Tensor) -> Tensor:
    """The CUDA kernel into out, on the current stream (the reference without osmos._cuda)."""
    if not _native.has_cuda_kernel("gf256_matmul"):
        out.copy_(reference_gf256_matmul(matrix, blocks))
    elif matrix.shape[1] == 0:
        out.zero_()
    elif out.numel() > 0:
        rows, k = matrix.shape
        base = torch.arange(k, device=blocks.device, dtype=torch.int64) * blocks.stride(0) + blocks.data_ptr()
        outs = torch.arange(rows, device=out.device, dtype=torch.int64) * out.stride(0) + out.data_ptr()
        aligned16 = blocks.data_ptr() % 16 == 0 and out.data_ptr() % 16 == 0 and blocks.shape[1] % 16 == 0
        with torch.cuda.device(blocks.device):
            _native.CUDA.gf256_matmul(
                matrix.data_ptr(), rows, k, base.data_ptr(), outs.data_ptr(), blocks.shape[1], aligned16,
                cuda_stream(blocks),
            )
    return out


@torch.library.custom_op("osmos::gf256_matmul", mutates_args=())
def _gf256_matmul_op(matrix: Tensor, blocks: Tensor) -> Tensor:
    raise NotImplementedError(f"osmos::gf256_matmul has no kernel for device {blocks.device.type}")


@_gf256_matmul_op.register_fake
def _(matrix, blocks):
    return blocks.new_empty(matrix.shape[0], blocks.shape[1])


@_gf256_matmul_op.register_kernel("cpu")
def _(matrix, blocks):
    return gf256_matmul_cpu(matrix, blocks, blocks.new_empty(matrix.shape[0], blocks.shape[1]))


@_gf256_matmul_op.register_kernel("cuda")
def _(matrix, blocks):
    return gf256_matmul_cuda(matrix, blocks, blocks.new_empty(matrix.shape[0], blocks.shape[1]))


@torch.library.custom_op("osmos::gf256_matmul_out", mutates_args=("out",))
def _gf256_matmul_out_op(matrix: Tensor, blocks: Tensor, out: Tensor) -> None:
    raise NotImplementedError(f"osmos::gf256_matmul_out has no kernel for device {blocks.device.type}")


@_gf256_matmul_out_op.register_fake
def _(matrix, blocks, out):
    return None


@_gf256_matmul_out_op.register_kernel("cpu")
def _(matrix, blocks, out):
    gf256_matmul_cpu(matrix, blocks, out)


@_gf256_matmul_out_op.register_kernel("cuda")
def _(matrix, blocks, out):
    gf256_matmul_cuda(matrix, blocks, out)


def gf256_matmul(matrix: Tensor, blocks: Tensor, out: Tensor | None = None) -> Tensor:
    """GF(2^8) product of matrix [r, k] and blocks [k, L] (uint8, contiguous, one device):
    returns [r, L] uint8, written into `out` when given (it must not overlap blocks)."""
    validate(matrix, blocks, out)
    if out is None:
        return _gf256_matmul_op(matrix, blocks)
    _gf256_matmul_out_op(matrix, blocks, out)
    return out
