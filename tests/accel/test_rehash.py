"""Step Rehash on a tiny diffusers UNetMotionModel: key steps compute exactly, other steps skip
the deep blocks, runs restart on a rising timestep, and the calibrated schedule is optimal."""

import pytest
import torch

pytest.importorskip("diffusers")

from osmos.accel.streamline import (
    RehashConfig,
    calibrate_rehash,
    choose_key_steps,
    streamline,
)
from osmos.accel.streamline.rehash import deep_blocks

from tests.accel.test_streamline import tiny_motion_unet

TIMESTEPS = [900, 700, 500, 300, 100]


def sample_run(unet, seed=1, frames=4, size=8):
    """A toy sampler: x <- x - 0.1 * eps at each timestep; returns every step's UNet output."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, frames, size, size, generator=g)
    ctx = torch.randn(1, 5, 16, generator=g).repeat_interleave(frames, dim=0)
    outs = []
    with torch.no_grad():
        for t in TIMESTEPS:
            eps = unet(x, torch.tensor(t), encoder_hidden_states=ctx).sample
            outs.append(eps)
            x = x - 0.1 * eps
    return outs


def count_calls(module):
    calls = []
    return calls, module.register_forward_hook(lambda *a: calls.append(1))


def test_every_step_a_key_step_is_exact():
    unet = tiny_motion_unet()
    want = sample_run(unet)
    h = streamline(unet, rehash=RehashConfig(interval=1))
    got = sample_run(unet)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert h.rehash.stats == {"computed": 5, "reused": 0}
    h.remove()


def test_non_key_steps_skip_the_deep_blocks():
    unet = tiny_motion_unet()
    want = sample_run(unet)
    calls, hook = count_calls(unet.mid_block.resnets[0])  # inside: runs only when the block computes
    shallow, hook2 = count_calls(unet.up_blocks[-1].resnets[0])
    h = streamline(unet, rehash=RehashConfig(key_steps=[0, 3]))
    got = sample_run(unet)
    hook.remove(), hook2.remove()
    assert len(calls) == 2 and len(shallow) == 5  # deep part at steps 0 and 3 only; the shallow at all
    assert h.rehash.stats == {"computed": 2, "reused": 3}
    assert torch.equal(got[0], want[0])  # step 0 computes everything from the same input
    for step in (1, 2, 4):  # reused steps approximate: close, not equal
        assert not torch.equal(got[step], want[step])
        assert torch.isfinite(got[step]).all()
    rel = [((g - w).norm() / w.norm()).item() for g, w in zip(got, want)]
    assert max(rel) < 0.5
    h.remove()
    assert all(torch.equal(a, b) for a, b in zip(sample_run(unet), want))  # removed cleanly


def test_rising_timestep_starts_a_new_run():
    unet = tiny_motion_unet()
    h = streamline(unet, rehash=RehashConfig(interval=2))
    first = sample_run(unet, seed=2)
    second = sample_run(unet, seed=2)  # starts again at t=900: step 0 recomputes, same results
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert h.rehash.stats == {"computed": 6, "reused": 4}
    h.remove()


def test_choose_key_steps_is_optimal_on_known_features():
    a, b, c = torch.ones(8), -torch.ones(8), torch.arange(8.0)
    # features jump at steps 3 and 5: with three keys the best schedule keys exactly there
    feats = [a, a, a, b, b, c, c]
    assert choose_key_steps(feats, 3) == [0, 3, 5]
    assert choose_key_steps(feats, 1) == [0]
    assert choose_key_steps(feats, 99) == list(range(7))
    with pytest.raises(ValueError, match="budget"):
        choose_key_steps(feats, 0)


def test_choose_key_steps_matches_brute_force():
    import itertools

    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(6, generator=g) * (1 + i % 3) for i in range(8)]
    flat = torch.stack(feats)
    change = torch.cdist(flat, flat) / flat.norm(dim=1)[None, :]

    def cost(keys):
        total, last = 0.0, 0
        for j in range(len(feats)):
            if j in keys:
                last = j
            else:
                total += float(change[last, j])
        return total

    for budget in (2, 3, 4):
        best = min((c for c in itertools.combinations(range(1, 8), budget - 1)), key=lambda c: cost({0, *c}))
        got = choose_key_steps(feats, budget)
        assert cost(set(got)) == pytest.approx(cost({0, *best}), abs=1e-5)


def test_calibrate_then_run():
    unet = tiny_motion_unet()
    config = calibrate_rehash(unet, lambda: sample_run(unet), budget=3)
    assert len(config.key_steps) == 3 and config.key_steps[0] == 0
    h = streamline(unet, rehash=config)
    sample_run(unet, seed=4)
    assert h.rehash.stats == {"computed": 3, "reused": 2}
    h.remove()


def test_rehash_composes_with_slicing_and_rejects_bad_configs():
    unet = tiny_motion_unet()
    want = sample_run(unet)
    h = streamline(unet, spatial_slices=2, temporal_slices=3, rehash=RehashConfig(interval=1))
    got = sample_run(unet)
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(got, want))
    with pytest.raises(RuntimeError, match="already"):
        streamline(unet, rehash=RehashConfig(interval=2))
    h.remove()
    with pytest.raises(ValueError, match="exactly one"):
        RehashConfig()
    with pytest.raises(ValueError, match="exactly one"):
        RehashConfig(key_steps=[0], interval=2)
    with pytest.raises(ValueError, match="interval"):
        RehashConfig(interval=0)
    with pytest.raises(ValueError, match="depth"):
        deep_blocks(unet, 2)
    with pytest.raises(TypeError, match="RehashConfig"):
        streamline(unet, rehash={"interval": 2})


def test_rehash_on_the_zoo_image_unet():
    import osmos.zoo
    from osmos.accel.streamline import rehash

    pipe = osmos.zoo.load("shapes-unet", scheduler="ddim")

    def generate():
        return pipe(["a red circle", "a blue square"], num_inference_steps=4, generator=torch.Generator().manual_seed(0))

    want = generate()
    h = rehash(pipe.unet, RehashConfig(interval=1))
    assert torch.equal(generate(), want)
    h.remove()
    calls, hook = count_calls(pipe.unet.mid_block.resnets[0])
    h = rehash(pipe.unet, RehashConfig(interval=2))
    with pytest.raises(RuntimeError, match="already"):
        rehash(pipe.unet, RehashConfig(interval=2))
    got = generate()
    hook.remove()
    h.remove()
    assert len(calls) == 2  # steps 0 and 2 of 4
    assert ((got - want).norm() / want.norm()).item() < 0.2
    assert torch.equal(generate(), want)
