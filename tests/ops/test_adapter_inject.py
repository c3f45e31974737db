"""osmos.ops.adapter_inject: every backend against the reference, autograd, opcheck, compile,
and bad inputs."""

import os

import pytest
import torch

from osmos import _native
from osmos.ops import adapter_inject, adapter_inject_
from osmos.ops.adapter_inject import reference_adapter_inject
from conftest import triton_available

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def make(batch, tokens, fin, fout, adapters, dtype=torch.float32, gdtype=torch.float32):
    x = torch.randn(batch, tokens, fin).to(dtype)
    y = torch.randn(batch, tokens, fout).to(dtype)
    down = torch.randn(adapters, fin) / fin**0.5
    up = torch.randn(adapters, fout)
    gamma = torch.rand(batch, adapters).to(gdtype)
    return y, x, down, up, gamma


def isa_paths():
    if not _native.has_cpu_kernel("adapter_inject"):
        return []
    paths = ["scalar"]
    if _native.C.detected_isa() == "avx512":
        paths.append("avx512")
    return paths


@pytest.fixture
def restore_isa():
    yield
    if _native.C is not None:
        _native.C.set_cpu_isa("avx512")


def test_reference_matches_plain_formula():
    y, x, down, up, gamma = make(2, 3, 5, 4, 3)
    expected = y.clone()
    for b in range(2):
        for t in range(3):
            for k in range(3):
                expected[b, t] += gamma[b, k] * (down[k] @ x[b, t]) * up[k]
    torch.testing.assert_close(reference_adapter_inject(y, x, down, up, gamma), expected)


@pytest.mark.parametrize("isa", isa_paths())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 7, 33, 17, 1), (3, 5, 16, 48, 4), (1, 13, 130, 77, 7), (2, 1, 1, 1, 16)])
def test_cpu_kernel_matches_reference(isa, dtype, shape, restore_isa):
    _native.C.set_cpu_isa(isa)
    y, x, down, up, gamma = make(*shape, dtype=dtype)
    got = adapter_inject(y, x, down, up, gamma)
    torch.testing.assert_close(got, reference_adapter_inject(y, x, down, up, gamma), rtol=TOL[dtype][0], atol=TOL[dtype][1])


@pytest.mark.parametrize("isa", isa_paths())
def test_cpu_threads_and_large_rows(isa, restore_isa):
    _native.C.set_cpu_isa(isa)
    y, x, down, up, gamma = make(3, 700, 64, 40, 5)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = adapter_inject(y, x, down, up, gamma)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(got, reference_adapter_inject(y, x, down, up, gamma))


def test_per_sample_gamma_and_zero_gamma_is_identity():
    y, x, down, up, gamma = make(3, 4, 8, 6, 2)
    gamma[1] = 0
    got = adapter_inject(y, x, down, up, gamma)
    assert torch.equal(got[1], y[1])
    assert not torch.allclose(got[0], y[0])
    # each sample only uses its own gamma row
    single = adapter_inject(y[2:3].contiguous(), x[2:3].contiguous(), down, up, gamma[2:3])
    torch.testing.assert_close(got[2:3], single)


def test_inplace_variant_and_input_untouched():
    y, x, down, up, gamma = make(2, 5, 9, 11, 3)
    y0, x0 = y.clone(), x.clone()
    out = adapter_inject(y, x, down, up, gamma)
    assert torch.equal(y, y0) and torch.equal(x, x0)
    ret = adapter_inject_(y, x, down, up, gamma)
    assert ret is y
    torch.testing.assert_close(y, out)


def test_two_d_and_four_d_inputs():
    x, y = torch.randn(4, 6), torch.randn(4, 3)
    down, up, gamma = torch.randn(2, 6), torch.randn(2, 3), torch.rand(4, 2)
    torch.testing.assert_close(adapter_inject(y, x, down, up, gamma), reference_adapter_inject(y, x, down, up, gamma))
    x, y = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 5, 4)
    down, up, gamma = torch.randn(2, 6), torch.randn(2, 4), torch.rand(2, 2)
    torch.testing.assert_close(adapter_inject(y, x, down, up, gamma), reference_adapter_inject(y, x, down, up, gamma))


def test_empty_and_zero_adapters():
    y, x, down, up, gamma = make(2, 0, 8, 6, 3)
    assert adapter_inject(y, x, down, up, gamma).shape == (2, 0, 6)
    y, x, down, up, gamma = make(2, 3, 8, 6, 0)
    assert torch.equal(adapter_inject(y, x, down, up, gamma), y)


def test_low_precision_params_and_gamma():
    y, x, down, up, gamma = make(2, 5, 24, 20, 3, dtype=torch.float16, gdtype=torch.bfloat16)
    down, up = down.half(), up.bfloat16()
    torch.testing.assert_close(adapter_inject(y, x, down, up, gamma), reference_adapter_inject(y, x, down, up, gamma),
                               rtol=2e-3, atol=2e-3)


@pytest.mark.skipif(not triton_available(), reason="needs triton with a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("shape", [(2, 7, 33, 17, 1), (1, 70, 130, 77, 5), (2, 3, 16, 80, 17)])
def test_triton_kernel_matches_reference(shape):
    from osmos.triton_kernels.adapter_inject import adapter_inject as kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    y, x, down, up, gamma = (t.to(device) for t in make(*shape))
    out = torch.empty_like(y)
    kernel(out, y, x, down, up, gamma)
    torch.testing.assert_close(out, reference_adapter_inject(y, x, down, up, gamma), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or not triton_available(), reason="interpreter only")
def test_op_dispatches_to_triton_when_asked(monkeypatch):
    monkeypatch.setenv("OSMOS_CPU_BACKEND", "triton")
    y, x, down, up, gamma = make(2, 9, 20, 18, 3)
    torch.testing.assert_close(adapter_inject(y, x, down, up, gamma), reference_adapter_inject(y, x, down, up, gamma),
                               rtol=1e-4, atol=1e-4)


def test_autograd_matches_reference_autograd():
    yf, xf, df, uf, gf = (t.requires_grad_() for t in make(2, 3, 5, 4, 3))
    out = adapter_inject(yf, xf, df, uf, gf)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (yf, xf, df, uf, gf))
    rf = [t.detach().clone().requires_grad_() for t in (yf, xf, df, uf, gf)]
    ref = reference_adapter_inject(*rf)
    ref_grads = torch.autograd.grad((ref * w).sum(), rf)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_torch_gradcheck_double_params():
    # x and y are float32 at most; the float64 adapter params and gamma are used in float32,
    # so finite differences need a coarse eps and tolerance.
    y, x, down, up, gamma = make(2, 3, 4, 3, 2)
    down, up, gamma = (t.double().requires_grad_() for t in (down, up, gamma))
    fn = lambda d, u, g: adapter_inject(y, x, d, u, g).double()  # noqa: E731
    assert torch.autograd.gradcheck(fn, (down, up, gamma), eps=1e-3, atol=1e-2, rtol=1e-2)


def test_opcheck():
    args = make(2, 5, 12, 10, 3)
    torch.library.opcheck(torch.ops.osmos.adapter_inject.default, args)
    y, x, down, up, gamma = make(2, 5, 12, 10, 3)
    torch.library.opcheck(torch.ops.osmos.adapter_inject_.default, (y, x, down, up, gamma),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    y, x, down, up, gamma = make(2, 6, 12, 10, 3)
    linear = torch.nn.Linear(12, 10)

    @torch.compile(fullgraph=True, backend="eager")
    def adapted(x, down, up, gamma):
        return adapter_inject(linear(x), x, down, up, gamma)

    expected = reference_adapter_inject(linear(x), x, down, up, gamma)
    torch.testing.assert_close(adapted(x, down, up, gamma), expected)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: {**a, "x": a["x"].int()}, TypeError, "x must have dtype"),
        (lambda a: {**a, "y": a["y"].double()}, TypeError, "y must have dtype"),
        (lambda a: {**a, "x": a["x"][0, 0]}, ValueError, "x must be"),
        (lambda a: {**a, "down": a["down"][:, :-1]}, ValueError, "down must be"),
        (lambda a: {**a, "up": a["up"][:-1]}, ValueError, "up must be"),
        (lambda a: {**a, "gamma": a["gamma"][:1]}, ValueError, "gamma must be"),
        (lambda a: {**a, "y": a["y"][:, :-1]}, ValueError, "y must be"),
        (lambda a: {**a, "x": a["x"].transpose(0, 1)}, ValueError, "x must be contiguous"),
        (lambda a: {**a, "gamma": [1.0]}, TypeError, "gamma must be a torch.Tensor"),
    ],
)
def test_bad_inputs(change, error, match):
    y, x, down, up, gamma = make(2, 3, 8, 6, 2)
    args = change(dict(y=y, x=x, down=down, up=up, gamma=gamma))
    with pytest.raises(error, match=match):
        adapter_inject(**args)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_cuda_matches_reference(backend, monkeypatch):
    monkeypatch.setenv("OSMOS_GPU_BACKEND", backend)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        y, x, down, up, gamma = (t.cuda() for t in make(2, 300, 320, 640, 4, dtype=dtype))
        torch.testing.assert_close(adapter_inject(y, x, down, up, gamma), reference_adapter_inject(y, x, down, up, gamma),
                                   rtol=TOL[dtype][0] * 10, atol=TOL[dtype][1] * 10)


@pytest.fixture
def eager_torch_path(monkeypatch):
    """The path eager CUDA calls take (torch_adapter_inject, no custom op), taken on the CPU."""
    import sys

    monkeypatch.setattr(sys.modules["osmos.ops.adapter_inject"], "_torch_path", lambda x: True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_path_matches_reference(eager_torch_path, dtype):
    tol = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (3e-2, 3e-2)}[dtype]
    for shape in [(2, 7, 33, 17, 1), (1, 70, 130, 77, 5), (3, 0, 8, 6, 2), (2, 3, 8, 6, 0)]:
        y, x, down, up, gamma = make(*shape, dtype=dtype)
        torch.testing.assert_close(adapter_inject(y, x, down, up, gamma), reference_adapter_inject(y, x, down, up, gamma),
                                   rtol=tol[0], atol=tol[1])
    x, y = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 5, 4)  # extra token dims
    down, up, gamma = torch.randn(2, 6).double(), torch.randn(2, 4), torch.rand(2, 2)
    torch.testing.assert_close(adapter_inject(y, x, down, up, gamma), reference_adapter_inject(y, x, down, up, gamma))


def test_torch_path_in_place_and_out(eager_torch_path):
    from osmos.ops.adapter_inject import torch_adapter_inject

    y, x, down, up, gamma = make(2, 9, 20, 18, 3)
    expected = reference_adapter_inject(y, x, down, up, gamma)
    y0 = y.clone()
    assert adapter_inject_(y, x, down, up, gamma) is y
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    out = torch.empty_like(y0)
    assert torch_adapter_inject(y0, x, down, up, gamma, out=out) is out
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_torch_path_autograd_matches_reference(eager_torch_path):
    yf, xf, df, uf, gf = (t.requires_grad_() for t in make(2, 3, 5, 4, 3))
    out = adapter_inject(yf, xf, df, uf, gf)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (yf, xf, df, uf, gf))
    rf = [t.detach().clone().requires_grad_() for t in (yf, xf, df, uf, gf)]
    ref_grads = torch.autograd.grad((reference_adapter_inject(*rf) * w).sum(), rf)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_torch_path_only_for_eager_cuda_calls(monkeypatch):
    from osmos.ops.adapter_inject import _torch_path

    assert not _torch_path(torch.zeros(1))  # CPU tensors keep the native kernel
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not _torch_path(torch.zeros(1))


def test_untracked_eager_calls_skip_the_op_with_the_same_bits(monkeypatch):
    # inference calls run the kernel without the custom op's dispatch; the results are the op's
    import sys

    mod = sys.modules["osmos.ops.adapter_inject"]  # the module (osmos.ops.adapter_inject is the function)
    y, x, down, up, gamma = make(2, 7, 16, 24, 3)
    via_op = mod._adapter_inject_op(y, x, down, up, gamma)
    y_op = y.clone()
    mod._adapter_inject_inplace_op(y_op, x, down, up, gamma)
    calls = []
    monkeypatch.setattr(mod, "_adapter_inject_op", lambda *a: calls.append("op"))
    monkeypatch.setattr(mod, "_adapter_inject_inplace_op", lambda *a: calls.append("inplace op"))
    with torch.no_grad():
        direct = adapter_inject(y, x, down, up, gamma)
        y_direct = adapter_inject_(y.clone(), x, down, up, gamma)
    assert calls == [] and torch.equal(direct, via_op) and torch.equal(y_direct, y_op)
    # a call autograd records, or one torch.compile traces, keeps the op
    down.requires_grad_(True)
    adapter_inject(y, x, down, up, gamma)
    down.requires_grad_(False)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    adapter_inject(y, x, down, up, gamma)
    adapter_inject_(y.clone(), x, down, up, gamma)
    assert calls == ["op", "op", "inplace op"]
