"""Every op under torch.compile(fullgraph=True, backend="inductor") on a CUDA device gives what
the same call gives eagerly (the CPU compile tests live beside each op's own tests)."""

import pytest
import torch

from osmos.ops import (
    adapter_inject,
    cache_select,
    gf256_matmul,
    rps_gather,
    rps_linear,
    similarity_topk,
    sliced_group_norm,
    topk_compress,
    topk_decompress,
)
from osmos.ops.rps_mapping import LayerMap

pytestmark = pytest.mark.gpu


def _topk(g):
    x = torch.randn(100_000, device="cuda", generator=g)
    state = torch.zeros_like(x)

    def fn(x, state):
        values, indices = topk_compress(x, state, 1000)
        return topk_decompress(values * 2, indices, x.numel()), state + 0

    return fn, (x, state)


def _gf256(g):
    matrix = torch.randint(0, 256, (2, 4), dtype=torch.uint8, device="cuda", generator=g)
    blocks = torch.randint(0, 256, (4, 4096), dtype=torch.uint8, device="cuda", generator=g)
    return (lambda m, b: gf256_matmul(m, b) ^ 1), (matrix, blocks)


def _similarity(g):
    q = torch.nn.functional.normalize(torch.randn(5, 64, device="cuda", generator=g), dim=1)
    db = torch.nn.functional.normalize(torch.randn(3000, 64, device="cuda", generator=g), dim=1)

    def fn(q, db):
        s, i = similarity_topk(q, db, 7)
        return s * 2, i

    return fn, (q, db)


def _adapter(g):
    x = torch.randn(2, 16, 64, device="cuda", generator=g)
    y = torch.randn(2, 16, 32, device="cuda", generator=g)
    down = torch.randn(3, 64, device="cuda", generator=g) / 8
    up = torch.randn(3, 32, device="cuda", generator=g)
    gamma = torch.rand(2, 3, device="cuda", generator=g)
    return (lambda y, x, d, u, gm: adapter_inject(y * 1.5, x, d, u, gm)), (y, x, down, up, gamma)


def _cache_select(g):
    h, fresh, cache = (torch.randn(3, 5, 40, device="cuda", generator=g) for _ in range(3))
    gate = torch.randn(3, 40, device="cuda", generator=g)
    use = torch.tensor([True, False, True], device="cuda")

    def fn(h, gate, fresh, cache, use):
        cache = cache.clone()
        return cache_select(h, gate, fresh * 2, cache, use) * 0.5, cache

    return fn, (h, gate, fresh, cache, use)


def _group_norm(g):
    x = torch.randn(2, 8, 1024, device="cuda", generator=g)
    w, b = torch.randn(8, device="cuda", generator=g), torch.randn(8, device="cuda", generator=g)
    return (lambda x: sliced_group_norm(x, 4, w, b, 1e-5, True, slices=4)), (x,)


def _rps(g):
    config = LayerMap("stable", 500, 0, 48, 64, seed=3, layer=2, tile=(4, 8)).config()
    M = torch.randn(500, device="cuda", generator=g)
    x = torch.randn(6, 64, device="cuda", generator=g)

    def fn(x, M):
        return rps_linear(x, M, config, 48, 64, 0.5) + x @ rps_gather(M, config, 48, 64, 0.5).t()

    return fn, (x, M)


CASES = {"topk_compress": _topk, "gf256_matmul": _gf256, "similarity_topk": _similarity,
         "adapter_inject": _adapter, "cache_select": _cache_select, "sliced_group_norm": _group_norm,
         "rps": _rps}


@pytest.mark.parametrize("name", sorted(CASES))
def test_inductor_fullgraph_on_cuda_matches_eager(name):
    g = torch.Generator(device="cuda").manual_seed(0)
    fn, args = CASES[name](g)
    eager = fn(*[a.clone() for a in args])
    compiled = torch.compile(fn, fullgraph=True, backend="inductor")(*[a.clone() for a in args])
    for got, want in zip(compiled, eager) if isinstance(eager, tuple) else [(compiled, eager)]:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
