"""Every Triton kernel the ops launch compiles for an H100 (sm_90: Triton's GPU compiler down to
PTX and SASS with its own ptxas), on a machine without a GPU.

The kernels run here only in Triton's interpreter, which accepts code the GPU compiler rejects
(mixed integer widths, dot shapes, constexpr misuse, register tiles it cannot lay out). So a
small call of every Triton launcher runs in the interpreter with its launches recorded (kernel,
argument types, constexprs, warps, which pointers and integers are multiples of 16, as a JIT launch
specialises them), and a subprocess without the interpreter compiles each recorded launch for
sm_90. The two fused GEMMs are recorded with the tile sizes they use on a GPU (the interpreter's
are smaller), at sizes that are multiples of 16 (the usual case there) and at odd ones.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

from osmos.ops.rps_mapping import LayerMap
from conftest import triton_available

pytestmark = pytest.mark.skipif(
    not (triton_available() and os.environ.get("TRITON_INTERPRET") == "1" and not torch.cuda.is_available()),
    reason="records launches in Triton's interpreter (TRITON_INTERPRET=1, no GPU)")

_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
          torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
          torch.bool: "i1"}
_LAUNCH_OPTIONS = {"num_warps", "num_stages", "num_ctas", "maxnreg"}


def _describe(fn, args, kwargs) -> dict:
    """One launch as JSON: the kernel's module and name, Triton signature types, constexprs."""
    import triton.language as tl

    params = inspect.signature(fn).parameters
    bound = dict(zip(params, args))
    bound.update({k: v for k, v in kwargs.items() if k not in _LAUNCH_OPTIONS})
    signature, constexprs, aligned = {}, {}, []
    for name, p in params.items():
        value = bound.get(name, p.default)
        if p.annotation is tl.constexpr or p.annotation == "tl.constexpr":
            signature[name] = "constexpr"
            constexprs[name] = value if isinstance(value, (bool, int, float, str, type(None))) else str(value)
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
            if value.data_ptr() % 16 == 0:
                aligned.append(name)
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0 and value != 0:
                aligned.append(name)
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {name}={value!r}")
    options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
    return dict(module=fn.__module__, name=fn.__name__, signature=signature, constexprs=constexprs, options=options,
                aligned=aligned)


@pytest.fixture
def launches(monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction

    recorded = []
    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        recorded.append(_describe(self.fn, args, kwargs))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recording_run)
    return recorded


def _run_every_launcher(monkeypatch):
    from osmos.triton_kernels import (adapter_inject, cache_select, group_norm, rps_gather, rps_linear,
                                      similarity_topk, topk_compress)

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        x, y = torch.randn(2, 5, 24, generator=g).to(dtype), torch.randn(2, 5, 40, generator=g).to(dtype)
        down, up, gamma = torch.randn(4, 24), torch.randn(4, 40), torch.rand(2, 4)
        adapter_inject.adapter_inject(torch.empty_like(y), y, x, down, up, gamma)
        fresh, cache = torch.randn(2, 3, 40).to(dtype), torch.randn(2, 3, 40).to(dtype)
        h, gate, use = torch.randn(2, 3, 40).to(dtype), torch.randn(2, 1, 40).to(dtype), torch.tensor([True, False])
        cache_select.cache_select(h, gate, fresh, cache, use)
        cache_select.cache_select(None, None, fresh, cache, use)
    xg = torch.randn(2, 8, 50)
    stats = group_norm.group_norm_stats(xg, 4)
    group_norm.group_norm_apply(xg, stats, torch.randn(8), torch.randn(8), 1e-5, True)
    q, db = torch.randn(3, 16), torch.randn(70, 16)
    similarity_topk.similarity_topk(q, db, 5)
    similarity_topk.similarity_topk(q, db.half(), 5, 0.5)
    for dtype in (torch.float32, torch.bfloat16):
        xs = torch.randn(1000, generator=g).to(dtype)
        topk_compress.topk_compress(xs, torch.zeros(1000, dtype=dtype), 17)
    for kind in ("stable", "roast", "hashednet"):
        config = LayerMap(kind, 301, 0, 40, 70, seed=1).config()
        M = torch.randn(301)
        rps_gather.rps_gather(M, config, 40, 70, 0.5)
        rps_gather.rps_scatter(torch.randn(40, 70), config, 40, 70, 0.5)
        rps_gather.rps_indices(config, 40, 70, "cpu")
    # the fused linear + adapters at GPU tiles; bfloat16 as a GPU runs it (the interpreter's own
    # launches widen its dots, the interpreter's bfloat16 tl.dot being wrong: results unused here)
    from osmos.triton_kernels import adapted_linear

    monkeypatch.setattr(adapted_linear, "_widen", lambda t: False)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        bk = 32 if dtype == torch.float32 else 64
        for k_in, n_out in ((32, 48), (24, 40)):
            x, w, b = (torch.randn(2, 8, k_in).to(dtype), torch.randn(n_out, k_in).to(dtype),
                       torch.randn(n_out).to(dtype))
            down, up, gamma = torch.randn(4, k_in).to(dtype), torch.randn(4, n_out).to(dtype), torch.rand(2, 4).to(dtype)
            for meta in (dict(BM=128, BN=128, BK=bk, GROUP_M=8, num_warps=8, num_stages=3),
                         dict(BM=64, BN=64, BK=bk, GROUP_M=8, num_warps=4, num_stages=3)):
                adapted_linear.adapted_linear(x, w, b, down, up, gamma, meta=meta)
        adapted_linear.adapted_linear(x, w, None, down, up, gamma, meta=meta)
    # the fused hashed linear at its GPU tiles and warps, float16 (tensor cores), both loops
    monkeypatch.setattr(rps_linear, "_blocks", lambda t: (128, 128, 32))
    for ahead in ("0", "1"):
        monkeypatch.setenv("OSMOS_RPS_LOAD_AHEAD", ahead)
        for kind in ("stable", "roast"):
            for rows, cols in ((128, 192), (130, 200)):
                config = LayerMap(kind, 4001, 0, rows, cols, seed=1).config()
                M, xl = torch.randn(4001).half(), torch.randn(16, cols).half()
                rps_linear.rps_linear_forward(xl, M, config, rows, cols, 0.5)
                rps_linear.rps_linear_grad_x(torch.randn(16, rows).half(), M, config, rows, cols, 0.5)
                rps_linear.rps_linear_grad_M(torch.randn(16, rows).half(), xl, config, rows, cols, 0.5)


_COMPILE = r"""
import importlib, json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

failures = []
for launch in json.load(sys.stdin):
    fn = getattr(importlib.import_module(launch["module"]), launch["name"])
    options = dict(num_warps=4, num_stages=3)
    options.update(launch["options"])
    if launch["name"] in ("_forward_kernel", "_grad_x_kernel", "_grad_M_kernel"):
        options["num_warps"] = 8  # what rps_linear launches on a GPU
    try:
        # the specialisation a JIT launch makes: 16-aligned pointers, integers divisible by 16
        # (without it pointer loads compile unvectorised and unpipelined: another code path)
        attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in launch["aligned"]}
        src = ASTSource(fn=fn, signature=launch["signature"], constexprs=launch["constexprs"], attrs=attrs)
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
        assert kernel.asm["cubin"], "no cubin"
    except Exception as e:  # report every failure, not just the first
        failures.append(f"{launch['module']}.{launch['name']} {launch['constexprs']}: {type(e).__name__}: {e}"[:2000])
print(json.dumps(failures))
"""


def _compile_for_sm90(launches: list[dict]) -> list[str]:
    """Compiles the recorded launches for sm_90 in subprocesses without the interpreter; returns
    one message per failure."""
    unique = sorted({json.dumps(launch, sort_keys=True): launch for launch in launches}.values(),
                    key=lambda launch: launch["name"])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    # compiling is most of the time (about a second per kernel): one process per core
    jobs = max(1, min(4, os.cpu_count() or 1, len(unique)))
    procs = [subprocess.Popen([sys.executable, "-c", _COMPILE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, text=True) for _ in range(jobs)]
    for i, proc in enumerate(procs):
        proc.stdin.write(json.dumps(unique[i::jobs]))
        proc.stdin.close()
    failures = []
    for proc in procs:
        out, err = proc.stdout.read(), proc.stderr.read()
        assert proc.wait(timeout=600) == 0, err[-4000:]
        failures += json.loads(out.strip().splitlines()[-1])
    return failures


def test_every_triton_kernel_compiles_for_sm90(launches, monkeypatch):
    _run_every_launcher(monkeypatch)
    names = {launch["name"] for launch in launches}
    # every kernel family was recorded (a launcher that stopped launching would hide here)
    assert {"_adapter_inject_kernel", "_adapted_linear_kernel", "_cache_select_kernel", "_forward_kernel", "_grad_x_kernel",
            "_grad_M_kernel", "_segment_table_kernel", "_stats_kernel", "_gather_kernel"} <= names, names
    failures = _compile_for_sm90(launches)
    assert not failures, "\n".join(failures)


def test_the_check_fails_on_a_kernel_only_the_interpreter_accepts(launches):
    """An 8 x 8 tl.dot runs in the interpreter; the GPU compiler needs 16 at least."""
    from _gpu_codegen_bad_kernel import dot_too_small_for_a_gpu

    a, out = torch.randn(8, 8), torch.empty(8, 8)
    dot_too_small_for_a_gpu[(1,)](a, out, B=8)
    torch.testing.assert_close(out, a @ a)
    assert [launch["name"] for launch in launches] == ["dot_too_small_for_a_gpu"]
    failures = _compile_for_sm90(launches)
    assert len(failures) == 1 and "dot_too_small_for_a_gpu" in failures[0], failures
