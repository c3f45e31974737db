"""osmos.ops.similarity_topk: every backend against the brute-force reference."""

import importlib
import math

import numpy as np
import pytest
import torch

from osmos import _native
from osmos.ops import similarity_topk
from osmos.ops.similarity_topk import (
    FUSED_MAX_QUERIES,
    _similarity_topk_op,
    reference_similarity_topk,
    similarity_topk_cpu,
    similarity_topk_torch,
)
from conftest import triton_available

op_module = importlib.import_module("osmos.ops.similarity_topk")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
needs_c = pytest.mark.skipif(not _native.has_cpu_kernel("similarity_select"), reason="osmos._C not built")


def integer_data(q, n, d, dtype=torch.float32):
    """Small-integer vectors: every backend's float32 dot products are exact, so results
    (ties included) must agree bit for bit."""
    return torch.randint(-3, 4, (q, d)).float(), torch.randint(-3, 4, (n, d)).to(dtype)


def assert_same(got, want):
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.int64
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    assert torch.equal(got[1], want[1])


@pytest.fixture(params=["scalar", "avx512"])
def isa(request):
    if request.param == "avx512" and _native.C is not None and _native.C.detected_isa() != "avx512":
        pytest.skip("CPU has no AVX-512")
    if _native.C is not None:
        _native.C.set_cpu_isa(request.param)
    yield request.param
    if _native.C is not None:
        _native.C.set_cpu_isa("avx512")


@needs_c
@pytest.mark.parametrize("nq", [1, 5, FUSED_MAX_QUERIES + 9])  # fused path and BLAS path
@pytest.mark.parametrize("n", [1, 17, 333])
@pytest.mark.parametrize("k", [1, 4, 500])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_exact_with_ties(isa, nq, n, k, dtype):
    q, db = integer_data(nq, n, 37, dtype)  # many equal scores: ties go to the lower index
    assert_same(similarity_topk(q, db, k), reference_similarity_topk(q, db, k))
    assert_same(similarity_topk(q, db, k, threshold=3.0), reference_similarity_topk(q, db, k, 3.0))


@needs_c
@pytest.mark.parametrize("nq", [2, 50])
def test_cpu_random_normalised_matches_brute_force(nq):
    q = torch.nn.functional.normalize(torch.randn(nq, 64), dim=1)
    db = torch.nn.functional.normalize(torch.randn(2000, 64), dim=1)
    s, i = similarity_topk(q, db, 10)
    full = q @ db.T
    torch.testing.assert_close(s, torch.gather(full, 1, i), rtol=0, atol=1e-5)
    want = torch.topk(full, 10, dim=1)
    torch.testing.assert_close(s, want.values, rtol=0, atol=1e-5)
    # Indices agree except where two scores are within rounding of each other.
    gaps = (want.values[:, :-1] - want.values[:, 1:]).abs().min()
    if gaps > 1e-5:
        assert torch.equal(i, want.indices)


@needs_c
def test_threads_and_chunks_agree(monkeypatch):
    q, db = integer_data(70, 5000, 16)
    want = reference_similarity_topk(q, db, 7)
    for threads in (1, 2):
        monkeypatch.setattr(op_module, "num_threads", lambda t=threads: t)
        monkeypatch.setattr(op_module, "SCORE_BLOCK_BYTES", 70 * 4 * 300)
        assert_same(similarity_topk_cpu(q, db, 7, None), want)
        assert_same(similarity_topk_cpu(q[:3], db, 7, None), reference_similarity_topk(q[:3], db, 7))


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_torch_streaming(chunk):
    q, db = integer_data(6, 50, 9)
    assert_same(similarity_topk_torch(q, db, 5, None, chunk=chunk), reference_similarity_topk(q, db, 5))
    assert_same(similarity_topk_torch(q, db, 60, 1.0, chunk=chunk), reference_similarity_topk(q, db, 60, 1.0))


@pytest.mark.parametrize("chunk", [16, 1000])
def test_torch_streaming_without_ties_takes_topk_candidates(chunk):
    g = torch.Generator().manual_seed(3)
    q, db = torch.randn(5, 24, generator=g), torch.randn(300, 24, generator=g)
    for k in (1, 3, 40):
        assert_same(similarity_topk_torch(q, db, k, None, chunk=chunk), reference_similarity_topk(q, db, k))


@pytest.mark.skipif(not triton_available(), reason="needs triton on a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("nq,n,k", [(1, 1, 1), (3, 130, 4), (17, 300, 10), (20, 40, 32)])
def test_triton_exact_with_ties(nq, n, k):
    from osmos.triton_kernels.similarity_topk import similarity_topk as triton_topk

    q, db = integer_data(nq, n, 37)
    assert_same(triton_topk(q, db, k), reference_similarity_topk(q, db, k))
    assert_same(triton_topk(q, db.half(), k, 2.0), reference_similarity_topk(q, db.half(), k, 2.0))


@pytest.mark.skipif(not triton_available(), reason="needs triton on a GPU or TRITON_INTERPRET=1")
def test_triton_through_the_op(monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setenv("OSMOS_CPU_BACKEND", "triton")
    q, db = integer_data(2, 70, 8)
    assert_same(similarity_topk(q, db, 3), reference_similarity_topk(q, db, 3))


def test_k_larger_than_database_truncates():
    q, db = integer_data(3, 4, 8)
    s, i = similarity_topk(q, db, 10)
    assert s.shape == i.shape == (3, 4)
    assert torch.equal(i.sort(dim=1).values, torch.arange(4).expand(3, 4))


def test_empty_database_and_empty_queries():
    s, i = similarity_topk(torch.randn(3, 8), torch.empty(0, 8), 5)
    assert s.shape == i.shape == (3, 0)
    s, i = similarity_topk(torch.empty(0, 8), torch.randn(4, 8), 2)
    assert s.shape == i.shape == (0, 2)
    s, i = similarity_topk(torch.randn(2, 8), torch.randn(4, 8), 0)
    assert s.shape == (2, 0)


def test_threshold_pads_with_minus_inf_and_minus_one():
    q = torch.tensor([[1.0, 0.0]])
    db = torch.tensor([[0.2, 0.0], [0.9, 0.0], [0.5, 0.0], [0.7, 0.0]])
    s, i = similarity_topk(q, db, 3, threshold=0.6)
    assert i.tolist() == [[1, 3, -1]]
    assert s[0, :2].tolist() == pytest.approx([0.9, 0.7]) and s[0, 2] == -math.inf


@pytest.mark.parametrize("nq", [1, FUSED_MAX_QUERIES + 1])
def test_nan_rejected(nq):
    db = torch.randn(100, 8)
    with pytest.raises(ValueError, match="queries contain NaN"):
        similarity_topk(torch.full((nq, 8), math.nan), db, 2)
    db[57, 3] = math.nan
    with pytest.raises(ValueError, match="database contains NaN"):
        similarity_topk(torch.randn(nq, 8), db, 2)
    with pytest.raises(ValueError, match="database contains NaN"):
        reference_similarity_topk(torch.randn(nq, 8), db, 2)


def test_bad_inputs_name_the_argument():
    q, db = torch.randn(2, 8), torch.randn(5, 8)
    with pytest.raises(TypeError, match="queries"):
        similarity_topk(q.double(), db, 1)
    with pytest.raises(TypeError, match="database"):
        similarity_topk(q, db.int(), 1)
    with pytest.raises(TypeError, match="database"):
        similarity_topk(q, [[1.0] * 8], 1)
    with pytest.raises(ValueError, match="dimension"):
        similarity_topk(q, torch.randn(5, 7), 1)
    with pytest.raises(ValueError, match="queries must be 2-D"):
        similarity_topk(q[0], db, 1)
    with pytest.raises(ValueError, match="k"):
        similarity_topk(q, db, -1)
    with pytest.raises(TypeError, match="k"):
        similarity_topk(q, db, 1.5)
    with pytest.raises(ValueError, match="threshold"):
        similarity_topk(q, db, 1, threshold=math.nan)
    with pytest.raises(ValueError, match="contiguous"):
        similarity_topk(q, torch.randn(8, 5).T, 1)
    with pytest.raises(TypeError, match="float32 or float16"):
        similarity_topk(q, np.zeros((5, 8), dtype=np.float64), 1)


@needs_c
@pytest.mark.parametrize("nq", [3, FUSED_MAX_QUERIES + 3])
def test_numpy_memmap_database(tmp_path, nq):
    q, db = integer_data(nq, 1000, 24)
    mm = np.lib.format.open_memmap(tmp_path / "db.npy", mode="w+", dtype=np.float16, shape=(1000, 24))
    mm[:] = db.numpy()
    mm.flush()
    ro = np.load(tmp_path / "db.npy", mmap_mode="r")
    assert_same(similarity_topk(q, ro, 6), reference_similarity_topk(q, db, 6))


def test_opcheck():
    q, db = torch.randn(5, 16), torch.randn(40, 16)
    torch.library.opcheck(_similarity_topk_op, (q, db, 3, None))
    torch.library.opcheck(_similarity_topk_op, (q, db.half(), 50, 0.1))
    torch.library.opcheck(_similarity_topk_op, (q.repeat(10, 1), db, 2, None))


def test_torch_compile_fullgraph():
    q, db = integer_data(4, 60, 16)

    @torch.compile(fullgraph=True)
    def search(q, db):
        s, i = similarity_topk(q, db, 5)
        return s * 2, i

    s, i = search(q, db)
    want = reference_similarity_topk(q, db, 5)
    assert torch.equal(i, want[1]) and torch.equal(s, want[0] * 2)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_backends(monkeypatch, backend):
    monkeypatch.setenv("OSMOS_GPU_BACKEND", backend)
    q, db = integer_data(40, 3000, 64)
    want = reference_similarity_topk(q, db, 10)
    got = similarity_topk(q.cuda(), db.cuda(), 10)
    assert_same((got[0].cpu(), got[1].cpu()), want)


@pytest.mark.parametrize("chunk", [16, 1000])
def test_torch_streaming_checks_once_and_rejects_nan(monkeypatch, chunk):
    """The torch path (the CUDA default) reads its NaN / tie checks back once: data without ties
    never takes the per-chunk checked path; NaN queries and NaN database rows are still named."""
    g = torch.Generator().manual_seed(5)
    q, db = torch.randn(4, 16, generator=g), torch.randn(100, 16, generator=g)

    def fail(*args):
        raise AssertionError("took the checked path without a tie")

    with monkeypatch.context() as m:
        m.setattr(op_module, "_similarity_topk_torch_checked", fail)
        assert_same(similarity_topk_torch(q, db, 5, None, chunk=chunk), reference_similarity_topk(q, db, 5))
    q_nan = q.clone()
    q_nan[2, 1] = math.nan
    with pytest.raises(ValueError, match="queries contain NaN"):
        similarity_topk_torch(q_nan, db, 5, None, chunk=chunk)
    db[57, 3] = math.nan
    first = 57 // chunk * chunk
    with pytest.raises(ValueError, match=rf"database rows \[{first}, {min(100, first + chunk)}\)"):
        similarity_topk_torch(q, db, 5, None, chunk=chunk)
    with pytest.raises(ValueError, match="queries contain NaN"):
        similarity_topk_torch(q_nan, db[:0], 5, None, chunk=chunk)
