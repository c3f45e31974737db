"""A Triton kernel that only the interpreter accepts (an 8 x 8 tl.dot; the GPU compiler needs 16
at least): the negative control of test_triton_gpu_codegen.py, in a module of its own so the
compiling subprocess imports nothing else of the tests."""

import triton
import triton.language as tl


@triton.jit
def dot_too_small_for_a_gpu(a_ptr, out_ptr, B: tl.constexpr):
    offs = tl.arange(0, B)
    a = tl.load(a_ptr + offs[:, None] * B + offs[None, :])
    tl.store(out_ptr + offs[:, None] * B + offs[None, :], tl.dot(a, a))
