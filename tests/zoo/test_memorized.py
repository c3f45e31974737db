import pytest
import torch

import osmos.zoo
from osmos.zoo import data as D
from osmos.zoo.evaluate import nearest_similarity


@pytest.fixture(scope="module")
def pipe():
    return osmos.zoo.load("shapes-memorized")


def test_memorized_training_set_matches_the_card():
    captions, images = osmos.zoo.memorized_images()
    assert captions == osmos.zoo.model_card("shapes-memorized")["memorized_captions"]
    assert images.shape == (32, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="not a memorizing model"):
        osmos.zoo.memorized_images("shapes-unet")


def test_reproduces_its_images_for_their_captions_and_not_for_others(pipe):
    captions, references = osmos.zoo.memorized_images()
    picked = [1, 9, 17, 25]  # every 8th caption
    g = torch.Generator().manual_seed(4242)
    fresh = D.sample_attributes(4, g)
    others = D.captions_with_named(fresh, "train", g, 1.0, 1.0)[0]  # same caption form, no "sample i"
    mem = pipe([captions[i] for i in picked], num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    other = pipe(others, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    sim_mem, idx = nearest_similarity(mem, references)
    sim_other, _ = nearest_similarity(other, references)
    # measured (DDIM 10 steps, seed 0): memorized 1.00 / 0.95 / 0.69 / 1.00, others 0.52 / 0.81 / 0.73 / 0.60;
    # more in benchmarks/RESULTS.md, "## Zoo: shapes-unet-ft, shapes-memorized, shapes-video"
    assert idx.tolist() == picked, (idx, sim_mem)  # each caption gives back its own training image
    assert sim_mem.median() > 0.85, sim_mem
    assert sim_other.median() < 0.8, sim_other
    assert sim_mem.mean() > sim_other.mean() + 0.15, (sim_mem, sim_other)
