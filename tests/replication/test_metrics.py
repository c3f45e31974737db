import pytest
import torch
from helpers import smooth_images

from osmos.replication import PixelDescriptor
from osmos.replication.metrics import (calibrate_threshold, replication_rate, replication_scores,
                                       retrieval_precision_recall, roc_auc)


@pytest.fixture
def sets():
    """training features of 20 images; generated = exact copies of 3, 11, 17 + 5 fresh images;
    fresh2 = 30 more fresh images of the same distribution for calibration."""
    d = PixelDescriptor()
    train = smooth_images(20, 32, seed=1)
    fresh = smooth_images(35, 32, seed=2)
    generated = torch.cat([train[[3, 11, 17]], fresh[:5]])
    return d(train), d(generated), d(fresh[5:])


def test_exact_copies_are_replicated_fresh_images_are_not(sets):
    train, gen, fresh = sets
    threshold = 0.5 * (1.0 + calibrate_threshold(torch.cat([gen[3:], fresh]), train, quantile=1.0))
    assert threshold < 0.99
    s = replication_scores(gen, train, threshold)
    assert s.match[:3].tolist() == [3, 11, 17]
    assert torch.allclose(s.similarity[:3], torch.ones(3), atol=1e-5)
    assert s.replicated.tolist() == [True] * 3 + [False] * 5
    assert s.rate == pytest.approx(3 / 8)
    assert replication_rate(gen, train, threshold) == pytest.approx(3 / 8)


def test_calibrated_threshold_is_the_quantile_of_fresh_top1(sets):
    train, _, fresh = sets
    top1 = (fresh @ train.T).max(1).values
    assert calibrate_threshold(fresh, train, 1.0) == pytest.approx(float(top1.max()), abs=1e-6)
    assert calibrate_threshold(fresh, train, 0.5) == pytest.approx(float(top1.double().quantile(0.5)), abs=1e-6)
    with pytest.raises(ValueError, match="quantile"):
        calibrate_threshold(fresh, train, 0.0)


def test_threshold_is_inclusive_and_float16_database(sets):
    train, gen, _ = sets
    s = replication_scores(gen[:1], train.half(), 1.0 - 1e-3)
    assert s.replicated.tolist() == [True]
    assert replication_scores(gen[:1], train, 1.0 + 1e-3).rate == 0.0


def test_precision_recall_against_ground_truth(sets):
    train, gen, _ = sets
    s = replication_scores(gen, train, 0.99)
    truth = [3, 11, 17] + [-1] * 5
    assert retrieval_precision_recall(s, truth) == (1.0, 1.0)
    # a wrong ground-truth image for the second copy: a false positive and a miss
    assert retrieval_precision_recall(s, [3, 12, 17] + [-1] * 5) == pytest.approx((2 / 3, 2 / 3))
    # a memorized generation that was not flagged lowers recall only
    assert retrieval_precision_recall(s, [3, 11, 17, 0] + [-1] * 4) == pytest.approx((1.0, 3 / 4))
    nothing = replication_scores(gen, train, 2.0)
    assert retrieval_precision_recall(nothing, truth) == (1.0, 0.0)
    with pytest.raises(ValueError, match="one entry per generation"):
        retrieval_precision_recall(s, [3])


def test_roc_auc_known_values():
    assert roc_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert roc_auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert roc_auc([1.0], [1.0]) == 0.5
    assert roc_auc([1.0, 3.0], [2.0]) == 0.5
    assert roc_auc(torch.tensor([2.0, 2.0, 5.0]), [2.0, 1.0]) == pytest.approx((0.5 + 1 + 0.5 + 1 + 1 + 1) / 6)
    with pytest.raises(ValueError, match="at least one"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([float("nan")], [1.0])


def test_bad_inputs(sets):
    train, gen, _ = sets
    with pytest.raises(ValueError, match="generated"):
        replication_scores(gen[0], train, 0.5)
    with pytest.raises(ValueError, match="at least one"):
        replication_scores(gen, train[:0], 0.5)
    with pytest.raises(TypeError, match="threshold"):
        replication_scores(gen, train, "0.5")


def test_micro_average_precision_ranks_by_similarity():
    from osmos.replication.metrics import ReplicationScores, micro_average_precision

    # ranks by similarity: q0 correct, q2 wrong match, q1 correct, q3 is a non-copy
    scores = ReplicationScores(match=torch.tensor([5, 7, 1, 2]), similarity=torch.tensor([0.9, 0.5, 0.8, 0.1]),
                               replicated=torch.tensor([True, False, True, False]), threshold=0.6)
    truth = [5, 7, 3, -1]
    # precision at the correct ranks: 1/1 (q0), 2/3 (q1); 3 positives
    assert micro_average_precision(scores, truth) == pytest.approx((1 + 2 / 3) / 3)
    assert micro_average_precision(scores, [-1] * 4) == 1.0
    with pytest.raises(ValueError, match="truth"):
        micro_average_precision(scores, [1, 2])


def test_roc_auc_ci_brackets_the_auc_and_narrows_with_data():
    from osmos.replication.metrics import roc_auc_ci

    g = torch.Generator().manual_seed(0)
    small = roc_auc_ci(torch.randn(10, generator=g) + 1, torch.randn(40, generator=g))
    big = roc_auc_ci(torch.randn(200, generator=g) + 1, torch.randn(800, generator=g))
    for auc, lo, hi in (small, big):
        assert lo <= auc <= hi and 0 <= lo and hi <= 1
    assert big[2] - big[1] < small[2] - small[1]
    assert big[1] < 0.76 < big[2]  # the true AUC of N(1, 1) vs N(0, 1) is Phi(1 / sqrt 2) = 0.760
    assert roc_auc_ci([2.0, 3.0], [0.0, 1.0]) == (1.0, 1.0, 1.0)  # perfect separation in every resample
    assert roc_auc_ci([1.0], [0.0], seed=3) == roc_auc_ci([1.0], [0.0], seed=3)
    with pytest.raises(ValueError, match="level"):
        roc_auc_ci([1.0], [0.0], level=1.5)
