
import pytest
import torch
import torch.nn.functional as F

from osmos import _native
from osmos.ops import group_norm_apply, group_norm_stats, sliced_group_norm
from osmos.ops.group_norm import reference_group_norm_apply, reference_group_norm_stats

from conftest import triton_available

ISAS = ["scalar", "avx512"] if _native.C is not None and _native.C.detected_isa() == "avx512" else ["scalar"]


@pytest.fixture(params=ISAS)
def isa(request):
    _native.C.set_cpu_isa(request.param)
    yield request.param
    _native.C.set_cpu_isa("avx512")


@pytest.mark.parametrize("shape,groups", [((2, 8, 37), 4), ((1, 6, 1), 3), ((3, 32, 100), 32), ((2, 4, 0), 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_stats_match_reference(isa, shape, groups, dtype):
    x = (torch.randn(shape) * 3 + 1).to(dtype)
    got = group_norm_stats(x, groups)
    want = reference_group_norm_stats(x, groups)
    assert got.dtype == torch.float64 and got.shape == (shape[0], groups, 3)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_stats_of_slices_add_up_and_read_in_place(isa):
    x = torch.randn(2, 8, 50)
    parts = group_norm_stats(x[:, :, :17], 4) + group_norm_stats(x[:, :, 17:], 4)
    torch.testing.assert_close(parts, group_norm_stats(x, 4), rtol=1e-9, atol=1e-9)
    assert not x[:, :, 17:].is_contiguous()


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_apply_matches_reference(isa, silu, affine, dtype):
    x = (torch.randn(2, 12, 45) * 2 - 0.5).to(dtype)
    w = torch.randn(12) if affine else None
    b = torch.randn(12) if affine else None
    stats = reference_group_norm_stats(x, 3)
    got = group_norm_apply(x, stats, w, b, 1e-6, silu)
    want = reference_group_norm_apply(x, stats, w, b, 1e-6, silu)
    assert got.dtype == dtype and got.is_contiguous()
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("slices", [1, 2, 3, 7, 64])
def test_sliced_group_norm_equals_unsliced_torch(isa, slices):
    # video-shaped: [B, C, F*H*W] with statistics spanning all frames and positions
    x = torch.randn(2, 32, 4 * 8 * 8) * 4 + 2
    w, b = torch.randn(32), torch.randn(32)
    want = F.silu(F.group_norm(x, 8, w, b, 1e-6))
    got = sliced_group_norm(x, 8, w, b, 1e-6, silu=True, slices=slices)
    assert (got - want).abs().max().item() <= 1e-5


def test_naive_per_slice_normalisation_is_wrong_and_ours_is_not():
    x = torch.randn(1, 4, 64)
    x[:, :, 32:] += 5.0  # the two halves have different statistics
    naive = torch.cat([F.group_norm(x[:, :, :32], 2), F.group_norm(x[:, :, 32:], 2)], dim=2)
    ours = sliced_group_norm(x, 2, slices=2)
    exact = F.group_norm(x, 2)
    assert (naive - exact).abs().max() > 0.5
    assert (ours - exact).abs().max() <= 1e-5


def test_errors_name_the_argument():
    x = torch.randn(2, 6, 10)
    with pytest.raises(ValueError, match="num_groups"):
        group_norm_stats(x, 4)
    with pytest.raises(TypeError, match="x must have dtype"):
        group_norm_stats(x.long(), 2)
    with pytest.raises(ValueError, match="unit stride"):
        group_norm_stats(x.transpose(1, 2).contiguous().transpose(1, 2), 2)
    with pytest.raises(ValueError, match="x must be 3-D"):
        group_norm_stats(x[0], 2)
    stats = group_norm_stats(x, 2)
    with pytest.raises(ValueError, match="weight"):
        group_norm_apply(x, stats, torch.ones(5))
    with pytest.raises(TypeError, match="stats"):
        group_norm_apply(x, stats.float())
    with pytest.raises(ValueError, match="slices"):
        sliced_group_norm(x, 2, slices=11)


def test_opcheck():
    x = torch.randn(2, 8, 33)
    torch.library.opcheck(torch.ops.osmos.group_norm_stats.default, (x, 4))
    stats = group_norm_stats(x, 4)
    torch.library.opcheck(torch.ops.osmos.group_norm_apply.default, (x, stats, torch.randn(8), torch.randn(8), 1e-5, True))


def test_compile_fullgraph():
    x = torch.randn(2, 8, 40)
    w, b = torch.randn(8), torch.randn(8)
    fn = torch.compile(lambda t: sliced_group_norm(t, 4, w, b, 1e-5, True, slices=4), fullgraph=True)
    torch.testing.assert_close(fn(x), F.silu(F.group_norm(x, 4, w, b, 1e-5)), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not triton_available(), reason="needs triton (GPU or TRITON_INTERPRET=1)")
def test_triton_kernels_match_reference():
    from osmos.triton_kernels.group_norm import group_norm_apply as tapply
    from osmos.triton_kernels.group_norm import group_norm_stats as tstats

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(2, 8, 50, device=device)[:, :, 5:45]
    stats = tstats(x, 4)
    torch.testing.assert_close(stats, reference_group_norm_stats(x, 4), rtol=1e-9, atol=1e-9)
    w, b = torch.randn(8, device=device), torch.randn(8, device=device)
    got = tapply(x, stats, w, b, 1e-5, True)
    torch.testing.assert_close(got, reference_group_norm_apply(x, stats, w, b, 1e-5, True), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_sliced_matches_torch(backend, monkeypatch):
    monkeypatch.setenv("OSMOS_GPU_BACKEND", backend)
    x = torch.randn(2, 32, 4096, device="cuda")
    w, b = torch.randn(32, device="cuda"), torch.randn(32, device="cuda")
    want = F.silu(F.group_norm(x, 8, w, b, 1e-6))
    assert (sliced_group_norm(x, 8, w, b, 1e-6, True, slices=8) - want).abs().max().item() <= 1e-5


@pytest.mark.skipif(not triton_available(), reason="needs triton (GPU or TRITON_INTERPRET=1)")
def test_triton_stats_split_along_positions():
    """Rows longer than one program's stretch (4 blocks of 1024) are summed from partials; empty
    inputs give zero sums with the right counts."""
    from osmos.triton_kernels.group_norm import group_norm_stats as tstats

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(1, 4, 9000, device=device)
    torch.testing.assert_close(tstats(x, 2), reference_group_norm_stats(x, 2), rtol=1e-9, atol=1e-9)
    empty = tstats(torch.empty(2, 4, 0, device=device), 2)
    assert empty.shape == (2, 2, 3) and not empty.any()
