"""osmos.ops.topk_compress on every backend, bit for bit against reference_topk_compress.

Backends: the C++ kernel on each CPU ISA path, Triton (under TRITON_INTERPRET=1 on the CPU, or
on a GPU), and on a GPU the CUDA kernel. Values, indices and the updated state must all match
the reference exactly; NaN values match as NaN-ness (torch's own NaN payloads vary by path).
"""

import os

import pytest
import torch

from osmos import _native
from osmos.ops import topk_accumulate_, topk_compress, topk_decompress
from osmos.ops.topk_compress import (_topk_accumulate_op, _topk_compress_op, reference_topk_accumulate_,
                                     reference_topk_compress)
from tests.conftest import triton_available

DTYPE_PAIRS = [  # (x dtype, state dtype)
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float32),
]
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def assert_same(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    got, want = got.cpu(), want.cpu()
    if got.is_floating_point():
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(got), nan), f"{what}: NaN positions differ"
        got, want = got.view(INT_VIEW[got.dtype])[~nan], want.view(INT_VIEW[want.dtype])[~nan]
    bad = (got != want).nonzero().flatten()
    assert bad.numel() == 0, f"{what}: {bad.numel()} mismatches from position {bad[:1].tolist()}"


def run_and_compare(kernel, x: torch.Tensor, state: torch.Tensor, k: int) -> None:
    """kernel(x, state, k) must equal the reference in values, indices and updated state."""
    state_ref, state_got = state.clone(), state.clone()
    values_ref, indices_ref = reference_topk_compress(x, state_ref, k)
    values, indices = kernel(x, state_got, k)
    assert_same(indices, indices_ref, "indices")
    assert_same(values, values_ref, "values")
    assert_same(state_got, state_ref, "state")


# ---- inputs ------------------------------------------------------------------------------------

def make_inputs(kind: str, n: int, x_dtype, state_dtype, device="cpu"):
    g = torch.Generator().manual_seed(n * 31 + len(kind))
    if kind == "random":
        x, s = torch.randn(n, generator=g), torch.randn(n, generator=g) * 0.5
    elif kind == "all_equal":
        x, s = torch.full((n,), 0.75), torch.zeros(n)
    elif kind == "many_ties":  # |d| takes 4 values: nearly every rank is a tie
        x, s = torch.randint(-2, 2, (n,), generator=g).float(), torch.zeros(n)
    elif kind == "specials":  # NaN, +-inf, +-0, subnormals among normal values
        x, s = torch.randn(n, generator=g), torch.zeros(n)
        pick = torch.randint(0, 8, (n,), generator=g)
        for code, value in enumerate([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -1e-42]):
            x[pick == code] = value
        s[torch.randint(0, max(n, 1), (n // 16,), generator=g)] = float("nan")
    elif kind == "clustered":  # the large entries all sit in the last tenth (one thread's chunk)
        x, s = torch.randn(n, generator=g) * 1e-3, torch.zeros(n)
        x[-(n // 10 + 1):] *= 1e3
    elif kind == "sample_adversarial":  # big values exactly where a strided sample looks
        x, s = torch.randn(n, generator=g) * 1e-3, torch.zeros(n)
        x[8::16] = 100.0 + torch.rand(x[8::16].shape, generator=g)
    else:
        raise ValueError(kind)
    return x.to(x_dtype).to(device), s.to(state_dtype).to(device)


def k_values(n: int) -> list[int]:
    return sorted({0, min(1, n), n // 1000, n // 100, n // 10, n // 4, n // 2, max(n - 1, 0), n})


# ---- backends ------------------------------------------------------------------------------------

@pytest.fixture
def cpu_isa():
    """Forces a CPU ISA path for one test; restores the default limit afterwards."""
    if not _native.has_cpu_kernel("topk_compress"):
        pytest.skip("osmos._C not built")
    yield _native.C.set_cpu_isa
    _native.C.set_cpu_isa(os.environ.get("OSMOS_CPU_ISA") or "avx512")


def isa_paths() -> list[str]:
    """The candidate pass has a scalar and an AVX-512 version (the avx2 level uses scalar)."""
    if _native.C is not None and _native.C.detected_isa() == "avx512":
        return ["scalar", "avx512"]
    return ["scalar"]


def cpu_kernel(x, state, k):
    return topk_compress(x, state, k)


CPU_KINDS = ["random", "all_equal", "many_ties", "specials", "clustered", "sample_adversarial"]


@pytest.mark.parametrize("x_dtype,state_dtype", DTYPE_PAIRS)
@pytest.mark.parametrize("kind", CPU_KINDS)
def test_cpu_small_sizes(cpu_isa, x_dtype, state_dtype, kind):
    """Sizes below the sampling threshold: the direct radix select, every k."""
    for n in (0, 1, 15, 17, 1000):
        x, s = make_inputs(kind, n, x_dtype, state_dtype)
        for k in k_values(n):
            run_and_compare(cpu_kernel, x, s, k)


@pytest.mark.parametrize("isa", isa_paths())
@pytest.mark.parametrize("x_dtype,state_dtype", DTYPE_PAIRS)
@pytest.mark.parametrize("kind", CPU_KINDS)
def test_cpu_candidate_pass(cpu_isa, isa, x_dtype, state_dtype, kind):
    """Large enough for the sampled candidate pass of this ISA path (all_equal, clustered and
    sample_adversarial drive it into its overflow / too-few-candidates fallbacks)."""
    cpu_isa(isa)
    n = 70_001
    x, s = make_inputs(kind, n, x_dtype, state_dtype)
    for k in (1, n // 1000, n // 50, n // 4):
        run_and_compare(cpu_kernel, x, s, k)


def test_cpu_k_equals_n_large(cpu_isa):
    x, s = make_inputs("specials", 70_001, torch.bfloat16, torch.float32)
    run_and_compare(cpu_kernel, x, s, 70_001)


@pytest.mark.parametrize("threads", [1, 3])
def test_cpu_thread_counts_agree(cpu_isa, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for kind in ("random", "clustered", "many_ties"):
            x, s = make_inputs(kind, 200_001, torch.float32, torch.float32)
            run_and_compare(cpu_kernel, x, s, 2_000)
    finally:
        torch.set_num_threads(before)


def test_cpu_multidimensional_input(cpu_isa):
    x, s = make_inputs("random", 6 * 7 * 1001, torch.float32, torch.float32)
    run_and_compare(cpu_kernel, x.view(6, 7, 1001), s.view(6, 7, 1001), 500)


needs_triton = pytest.mark.skipif(not triton_available(), reason="needs triton with a GPU or TRITON_INTERPRET=1")


@needs_triton
@pytest.mark.parametrize("x_dtype,state_dtype", DTYPE_PAIRS)
@pytest.mark.parametrize("kind", ["random", "all_equal", "many_ties", "specials"])
def test_triton_matches_reference(x_dtype, state_dtype, kind):
    from osmos.triton_kernels.topk_compress import topk_compress as triton_kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for n in (0, 1, 17, 2_500):  # 2_500: three blocks of 1024, the last partial
        x, s = make_inputs(kind, n, x_dtype, state_dtype, device)
        for k in sorted({0, min(1, n), n // 100, n // 3, max(n - 1, 0), n}):
            run_and_compare(triton_kernel, x, s, k)


@needs_triton
def test_op_routes_to_triton_on_cpu_when_asked(monkeypatch):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the CPU op uses Triton only under TRITON_INTERPRET=1")
    monkeypatch.setenv("OSMOS_CPU_BACKEND", "triton")
    x, s = make_inputs("random", 1_500, torch.float16, torch.float32)
    run_and_compare(topk_compress, x, s, 40)


# ---- GPU (run by scripts/gpu_check.sh) ----------------------------------------------------------

def cuda_kernel(x, state, k):
    from osmos.ops.topk_compress import topk_compress_cuda_native

    return topk_compress_cuda_native(x, state, k)


@pytest.mark.gpu
@pytest.mark.skipif(not _native.has_cuda_kernel("topk_compress"), reason="osmos._cuda not built")
@pytest.mark.parametrize("x_dtype,state_dtype", DTYPE_PAIRS)
@pytest.mark.parametrize("kind", CPU_KINDS)
def test_cuda_matches_reference(x_dtype, state_dtype, kind):
    for n in (0, 1, 17, 4_095, 4_096, 4_097, 1_000_003):
        x, s = make_inputs(kind, n, x_dtype, state_dtype, "cuda")
        for k in k_values(n):
            run_and_compare(cuda_kernel, x, s, k)


@pytest.mark.gpu
@pytest.mark.skipif(not _native.has_cuda_kernel("topk_compress"), reason="osmos._cuda not built")
def test_cuda_large_and_op_dispatch(monkeypatch):
    x, s = make_inputs("random", 20_000_001, torch.float32, torch.float32, "cuda")
    run_and_compare(cuda_kernel, x, s, 200_000)
    monkeypatch.setenv("OSMOS_GPU_BACKEND", "cuda")
    run_and_compare(topk_compress, x, s, 12_345)
    torch.library.opcheck(_topk_compress_op, (x[:10_000], s[:10_000].clone(), 100))


@pytest.mark.gpu
@pytest.mark.skipif(not _native.has_cuda_kernel("topk_compress"), reason="osmos._cuda not built")
@pytest.mark.parametrize("algo", ["radix", "sampled"])
@pytest.mark.parametrize("x_dtype,state_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32)])
def test_cuda_algorithms_match_reference(algo, x_dtype, state_dtype):
    """Both CUDA paths, forced, bit for bit; the sampled one also where its threshold fails
    (all_equal, many_ties: too many candidates; sample_adversarial, clustered: skewed samples)."""
    from osmos.ops.topk_compress import topk_compress_cuda_native

    for kind in CPU_KINDS:
        for n in (40_000, 1_000_003, 5_000_011):
            x, s = make_inputs(kind, n, x_dtype, state_dtype, "cuda")
            for k in (1, 7, n // 1000, n // 100, n // 20, n // 10, n // 4):
                run_and_compare(lambda x, s, k: topk_compress_cuda_native(x, s, k, algo=algo), x, s, k)


@pytest.mark.gpu
@pytest.mark.skipif(not _native.has_cuda_kernel("topk_compress"), reason="osmos._cuda not built")
def test_cuda_algo_is_validated():
    from osmos.ops.topk_compress import topk_compress_cuda_native

    x = torch.randn(10, device="cuda")
    with pytest.raises(ValueError, match="algo"):
        topk_compress_cuda_native(x, torch.zeros_like(x), 3, algo="fast")


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("x_dtype,state_dtype", DTYPE_PAIRS)
def test_triton_gpu_large(x_dtype, state_dtype):
    from osmos.triton_kernels.topk_compress import topk_compress as triton_kernel

    for kind in ("random", "specials", "many_ties"):
        x, s = make_inputs(kind, 3_000_017, x_dtype, state_dtype, "cuda")
        for k in (1, 3_000, 300_001):
            run_and_compare(triton_kernel, x, s, k)


# ---- the op layer ---------------------------------------------------------------------------------

def test_opcheck():
    for x_dtype, state_dtype in DTYPE_PAIRS:
        x, s = make_inputs("random", 5_000, x_dtype, state_dtype)
        torch.library.opcheck(_topk_compress_op, (x, s, 50))
    x, s = make_inputs("random", 0, torch.float32, torch.float32)
    torch.library.opcheck(_topk_compress_op, (x, s, 0))


def test_torch_compile_fullgraph():
    def ef21_step(x, state, k: int):
        values, indices = topk_compress(x, state, k)
        return topk_decompress(values * 2, indices, x.numel()), values.sum()

    compiled = torch.compile(ef21_step, fullgraph=True, backend="inductor")
    x, s = make_inputs("random", 10_000, torch.float32, torch.float32)
    s_eager, s_compiled = s.clone(), s.clone()
    dense_eager, total_eager = ef21_step(x, s_eager, 100)
    dense_compiled, total_compiled = compiled(x, s_compiled, 100)
    assert_same(dense_compiled, dense_eager, "decompressed")
    assert torch.allclose(total_compiled, total_eager)
    assert_same(s_compiled, s_eager, "state")


def test_bad_inputs_name_the_argument():
    x, s = torch.randn(10), torch.zeros(10)
    cases = [
        ((x.double(), s.double(), 1), TypeError, "x must have dtype"),
        ((x, s.half(), 1), TypeError, "state must have dtype"),
        ((x.half(), s.bfloat16(), 1), TypeError, "state must have dtype"),
        ((x.int(), s, 1), TypeError, "x must have dtype"),
        (([1.0], s, 1), TypeError, "x must be a torch.Tensor"),
        ((x, torch.zeros(11), 1), ValueError, "state must have the shape"),
        ((x, torch.zeros(10, device="meta"), 1), ValueError, "state must be on"),
        ((torch.randn(10, 2).t(), torch.zeros(2, 10), 1), ValueError, "x must be contiguous"),
        ((x, torch.zeros(20)[::2], 1), ValueError, "state must be contiguous"),
        ((x, s, -1), ValueError, "k must be in"),
        ((x, s, 11), ValueError, "k must be in"),
        ((x, s, 2.0), TypeError, "k must be an int"),
        ((x, s, True), TypeError, "k must be an int"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            topk_compress(*args)


def test_native_rejects_bad_arguments():
    if not _native.has_cpu_kernel("topk_compress"):
        pytest.skip("osmos._C not built")
    v, i = torch.empty(4), torch.empty(4, dtype=torch.int64)
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="k must be in"):
        _native.C.topk_compress(x.data_ptr(), 0, x.data_ptr(), 0, 4, 5, v.data_ptr(), i.data_ptr(), 1)
    with pytest.raises(ValueError, match="unsupported dtypes"):
        _native.C.topk_compress(x.data_ptr(), 0, x.data_ptr(), 1, 4, 2, v.data_ptr(), i.data_ptr(), 1)


# ---- receiver side -------------------------------------------------------------------------------

def test_topk_decompress_roundtrip():
    x, s = make_inputs("random", 1_000, torch.float32, torch.float32)
    values, indices = topk_compress(x, s.clone(), 37)
    dense = topk_decompress(values, indices, 1_000)
    expected = torch.zeros(1_000)
    expected[indices] = values
    assert torch.equal(dense, expected)
    assert dense.count_nonzero() == 37
    assert topk_decompress(values[:0], indices[:0], 5).tolist() == [0.0] * 5


def test_topk_accumulate_sums_workers_and_repeats():
    out = torch.ones(6)
    values = torch.tensor([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
    indices = torch.tensor([[0, 5], [5, 1], [0, 0]])
    topk_accumulate_(out, values, indices, alpha=0.5)
    assert out.tolist() == [1 + 0.5 + 50 + 100, 1 + 10, 1, 1, 1, 1 + 1 + 5]
    half_out = torch.zeros(3, dtype=torch.float16)
    topk_accumulate_(half_out, torch.tensor([1.5, 2.5]), torch.tensor([2, 2]))
    assert half_out.tolist() == [0.0, 0.0, 4.0]


def test_receiver_bad_inputs():
    with pytest.raises(ValueError, match="values and indices must have one shape"):
        topk_decompress(torch.ones(3), torch.zeros(2, dtype=torch.int64), 4)
    with pytest.raises(TypeError, match="indices must have dtype"):
        topk_decompress(torch.ones(2), torch.zeros(2, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="n must be in"):
        topk_decompress(torch.ones(2), torch.zeros(2, dtype=torch.int64), -1)
    with pytest.raises(ValueError, match="out must be 1-D"):
        topk_accumulate_(torch.zeros(2, 2), torch.ones(2), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="indices must have dtype"):
        topk_accumulate_(torch.zeros(4), torch.ones(2), torch.zeros(2, dtype=torch.int16))
    with pytest.raises(ValueError, match="counts must have one entry per row"):
        topk_accumulate_(torch.zeros(4), torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.int64),
                         counts=torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="weights must have dtype"):
        topk_accumulate_(torch.zeros(4), torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.int64),
                         weights=torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="weights needs values / indices of shape"):
        topk_accumulate_(torch.zeros(4), torch.ones(3), torch.zeros(3, dtype=torch.int64), weights=torch.ones(3))
    for idx in ([0, 4], [-1, 0]):
        out = torch.zeros(4)
        with pytest.raises(IndexError, match=r"indices must lie in \[0, 4\)"):
            topk_accumulate_(out, torch.ones(2), torch.tensor(idx, dtype=torch.int32))
        assert out.count_nonzero() == 0  # nothing written


def _padded_messages(rows: int, cols: int, n: int, index_dtype, seed: int = 0):
    """Rows like the EF21 hook's all_gather table: ascending indices with repeats across rows,
    padded past counts[r] with junk that must be ignored."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, cols, generator=g)
    indices = torch.sort(torch.randint(0, n, (rows, cols), generator=g), dim=1).values.to(index_dtype)
    counts = torch.randint(0, cols + 1, (rows,), generator=g)
    counts[0] = cols
    for r in range(rows):
        indices[r, counts[r]:] = -7  # out of range: only harmless if skipped
    weights = torch.rand(rows, generator=g) + 0.5
    return values, indices, counts, weights


def _check_counts_weights_alpha(accumulate, values, indices, counts, weights, n):
    """accumulate(out, values, indices, counts, weights, alpha) against the reference, with counts
    alone and with weights, for two alphas."""
    for w in (None, weights):
        for alpha in (1.0, 0.37):
            out = torch.randn(n, generator=torch.Generator().manual_seed(1))
            expected = out.clone()
            reference_topk_accumulate_(expected, values, indices, counts, w, alpha)
            accumulate(out, values, indices, counts, w, alpha)
            assert_same(out, expected, f"weights={w is not None} alpha={alpha}")


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_topk_accumulate_native_matches_reference(index_dtype):
    values, indices, counts, weights = _padded_messages(5, 3_001, 2_000, index_dtype)
    _check_counts_weights_alpha(lambda o, v, i, c, w, a: topk_accumulate_(o, v, i, a, counts=c, weights=w),
                                values, indices, counts, weights, 2_000)
    # strided rows (views into a wider table, as the hook passes them) and 1-D inputs
    table = torch.zeros(5, 7_000, dtype=torch.int32)
    table[:, 10:3_011] = indices.to(torch.int32)
    table[:, -3_001:] = values.view(torch.int32)
    out, expected = torch.zeros(2_000), torch.zeros(2_000)
    topk_accumulate_(out, table[:, -3_001:].view(torch.float32), table[:, 10:3_011], counts=counts, weights=weights)
    reference_topk_accumulate_(expected, values, indices, counts, weights)
    assert_same(out, expected, "strided rows")
    out, expected = torch.zeros(2_000), torch.zeros(2_000)
    topk_accumulate_(out, values[0], indices[0])
    reference_topk_accumulate_(expected, values[0], indices[0])
    assert_same(out, expected, "1-D")
    if _native.has_cpu_kernel("topk_accumulate"):  # the native kernel ran: not a silent fallback
        assert not torch.equal(out, torch.zeros(2_000))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_rowwise_accumulate_matches_reference(index_dtype):
    """The CUDA path (one index_add_ per row), run on the CPU: padding past counts is skipped,
    weights and alpha apply, 1-D inputs are one row, and a present bad index raises first."""
    from osmos.ops.topk_compress import rowwise_topk_accumulate_

    values, indices, counts, weights = _padded_messages(5, 301, 200, index_dtype)
    _check_counts_weights_alpha(rowwise_topk_accumulate_, values, indices, counts, weights, 200)
    out, expected = torch.zeros(200), torch.zeros(200)
    rowwise_topk_accumulate_(out, values[0], indices[0])
    reference_topk_accumulate_(expected, values[0], indices[0])
    assert_same(out, expected, "1-D")
    out = torch.ones(200)
    rowwise_topk_accumulate_(out, values[:, :0], indices[:, :0], torch.zeros(5, dtype=torch.int64))  # empty rows
    assert torch.equal(out, torch.ones(200))
    indices[2, 0], counts[2] = 200, max(int(counts[2]), 1)
    out = torch.zeros(200)
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 200\)"):
        rowwise_topk_accumulate_(out, values, indices, counts)
    assert out.count_nonzero() == 0


def test_topk_accumulate_opcheck_and_compile():
    values, indices, counts, weights = _padded_messages(3, 257, 500, torch.int32, seed=3)
    torch.library.opcheck(_topk_accumulate_op, (torch.zeros(500), values, indices, counts, weights, 1.0))
    torch.library.opcheck(_topk_accumulate_op, (torch.zeros(500), values[0], indices[0].long(), None, None, 0.5))

    def receive(g, values, indices, counts, weights):
        topk_accumulate_(g, values, indices, counts=counts, weights=weights)
        return g * 2

    compiled = torch.compile(receive, fullgraph=True, backend="inductor")
    g_eager, g_compiled = torch.ones(500), torch.ones(500)
    expected = receive(g_eager, values, indices, counts, weights)
    got = compiled(g_compiled, values, indices, counts, weights)
    assert_same(got, expected, "compiled result")
    assert_same(g_compiled, g_eager, "compiled in-place update")
