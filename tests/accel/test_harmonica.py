import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DiTTransformer2DModel  # noqa: E402

from osmos.accel.harmonica import HarmonicaConfig, Router, apply_harmonica, cache_units  # noqa: E402

T = 4


def tiny_dit():
    torch.manual_seed(0)
    m = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10,
    ).eval()
    # adaLN-Zero starts with zero gates; give the branches some weight so caching is visible
    with torch.no_grad():
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.1)
    return m


def run(model, x, steps=T):
    outs = []
    with torch.no_grad():
        for t in range(steps):
            ts = torch.full((x.shape[0],), 900 - 200 * t)
            outs.append(model(x + 0.1 * t, timestep=ts, class_labels=torch.zeros(x.shape[0], dtype=torch.long)).sample)
    return outs


def count_calls(model):
    counts = {}
    for name, block, attr in cache_units(model):
        def hook(mod, args, out, name=name):
            counts[name] = counts.get(name, 0) + 1
        getattr(block, attr).register_forward_hook(hook)
    return counts


def test_units_are_attention_and_mlp_of_every_block():
    names = [n for n, _, _ in cache_units(tiny_dit())]
    assert names == ["transformer_blocks.0.attn1", "transformer_blocks.0.ff", "transformer_blocks.1.attn1", "transformer_blocks.1.ff"]


def test_always_compute_router_is_bitwise_identical_and_remove_restores():
    model, x = tiny_dit(), torch.randn(2, 4, 8, 8)
    base = run(model, x)
    handle = apply_harmonica(model, HarmonicaConfig(Router.always(T, 4)))
    cached = run(model, x)
    handle.remove()
    after = run(model, x)
    for a, b, c in zip(base, cached, after):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert all(type(getattr(b, a)).__name__ != "CachedBranch" for _, b, a in cache_units(model))


def test_fora_skips_branches_and_changes_output_only_on_reuse_steps():
    model, x = tiny_dit(), torch.randn(2, 4, 8, 8)
    base = run(model, x)
    counts = count_calls(model)
    handle = apply_harmonica(model, HarmonicaConfig(Router.fora(T, 4, interval=2)))
    cached = run(model, x)
    assert set(counts.values()) == {T // 2}  # each branch ran on steps 0 and 2 only
    assert torch.equal(cached[0], base[0]) and torch.equal(cached[2], base[2])
    assert not torch.allclose(cached[1], base[1])
    assert handle.step == 0  # wrapped after T steps: the next call starts a new generation
    assert abs(handle.computed_fraction() - 0.5) < 1e-6


def test_router_threshold_and_first_step():
    r = Router(3, 4)
    with torch.no_grad():
        r.logits.fill_(-5.0)
    mask = r.compute_mask(0.1)
    assert mask[0].all() and not mask[1:].any()
    assert abs(r.cache_usage() - 8 / 12) < 1e-6


def test_per_sample_steps_match_separate_runs():
    model = tiny_dit()
    xa, xb = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    cls = torch.zeros(1, dtype=torch.long)
    router = Router.fora(T, 4, interval=2)

    def single(x, steps):
        h = apply_harmonica(model, HarmonicaConfig(router))
        with torch.no_grad():
            for s in steps:
                out = model(x, timestep=torch.tensor([500]), class_labels=cls).sample
        h.remove()
        return out

    want_a = single(xa, [0, 1])  # second call reuses
    want_b = single(xb, [0, 0])  # second call computes
    h = apply_harmonica(model, HarmonicaConfig(router))
    x = torch.cat([xa, xb])
    with torch.no_grad():
        h.set_sample_steps(torch.tensor([0, 0]))
        model(x, timestep=torch.tensor([500, 500]), class_labels=cls.repeat(2))
        h.set_sample_steps(torch.tensor([1, 0]))
        got = model(x, timestep=torch.tensor([500, 500]), class_labels=cls.repeat(2)).sample
    h.remove()
    torch.testing.assert_close(got[0:1], want_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1:2], want_b, rtol=1e-5, atol=1e-5)


def test_router_file_round_trip_and_compatibility(tmp_path):
    r = Router(5, 6, scheduler="DDIMScheduler")
    with torch.no_grad():
        r.logits.uniform_(-5, 5)
    r.save(tmp_path / "router.safetensors")
    back = Router.load(tmp_path / "router.safetensors")
    assert torch.equal(back.logits, r.logits) and back.scheduler == "DDIMScheduler"
    with pytest.raises(ValueError, match="20 sampling steps|5 sampling steps"):
        back.check_compatible(20)
    with pytest.raises(ValueError, match="DDIMScheduler"):
        back.check_compatible(5, "DPMSolverMultistepScheduler")


def test_errors():
    model = tiny_dit()
    with pytest.raises(ValueError, match="units"):
        apply_harmonica(model, HarmonicaConfig(Router.always(T, 6)))
    with pytest.raises(TypeError, match="transformer_blocks"):
        apply_harmonica(torch.nn.Linear(2, 2), HarmonicaConfig(Router.always(T, 4)))
    h = apply_harmonica(model, HarmonicaConfig(Router.always(T, 4)))
    with pytest.raises(RuntimeError, match="already"):
        apply_harmonica(model, HarmonicaConfig(Router.always(T, 4)))
    with pytest.raises(ValueError, match="steps"):
        h.set_sample_steps(torch.tensor([T]))
    h.remove()


def test_compiles_fullgraph_with_a_fixed_router():
    model, x = tiny_dit(), torch.randn(1, 4, 8, 8)
    base = run(model, x, steps=2)
    h = apply_harmonica(model, HarmonicaConfig(Router.fora(2, 4, interval=2)))
    want = run(model, x, steps=2)
    h.reset()
    compiled = torch.compile(model, fullgraph=True)
    got = run(compiled, x, steps=2)
    h.remove()
    torch.testing.assert_close(got[0], base[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-4)


def _train(beta, mode="leave_one_out", iterations=3, lr=0.5, **kw):
    from diffusers import DDIMScheduler

    from osmos.accel.harmonica import train_router

    model = tiny_dit()

    def sample_batch(gen):
        return torch.randn(2, 4, 8, 8, generator=gen), torch.zeros(2, dtype=torch.long)

    def denoise(m, x, t, labels):
        return m(x, timestep=t.expand(x.shape[0]), class_labels=labels).sample[:, :4]

    before = [p.clone() for p in model.parameters()]
    router, rec = train_router(
        model, DDIMScheduler(), num_steps=T, sample_batch=sample_batch, denoise=denoise, beta=beta,
        iterations=iterations, lr=lr, lambda_mode=mode, refresh_every=2, progress=False, **kw,
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # model untouched
    assert all(type(getattr(b, a)).__name__ != "_SoftBranch" for _, b, a in cache_units(model))
    return router, rec


@pytest.mark.parametrize("mode", ["leave_one_out", "sequential"])
def test_train_router_beta_trades_compute_for_quality(mode):
    lazy, rec = _train(beta=1.0, mode=mode)
    eager, _ = _train(beta=0.0, mode=mode)
    assert all(torch.isfinite(torch.tensor(rec.losses)))
    # IEPO: first refresh after the 2-iteration warm-up, normalised to mean 1; leave-one-out
    # measures every step (sequential only the steps the router already caches: maybe none yet)
    assert len(rec.lambdas) == 1 and rec.lambdas[0][0] == 0.0
    lam = torch.tensor(rec.lambdas[0][1:])
    assert lam.mean().item() == pytest.approx(1.0)
    assert mode == "sequential" or lam.std() > 0.05
    # a large compute penalty drives the probabilities of computing down, none drives them less
    assert lazy.probabilities()[1:].mean() < eager.probabilities()[1:].mean()
    assert lazy.logits.abs().max() <= 5.0


def test_iepo_warmup_and_the_bound_in_training():
    _, rec = _train(beta=0.0, iterations=3, iepo_warmup=0)
    assert len(rec.lambdas) == 2  # iterations 0 and 2
    assert rec.lambdas[0][1:] != [1.0] * (T - 1)  # at r = 0.5 the proxy already caches half the units
    # a router that caches nothing yet: leave-one-out still measures every step (toggles it whole)
    _, rec = _train(beta=0.0, iterations=1, iepo_warmup=0, init=5.0)
    lam = torch.tensor(rec.lambdas[0][1:])
    assert lam.mean().item() == pytest.approx(1.0) and lam.std() > 0.05 and (lam > 0).all()
    router, _ = _train(beta=1.0, iterations=2, max_reuse_run=1)
    m = router.compute_mask()
    assert router.max_reuse_run == 1 and m[0].all() and not (~m[1:] & ~m[:-1]).any()


def test_train_router_warm_start_and_invalid_init():
    # lr 0: the trained router is exactly the warm start, FORA-2's schedule
    router, _ = _train(beta=1.0, iterations=1, lr=0.0, init="fora-2", mode=None)
    assert router.compute_mask().equal(Router.fora(T, 4, 2).compute_mask())
    # training moves it: a compute penalty lowers the logits of the pairs FORA-2 computes (step 2)
    moved, _ = _train(beta=10.0, iterations=2, init="fora-2", mode=None)
    assert (moved.logits[2] < 4.0).all() and moved.logits[0].eq(5.0).all()
    with pytest.raises(ValueError, match="init"):
        _train(beta=0.0, iterations=1, init="fora-zero")


def test_step_error_weights():
    from diffusers import DDIMScheduler

    from osmos.accel.harmonica.train import step_error_weights

    for prediction, factor in (("epsilon", lambda a: (1 - a) / a), ("v_prediction", lambda a: 1 - a)):
        sched = DDIMScheduler(prediction_type=prediction)
        sched.set_timesteps(6)
        w = step_error_weights(sched, "x0")
        a = sched.alphas_cumprod[sched.timesteps].double()
        want = factor(a)[1:] / factor(a)[1:].mean()
        assert w[0] == 0.0 and torch.allclose(w[1:].double(), want, rtol=1e-5)
        assert w[1:].mean().item() == pytest.approx(1.0)
        assert (w[1:-1] > w[2:]).all()  # an output error at lower noise moves the predicted image less
    assert step_error_weights(sched, "output").equal(torch.ones(6))
    with pytest.raises(ValueError, match="error"):
        step_error_weights(sched, "pixels")
    with pytest.raises(ValueError, match="error='output'"):
        step_error_weights(type("NoSchedule", (), {"timesteps": sched.timesteps})(), "x0")


def test_x0_error_stops_paying_for_the_last_step():
    # the last step's output error barely changes the predicted image: under "x0" only the compute
    # penalty acts there, so it is reused more than under the paper's output MSE
    x0, _ = _train(beta=1e-3, iterations=3, error="x0", mode=None)
    out, _ = _train(beta=1e-3, iterations=3, error="output", mode=None)
    assert x0.probabilities()[-1].mean() < out.probabilities()[-1].mean()
