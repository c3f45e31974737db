"""osmos.ops.gf256_matmul: every CPU kernel (GFNI, AVX-512, AVX2, scalar) and the CUDA kernel
bitwise against the pure-torch reference; the field tables, GFNI matrices and Cauchy
generator against independent definitions and ISA-L."""


import numpy as np
import pytest
import torch

from conftest import load_isal

from osmos import _native
from osmos.ops import gf256_matmul
from osmos.ops.gf256_matmul import (
    _log_exp_tables,
    cpu_kernels,
    gf256_matmul_cpu,
    reference_gf256_matmul,
)

pytestmark = pytest.mark.skipif(not _native.has_cpu_kernel("gf256_matmul"), reason="osmos._C not built")
C = _native.C

SHAPES = [  # (rows, k, L)
    (2, 8, 1000),
    (4, 10, 4097),  # L not a multiple of 64
    (1, 1, 63),
    (3, 1, 1),
    (7, 3, 200),  # more rows than one register pass (6)
    (13, 5, 130),
    (5, 6, 3037),  # a 5-row pass (GFNI: 2 vectors per source load, prefetching)
    (3, 4, 200_001),  # working set over 1 MiB: the 1-3 row GFNI pass prefetches too
    (6, 4, 64),
    (2, 3, 31),
    (0, 3, 100),  # r = 0
    (5, 2, 0),  # L = 0
]


def _slow_mul(a: int, b: int) -> int:
    p = 0
    for _ in range(8):
        if b & 1:
            p ^= a
        a = ((a << 1) ^ 0x11D) if a & 0x80 else a << 1
        b >>= 1
    return p


def test_tables_match_shift_and_add():
    exp, log = C.gf256_tables()
    ref_exp, ref_log = _log_exp_tables()
    assert list(exp) == ref_exp.tolist() and list(log) == ref_log.tolist()
    products = np.array([[C.gf256_mul(a, b) for b in range(256)] for a in range(0, 256, 7)])
    expected = np.array([[_slow_mul(a, b) for b in range(256)] for a in range(0, 256, 7)])
    np.testing.assert_array_equal(products, expected)
    for a in range(1, 256):
        assert _slow_mul(a, C.gf256_inverse(a)) == 1


def test_affine_matrix_bit_layout():
    """GF2P8AFFINEQB semantics, in numpy: out bit i = parity(A.byte[7 - i] & v)."""
    v = np.arange(256, dtype=np.uint8)
    for c in [0, 1, 2, 0x1D, 0x80, 0xFF, 173]:
        a = C.gf256_affine_matrix(c)
        out = np.zeros(256, dtype=np.uint8)
        for i in range(8):
            row = np.uint8((a >> (8 * (7 - i))) & 0xFF)
            parity = np.unpackbits((v & row)[:, None], axis=1).sum(axis=1) & 1
            out |= (parity << i).astype(np.uint8)
        assert out.tolist() == [_slow_mul(c, x) for x in range(256)]


@pytest.mark.parametrize("k,m", [(4, 2), (10, 4), (1, 1), (200, 56)])
def test_cauchy_matrix_matches_isal(k, m):
    isal = load_isal()
    assert C.gf256_cauchy_matrix(k, m) == isal.IsalCodec(k, m).matrix


def test_invert():
    k, m = 6, 3
    g = np.frombuffer(C.gf256_cauchy_matrix(k, m), dtype=np.uint8).reshape(k + m, k)
    rows = g[[0, 2, 6, 7, 8, 4]].copy()
    inv = np.frombuffer(C.gf256_invert(rows.tobytes(), k), dtype=np.uint8).reshape(k, k)
    product = reference_gf256_matmul(torch.from_numpy(inv.copy()), torch.from_numpy(rows))
    assert torch.equal(product, torch.eye(k, dtype=torch.uint8))
    assert C.gf256_invert(bytes([1, 2, 1, 2]), 2) is None


@pytest.mark.parametrize("kernel", cpu_kernels())
@pytest.mark.parametrize("rows,k,length", SHAPES)
def test_cpu_kernels_match_reference(kernel, rows, k, length):
    matrix = torch.randint(0, 256, (rows, k), dtype=torch.uint8)
    blocks = torch.randint(0, 256, (k, length), dtype=torch.uint8)
    out = torch.full((rows, length), 0xAB, dtype=torch.uint8)
    gf256_matmul_cpu(matrix, blocks, out, kernel=kernel)
    assert torch.equal(out, reference_gf256_matmul(matrix, blocks))


def test_set_cpu_isa_selects_kernel():
    matrix = torch.randint(0, 256, (3, 5), dtype=torch.uint8)
    blocks = torch.randint(0, 256, (5, 333), dtype=torch.uint8)
    expected = reference_gf256_matmul(matrix, blocks)
    names = {"scalar": "scalar", "avx2": "avx2", "avx512": "gfni" if "gfni" in cpu_kernels() else "avx512"}
    try:
        for isa in ("scalar", "avx2", "avx512"):
            C.set_cpu_isa(isa)
            if C.cpu_isa() != isa:
                continue  # the CPU lacks it
            assert C.gf256_matmul_kernel() == names[isa]
            assert torch.equal(gf256_matmul(matrix, blocks), expected)
    finally:
        C.set_cpu_isa("avx512")


@pytest.mark.parametrize("kernel", cpu_kernels())
def test_threads_split_bytes(kernel):
    """Long enough for several threads (>= 1 MiB of source per thread); boundaries are exact."""
    rows, k, length = 3, 4, 700_001
    matrix = torch.randint(0, 256, (rows, k), dtype=torch.uint8)
    blocks = torch.randint(0, 256, (k, length), dtype=torch.uint8)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = gf256_matmul_cpu(matrix, blocks, torch.empty(rows, length, dtype=torch.uint8), kernel=kernel)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(out, reference_gf256_matmul(matrix, blocks))


def test_k_zero_gives_zeros():
    out = gf256_matmul(torch.empty(3, 0, dtype=torch.uint8), torch.empty(0, 17, dtype=torch.uint8))
    assert torch.equal(out, torch.zeros(3, 17, dtype=torch.uint8))


def test_out_argument_and_identity():
    blocks = torch.randint(0, 256, (4, 257), dtype=torch.uint8)
    out = torch.empty(4, 257, dtype=torch.uint8)
    result = gf256_matmul(torch.eye(4, dtype=torch.uint8), blocks, out=out)
    assert result is out and torch.equal(out, blocks)


def test_matches_isal_parity():
    isal = load_isal()
    k, m, length = 10, 4, 5000
    codec = isal.IsalCodec(k, m)
    data = torch.randint(0, 256, (k, length), dtype=torch.uint8)
    parity = torch.zeros(m, length, dtype=torch.uint8)
    codec.run(length, m, codec.encode_tables, codec.pointers([data[j].data_ptr() for j in range(k)]),
              codec.pointers([parity[r].data_ptr() for r in range(m)]))
    matrix = torch.frombuffer(bytearray(codec.matrix[k * k:]), dtype=torch.uint8).view(m, k)
    for kernel in cpu_kernels():
        out = gf256_matmul_cpu(matrix, data, torch.empty(m, length, dtype=torch.uint8), kernel=kernel)
        assert torch.equal(out, parity), kernel


def test_opcheck():
    matrix = torch.randint(0, 256, (3, 5), dtype=torch.uint8)
    blocks = torch.randint(0, 256, (5, 100), dtype=torch.uint8)
    torch.library.opcheck(torch.ops.osmos.gf256_matmul.default, (matrix, blocks))
    torch.library.opcheck(torch.ops.osmos.gf256_matmul_out.default, (matrix, blocks, torch.empty(3, 100, dtype=torch.uint8)))


def test_torch_compile_fullgraph():
    matrix = torch.randint(0, 256, (2, 4), dtype=torch.uint8)
    blocks = torch.randint(0, 256, (4, 300), dtype=torch.uint8)

    @torch.compile(fullgraph=True)
    def encode(mat, data):
        return gf256_matmul(mat, data) ^ 1

    assert torch.equal(encode(matrix, blocks), reference_gf256_matmul(matrix, blocks) ^ 1)


def test_bad_inputs():
    m = torch.zeros(2, 3, dtype=torch.uint8)
    b = torch.zeros(3, 10, dtype=torch.uint8)
    with pytest.raises(TypeError, match="matrix"):
        gf256_matmul(m.float(), b)
    with pytest.raises(TypeError, match="blocks"):
        gf256_matmul(m, b.int())
    with pytest.raises(TypeError, match="blocks"):
        gf256_matmul(m, b.numpy())
    with pytest.raises(ValueError, match="blocks"):
        gf256_matmul(m, torch.zeros(4, 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="blocks"):
        gf256_matmul(m, torch.zeros(10, 3, dtype=torch.uint8).t())
    with pytest.raises(ValueError, match="matrix"):
        gf256_matmul(torch.zeros(3, dtype=torch.uint8), b)
    with pytest.raises(ValueError, match="matrix"):
        gf256_matmul(torch.zeros(257, 3, dtype=torch.uint8), b)
    with pytest.raises(ValueError, match="out"):
        gf256_matmul(m, b, out=torch.zeros(2, 11, dtype=torch.uint8))
    with pytest.raises(ValueError, match="overlap"):
        gf256_matmul(m, b, out=b[:2])
    with pytest.raises(ValueError, match="kernel"):
        gf256_matmul_cpu(m, b, torch.empty(2, 10, dtype=torch.uint8), kernel="sse9")


@pytest.mark.gpu
@pytest.mark.parametrize("rows,k,length", [(2, 8, 4096), (4, 10, 4097), (5, 3, 33), (9, 7, 1 << 16), (0, 2, 16)])
def test_cuda_matches_reference(rows, k, length):
    matrix = torch.randint(0, 256, (rows, k), dtype=torch.uint8)
    blocks = torch.randint(0, 256, (k, length), dtype=torch.uint8)
    out = gf256_matmul(matrix.cuda(), blocks.cuda())
    assert torch.equal(out.cpu(), reference_gf256_matmul(matrix, blocks))
    # a base address that is not 16-byte aligned takes the byte path
    flat = torch.randint(0, 256, (k * length + 1,), dtype=torch.uint8, device="cuda")
    view = flat[1:].view(k, length)
    assert torch.equal(gf256_matmul(matrix.cuda(), view).cpu(), reference_gf256_matmul(matrix, view.cpu()))


@pytest.mark.parametrize("rows,length", [(4, (8 << 20) + 100), (2, (11 << 20) + 37)])
def test_streaming_stores_on_large_outputs(rows, length):
    """Beyond 64 MiB of working set the AVX-512 / GFNI kernels store with non-temporal
    stores; the result must equal the AVX2 kernel's (no streaming), tail included. Two row
    counts: the GFNI kernel loads 4 vectors per source for 4 rows and 1 for 1-3."""
    fast = [k for k in cpu_kernels() if k in ("gfni", "avx512")]
    if not fast or "avx2" not in cpu_kernels():
        pytest.skip("needs the AVX-512 and AVX2 kernels")
    k = 4
    matrix = torch.randint(0, 256, (rows, k), dtype=torch.uint8)
    blocks = torch.randint(0, 256, (k, length), dtype=torch.uint8)
    expected = gf256_matmul_cpu(matrix, blocks, torch.empty(rows, length, dtype=torch.uint8), kernel="avx2")
    head = reference_gf256_matmul(matrix, blocks[:, :4096])
    assert torch.equal(expected[:, :4096], head)
    for kernel in fast:
        out = gf256_matmul_cpu(matrix, blocks, torch.empty(rows, length, dtype=torch.uint8), kernel=kernel)
        assert torch.equal(out, expected), kernel


@pytest.mark.parametrize("kernel", cpu_kernels())
def test_plan_reruns_on_its_buffers(kernel):
    """Gf256Plan (behind RSCodec.bind_encode / bind_decode) keeps its pointers and a copy of the
    matrix: after the sources change, a call recomputes from the new contents; changing the
    caller's matrix afterwards changes nothing."""
    rows, k, length = 7, 5, 3000 + 17
    matrix = torch.randint(0, 256, (rows, k), dtype=torch.uint8)
    blocks = torch.randint(0, 256, (k, length), dtype=torch.uint8)
    out = torch.zeros(rows, length, dtype=torch.uint8)
    src = [blocks[j].data_ptr() for j in range(k)]
    dst = [out[r].data_ptr() for r in range(rows)]
    plan = C.Gf256Plan(matrix.data_ptr(), rows, k, src, dst, length, kernel)
    assert plan.kernel == kernel
    expected_matrix = matrix.clone()
    plan(1)
    assert torch.equal(out, reference_gf256_matmul(expected_matrix, blocks))
    blocks.random_(0, 256)
    matrix.zero_()
    plan(2)
    assert torch.equal(out, reference_gf256_matmul(expected_matrix, blocks))


def test_plan_bad_inputs():
    matrix = torch.ones(2, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="k source pointers"):
        C.Gf256Plan(matrix.data_ptr(), 2, 3, [0, 0], [0, 0], 16)
    with pytest.raises(ValueError, match="rows output pointers"):
        C.Gf256Plan(matrix.data_ptr(), 2, 3, [0, 0, 0], [0], 16)
    with pytest.raises(ValueError, match=">= 0"):
        C.Gf256Plan(matrix.data_ptr(), 2, 3, [0, 0, 0], [0, 0], -1)
    with pytest.raises(ValueError, match="unknown gf256 kernel"):
        C.Gf256Plan(matrix.data_ptr(), 2, 3, [0, 0, 0], [0, 0], 16, "sse9")
