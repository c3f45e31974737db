import pytest
import torch

from osmos.zoo import data as D
from osmos.zoo.classifier import accuracy, frechet_distance, load_classifier


@pytest.fixture(scope="module")
def clf():
    return load_classifier()


def test_accuracy_on_fresh_renders(clf):
    acc = accuracy(clf, n=256, seed=424242)  # seeds never used in training
    # measured: shape 0.996 on these 256 (0.998 on 2048 others), colour / style / background 1.000
    assert acc["colour"] >= 0.99 and acc["style"] >= 0.99 and acc["background"] >= 0.99, acc
    assert acc["shape"] >= 0.98, acc


def test_frechet_distance_separates_real_from_noise(clf):
    g = torch.Generator().manual_seed(5)
    real_a = clf.features(D.render(D.sample_attributes(256, g), 16))
    real_b = clf.features(D.render(D.sample_attributes(256, g), 16))
    noise = clf.features(torch.rand(256, 3, 16, 16, generator=g))
    same, different = frechet_distance(real_a, real_b), frechet_distance(real_a, noise)
    assert 0 <= same < 0.1 * different
    assert frechet_distance(real_a, real_a) == pytest.approx(0, abs=1e-6)


def test_rejects_bad_input(clf):
    with pytest.raises(ValueError, match="images"):
        clf(torch.rand(2, 16, 16))
