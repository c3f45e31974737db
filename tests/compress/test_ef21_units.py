"""EF21 pieces that need no process group: compressors, stepsize theory, weights, simulator."""

import math

import pytest
import torch

from osmos.compress.ef21 import (
    Compressor, EF21State, Identity, LogisticNonconvex, Quadratic, RandK, TopK, ef21_stepsize, l_am, l_qm,
    make_compressor, simulate, theta_beta,
)
from osmos.compress.ef21.weights import OnlineSmoothness, weights_from_smoothness


# --- compressors -------------------------------------------------------------------------------

def test_topk_step_keeps_largest_differences_and_updates_state():
    x = torch.tensor([0.5, -3.0, 1.0, 2.0, -0.1])
    g = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0])
    values, idx = TopK(k=2).step_(x, g, seed=0)
    assert idx.tolist() == [1, 3] and values.tolist() == [-3.0, 3.0]
    assert g.tolist() == [0.0, -3.0, 1.0, 2.0, 0.0]


def test_topk_batch_path_selects_what_the_op_selects():
    x, g = torch.randn(7, 33), torch.randn(7, 33)
    comp = TopK(ratio=0.2)
    g_rows = g.clone()
    expect = [comp.step_(x[i], g_rows[i], 0) for i in range(7)]
    values, idx = comp.step_batch_(x, g, 0)
    assert torch.equal(idx, torch.stack([i for _, i in expect]))
    assert torch.equal(values, torch.stack([v for v, _ in expect]))
    assert torch.equal(g, g_rows)


def test_randk_same_seed_same_indices_and_contractive():
    comp = RandK(ratio=0.25)
    a, b = comp.indices(40, 7, "cpu"), comp.indices(40, 7, "cpu")
    assert torch.equal(a, b) and a.numel() == 10 and not torch.equal(a, comp.indices(40, 8, "cpu"))
    x, g = torch.randn(40), torch.zeros(40)
    values, idx = comp.step_(x, g, 7)
    assert torch.equal(idx, a) and torch.equal(values, x[a])  # unscaled: contractive, alpha = k/d
    assert comp.alpha(40) == 0.25 and comp.index_bits(40) == 0 and comp.bits(40) == 10 * 32


def test_identity_and_bits():
    x, g = torch.randn(9), torch.randn(9)
    state = g.clone()
    values, idx = Identity().step_(x, state, 0)
    assert idx is None and torch.equal(state, x)
    torch.testing.assert_close(g + values, x)
    assert Identity().bits(9) == 9 * 32
    assert TopK(k=3).bits(1000) == 3 * (32 + 10)  # ceil(log2 1000) = 10 index bits


def test_make_compressor_names_and_errors():
    assert isinstance(make_compressor("top1"), TopK) and make_compressor("top1").num_selected(50) == 1
    assert make_compressor("topk", 0.1).num_selected(50) == 5
    assert isinstance(make_compressor("randk", 0.1), RandK)
    with pytest.raises(ValueError, match="compressor"):
        make_compressor("sign")
    with pytest.raises(ValueError, match="ratio"):
        make_compressor("topk", 0.0)
    with pytest.raises(ValueError, match="ratio"):
        TopK(ratio=1.5)


class HalfTopK(Compressor):
    """A user compressor: TopK with k = d // 2, written only against the interface."""

    def num_selected(self, d):
        return max(1, d // 2)

    def alpha(self, d):
        return self.num_selected(d) / d

    def step_(self, x, g, seed):
        idx = torch.sort(torch.topk((x - g).abs(), self.num_selected(x.numel())).indices).values
        values = (x - g)[idx]
        g.index_add_(0, idx, values)
        return values, idx


def test_user_compressor_plugs_into_simulator():
    q = Quadratic.random(3, 10, seed=1)
    res = simulate(q, 3, "ef21", HalfTopK(), 300, record_every=300)
    assert res.records[-1]["grad_norm_sq"] < 1e-4 * res.records[0]["grad_norm_sq"]
    assert res.records[-1]["bits"] == 32 * 10 + 300 * 5 * (32 + 4)


# --- stepsize theory -------------------------------------------------------------------------------

def test_theta_beta_and_means():
    theta, beta = theta_beta(0.19)
    assert theta == pytest.approx(0.1) and beta == pytest.approx(0.81 / 0.1)
    assert theta_beta(1.0) == (1.0, 0.0)
    assert l_qm([1, 1, 1, 100]) == pytest.approx(math.sqrt(10003 / 4))
    assert l_am([1, 1, 1, 100]) == pytest.approx(25.75)
    assert l_qm([1, 1, 1, 100]) / l_am([1, 1, 1, 100]) == pytest.approx(1.94, abs=0.01)  # the brief's example


def test_ef21_stepsize_formula_and_gain():
    L, L_i, k, d = 2.0, [1.0, 1.0, 1.0, 100.0], 1, 1000
    theta, beta = theta_beta(k / d)
    assert ef21_stepsize(L, L_i, k, d) == pytest.approx(1 / (L + l_am(L_i) * math.sqrt(beta / theta)))
    assert ef21_stepsize(L, L_i, k, d, weighted=False) == pytest.approx(1 / (L + l_qm(L_i) * math.sqrt(beta / theta)))
    gain = ef21_stepsize(L, L_i, k, d) / ef21_stepsize(L, L_i, k, d, weighted=False)
    assert 1.9 < gain < l_qm(L_i) / l_am(L_i)
    assert ef21_stepsize(1.0, [1.0], 5, 5) == 1.0  # no compression: gamma = 1 / L
    for bad in (dict(k=0), dict(k=6), dict(L=-1.0), dict(L_i=[1.0, 0.0])):
        args = dict(L=1.0, L_i=[1.0, 2.0], k=1, d=5) | bad
        with pytest.raises(ValueError):
            ef21_stepsize(**args)


# --- weights -------------------------------------------------------------------------------------

def test_weights_from_smoothness_and_online_estimator():
    assert weights_from_smoothness([1, 3], 2) == [0.25, 0.75]
    with pytest.raises(ValueError, match="one entry per rank"):
        weights_from_smoothness([1, 2, 3], 2)
    with pytest.raises(ValueError, match="positive"):
        weights_from_smoothness([1, 0], 2)
    est = OnlineSmoothness(2, momentum=0.5)
    assert est.weights() == [0.5, 0.5]
    est.update([1.0, 3.0])
    est.update([3.0, 1.0])
    assert est.estimate == [2.0, 2.0] and est.weights() == [0.5, 0.5]


def test_state_needs_initialised_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        EF21State(None)


# --- simulator -----------------------------------------------------------------------------------

def _logistic(n=10, seed=0, scaled=True):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n * 20, 12, generator=gen, dtype=torch.float64)
    b = torch.where(A @ torch.randn(12, generator=gen, dtype=torch.float64) > 0, 1.0, -1.0)
    scales = torch.linspace(1, 6, n) if scaled else None
    return LogisticNonconvex(A, b, lam=0.1).split(n, scales)


def test_simulator_ef21_w_equals_ef21_new_stepsize_for_topk():
    """TopK is positively homogeneous, so EF21-W is EF21 rescaled (same stepsize, same iterates)."""
    p = _logistic()
    w = simulate(p, 10, "ef21-w", "top1", 200, record_every=50)
    e = simulate(p, 10, "ef21", "top1", 200, stepsize="am", record_every=50)
    assert w.stepsize == e.stepsize
    torch.testing.assert_close(w.x, e.x, rtol=1e-9, atol=1e-12)


def test_simulator_converges_and_new_stepsize_is_larger():
    p = _logistic()
    old = simulate(p, 10, "ef21", "top1", 1500, record_every=1500)
    new = simulate(p, 10, "ef21-w", "top1", 1500, record_every=1500)
    assert new.stepsize / old.stepsize > 1.2
    assert new.records[-1]["grad_norm_sq"] < old.records[-1]["grad_norm_sq"] < old.records[0]["grad_norm_sq"]
    d = p.d
    assert old.records[-1]["bits"] == 32 * d + 1500 * (32 + math.ceil(math.log2(d)))


def test_simulator_partial_participation_keeps_absent_state_and_converges():
    q = Quadratic.random(6, 10, seed=2)
    full = simulate(q, 6, "ef21", TopK(k=2), 600, record_every=600)
    pp = simulate(q, 6, "ef21", TopK(k=2), 600, participation=0.5, seed=3, record_every=600)
    bits_round = 2 * (32 + 4)
    assert pp.records[-1]["bits"] < full.records[-1]["bits"] == 32 * 10 + 600 * bits_round
    assert pp.records[-1]["bits"] > 32 * 10 + 600 * bits_round * 0.3
    assert pp.records[-1]["grad_norm_sq"] < 1e-3 * pp.records[0]["grad_norm_sq"]


def test_simulator_randk_and_identity():
    q = Quadratic.random(4, 16, seed=5)
    r = simulate(q, 4, "ef21", RandK(ratio=0.25), 800, record_every=800)
    assert r.records[-1]["grad_norm_sq"] < 1e-4 * r.records[0]["grad_norm_sq"]
    i = simulate(q, 4, "ef21", "identity", 50, stepsize=1 / q.L, record_every=50)
    torch.testing.assert_close(i.x, q.minimizer(), rtol=0, atol=1e-6)


def test_simulator_rejects_bad_arguments():
    q = Quadratic.random(3, 5)
    with pytest.raises(ValueError, match="method"):
        simulate(q, 3, "ef14", "top1", 1)
    with pytest.raises(ValueError, match="workers"):
        simulate(q, 4, "ef21", "top1", 1)
    with pytest.raises(ValueError, match="participation"):
        simulate(q, 3, "ef21", "top1", 1, participation=0.0)
