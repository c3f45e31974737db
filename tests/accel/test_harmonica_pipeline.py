"""HarmoniCa on a (tiny, untrained) zoo-style PixArt pipeline: the pieces harmonica_eval.py uses."""

import zlib

import pytest
import torch

pytest.importorskip("diffusers")

from osmos.accel.harmonica import HarmonicaConfig, Router, apply_harmonica, cache_units
from osmos.accel.harmonica.pipeline import (
    budget_router,
    guided_denoiser,
    prompt_sampler,
    train_pipeline_router,
)
from osmos.zoo.models import Recipe, build_model
from osmos.zoo.pipeline import ShapesPipeline

T = 4
TOKENS, DIM = 5, 384


class HashEncoder:
    """Stand-in text encoder: deterministic states per prompt (no MiniLM load in these tests)."""

    def __call__(self, prompts):
        states = torch.stack([torch.randn(TOKENS, DIM, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                              for p in prompts])
        mask = torch.ones(len(prompts), TOKENS, dtype=torch.long)
        if prompts == [""]:
            mask[:, 1:] = 0
        return states, mask


@pytest.fixture(scope="module")
def pipe():
    config = {"sample_size": 8, "patch_size": 2, "in_channels": 3, "out_channels": 3, "num_layers": 2,
              "num_attention_heads": 2, "attention_head_dim": 8, "cross_attention_dim": 16, "caption_channels": DIM,
              "norm_type": "ada_norm_single", "use_additional_conditions": False}
    r = Recipe("tiny-dit", "PixArtTransformer2DModel", 8, config)
    torch.manual_seed(0)
    model = build_model(r)
    with torch.no_grad():  # give the gated branches weight, so reuse changes the output visibly
        for block in model.transformer_blocks:
            block.scale_shift_table.normal_(0, 1.0)
    return ShapesPipeline(model, r, text_encoder=HashEncoder(), scheduler="ddim")


def sample(pipe, steps=T):
    states, mask = pipe.encode_prompt(["a red circle", "a blue star"])
    return pipe.denoise(states, mask, steps, generator=torch.Generator().manual_seed(3))


def test_guided_denoiser_reproduces_the_pipeline_sampler(pipe):
    want = sample(pipe)
    states, mask = pipe.encode_prompt(["a red circle", "a blue star"])
    empty_s, empty_m = pipe.encode_prompt([""])
    cond = (torch.cat([empty_s.expand(2, -1, -1), states]), torch.cat([empty_m.expand(2, -1), mask]))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    denoise = guided_denoiser(pipe)
    pipe.scheduler.set_timesteps(T)
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            x = pipe.scheduler.step(denoise(pipe.unet, x, t, cond), t, x).prev_sample
    torch.testing.assert_close(x.clamp(-1, 1), want, rtol=0, atol=1e-6)


def test_prompt_sampler_shapes_and_guidance_layout(pipe):
    sample_batch = prompt_sampler(pipe, ["a red circle", "a blue star"], batch_size=3)
    x, (states, mask) = sample_batch(torch.Generator().manual_seed(0))
    assert x.shape == (3, 3, 8, 8) and states.shape == (6, TOKENS, DIM) and mask.shape == (6, TOKENS)
    empty_s, _ = pipe.encode_prompt([""])
    assert torch.equal(states[:3], empty_s.expand(3, -1, -1))  # unconditional rows first, as pipe.denoise
    with pytest.raises(ValueError, match="prompts"):
        prompt_sampler(pipe, [], batch_size=2)


def test_router_trained_to_always_refresh_reproduces_the_uncached_output_exactly(pipe):
    base = sample(pipe)
    router, rec = train_pipeline_router(pipe, T, beta=0.0, prompts=["a red circle"], batch_size=2, iterations=2,
                                        lr=0.01, init=5.0, refresh_every=2, progress=False)
    assert router.compute_mask().all() and rec.cache_usage[-1] == 0.0
    assert all(type(getattr(b, a)).__name__ != "_SoftBranch" for _, b, a in cache_units(pipe.unet))
    handle = apply_harmonica(pipe.unet, HarmonicaConfig(router))
    cached = sample(pipe)
    handle.remove()
    assert torch.equal(cached, base)


@pytest.mark.parametrize("method", ["harmonica", "l2c"])
def test_routers_train_under_a_multistep_scheduler(pipe, method):
    """DPM-Solver++ (shapes-dit's default sampler) keeps a step index and past outputs between steps:
    every training trajectory must start it afresh (before the fix the second one ran off the end of
    the schedule), and an always-refresh router still reproduces the uncached DPM-Solver++ output."""
    from diffusers import DPMSolverMultistepScheduler

    pipe.set_scheduler("dpm")
    try:
        assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
        base = sample(pipe)
        kw = {"refresh_every": 2} if method == "harmonica" else {}
        router, rec = train_pipeline_router(pipe, T, beta=0.0, prompts=["a red circle"], batch_size=2, iterations=3,
                                            lr=0.01, init=5.0, method=method, progress=False, **kw)
        assert len(rec.losses) == 3 and all(torch.isfinite(torch.tensor(rec.losses)))
        assert router.scheduler == "DPMSolverMultistepScheduler" and router.compute_mask().all()
        handle = apply_harmonica(pipe.unet, HarmonicaConfig(router))
        cached = sample(pipe)
        handle.remove()
        assert torch.equal(cached, base)
    finally:
        pipe.set_scheduler("ddim")


def test_a_large_compute_penalty_learns_to_reuse(pipe):
    router, rec = train_pipeline_router(pipe, T, beta=10.0, prompts=["a red circle"], batch_size=2, iterations=3, init=0.0,
                                        lr=1.0, refresh_every=3, progress=False)
    assert rec.cache_usage[-1] > 0.5
    mask = router.compute_mask()
    assert mask[0].all() and not mask[1:].all()


def test_fora_through_the_pipeline_reuses_at_the_expected_steps(pipe):
    base = sample(pipe)
    n_units = len(cache_units(pipe.unet))
    calls = {"units": [], "cross": 0}

    def on_unit(mod, args, out, k):
        calls["units"].append(k)

    hooks = [getattr(b, a).register_forward_hook(lambda m, i, o, k=k: on_unit(m, i, o, k))
             for k, (_, b, a) in enumerate(cache_units(pipe.unet))]
    hooks.append(pipe.unet.transformer_blocks[0].attn2.register_forward_hook(
        lambda m, i, o: calls.__setitem__("cross", calls["cross"] + 1)))
    handle = apply_harmonica(pipe.unet, HarmonicaConfig(Router.fora(T, n_units, interval=2)))
    steps_seen = []
    step_hook = pipe.unet.register_forward_pre_hook(lambda m, a, kw: steps_seen.append(handle.step), with_kwargs=True)
    cached = sample(pipe)
    handle.remove()
    step_hook.remove()
    for h in hooks:
        h.remove()
    assert steps_seen == [0, 1, 2, 3]
    # every unit ran on steps 0 and 2 only; cross-attention (not a unit) ran on every step
    assert sorted(calls["units"]) == sorted(list(range(n_units)) * 2) and calls["cross"] == T
    assert not torch.allclose(cached, base)
    # one step: nothing to reuse, identical to no cache
    handle = apply_harmonica(pipe.unet, HarmonicaConfig(Router.fora(1, n_units, interval=2)))
    one = sample(pipe, steps=1)
    handle.remove()
    assert torch.equal(one, sample(pipe, steps=1))


def test_budget_router_keeps_the_most_probable_units_at_the_budget():
    r = Router(3, 4, scheduler="DDIMScheduler")
    with torch.no_grad():
        r.logits.copy_(torch.tensor([[-5.0, -5, -5, -5], [4.0, -1, 2, -3], [3.0, 1, -2, 0]]))
    half = budget_router(r, 0.5)  # 6 of 12: the first step (4) + the two most probable later ones
    assert half.scheduler == "DDIMScheduler"
    assert torch.equal(half.compute_mask(), torch.tensor(
        [[True, True, True, True], [True, False, False, False], [True, False, False, False]]))
    eight = budget_router(r, 8 / 12).compute_mask()
    assert torch.equal(eight[1:], torch.tensor([[True, False, True, False], [True, True, False, False]]))
    assert budget_router(r, 0.0).compute_mask()[1:].sum() == 0
    assert budget_router(r, 1.0).compute_mask().all()
    with pytest.raises(ValueError, match="compute_fraction"):
        budget_router(r, 1.5)


@pytest.mark.parametrize("method", ["harmonica", "l2c"])
def test_both_trainers_leave_the_model_untouched_and_respond_to_beta(pipe, method):
    before = [p.clone() for p in pipe.unet.parameters()]
    kw = {"prompts": ["a red circle"], "batch_size": 2, "iterations": 2, "lr": 1.0, "init": 0.0,
          "method": method, "progress": False}
    if method == "harmonica":
        kw["refresh_every"] = 2
    lazy, rec = train_pipeline_router(pipe, T, beta=10.0, **kw)
    eager, _ = train_pipeline_router(pipe, T, beta=0.0, **kw)
    assert all(torch.equal(a, b) for a, b in zip(before, pipe.unet.parameters()))
    assert all(type(getattr(b, a)).__name__ != "_SoftBranch" for _, b, a in cache_units(pipe.unet))
    assert all(p.requires_grad for p in pipe.unet.parameters())
    assert len(rec.losses) == 2 and all(torch.isfinite(torch.tensor(rec.losses)))
    assert lazy.probabilities()[1:].mean() < 0.5 < eager.probabilities()[1:].mean()
    with pytest.raises(ValueError, match="method"):
        train_pipeline_router(pipe, T, beta=0.0, prompts=["x"], method="fora")
