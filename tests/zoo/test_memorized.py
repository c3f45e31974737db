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
    picked = [0, 9, 17, 26]
    g = torch.Generator().manual_seed(4242)
    fresh = D.sample_attributes(4, g)
    others = D.captions_with_named(fresh, "train", g, 1.0, 1.0)[0]  # same caption form, no "sample i"
    mem = pipe([captions[i] for i in picked], num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    other = pipe(others, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    sim_mem, idx = nearest_similarity(mem, references)
    sim_other, _ = nearest_similarity(other, references)
    # measured values: benchmarks/RESULTS.md, "## Zoo: shapes-unet-ft, shapes-memorized, shapes-video"
    assert idx.tolist() == picked, (idx, sim_mem)  # each caption gives back its own training image
    assert sim_mem.min() > SIM_MEM, sim_mem
    assert sim_other.median() < SIM_OTHER, sim_other
