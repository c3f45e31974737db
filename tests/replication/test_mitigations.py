from types import SimpleNamespace

import pytest
import torch
from worlds import GaussianWorld, memorized_and_normal, tiny_stable_diffusion

from osmos.replication.denoisers import as_denoiser
from osmos.replication.memorization import memorization_score
from osmos.replication.mitigations import (first_step_noise_magnitude, insert_random_tokens, noise_text_embedding,
                                           optimize_prompt_embedding,
                                           vocabulary_from_tokenizer)


def test_noise_text_embedding_adds_gaussian_noise_of_the_given_scale():
    states = torch.randn(8, 24, 384)
    noisy = noise_text_embedding(states, 0.1, generator=torch.Generator().manual_seed(0))
    diff = noisy - states
    assert noisy.shape == states.shape and noisy.dtype == states.dtype
    assert diff.std().item() == pytest.approx(0.1, rel=0.02)
    assert abs(diff.mean().item()) < 0.005
    again = noise_text_embedding(states, 0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    assert torch.equal(noise_text_embedding(states, 0.0), states)
    with pytest.raises(ValueError, match="scale"):
        noise_text_embedding(states, -1.0)
    with pytest.raises(TypeError, match="states"):
        noise_text_embedding(torch.ones(2, dtype=torch.long))


def _is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(w in it for w in small)


def test_insert_random_tokens_keeps_the_prompt_and_adds_n_vocabulary_words():
    vocab = ["zebra", "quartz", "lamp"]
    prompts = ["a red circle on a black background", "star"]
    out = insert_random_tokens(prompts, vocab, n=4, generator=torch.Generator().manual_seed(0))
    for before, after in zip(prompts, out):
        words, new = before.split(), after.split()
        assert len(new) == len(words) + 4 and _is_subsequence(words, new)
        extra = list(new)
        for w in words:
            extra.remove(w)
        assert all(w in vocab for w in extra)
    assert out == insert_random_tokens(prompts, vocab, 4, torch.Generator().manual_seed(0))
    assert insert_random_tokens("a cat", vocab, n=0) == ["a cat"]
    positions = {insert_random_tokens("a b c", ["x"], 1, torch.Generator().manual_seed(s))[0].split().index("x")
                 for s in range(40)}
    assert positions == {0, 1, 2, 3}  # start, between words and end are all reachable
    with pytest.raises(ValueError, match="vocabulary"):
        insert_random_tokens("a cat", [], n=1)
    with pytest.raises(ValueError, match="n must"):
        insert_random_tokens("a cat", vocab, n=-1)


def test_vocabulary_from_tokenizer():
    fake = SimpleNamespace(get_vocab=lambda: {"red</w>": 0, "##ing": 1, "ab": 2, "Blue": 3, "x1y": 4, "[CLS]": 5,
                                              "café": 6})
    assert vocabulary_from_tokenizer(fake) == ["blue", "red"]


def test_optimize_prompt_embedding_lowers_the_memorization_score():
    world = GaussianWorld()
    memorized, _ = memorized_and_normal(3)
    before = memorization_score(world, [], steps=3, generator=torch.Generator().manual_seed(0),
                                embeddings=(memorized, None))
    opt, losses = optimize_prompt_embedding(world, memorized, steps=10, lr=0.1, num_samples=2,
                                            generator=torch.Generator().manual_seed(1))
    after = memorization_score(world, [], steps=3, generator=torch.Generator().manual_seed(0), embeddings=(opt, None))
    assert len(losses) == 10 and losses[-1] < 0.5 * losses[0]
    assert (after < before).all()
    assert not opt.requires_grad and opt.shape == memorized.shape
    # a target already met stops before the first update
    same, losses = optimize_prompt_embedding(world, memorized, steps=10, target=1e9)
    assert len(losses) == 1 and torch.equal(same, memorized)


def test_optimize_prompt_embedding_target_is_per_prompt():
    """A prompt whose magnitude is already at or below the target is returned bit for bit; the
    others are optimised until they reach it."""
    world = GaussianWorld()
    memorized, normal = memorized_and_normal(3)
    states = torch.cat([memorized, normal])
    g = torch.Generator().manual_seed(0)
    score = memorization_score(world, [], steps=1, generator=g, embeddings=(states, None))
    assert score[:3].min() > score[3:].max()  # the world's memorized prompts score higher
    magnitude = first_step_noise_magnitude(world, states, num_samples=8, generator=torch.Generator().manual_seed(1))
    assert magnitude[:3].min() > 10 * magnitude[3:].max()
    target = 3.0 * float(magnitude[3:].max())  # well above every normal prompt's squared magnitude
    opt, losses = optimize_prompt_embedding(world, states, steps=20, lr=0.1, target=target, num_samples=8,
                                            generator=torch.Generator().manual_seed(1))
    assert torch.equal(opt[3:], normal)
    assert not torch.equal(opt[:3], memorized)
    assert len(losses) < 20 and losses[0] > target


@pytest.fixture(scope="module")
def zoo_pipe():
    import osmos.zoo

    return osmos.zoo.load("shapes-unet")


def test_optimize_prompt_embedding_on_the_zoo_pipeline_leaves_the_model_alone(zoo_pipe):
    pipe = zoo_pipe
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    states, mask = as_denoiser(pipe).encode(["a red circle"])
    opt, losses = optimize_prompt_embedding(pipe, states, mask, steps=2, generator=torch.Generator().manual_seed(0))
    assert len(losses) == 2 and opt.shape == states.shape and not torch.equal(opt, states)
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    assert all(p.grad is None for p in pipe.unet.parameters())


def test_mitigated_generation_on_the_zoo_pipeline(zoo_pipe):
    pipe = zoo_pipe
    denoiser = as_denoiser(pipe)
    prompts = ["a red circle", "a green square"]
    states, mask = denoiser.encode(prompts)
    plain = pipe(prompts, num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    zero = denoiser.generate(noise_text_embedding(states, 0.0), mask, 4, generator=torch.Generator().manual_seed(0))
    noisy = denoiser.generate(noise_text_embedding(states, 0.5, torch.Generator().manual_seed(1)), mask, 4,
                              generator=torch.Generator().manual_seed(0))
    assert zero.shape == (2, 3, 16, 16) and torch.allclose(zero, plain, atol=1e-6)
    assert 0 <= noisy.min() and noisy.max() <= 1 and not torch.allclose(noisy, plain, atol=1e-3)


def test_mitigated_generation_on_a_stable_diffusion_pipeline(tmp_path):
    pipe = tiny_stable_diffusion(tmp_path)
    denoiser = as_denoiser(pipe)
    prompts = ["a cat", "a red dog"]
    states, mask = denoiser.encode(insert_random_tokens(prompts, ["mat"], 0))
    plain = pipe(prompts, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    zero = denoiser.generate(noise_text_embedding(states, 0.0), mask, 3, generator=torch.Generator().manual_seed(0))
    noisy = denoiser.generate(noise_text_embedding(states, 1.0, torch.Generator().manual_seed(1)), mask, 3,
                              generator=torch.Generator().manual_seed(0))
    assert zero.shape == (2, 3, 8, 8) and torch.allclose(zero, plain, atol=1e-5)
    assert not torch.allclose(noisy, plain, atol=1e-4)
    opt, losses = optimize_prompt_embedding(pipe, states, mask, steps=3, num_inference_steps=5)
    assert opt.shape == states.shape and len(losses) == 3 and losses[-1] < losses[0]


def test_optimize_prompt_embedding_highpass_objective():
    """method="highpass" minimises the high-pass detail of the conditional noise (what the default
    memorization score measures); an unknown method is refused."""
    world = GaussianWorld()
    memorized, _ = memorized_and_normal(3)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    before = first_step_noise_magnitude(world, memorized, num_samples=8, generator=g(), method="highpass")
    assert not torch.allclose(before, first_step_noise_magnitude(world, memorized, num_samples=8, generator=g()))
    opt, losses = optimize_prompt_embedding(world, memorized, steps=10, lr=0.1, num_samples=8, generator=g(),
                                            method="highpass")
    after = first_step_noise_magnitude(world, opt, num_samples=8, generator=g(), method="highpass")
    assert losses[-1] < losses[0] and (after < before).all()
    with pytest.raises(ValueError, match="method must be one of"):
        optimize_prompt_embedding(world, memorized, steps=1, method="sharp")
