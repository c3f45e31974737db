"""osmos.ft.reliability: closed forms against Monte Carlo and against hand-computed cases."""

import math

import pytest

from osmos.ft.reliability import (
    failure_probability,
    loss_probability_ec,
    loss_probability_replication,
    monte_carlo_loss_ec,
)


def test_hand_computed_cases():
    p = 0.1
    # one RS(2, 1) stripe loses when 2 or 3 of its 3 nodes fail
    assert loss_probability_ec(3, 2, 1, p) == pytest.approx(3 * p**2 * (1 - p) + p**3)
    # m = 0: any failure loses
    assert loss_probability_ec(5, 5, 0, p) == pytest.approx(1 - (1 - p) ** 5)
    assert loss_probability_replication(4, 2, p) == pytest.approx(1 - (1 - p**2) ** 2)
    assert failure_probability(0.0, 10) == 0.0
    assert failure_probability(1.0, 1.0) == pytest.approx(1 - math.exp(-1))


@pytest.mark.parametrize("nodes,k,m,p", [(12, 4, 2, 0.08), (30, 8, 2, 0.05), (14, 10, 4, 0.2)])
def test_closed_form_matches_monte_carlo(nodes, k, m, p):
    trials = 40_000
    closed = loss_probability_ec(nodes, k, m, p)
    simulated = monte_carlo_loss_ec(nodes, k, m, p, trials, seed=1)
    sigma = math.sqrt(max(closed * (1 - closed), 1e-12) / trials)
    assert abs(simulated - closed) < 5 * sigma + 1e-4


def test_ec_beats_replication_at_equal_memory():
    # RS(1, 1) is replication with 2 copies; RS(4, 4) costs the same memory and survives 4 losses
    p, nodes = 0.01, 1024
    assert loss_probability_ec(nodes, 1, 1, p) == pytest.approx(loss_probability_replication(nodes, 2, p))
    assert loss_probability_ec(nodes, 4, 4, p) < loss_probability_replication(nodes, 2, p) / 100


def test_tiny_probabilities_keep_precision():
    # 10,000 nodes, RS(8, 2), p = 1e-6: about 1,000 stripes x C(10, 3) p^3 = 1.2e-13
    loss = loss_probability_ec(10_000, 8, 2, 1e-6)
    assert loss == pytest.approx(1000 * math.comb(10, 3) * 1e-18, rel=1e-3)


def test_certain_failure():
    assert loss_probability_ec(12, 4, 2, 1.0) == 1.0
    assert loss_probability_replication(12, 3, 1.0) == 1.0
    assert loss_probability_ec(12, 4, 2, 0.0) == 0.0
    assert loss_probability_ec(3, 4, 2, 1.0) == 0.0  # no whole stripe: nothing protected here
