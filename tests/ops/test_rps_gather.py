"""osmos::rps_gather / rps_scatter and the RPS mappings: every backend against the torch reference."""


import pytest
import torch

from osmos import _native
from osmos.ops import rps_gather, rps_indices, rps_scatter
from osmos.ops._common import dtype_code
from osmos.ops.rps_gather import reference_rps_gather, reference_rps_scatter
from osmos.ops.rps_mapping import LayerMap

from conftest import triton_available

KINDS = ["stable", "roast", "hashednet"]
# (rows, cols, m, offset): odd sizes, m smaller than a ROAST tile, offsets past 2^31.
SHAPES = [(7, 13, 50, 3), (33, 17, 1000, 0), (5, 300, 64, 12345678901), (16, 16, 3, 0), (1, 1, 1, 0), (9, 40, 360, 7)]
TRITON = triton_available()
needs_native = pytest.mark.skipif(not _native.has_cpu_kernel("rps_gather"), reason="osmos._C not built")


def _map(kind, rows, cols, m, offset, **kw):
    return LayerMap(kind, m, offset, rows, cols, seed=kw.pop("seed", 3), layer=2, tile=(4, 8), **kw).config()


def _backends():
    out = ["torch"]
    if _native.has_cpu_kernel("rps_indices"):
        out.append("native")
    if TRITON:
        out.append("triton")
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("use_sign", [True, False])
def test_indices_identical_across_backends(kind, shape, use_sign):
    rows, cols, m, offset = shape
    config = _map(kind, rows, cols, m, offset, use_sign=use_sign)
    ref_index, ref_sign = rps_indices(config, rows, cols, backend="torch")
    assert int(ref_index.min()) >= 0 and int(ref_index.max()) < m
    assert set(ref_sign.unique().tolist()) <= {-1, 1}
    for backend in _backends()[1:]:
        index, sign = rps_indices(config, rows, cols, backend=backend)
        assert torch.equal(index, ref_index), backend
        assert torch.equal(sign, ref_sign), backend


def test_stable_is_bijection_at_1x_and_balanced_otherwise():
    layers = [(30, 7), (11, 13), (64, 5)]  # a model of three layers: 210 + 143 + 320 = 673 weights
    n = sum(r * c for r, c in layers)
    for m in [n, n - 1, n // 2, 97, 64, 10, 1]:
        counts = torch.zeros(m, dtype=torch.int64)
        offset = 0
        for layer, (r, c) in enumerate(layers):
            index, _ = rps_indices(LayerMap("stable", m, offset, r, c, seed=11, layer=layer).config(), r, c)
            counts += torch.bincount(index.reshape(-1), minlength=m)
            offset += r * c
        assert int(counts.min()) == n // m and int(counts.max()) == -(-n // m), m
        if m == n:
            assert torch.equal(counts, torch.ones(n, dtype=torch.int64))


def test_roast_tiles_are_contiguous_runs():
    rows, cols, m = 12, 24, 500
    index, _ = rps_indices(LayerMap("roast", m, 0, rows, cols, tile=(4, 8)).config(), rows, cols, backend="torch")
    tile = index[4:8, 8:16].reshape(-1)
    assert torch.equal(tile - tile[0], torch.arange(32))


def test_seed_changes_mapping():
    a, _ = rps_indices(_map("hashednet", 8, 8, 1000, 0, seed=1), 8, 8)
    b, _ = rps_indices(_map("hashednet", 8, 8, 1000, 0, seed=2), 8, 8)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_gather_and_scatter_match_reference(kind, shape, dtype):
    rows, cols, m, offset = shape
    config = _map(kind, rows, cols, m, offset)
    M = torch.randn(m, dtype=dtype)
    assert torch.equal(rps_gather(M, config, rows, cols, 0.37), reference_rps_gather(M, config, rows, cols, 0.37))
    g = torch.randn(rows, cols, dtype=dtype)
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(rps_scatter(g, config, 0.37), reference_rps_scatter(g, config, rows, cols, 0.37),
                               atol=tol, rtol=tol)


@needs_native
@pytest.mark.skipif(_native.C is None or _native.C.detected_isa() != "avx512", reason="needs an AVX-512 CPU")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("use_sign", [True, False])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_avx512_is_bitwise_the_scalar_path(kind, use_sign, threads, monkeypatch):
    """The AVX-512 gather / scatter (float32; HashedNet: hashing kernels, STABLE-RPS / ROAST: run
    kernels) against the scalar kernels and the reference, with offsets that start mid-group of
    16, sizes with tails, and M smaller and larger than W."""
    import importlib
    import os

    monkeypatch.setattr(importlib.import_module("osmos.ops.rps_gather"), "num_threads", lambda: threads)
    # The last two cross global index P = 2^31 - 1 and 2P inside the layer (the hash's argument wraps).
    prime = 2**31 - 1
    for rows, cols, m, offset in [(37, 29, 101, 5), (64, 64, 5000, 16), (3, 7, 2, 12345678901), (128, 40, 640, 9),
                                  (20, 33, 777, prime - 301), (9, 100, 4096, 2 * prime - 450)]:
        config = _map(kind, rows, cols, m, offset, use_sign=use_sign)
        M, g = torch.randn(m), torch.randn(rows, cols)
        results = {}
        for isa in ("scalar", "avx512"):
            _native.C.set_cpu_isa(isa)
            try:
                results[isa] = (rps_gather(M, config, rows, cols, 0.37), rps_scatter(g, config, 0.37))
            finally:
                _native.C.set_cpu_isa(os.environ.get("OSMOS_CPU_ISA") or "avx512")
        assert torch.equal(results["avx512"][0], results["scalar"][0])
        assert torch.equal(results["avx512"][1], results["scalar"][1])
        assert torch.equal(results["avx512"][0], reference_rps_gather(M, config, rows, cols, 0.37))
        torch.testing.assert_close(results["avx512"][1], reference_rps_scatter(g, config, rows, cols, 0.37),
                                   atol=1e-5, rtol=1e-5)


@needs_native
@pytest.mark.skipif(_native.C is None or _native.C.detected_isa() != "avx512", reason="needs an AVX-512 CPU")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tile", [(16, 16), (3, 40)])
def test_avx512_large_gather_scatter_are_bitwise_the_scalar_path(kind, tile, monkeypatch):
    """Gathers of W >= 1 MiB, where the AVX-512 kernels write W with non-temporal stores (ROAST:
    row by row, one copy per tile run), and the scatters of the same shapes (ROAST: row by row
    into each thread's slice of M): bit for bit the scalar path (and the gather the reference)
    for 1, 2 and 3 threads, with the default 16 x 16 tiles and with tiles 40 wide (two full
    vectors and a masked tail per run, rows ending inside a tile), offsets starting mid-group of
    16 and rows that are not a multiple of 16 long; M smaller than a tile takes the wrapping run
    walker."""
    import importlib
    import os

    module = importlib.import_module("osmos.ops.rps_gather")
    for rows, cols, m, offset in [(300, 1000, 37501, 0), (257, 1021, 9000, 7), (200, 1400, 100, 3)]:
        config = LayerMap(kind, m, offset, rows, cols, seed=5, layer=1, tile=tile).config()
        M, g = torch.randn(m), torch.randn(rows, cols)
        ref = reference_rps_gather(M, config, rows, cols, 0.37)
        scatters = []
        for isa in ("scalar", "avx512"):
            _native.C.set_cpu_isa(isa)
            try:
                for threads in (1, 2, 3):
                    monkeypatch.setattr(module, "num_threads", lambda: threads)
                    assert torch.equal(rps_gather(M, config, rows, cols, 0.37), ref), (isa, threads, rows, cols, m)
                    scatters.append(rps_scatter(g, config, 0.37))
            finally:
                _native.C.set_cpu_isa(os.environ.get("OSMOS_CPU_ISA") or "avx512")
        assert all(torch.equal(s, scatters[0]) for s in scatters[1:]), (rows, cols, m)
        torch.testing.assert_close(scatters[0], reference_rps_scatter(g, config, rows, cols, 0.37), atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(not TRITON, reason="needs triton >= 3.7 and TRITON_INTERPRET=1 or a GPU")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_triton_gather_scatter_match_reference(kind, dtype):
    from osmos.triton_kernels import rps_gather as tk

    rows, cols, m = 9, 40, 123
    config = _map(kind, rows, cols, m, 5)
    M = torch.randn(m, dtype=dtype)
    W, ref = tk.rps_gather(M, config, rows, cols, 0.37), reference_rps_gather(M, config, rows, cols, 0.37)
    if dtype == torch.bfloat16:  # the interpreter rounds float32 -> bfloat16 by truncation
        torch.testing.assert_close(W, ref, atol=0, rtol=2**-7)
    else:
        assert torch.equal(W, ref)
    g = torch.randn(rows, cols, dtype=dtype)
    torch.testing.assert_close(tk.rps_scatter(g, config, rows, cols, 0.37).float(),
                               reference_rps_scatter(g, config, rows, cols, 0.37).float(), atol=5e-2, rtol=5e-2)


@needs_native
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_scatter_bitwise_reproducible_across_thread_counts(kind):
    rows, cols, m = 64, 257, 3001
    config = _map(kind, rows, cols, m, 0)
    g = torch.randn(rows, cols)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = rps_scatter(g, config, 0.1)
        torch.set_num_threads(2)
        two = rps_scatter(g, config, 0.1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    # Sequential element order: equal to the reference's in-order index_add_ on one thread.
    assert torch.equal(one, reference_rps_scatter(g, config, rows, cols, 0.1))
    # The kernel writes every entry of its output (the op passes torch.empty): stale values vanish.
    for threads in (1, 2):
        acc = torch.full((m,), float("nan"))
        _native.C.rps_scatter(g.data_ptr(), dtype_code(g), acc.data_ptr(), list(config), rows, cols, 0.1, threads)
        assert torch.equal(acc, one), threads


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hashednet_scatter_rounds_bitwise_across_threads_and_isas(dtype, monkeypatch):
    """The HashedNet scatter buckets (index, value) pairs per slice of M in rounds of 2^19
    elements: 600000 elements take two rounds. Every thread count and ISA path must give the
    reference's sequential index_add_ bit for bit (each slot summed in element order)."""
    import importlib
    import os

    rows, cols, m = 300, 2000, 60001
    config = _map("hashednet", rows, cols, m, 7)
    g = torch.randn(rows, cols, dtype=dtype)
    ref = reference_rps_scatter(g, config, rows, cols, 0.37)
    module = importlib.import_module("osmos.ops.rps_gather")
    isas = ["scalar"] + (["avx512"] if _native.C.detected_isa() == "avx512" else [])
    for isa in isas:
        _native.C.set_cpu_isa(isa)
        try:
            for threads in (1, 2, 3):
                monkeypatch.setattr(module, "num_threads", lambda: threads)
                assert torch.equal(rps_scatter(g, config, 0.37), ref), (isa, threads)
        finally:
            _native.C.set_cpu_isa(os.environ.get("OSMOS_CPU_ISA") or _native.C.detected_isa())


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    rows, cols, m = 5, 7, 13
    config = _map(kind, rows, cols, m, 2)
    M = torch.randn(m, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda M: rps_gather(M, config, rows, cols, 0.7), (M,))
    assert torch.autograd.gradgradcheck(lambda M: rps_gather(M, config, rows, cols, 0.7), (M,))


def test_gradient_matches_autograd_through_reference():
    rows, cols, m = 6, 11, 20
    config = _map("roast", rows, cols, m, 0)
    M = torch.randn(m, requires_grad=True)
    M_ref = M.detach().clone().requires_grad_(True)
    g = torch.randn(rows, cols)
    (rps_gather(M, config, rows, cols, 0.5) * g).sum().backward()
    (reference_rps_gather(M_ref, config, rows, cols, 0.5) * g).sum().backward()
    torch.testing.assert_close(M.grad, M_ref.grad)


def test_opcheck():
    rows, cols, m = 5, 9, 17
    config = _map("stable", rows, cols, m, 1)
    M = torch.randn(m, requires_grad=True)
    torch.library.opcheck(torch.ops.osmos.rps_gather.default, (M, config, rows, cols, 0.5, False))
    torch.library.opcheck(torch.ops.osmos.rps_scatter.default, (torch.randn(rows, cols), config, rows, cols, 0.5, False))


def test_torch_compile_fullgraph():
    rows, cols, m = 8, 12, 30
    config = _map("stable", rows, cols, m, 0)
    M = torch.randn(m, requires_grad=True)
    x = torch.randn(3, cols)

    def f(M, x):
        return (x @ rps_gather(M, config, rows, cols, 0.5).t()).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    loss = compiled(M, x)
    (grad,) = torch.autograd.grad(loss, M)
    ref_loss = f(M, x)
    (ref_grad,) = torch.autograd.grad(ref_loss, M)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


def test_bad_input():
    config = _map("stable", 4, 4, 10, 0)
    with pytest.raises(TypeError, match="M"):
        rps_gather(torch.zeros(10, dtype=torch.int32), config, 4, 4)
    with pytest.raises(ValueError, match="M must have"):
        rps_gather(torch.zeros(11), config, 4, 4)
    with pytest.raises(ValueError, match="cols"):
        rps_gather(torch.zeros(10), config, 4, 5)
    with pytest.raises(ValueError, match="config"):
        rps_gather(torch.zeros(10), config[:5], 4, 4)
    with pytest.raises(ValueError, match="mapper"):
        LayerMap("bogus", 10, 0, 4, 4).config()
    with pytest.raises(ValueError, match="M must be 1-D"):
        rps_gather(torch.zeros(2, 5), config, 4, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_matches_cpu(backend, kind, monkeypatch):
    monkeypatch.setenv("OSMOS_GPU_BACKEND", backend)
    rows, cols, m, offset = 129, 300, 5001, 2**33 + 5
    config = _map(kind, rows, cols, m, offset)
    index, sign = rps_indices(config, rows, cols, device="cuda")
    ref_index, ref_sign = rps_indices(config, rows, cols)
    assert torch.equal(index.cpu(), ref_index) and torch.equal(sign.cpu(), ref_sign)
    M = torch.randn(m)
    assert torch.equal(rps_gather(M.cuda(), config, rows, cols, 0.37).cpu(), rps_gather(M, config, rows, cols, 0.37))
    g = torch.randn(rows, cols)
    cpu = rps_scatter(g, config, 0.37)
    torch.testing.assert_close(rps_scatter(g.cuda(), config, 0.37).cpu(), cpu, atol=1e-5, rtol=1e-5)
    if backend == "cuda":  # sort-and-reduce sums in element order, like the CPU kernel: bitwise equal
        assert torch.equal(rps_scatter(g.cuda(), config, 0.37, deterministic=True).cpu(), cpu)


@pytest.mark.gpu
@pytest.mark.parametrize("walk", ["1", "0"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES + [(70, 33, 31, 2**33 + 5), (3, 1000, 100000, 17)])
def test_cuda_walk_kernels_match_cpu(walk, kind, shape, monkeypatch):
    # both CUDA gather / atomic scatter kernels (warp-chunk walk, and one thread per element) on
    # odd shapes, m smaller than a warp's chunk, rows shorter than a warp, every dtype
    monkeypatch.setenv("OSMOS_GPU_BACKEND", "cuda")
    monkeypatch.setenv("OSMOS_RPS_CUDA_WALK", walk)
    rows, cols, m, offset = shape
    config = _map(kind, rows, cols, m, offset, use_sign=shape[0] % 2 == 1)
    index, sign = rps_indices(config, rows, cols, device="cuda")  # the tables always walk
    ref_index, ref_sign = rps_indices(config, rows, cols)
    assert torch.equal(index.cpu(), ref_index) and torch.equal(sign.cpu(), ref_sign)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        M = torch.randn(m, dtype=torch.float64).to(dtype)
        assert torch.equal(rps_gather(M.cuda(), config, rows, cols, 0.37).cpu(), rps_gather(M, config, rows, cols, 0.37))
    g = torch.randn(rows, cols, dtype=torch.float64)
    torch.testing.assert_close(rps_scatter(g.cuda(), config, 0.37).cpu(), rps_scatter(g, config, 0.37))
