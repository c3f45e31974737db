"""osmos::rps_linear: the fused hashed linear (Triton, W never materialised) and the
gather + matmul path, against F.linear with the reference-gathered weight."""


import pytest
import torch
import torch.nn.functional as F

from osmos.ops import rps_gather, rps_linear
from osmos.ops.rps_gather import reference_rps_gather
from osmos.ops.rps_mapping import LayerMap

from conftest import triton_available

TRITON = triton_available()


def _case(kind, B, rows, cols, m, dtype=torch.float32):
    config = LayerMap(kind, m, 17, rows, cols, seed=5, layer=1, tile=(8, 16)).config()
    x = torch.randn(B, cols, dtype=dtype, requires_grad=True)
    M = torch.randn(m, dtype=dtype, requires_grad=True)
    return config, x, M


def _check_against_reference(kind, B, rows, cols, m, dtype, tol):
    config, x, M = _case(kind, B, rows, cols, m, dtype)
    y = rps_linear(x, M, config, rows, cols, 0.3)
    gy = torch.randn_like(y)
    gx, gM = torch.autograd.grad(y, (x, M), gy)
    x2, M2 = x.detach().clone().requires_grad_(True), M.detach().clone().requires_grad_(True)
    y2 = F.linear(x2, reference_rps_gather(M2, config, rows, cols, 0.3))
    gx2, gM2 = torch.autograd.grad(y2, (x2, M2), gy)
    torch.testing.assert_close(y, y2, atol=tol, rtol=tol)
    torch.testing.assert_close(gx, gx2, atol=tol, rtol=tol)
    torch.testing.assert_close(gM, gM2, atol=tol, rtol=tol)


@pytest.mark.parametrize("kind", ["stable", "roast", "hashednet"])
def test_gather_path_matches_reference(kind):
    _check_against_reference(kind, 5, 19, 37, 101, torch.float32, 1e-5)


@pytest.mark.skipif(not TRITON, reason="needs triton >= 3.7 and TRITON_INTERPRET=1 or a GPU")
@pytest.mark.parametrize("kind", ["stable", "roast", "hashednet"])
# (B, rows, cols, m): STABLE partitions that end inside a tile, m below a tile's width (the
# element-by-element mapping), ROAST with m above and below a ROAST tile (8 x 16), one element.
@pytest.mark.parametrize("shape", [(5, 19, 37, 101), (33, 40, 70, 7), (6, 45, 67, 300), (1, 1, 1, 1)])
@pytest.mark.parametrize("ahead", ["0", "1"])
def test_fused_triton_matches_reference(kind, shape, ahead, monkeypatch):
    monkeypatch.setenv("OSMOS_CPU_BACKEND", "triton")
    monkeypatch.setenv("OSMOS_RPS_LOAD_AHEAD", ahead)
    _check_against_reference(kind, *shape, torch.float32, 1e-4)


@pytest.mark.skipif(not TRITON, reason="needs triton >= 3.7 and TRITON_INTERPRET=1 or a GPU")
def test_fused_triton_float64_gradcheck(monkeypatch):
    monkeypatch.setenv("OSMOS_CPU_BACKEND", "triton")
    config, x, M = _case("roast", 3, 5, 6, 11, torch.float64)
    assert torch.autograd.gradcheck(lambda x, M: rps_linear(x, M, config, 5, 6, 0.5), (x, M))


def test_bias_and_leading_dims():
    config, _, M = _case("stable", 1, 6, 4, 9)
    x = torch.randn(2, 3, 4)
    b = torch.randn(6)
    y = rps_linear(x, M, config, 6, 4, 0.5, bias=b)
    torch.testing.assert_close(y, F.linear(x, reference_rps_gather(M, config, 6, 4, 0.5), b))


def test_opcheck_and_compile():
    config, x, M = _case("stable", 4, 6, 8, 20)
    torch.library.opcheck(torch.ops.osmos.rps_linear.default, (x, M, config, 6, 8, 0.5))
    f = torch.compile(lambda x, M: rps_linear(x, M, config, 6, 8, 0.5).sum(), fullgraph=True, backend="aot_eager")
    loss = f(x, M)
    torch.testing.assert_close(loss, rps_linear(x, M, config, 6, 8, 0.5).sum())
    assert torch.autograd.grad(loss, M)[0].shape == M.shape


def test_bad_input():
    config, x, M = _case("stable", 4, 6, 8, 20)
    with pytest.raises(ValueError, match="features"):
        rps_linear(torch.randn(4, 7), M, config, 6, 8)
    with pytest.raises(TypeError, match="M"):
        rps_linear(x, M.double(), config, 6, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["stable", "roast", "hashednet"])
@pytest.mark.parametrize("backend", ["triton", None])  # the fused kernels (opt-in), the default gather path
def test_on_gpu(kind, backend, monkeypatch):
    if backend:
        monkeypatch.setenv("OSMOS_GPU_BACKEND", backend)
    else:
        monkeypatch.delenv("OSMOS_GPU_BACKEND", raising=False)
    config, x, M = _case(kind, 64, 300, 200, 5000)  # STABLE / ROAST take the segment-table path
    xc, Mc = x.detach().cuda().requires_grad_(True), M.detach().cuda().requires_grad_(True)
    y = rps_linear(xc, Mc, config, 300, 200, 0.3)
    y_ref = F.linear(x, reference_rps_gather(M, config, 300, 200, 0.3))
    torch.testing.assert_close(y.detach().cpu(), y_ref.detach(), atol=1e-4, rtol=1e-4)
    gy = torch.randn_like(y_ref)
    gx, gM = torch.autograd.grad(y, (xc, Mc), gy.cuda())
    gx_ref, gM_ref = torch.autograd.grad(y_ref, (x, M), gy)
    torch.testing.assert_close(gx.cpu(), gx_ref, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(gM.cpu(), gM_ref, atol=1e-3, rtol=1e-4)


@pytest.mark.skipif(not TRITON, reason="needs triton >= 3.7 and TRITON_INTERPRET=1 or a GPU")
@pytest.mark.parametrize("kind", ["stable", "roast", "hashednet"])
@pytest.mark.parametrize("use_sign", [True, False])
@pytest.mark.parametrize("tile, rows, cols, m, offset, tables", [
    # tables: segment width used by (stable, roast); None = element by element
    ((16, 16), 20, 70, 333, 0, (32, 32)),           # one ROAST tile break per 32-column segment
    ((8, 16), 9, 50, 200, 12345678901, (32, 32)),   # offsets past 2^31 (sign words, partitions)
    ((8, 16), 9, 50, 64, 0, (32, None)),            # ROAST with m <= tile: indices wrap modulo m
    ((4, 40), 7, 90, 500, 3, (32, 32)),             # ROAST tiles wider than a segment
    ((4, 8), 5, 33, 1000, 17, (32, 16)),            # narrow ROAST tiles: 16-column segments
    ((8, 4), 5, 33, 1000, 17, (32, None)),          # ROAST tiles too narrow for tables
    ((16, 16), 3, 40, 20, 5, (16, None)),           # m below 32 columns: 16-column segments
])
@pytest.mark.parametrize("ahead", ["0", "1"])
def test_fused_triton_weight_tiles_are_exact(kind, use_sign, tile, rows, cols, m, offset, tables, ahead, monkeypatch):
    """x = I gives y = W^T bit for bit, so every tile-building path (segment tables, element by
    element; loads issued a tile ahead or not) is checked against the reference mapping, signs
    included."""
    from osmos.triton_kernels.rps_linear import rps_linear_forward, segment_width

    monkeypatch.setenv("OSMOS_RPS_LOAD_AHEAD", ahead)

    config = LayerMap(kind, m, offset, rows, cols, seed=7, layer=3, tile=tile, use_sign=use_sign).config()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter on a CPU
    M = torch.randn(m)
    w_t = rps_linear_forward(torch.eye(cols, device=device), M.to(device), config, rows, cols, 0.5)
    assert torch.equal(w_t.cpu(), reference_rps_gather(M, config, rows, cols, 0.5).t())
    expected = {"stable": tables[0], "roast": tables[1], "hashednet": None}[kind]
    assert segment_width(config, 32) == expected


def test_segments_hold_at_most_32_signed_columns():
    """The segment table keeps 32 sign bits a segment: a wider BK (OSMOS_RPS_TILES) is capped at 32
    for signed layers and kept for unsigned ones."""
    pytest.importorskip("triton")
    from osmos.triton_kernels.rps_linear import segment_width

    signed = LayerMap("stable", 1000, 0, 8, 100, seed=1, use_sign=True).config()
    unsigned = LayerMap("stable", 1000, 0, 8, 100, seed=1, use_sign=False).config()
    assert segment_width(signed, 64) == 32 and segment_width(unsigned, 64) == 64
    assert segment_width(signed, 32) == 32 and segment_width(unsigned, 16) == 16


def test_untracked_eager_calls_skip_the_ops_with_the_same_bits(monkeypatch):
    # inference runs the gather / hashed linear without the custom ops' dispatch; same results
    import sys

    gmod, lmod = sys.modules["osmos.ops.rps_gather"], sys.modules["osmos.ops.rps_linear"]
    rows, cols, m = 24, 40, 97
    config = LayerMap("stable", m, 5, rows, cols, seed=2).config()
    M, x = torch.nn.Parameter(torch.randn(m)), torch.randn(3, 7, cols)  # M as the RPS layers hold it
    with torch.no_grad():
        W_op = gmod._gather_op(M, config, rows, cols, 0.5, False)
        y_op = lmod._linear_op(x.reshape(-1, cols), M, config, rows, cols, 0.5).reshape(3, 7, rows)
    calls = []

    def spy(name, real):
        return lambda *a: calls.append(name) or real(*a)

    monkeypatch.setattr(gmod, "_gather_op", spy("gather op", gmod._gather_op))
    monkeypatch.setattr(lmod, "_linear_op", spy("linear op", lmod._linear_op))
    with torch.no_grad():
        W = rps_gather(M, config, rows, cols, 0.5)
        y = rps_linear(x, M, config, rows, cols, 0.5)
    assert calls == [] and torch.equal(W, W_op) and torch.equal(y, y_op)
    # autograd records these (M needs a gradient, grad mode on): the ops run
    rps_gather(M, config, rows, cols, 0.5)
    rps_linear(x, M, config, rows, cols, 0.5)
    assert calls == ["gather op", "linear op"]


def test_inference_tracing_still_records_the_op():
    # the direct inference path is for plain eager calls: make_fx (real tensors, inference) and
    # torch.func.vmap still see the custom op
    from torch.fx.experimental.proxy_tensor import make_fx

    from osmos.ops._common import eager_untracked

    config = LayerMap("stable", 10, 0, 3, 8, seed=1).config()
    x, M = torch.randn(4, 8), torch.randn(10)
    with torch.no_grad():
        graph = make_fx(lambda x, M: rps_linear(x, M, config, 3, 8, 0.5), tracing_mode="real")(x, M).graph
    assert "osmos.rps_linear.default" in [str(n.target) for n in graph.nodes if n.op == "call_function"]
    assert eager_untracked(x) and not torch.func.vmap(lambda t: torch.tensor(eager_untracked(t)))(x).any()
