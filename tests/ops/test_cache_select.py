
import pytest
import torch

from osmos.ops import cache_select
from osmos.ops.cache_select import reference_cache_select

from conftest import triton_available


def _inputs(b=3, t=5, d=37, dtype=torch.float32, gate_shape="bd"):
    h, fresh, cache = (torch.randn(b, t, d).to(dtype) for _ in range(3))
    gate = {"bd": torch.randn(b, d), "b1d": torch.randn(b, 1, d), None: None}[gate_shape]
    gate = None if gate is None else gate.to(dtype)
    use = torch.tensor([True, False, True][:b] + [False] * max(0, b - 3))
    return h, gate, fresh, cache, use


@pytest.mark.parametrize("gate_shape", ["bd", "b1d", None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference_and_refreshes_cache(gate_shape, dtype):
    h, gate, fresh, cache, use = _inputs(dtype=dtype, gate_shape=gate_shape)
    cache_ref = cache.clone()
    got = cache_select(h, gate, fresh, cache, use)
    want = reference_cache_select(h, gate, fresh, cache_ref, use)
    assert torch.equal(got, want)  # one float32 multiply-add, one rounding: bitwise
    assert torch.equal(cache, cache_ref)
    assert torch.equal(cache[1], fresh[1])  # computed sample refreshed its cache
    assert not torch.equal(cache[0], fresh[0])  # reusing sample kept its cache


def test_semantics_by_hand():
    h = torch.ones(2, 1, 2)
    gate = torch.full((2, 2), 2.0)
    fresh = torch.full((2, 1, 2), 10.0)
    cache = torch.full((2, 1, 2), 100.0)
    out = cache_select(h, gate, fresh, cache, torch.tensor([True, False]))
    assert out[0].tolist() == [[201.0, 201.0]] and out[1].tolist() == [[21.0, 21.0]]
    assert cache[0].tolist() == [[100.0, 100.0]] and cache[1].tolist() == [[10.0, 10.0]]


def test_without_h_returns_the_selected_branch():
    _, _, fresh, cache, use = _inputs()
    want = torch.where(use[:, None, None], cache, fresh)
    assert torch.equal(cache_select(None, None, fresh, cache, use), want)
    assert torch.equal(cache, want)


def test_2d_rows_and_empty():
    h, fresh, cache = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    use = torch.tensor([False, True, False, True])
    want = reference_cache_select(h, None, fresh, cache.clone(), use)
    assert torch.equal(cache_select(h, None, fresh, cache, use), want)
    e = torch.empty(0, 3, 4)
    assert cache_select(e, None, e.clone(), e.clone(), torch.empty(0, dtype=torch.bool)).shape == (0, 3, 4)


def test_errors_name_the_argument():
    h, gate, fresh, cache, use = _inputs()
    with pytest.raises(ValueError, match="h must match"):
        cache_select(h, gate, fresh[:, :2].contiguous(), cache, use)
    with pytest.raises(TypeError, match="cache"):
        cache_select(h, gate, fresh, cache.double(), use)
    with pytest.raises(ValueError, match="gate"):
        cache_select(h, gate[:, :3], fresh, cache, use)
    with pytest.raises(TypeError, match="use_cache"):
        cache_select(h, gate, fresh, cache, use.int())
    with pytest.raises(ValueError, match="use_cache"):
        cache_select(h, gate, fresh, cache, use[:2])


def test_opcheck():
    h, gate, fresh, cache, use = _inputs()
    torch.library.opcheck(torch.ops.osmos.cache_select.default, (h, gate, fresh, cache, use))


def test_compile_fullgraph_no_graph_breaks():
    h, gate, fresh, cache, use = _inputs()
    cache_ref = cache.clone()

    @torch.compile(fullgraph=True)
    def block(h, gate, fresh, cache, use):
        return cache_select(h, gate, fresh * 2, cache, use) * 0.5

    got = block(h, gate, fresh, cache, use)
    want = reference_cache_select(h, gate, fresh * 2, cache_ref, use) * 0.5
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(cache, cache_ref)


@pytest.mark.skipif(not triton_available(), reason="needs triton (GPU or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_reference(dtype):
    from osmos.triton_kernels.cache_select import cache_select as kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    _assert_close_to_reference(kernel, *(t.to(device) if t is not None else None for t in _inputs(dtype=dtype)))


def _assert_close_to_reference(run, h, gate, fresh, cache, use):
    """run(h, gate, fresh, cache, use) against the reference: the result within float32 (16-bit:
    1e-2) tolerance, the cache refreshed identically; returns the result."""
    cache_ref = cache.clone()
    got = run(h, gate, fresh, cache, use)
    want = reference_cache_select(h, gate, fresh, cache_ref, use)
    tol = 1e-6 if fresh.dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert torch.equal(cache, cache_ref)
    return got


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_op_matches_reference(backend, monkeypatch):
    monkeypatch.setenv("OSMOS_GPU_BACKEND", backend)
    h, gate, fresh, cache, use = (t.cuda() for t in _inputs())
    cache_ref = cache.clone()
    torch.testing.assert_close(cache_select(h, gate, fresh, cache, use), reference_cache_select(h, gate, fresh, cache_ref, use))


@pytest.mark.parametrize("gate_shape", ["bd", "b1d", None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_h", [True, False])
def test_torch_path_matches_reference(monkeypatch, gate_shape, dtype, with_h):
    """The path eager CUDA calls take (torch_cache_select, no custom op), taken on the CPU."""
    import sys

    monkeypatch.setattr(sys.modules["osmos.ops.cache_select"], "_torch_path", lambda fresh: True)
    h, gate, fresh, cache, use = _inputs(dtype=dtype, gate_shape=gate_shape)
    got = _assert_close_to_reference(cache_select, h if with_h else None, gate, fresh, cache, use)
    assert got.data_ptr() != cache.data_ptr()  # the result never aliases the cache


def test_torch_path_only_for_eager_cuda_calls(monkeypatch):
    import sys

    torch_path = sys.modules["osmos.ops.cache_select"]._torch_path
    assert not torch_path(torch.zeros(1, 2))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not torch_path(torch.zeros(1, 2))
