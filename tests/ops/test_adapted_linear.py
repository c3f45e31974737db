"""osmos.ops.adapted_linear: the fused Triton kernel and every dispatch path against the reference,
bitwise agreement with base layer + adapter_inject_ on the CPU, opcheck, compile, bad inputs."""

import os
import sys

import pytest
import torch
import torch.nn.functional as F

from osmos.ops import adapted_linear, adapter_inject_
from osmos.ops.adapted_linear import reference_adapted_linear
from conftest import triton_available

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
needs_triton = pytest.mark.skipif(not triton_available(), reason="needs triton with a GPU or TRITON_INTERPRET=1")
op_module = sys.modules["osmos.ops.adapted_linear"]


def make(batch, tokens, fin, fout, adapters, dtype=torch.float32, bias=True, device="cpu"):
    """(x, weight, bias, down, up, gamma): x and the layer in dtype, adapters float32, a gamma row per sample."""
    x = torch.randn(batch, tokens, fin).to(dtype)
    weight = (torch.randn(fout, fin) / fin**0.5).to(dtype)
    b = torch.randn(fout).to(dtype) if bias else None
    down = torch.randn(adapters, fin) / fin**0.5
    up = torch.randn(adapters, fout)
    gamma = torch.rand(batch, adapters) * 2 - 0.5
    return tuple(None if t is None else t.to(device) for t in (x, weight, b, down, up, gamma))


def assert_close(got, args, scale=1):
    x = args[0]
    rtol, atol = TOL[x.dtype]
    assert got.dtype == x.dtype and got.shape == (*x.shape[:-1], args[1].shape[0])
    torch.testing.assert_close(got, reference_adapted_linear(*args), rtol=rtol * scale, atol=atol * scale)


def test_reference_matches_plain_formula():
    x, w, b, down, up, gamma = make(2, 3, 5, 4, 3)
    expected = x @ w.T + b
    for s in range(2):
        for t in range(3):
            for k in range(3):
                expected[s, t] += gamma[s, k] * (down[k] @ x[s, t]) * up[k]
    torch.testing.assert_close(reference_adapted_linear(x, w, b, down, up, gamma), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_cpu_is_bitwise_base_layer_then_adapter_inject(dtype, bias):
    """The CPU op is exactly what the SPM hook computes: F.linear, then adapter_inject_ on its output."""
    args = make(2, 7, 33, 17, 4, dtype=dtype, bias=bias)
    x, w, b, down, up, gamma = args
    expected = adapter_inject_(F.linear(x, w, b), x, down, up, gamma)
    assert torch.equal(adapted_linear(*args), expected)
    assert_close(adapted_linear(*args), args)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape, bias", [
    ((2, 7, 33, 17, 1), True),     # nothing a multiple of the tiles
    ((3, 11, 40, 70, 4), False),   # several row and column tiles, no bias
    ((1, 16, 64, 32, 16), True),   # exact tiles, C = 16
    ((2, 5, 20, 9, 17), True),     # C = 17 pads to 32
])
def test_triton_kernel_matches_reference(dtype, shape, bias):
    from osmos.triton_kernels.adapted_linear import adapted_linear as kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = make(*shape, dtype=dtype, bias=bias, device=device)
    assert_close(kernel(*args), args)


@needs_triton
def test_triton_kernel_per_sample_gamma_and_low_precision_adapters():
    from osmos.triton_kernels.adapted_linear import adapted_linear as kernel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w, b, down, up, gamma = make(3, 9, 24, 20, 4, dtype=torch.float16, device=device)
    gamma[1] = 0
    out = kernel(x, w, b, down, up, gamma)
    torch.testing.assert_close(out[1], F.linear(x[1], w, b), rtol=2e-3, atol=2e-3)  # no adapter in sample 1
    assert not torch.allclose(out[0], F.linear(x[0], w, b), rtol=2e-3, atol=2e-3)
    single = kernel(x[2:3].contiguous(), w, b, down, up, gamma[2:3])  # each sample reads only its own row
    torch.testing.assert_close(out[2:3], single)
    args = (x, w, b, down.half(), up.bfloat16(), gamma.double())  # any float dtype for the adapters
    assert_close(kernel(*args), args)


@needs_triton
def test_triton_kernel_edge_shapes():
    from osmos.triton_kernels.adapted_linear import adapted_linear as kernel

    args = make(2, 0, 8, 6, 3)
    assert kernel(*args).shape == (2, 0, 6)
    args = make(2, 3, 8, 6, 0)  # no adapters: the plain linear
    torch.testing.assert_close(kernel(*args), F.linear(args[0], args[1], args[2]))
    x = torch.randn(4, 6)  # 2-D x: batch of single tokens
    args = (x, torch.randn(5, 6), None, torch.randn(2, 6), torch.randn(2, 5), torch.rand(4, 2))
    assert_close(kernel(*args), args)
    x = torch.randn(2, 3, 2, 6)  # extra token dims
    args = (x, torch.randn(5, 6), torch.randn(5), torch.randn(2, 6), torch.randn(2, 5), torch.rand(2, 2))
    assert_close(kernel(*args), args)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or not triton_available(), reason="interpreter only")
def test_op_dispatches_to_triton_when_asked(monkeypatch):
    monkeypatch.setenv("OSMOS_CPU_BACKEND", "triton")
    args = make(2, 9, 20, 18, 3)
    got = adapted_linear(*args)
    assert_close(got, args)
    x, w, b, down, up, gamma = args
    assert not torch.equal(got, adapter_inject_(F.linear(x, w, b), x, down, up, gamma))  # another summation order


def test_cuda_torch_fallback_matches_reference(monkeypatch):
    """The CUDA path without the Triton kernel (F.linear + torch_adapter_inject), run on the CPU."""
    monkeypatch.setattr(op_module, "fused_on_gpu", lambda x: False)
    for dtype in (torch.float32, torch.bfloat16):
        args = make(2, 7, 33, 17, 4, dtype=dtype)
        assert_close(op_module._run_cuda(*args), args, scale=2)


def test_fused_on_gpu_defaults(monkeypatch):
    from osmos import _native

    monkeypatch.delenv("OSMOS_GPU_BACKEND", raising=False)
    usable = _native.triton_status()[0]
    for dtype in (torch.float16, torch.bfloat16, torch.float32):  # opt-in until timed on a GPU
        assert not op_module.fused_on_gpu(torch.zeros(1, dtype=dtype))
    monkeypatch.setenv("OSMOS_GPU_BACKEND", "triton")
    assert op_module.fused_on_gpu(torch.zeros(1, dtype=torch.float16)) == usable
    assert op_module.fused_on_gpu(torch.zeros(1)) == usable
    monkeypatch.setenv("OSMOS_GPU_BACKEND", "torch")
    assert not op_module.fused_on_gpu(torch.zeros(1, dtype=torch.float16))


def test_inference_only():
    x, w, b, down, up, gamma = make(2, 3, 8, 6, 2)
    with pytest.raises(RuntimeError, match="inference only"):
        adapted_linear(x, w.requires_grad_(), b, down, up, gamma)
    with torch.no_grad():
        assert_close(adapted_linear(x, w, b, down, up, gamma), (x, w, b, down, up, gamma))


def test_opcheck():
    torch.library.opcheck(torch.ops.osmos.adapted_linear.default, make(2, 5, 12, 10, 3))
    torch.library.opcheck(torch.ops.osmos.adapted_linear.default, make(2, 5, 12, 10, 3, bias=False))


def test_torch_compile_fullgraph():
    args = make(2, 6, 12, 10, 3)
    compiled = torch.compile(adapted_linear, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*args), adapted_linear(*args), rtol=0, atol=0)
    args = make(2, 6, 12, 10, 3, bias=False)
    torch.testing.assert_close(compiled(*args), adapted_linear(*args), rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: {**a, "x": a["x"].int()}, TypeError, "x must have dtype"),
        (lambda a: {**a, "x": a["x"][0, 0]}, ValueError, "x must be"),
        (lambda a: {**a, "x": a["x"].transpose(0, 1)}, ValueError, "x must be contiguous"),
        (lambda a: {**a, "weight": a["weight"].double()}, TypeError, "weight must have dtype"),
        (lambda a: {**a, "weight": a["weight"][:, :-1]}, ValueError, "weight must be"),
        (lambda a: {**a, "weight": a["weight"][None]}, ValueError, "weight must be 2-D"),
        (lambda a: {**a, "weight": "W"}, TypeError, "weight must be a torch.Tensor"),
        (lambda a: {**a, "bias": a["bias"][:-1]}, ValueError, "bias must be"),
        (lambda a: {**a, "bias": a["bias"].half()}, TypeError, "bias must have dtype"),
        (lambda a: {**a, "down": a["down"][:, :-1]}, ValueError, "down must be"),
        (lambda a: {**a, "up": a["up"][:, :-1]}, ValueError, "up must be"),
        (lambda a: {**a, "gamma": a["gamma"][:1]}, ValueError, "gamma must be"),
        (lambda a: {**a, "gamma": [1.0]}, TypeError, "gamma must be a torch.Tensor"),
        (lambda a: {**a, "weight": a["weight"].to("meta")}, ValueError, "weight must be on x's device"),
        (lambda a: {**a, "up": a["up"].to("meta")}, ValueError, "up must be on x's device"),
    ],
)
def test_bad_inputs(change, error, match):
    x, w, b, down, up, gamma = make(2, 3, 8, 6, 2)
    args = change(dict(x=x, weight=w, bias=b, down=down, up=up, gamma=gamma))
    with pytest.raises(error, match=match):
        adapted_linear(**args)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["", "triton", "torch"])
def test_cuda_matches_reference(backend, monkeypatch):
    """Every CUDA path (default, Triton forced, torch forced) at an SD shape and odd sizes, eager and
    through the custom op (as under torch.compile)."""
    monkeypatch.setenv("OSMOS_GPU_BACKEND", backend)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for shape, bias in (((2, 1024, 640, 640, 4), True), ((2, 77, 333, 130, 17), False),
                            ((3, 300, 320, 1280, 1), True)):
            args = make(*shape, dtype=dtype, bias=bias, device="cuda")
            # tf32 (float32 torch path: cuBLAS may use it) and 16-bit roundings of the projections
            scale = 10 if dtype != torch.float32 else 100
            assert_close(adapted_linear(*args), args, scale=scale)
            assert_close(torch.ops.osmos.adapted_linear(*args), args, scale=scale)
