"""SPM training pieces: batch layout (no interleaving mix-up), losses, anchor sampling, and a
few train_spm steps on tiny UNets (finite loss, adapter moves, base frozen, resumable)."""

import pytest
import torch

from osmos.erase.spm import AnchorSampler, BatchLayout, anchoring_loss, erasure_loss, erasure_target, train_spm
from spm_tiny import tiny_pipe, tiny_unet


def test_layout_rows_belong_to_their_block():
    """Anchor predictions taken from the batch equal each anchor's prediction alone (the reference
    code laid anchors out interleaved and split in halves, mixing anchors with empty prompts)."""
    unet = tiny_unet("sd15")
    text = {"target": torch.randn(1, 5, 32), "surrogate": torch.randn(1, 5, 32), "anchors": torch.randn(4, 5, 32)}
    layout = BatchLayout([("target", 1), ("surrogate", 1), ("anchors", 4)])
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = layout.split(unet(latents.expand(6, -1, -1, -1), 10, encoder_hidden_states=layout.cat(text)).sample)
        for name, states in text.items():
            for i in range(states.shape[0]):
                alone = unet(latents, 10, encoder_hidden_states=states[i : i + 1]).sample
                torch.testing.assert_close(out[name][i : i + 1], alone, rtol=1e-4, atol=1e-5)
    assert [n for n, _ in layout.blocks] == ["target", "surrogate", "anchors"]


def test_layout_errors_and_empty_blocks():
    layout = BatchLayout([("target", 1), ("anchors", 0)])
    assert layout.size == 1 and list(layout.split(torch.zeros(1, 2))) == ["target"]
    with pytest.raises(ValueError, match="needs 2 rows"):
        BatchLayout([("a", 2)]).cat({"a": torch.zeros(1)})
    with pytest.raises(ValueError, match="batch has"):
        BatchLayout([("a", 2)]).split(torch.zeros(3))


def test_losses():
    tar, sur = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(erasure_target(tar, sur, 1.0), 2 * sur - tar)
    torch.testing.assert_close(erasure_target(tar, sur, 0.0), sur)
    assert erasure_loss(2 * sur - tar, tar, sur).item() == pytest.approx(0.0, abs=1e-7)
    assert erasure_loss(tar, tar, sur).item() == pytest.approx(((2 * (tar - sur)) ** 2).mean().item(), rel=1e-5)
    a = torch.randn(3, 4, 8, 8)
    assert anchoring_loss(a, a).item() == 0.0
    assert anchoring_loss(a[:0], a[:0]).item() == 0.0


def test_anchor_acceptance_prefers_far_concepts_and_rescales():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(6, 16, generator=g)
    near = target[None] + 0.3 * torch.randn(50, 6, 16, generator=g)
    far = torch.randn(50, 6, 16, generator=g)
    vocab = torch.cat([near, far])
    sampler = AnchorSampler(vocab, target, power=2.0)
    idx = sampler.sample_indices(400, g)
    far_share = (idx >= 50).float().mean().item()
    uniform = AnchorSampler(vocab, target, power=0.0).sample_indices(400, g)
    assert far_share > 0.8  # distance weighting measurably shifts the anchors
    assert 0.4 < (uniform >= 50).float().mean().item() < 0.6
    assert sampler.distance[50:].mean() > 3 * sampler.distance[:50].mean()
    anchors = sampler.embed(idx[:20], g)
    ratio = anchors.flatten(1).norm(dim=1) / target.norm()
    assert ((ratio > 0.8 - 1e-5) & (ratio < 1.2 + 1e-5)).all()
    perturbed = AnchorSampler(vocab, target, perturb=0.5).embed(idx[:1], g)
    assert not torch.allclose(perturbed / perturbed.norm(), anchors[:1] / anchors[:1].norm())
    with pytest.raises(ValueError, match="vocab_states must be"):
        AnchorSampler(vocab[:, :3], target)


ANCHORS = ["a dog", "a red car", "a house", "a tree", "a boat", "the sea"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_train_spm_few_steps(kind):
    pipe = tiny_pipe(kind)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    losses = []
    spm = train_spm(pipe, "a cat", steps=3, lr=1e-2, la_strength=10.0, anchors=ANCHORS, anchors_per_step=2,
                    sampling_steps=3, progress=False, callback=lambda s, l: losses.append(l))
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(l["loss"])) for l in losses)
    assert all(l["anchoring"] >= 0 for l in losses) and losses[-1]["anchoring"] > 0
    assert any(u.abs().sum() > 0 for u in spm.up)
    assert spm.concept == "a cat" and spm.settings["la_strength"] == 10.0
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m._forward_hooks for m in pipe.unet.modules())
    assert not any(p.requires_grad for p in pipe.unet.parameters())


@pytest.mark.slow
def test_train_spm_resumes_exactly(tmp_path):
    """steps 0-1 straight == step 0, checkpoint, then step 1 resumed (params, Adam state, RNG)."""
    pipe = tiny_pipe("sd21")
    straight = []
    kw = dict(steps=2, lr=1e-2, la_strength=0.0, sampling_steps=2, progress=False, seed=3)
    full = train_spm(pipe, "a cat", callback=lambda s, l: straight.append(l["loss"]), **kw)
    ckpt = tmp_path / "ckpt.safetensors"
    train_spm(pipe, "a cat", checkpoint=ckpt, checkpoint_every=1, **{**kw, "steps": 1})
    resumed = train_spm(pipe, "a cat", checkpoint=ckpt, **kw)
    for p, q in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert all(torch.isfinite(torch.tensor(straight)))


def test_anchor_sampler_can_keep_norms():
    g = torch.Generator().manual_seed(0)
    vocab = torch.randn(10, 6, 16, generator=g) * torch.linspace(0.5, 3, 10)[:, None, None]
    sampler = AnchorSampler(vocab, torch.randn(6, 16, generator=g), norm_range=None)
    idx = torch.arange(10)
    torch.testing.assert_close(sampler.embed(idx, g), vocab)


@pytest.mark.slow
def test_train_spm_keeps_prompt_pairs_and_blocks_together():
    """With (target, surrogate) pairs, 2 targets a step, a fixed anchor and 2 sampled anchors, the
    base batch is [targets | their own surrogates | fixed | anchors] and the adapted batch
    [targets | fixed | anchors], row by row (recorded from the UNet's inputs)."""
    pipe = tiny_pipe("sd15")
    pairs = [("a red cat", "a red"), ("a blue dog", "a blue"), ("a green cow", "a green")]
    enc = {p: pipe.encode_prompt([p])[0] for pair in pairs for p in pair}
    enc[""] = pipe.encode_prompt([""])[0]
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["encoder_hidden_states"].detach().clone()), with_kwargs=True)
    try:
        train_spm(pipe, "cat", steps=3, lr=1e-2, la_strength=10.0, anchors=ANCHORS, anchors_per_step=2,
                  sampling_steps=1, progress=False, prompts=pairs, targets_per_step=2, fixed_anchors=[""],
                  anchor_norm_range=None)
    finally:
        hook.remove()
    batches = [s for s in seen if s.shape[0] > 2]  # the two loss forwards per step (sampling_steps=1: no denoising)
    assert [b.shape[0] for b in batches] == [7, 5] * 3
    match = lambda row, prompt: torch.equal(row, enc[prompt])  # noqa: E731
    for base, adapted in zip(batches[::2], batches[1::2]):
        for i in range(2):
            target = next(t for t, _ in pairs if match(base[i], t))
            assert match(base[2 + i], dict(pairs)[target])  # each target's own surrogate
            assert torch.equal(adapted[i], base[i])
        assert match(base[4], "") and match(adapted[2], "")
        assert torch.equal(base[5:], adapted[3:])
        vocab = pipe.encode_prompt(ANCHORS)
        assert all(any(torch.equal(r, v) for v in vocab) for r in base[5:])  # unscaled vocabulary anchors
    with pytest.raises(ValueError, match="targets_per_step"):
        train_spm(pipe, "cat", steps=1, prompts=pairs, targets_per_step=0, progress=False)


@pytest.mark.slow
def test_train_spm_selected_keeps_the_lowest_validation_score():
    """One SPM per seed; the lowest score wins (the earliest on ties), the choice is recorded in
    the settings, and the chosen SPM is the one train_spm gives for that seed alone."""
    from osmos.erase.spm import train_spm_selected

    pipe = tiny_pipe("sd15")
    kw = dict(steps=1, lr=1e-2, la_strength=0.0, sampling_steps=1, progress=False)
    wanted = {3: 0.5, 7: 0.1, 9: 0.1}
    seen = []

    def validate(spm):
        seen.append(spm.settings["seed"])
        return wanted[spm.settings["seed"]]

    kept = []
    best, scores = train_spm_selected(pipe, "a cat", validate, [3, 7, 9],
                                      on_candidate=lambda seed, spm, score: kept.append((seed, spm, score)), **kw)
    assert seen == [3, 7, 9] and scores == [0.5, 0.1, 0.1]
    assert [(seed, score) for seed, _, score in kept] == [(3, 0.5), (7, 0.1), (9, 0.1)] and kept[1][1] is best
    assert best.settings["seed"] == 7
    assert best.settings["selection"] == {"seeds": [3, 7, 9], "scores": [0.5, 0.1, 0.1], "chosen": 7}
    alone = train_spm(pipe, "a cat", seed=7, **kw)
    for p, q in zip(best.parameters(), alone.parameters()):
        torch.testing.assert_close(p, q)
    other = train_spm(pipe, "a cat", seed=3, **kw)
    assert any(not torch.equal(p, q) for p, q in zip(best.parameters(), other.parameters()))


def test_train_spm_selected_rescores_already_trained_candidates():
    """trained(seed) supplies a candidate instead of training it (pipe is never touched here), so
    a new validate can re-score old draws; the lowest score still wins."""
    from osmos.erase.spm import SPM, train_spm_selected
    from osmos.erase.spm.targets import LayerSpec

    old = {seed: SPM({"l": LayerSpec("linear", 4, 4)}, "a cat", settings={"seed": seed}) for seed in (3, 7)}
    asked = []

    def trained(seed):
        asked.append(seed)
        return old[seed]

    best, scores = train_spm_selected(object(), "a cat", lambda spm: {3: 0.2, 7: 0.1}[spm.settings["seed"]], [3, 7],
                                      trained=trained)
    assert asked == [3, 7] and scores == [0.2, 0.1] and best is old[7]
    assert best.settings["selection"] == {"seeds": [3, 7], "scores": [0.2, 0.1], "chosen": 7}


def test_train_spm_selected_compares_tuple_scores_in_order():
    """(rate, tie-breaker) scores: the rate decides, the second entry only between equal rates;
    mixing floats and tuples or a non-finite entry is refused."""
    from osmos.erase.spm import SPM, train_spm_selected
    from osmos.erase.spm.targets import LayerSpec

    old = {seed: SPM({"l": LayerSpec("linear", 4, 4)}, "a cat", settings={"seed": seed}) for seed in (3, 7, 9)}
    score = {3: (0.1, 0.5), 7: (0.1, 0.2), 9: (0.2, 0.0)}
    best, scores = train_spm_selected(object(), "a cat", lambda spm: score[spm.settings["seed"]], [3, 7, 9],
                                      trained=old.get)
    assert best is old[7] and scores == [(0.1, 0.5), (0.1, 0.2), (0.2, 0.0)]
    assert best.settings["selection"]["chosen"] == 7
    with pytest.raises(ValueError, match="floats for every seed or tuples"):
        train_spm_selected(object(), "a cat", lambda spm: {3: 0.1, 7: (0.1, 0.0)}[spm.settings["seed"]], [3, 7],
                           trained=old.get)
    with pytest.raises(ValueError, match="finite score"):
        train_spm_selected(object(), "a cat", lambda spm: (0.1, float("nan")), [3], trained=old.get)


def test_train_spm_selected_errors():
    from osmos.erase.spm import train_spm_selected

    pipe = object()  # never reached: the arguments are checked first
    with pytest.raises(TypeError, match="sequence of training seeds"):
        train_spm_selected(pipe, "a cat", lambda s: 0.0, 3)
    with pytest.raises(ValueError, match="at least one"):
        train_spm_selected(pipe, "a cat", lambda s: 0.0, [])
    with pytest.raises(ValueError, match="must differ"):
        train_spm_selected(pipe, "a cat", lambda s: 0.0, [1, 1])
    with pytest.raises(ValueError, match="do not pass seed"):
        train_spm_selected(pipe, "a cat", lambda s: 0.0, [1, 2], seed=4)
    with pytest.raises(ValueError, match="do not pass checkpoint"):
        train_spm_selected(pipe, "a cat", lambda s: 0.0, [1, 2], checkpoint="x.safetensors")


@pytest.mark.slow
def test_train_spm_selected_refuses_a_non_finite_score():
    from osmos.erase.spm import train_spm_selected

    pipe = tiny_pipe("sd15")
    with pytest.raises(ValueError, match="finite"):
        train_spm_selected(pipe, "a cat", lambda s: float("nan"), [0], steps=1, la_strength=0.0, sampling_steps=1,
                           progress=False)
