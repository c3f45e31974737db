import pytest
import torch
from worlds import GaussianWorld, memorized_and_normal, tiny_stable_diffusion

from osmos.replication.denoisers import DiffusersDenoiser, ZooDenoiser, as_denoiser
from osmos.replication.memorization import (conditional_noise_norms, denoiser_calls, highpass, memorization_score,
                                           trace_guidance)
from osmos.replication.metrics import roc_auc


@pytest.mark.parametrize("method", ["highpass", "magnitude"])
@pytest.mark.parametrize("steps", [1, 5])
def test_memorized_prompts_score_higher_on_a_world_built_to_memorize(steps, method):
    world = GaussianWorld()
    memorized, normal = memorized_and_normal()
    g = torch.Generator().manual_seed(0)
    pos = memorization_score(world, [], steps=steps, generator=g, embeddings=(memorized, None), method=method)
    neg = memorization_score(world, [], steps=steps, generator=g, embeddings=(normal, None), method=method)
    assert pos.shape == neg.shape == (6,)
    assert roc_auc(pos, neg) == 1.0
    assert float(pos.min()) > 2 * float(neg.max())


def test_first_step_norm_matches_hand_computation():
    world = GaussianWorld()
    memorized, _ = memorized_and_normal(2)
    norms = conditional_noise_norms(world, memorized, None, steps=1, num_samples=3,
                                    generator=torch.Generator().manual_seed(5))
    assert norms.shape == (2, 3, 1)
    x = torch.randn((6, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    t = world.scheduler.timesteps[0]
    cond = memorized.repeat_interleave(3, 0)
    diff = world.eps(x, t, cond, None) - world.eps(x, t, world.empty(6)[0], None)
    assert torch.allclose(norms.flatten(), diff.flatten(1).norm(dim=1), rtol=1e-5)


def test_the_empty_prompt_scores_zero_and_scores_average_samples():
    world = GaussianWorld()
    empty = world.empty(2)[0].clone()
    assert memorization_score(world, [], steps=3, embeddings=(empty, None)).tolist() == [0.0, 0.0]
    memorized, _ = memorized_and_normal(1)
    norms = conditional_noise_norms(world, memorized, None, steps=2, num_samples=4,
                                    generator=torch.Generator().manual_seed(1))
    score = memorization_score(world, [], steps=2, num_samples=4, generator=torch.Generator().manual_seed(1),
                               embeddings=(memorized, None), method="magnitude")
    assert score.item() == pytest.approx(norms.mean().item(), rel=1e-6)


def test_highpass_keeps_detail_and_drops_smooth_fields():
    flat = torch.full((2, 3, 8, 8), 0.7)
    assert highpass(flat).abs().max().item() < 1e-6
    ramp = torch.linspace(0, 1, 8).view(1, 1, 1, 8).expand(1, 3, 8, 8)
    assert highpass(ramp)[..., 1:-1].abs().max().item() < 1e-6  # linear inside, reflect padding at the borders
    checker = (torch.arange(8).view(8, 1) + torch.arange(8).view(1, 8)) % 2 * 2.0 - 1
    out = highpass(checker.expand(1, 3, 8, 8))
    assert torch.allclose(out.abs(), torch.full_like(out, 8 / 9))  # a +-1 checkerboard blurs to -+1/9


def test_highpass_score_is_the_detail_norm_of_the_conditional_noise():
    world = GaussianWorld()
    memorized, _ = memorized_and_normal(2)
    trace = trace_guidance(world, memorized, None, steps=3, num_samples=2, generator=torch.Generator().manual_seed(4))
    assert trace.eps_cond.shape == trace.latents.shape == (2, 2, 3, 1, 4, 4) and trace.alphas_cumprod.shape == (3,)
    expect = highpass(trace.conditional).flatten(3).norm(dim=3).mean(dim=(1, 2))
    score = memorization_score(world, [], steps=3, num_samples=2, generator=torch.Generator().manual_seed(4),
                               embeddings=(memorized, None))
    assert torch.allclose(score, expect)
    assert denoiser_calls(3, 2) == 12


def test_bad_arguments():
    world = GaussianWorld()
    memorized, _ = memorized_and_normal(1)
    with pytest.raises(ValueError, match="steps must be <="):
        memorization_score(world, [], steps=30, num_inference_steps=25, embeddings=(memorized, None))
    with pytest.raises(ValueError, match="num_samples"):
        memorization_score(world, [], num_samples=0, embeddings=(memorized, None))
    with pytest.raises(TypeError, match="steps"):
        memorization_score(world, [], steps=1.5, embeddings=(memorized, None))
    with pytest.raises(ValueError, match="prompts"):
        memorization_score(world, [])
    with pytest.raises(TypeError, match="ShapesPipeline"):
        as_denoiser(object())
    with pytest.raises(ValueError, match="method"):
        memorization_score(world, [], method="sharpness", embeddings=(memorized, None))


@pytest.fixture(scope="module")
def zoo_pipe():
    import osmos.zoo

    return osmos.zoo.load("shapes-unet")


def test_zoo_pipeline_scores(zoo_pipe):
    assert isinstance(as_denoiser(zoo_pipe), ZooDenoiser)
    score = memorization_score(zoo_pipe, ["", "a red circle", "a blue star on a white background"], steps=2,
                               num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    assert score.shape == (3,)
    assert score[0].item() == 0.0  # the empty prompt's states are the unconditional ones
    assert (score[1:] > 0).all() and torch.isfinite(score).all()


def test_stable_diffusion_pipeline_scores(tmp_path):
    pipe = tiny_stable_diffusion(tmp_path)
    denoiser = as_denoiser(pipe)
    assert isinstance(denoiser, DiffusersDenoiser) and denoiser.latent_shape == (4, 8, 8)
    score = memorization_score(pipe, ["", "a cat", "a red dog"], steps=2, num_inference_steps=5)
    assert score.shape == (3,) and score[0].item() == 0.0
    assert (score[1:] > 0).all() and torch.isfinite(score).all()
