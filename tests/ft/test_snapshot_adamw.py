"""osmos.ft.SnapshotAdamW: the fused native AdamW step (every ISA path and thread count alike,
against torch.optim.AdamW), its out-of-place writes and checksums, and bad input."""

import copy

import pytest
import torch

from osmos import _native
from osmos.ft import SnapshotAdamW
from osmos.ft.checksum import crc32c
from osmos.ft.optim import reference_step, scalars

C = _native.C
ORDER = ["scalar", "avx2", "avx512"]
ISAS = [i for i in ORDER if ORDER.index(i) <= ORDER.index(C.detected_isa())]
if C.cpu_features()["vpclmulqdq"] and "avx512" in ISAS:
    ISAS.append("avx512-no-vpclmul")  # "avx512" checksums with VPCLMULQDQ here; this with crc32


def _set_isa(name):
    C.set_cpu_isa(name.removesuffix("-no-vpclmul"))
    C.set_cpu_vpclmul(not name.endswith("-no-vpclmul"))


def _kernel(p, g, m, v, s, threads=1, out=None):
    out = out or [torch.empty_like(p) for _ in range(3)]
    crcs = C.adamw_snapshot([[t.data_ptr() for t in (p, g, m, v, *out)]], [p.numel()], s, True, threads)
    return out, crcs


def _inputs(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=gen), torch.randn(n, generator=gen), 0.1 * torch.randn(n, generator=gen),
            0.01 * torch.rand(n, generator=gen))


@pytest.mark.parametrize("n", [0, 1, 15, 1023, 1024, 1025, 70001])
@pytest.mark.parametrize("beta1", [0.9, 0.3])  # both branches of torch's lerp
def test_isa_paths_and_threads_agree_bitwise_and_checksums_are_right(n, beta1):
    p, g, m, v = _inputs(n)
    s = scalars(1e-2, beta1, 0.999, 1e-8, 0.1, 3.0)
    before = C.cpu_isa()
    results = []
    try:
        for isa in ISAS:
            _set_isa(isa)
            for threads in (1, 2, 3):
                results.append(_kernel(p, g, m, v, s, threads))
    finally:
        C.set_cpu_isa(before)
        C.set_cpu_vpclmul(True)
    (out0, crc0) = results[0]
    assert crc0 == [crc32c(t) for t in out0]
    for out, crcs in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out, out0)) and crcs == crc0
    ref = reference_step(p, g, m, v, s)  # torch's ops: the moments bit for bit on an FMA CPU
    for a, b in zip(out0, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    if C.cpu_isa() != "scalar" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert torch.equal(out0[1], ref[1]) and torch.equal(out0[2], ref[2])


def test_in_place_equals_out_of_place_bitwise():
    p, g, m, v = _inputs(5000, seed=1)
    s = scalars(3e-3, 0.9, 0.99, 1e-6, 0.01, 7.0)
    out, _ = _kernel(p, g, m, v, s, threads=2)
    q, mq, vq = p.clone(), m.clone(), v.clone()
    _kernel(q, g, mq, vq, s, threads=2, out=[q, mq, vq])
    assert torch.equal(q, out[0]) and torch.equal(mq, out[1]) and torch.equal(vq, out[2])


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.ReLU(), torch.nn.Linear(40, 3))


def _train(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 24, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("betas,wd", [((0.9, 0.999), 0.01), ((0.3, 0.9), 0.0)])
def test_matches_torch_adamw_and_shares_its_state_dict(betas, wd):
    a, b = _model(), _model()
    oa = torch.optim.AdamW(a.parameters(), lr=1e-2, betas=betas, weight_decay=wd, foreach=False)
    ob = SnapshotAdamW(b.parameters(), lr=1e-2, betas=betas, weight_decay=wd)
    _train(a, oa, 15), _train(b, ob, 15)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sb["state"].keys() == sa["state"].keys()
    assert all(sb["state"][k].keys() == sa["state"][k].keys() for k in sa["state"])
    assert torch.equal(sb["state"][0]["step"], sa["state"][0]["step"])
    # either optimizer resumes from the other's state
    c = _model()
    c.load_state_dict(b.state_dict())
    oc = torch.optim.AdamW(c.parameters(), lr=1e-2, betas=betas, weight_decay=wd, foreach=False)
    oc.load_state_dict(copy.deepcopy(ob.state_dict()))  # (a loaded state shares the saved tensors)
    d = _model()
    d.load_state_dict(a.state_dict())
    od = SnapshotAdamW(d.parameters(), lr=1e-2, betas=betas, weight_decay=wd)
    od.load_state_dict(copy.deepcopy(oa.state_dict()))
    _train(c, oc, 3, seed=5), _train(b, ob, 3, seed=5), _train(d, od, 3, seed=5), _train(a, oa, 3, seed=5)
    for pb, pc, pa, pd in zip(b.parameters(), c.parameters(), a.parameters(), d.parameters()):
        torch.testing.assert_close(pc, pb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pd, pa, rtol=1e-5, atol=1e-6)


def test_destination_receives_the_update_and_checksums():
    a, b = _model(), _model()
    oa, ob = SnapshotAdamW(a.parameters(), lr=1e-2), SnapshotAdamW(b.parameters(), lr=1e-2)
    list(b.parameters())[1].requires_grad_(False)  # one parameter without a gradient
    list(a.parameters())[1].requires_grad_(False)
    _train(a, oa, 2), _train(b, ob, 2)
    given = {}

    def destination(index, kind, like):
        given[index, kind] = torch.full_like(like, float("nan"))
        return given[index, kind]

    ob.destination, ob.checksum = destination, True
    _train(a, oa, 1, seed=3), _train(b, ob, 1, seed=3)
    params = list(b.parameters())
    assert {i for i, _ in given} == set(range(len(params)))  # the frozen one was moved too
    for i, (pa, pb) in enumerate(zip(a.parameters(), params)):
        assert pb.data_ptr() == given[i, "param"].data_ptr() and torch.equal(pa, pb)
        for kind in ("exp_avg", "exp_avg_sq"):
            if kind in ob.state[pb]:
                assert ob.state[pb][kind].data_ptr() == given[i, kind].data_ptr()
                assert torch.equal(ob.state[pb][kind], oa.state[pa][kind])
    assert set(ob.last_crc32c) == {t.data_ptr() for t in given.values()}
    assert all(ob.last_crc32c[t.data_ptr()] == crc32c(t) for t in given.values())


def test_pure_torch_fallback_matches_native(monkeypatch):
    a, b = _model(), _model()
    oa, ob = SnapshotAdamW(a.parameters(), lr=1e-2), SnapshotAdamW(b.parameters(), lr=1e-2)
    _train(a, oa, 4)
    monkeypatch.setattr(_native, "C", None)
    _train(b, ob, 4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-7)


def test_closure_is_called_and_its_loss_returned():
    m = _model()
    o = SnapshotAdamW(m.parameters())
    x = torch.randn(4, 24)

    def closure():
        o.zero_grad()
        loss = m(x).sum()
        loss.backward()
        return loss

    before = [p.clone() for p in m.parameters()]
    assert torch.is_tensor(o.step(closure))
    assert all(not torch.equal(p, q) for p, q in zip(m.parameters(), before))


def test_bad_input_is_rejected_clearly():
    m = _model()
    with pytest.raises(ValueError, match="lr"):
        SnapshotAdamW(m.parameters(), lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        SnapshotAdamW(m.parameters(), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="eps"):
        SnapshotAdamW(m.parameters(), eps=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        SnapshotAdamW(m.parameters(), weight_decay=-0.1)
    with pytest.raises(ValueError, match="threads"):
        SnapshotAdamW(m.parameters(), threads=0)
    with pytest.raises(TypeError, match="float32"):
        SnapshotAdamW(torch.nn.Linear(2, 2).double().parameters())
    emb = torch.nn.Embedding(10, 4, sparse=True)
    o = SnapshotAdamW(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        o.step()
    o = SnapshotAdamW(m.parameters())
    o.destination = lambda i, kind, like: torch.empty(3)
    _model()(torch.randn(2, 24)).sum().backward()
    m(torch.randn(2, 24)).sum().backward()
    with pytest.raises(ValueError, match="destination"):
        o.step()
    torch_state = torch.optim.AdamW(m.parameters(), amsgrad=True).state_dict()
    o = SnapshotAdamW(m.parameters())
    o.load_state_dict(torch_state)
    with pytest.raises(ValueError, match="amsgrad"):
        o.step()
