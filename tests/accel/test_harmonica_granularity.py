"""Whole-step routing (granularity "step") and choosing a schedule by its measured final-image error."""

import pytest
import torch
from osmos.accel.harmonica.router import Router, budget_mask, budget_router

pytest.importorskip("diffusers")
from osmos.accel.harmonica import (  # noqa: E402
    HarmonicaConfig,
    apply_harmonica,
    image_errors,
    select_by_image_error,
)
from test_harmonica import T, _train, run, tiny_dit  # noqa: E402


def random_step_router(steps, units, seed, bound=None):
    r = Router(steps, units, "DDIMScheduler", max_reuse_run=bound, granularity="step")
    with torch.no_grad():
        r.logits.uniform_(-5, 5, generator=torch.Generator().manual_seed(seed))
    return r


def rows_are_whole(mask: torch.Tensor) -> bool:
    return bool(mask.all(dim=1).eq(mask.any(dim=1)).all())


@pytest.mark.parametrize("bound", [None, 1, 2])
@pytest.mark.parametrize("seed", range(3))
def test_step_router_mask_is_constant_across_each_step(bound, seed):
    r = random_step_router(12, 6, seed, bound)
    assert r.logits.shape == (12, 1) and r.num_units == 6
    p = r.probabilities()
    assert p.shape == (12, 6) and p.eq(p[:, :1]).all()
    for threshold in (0.1, 0.5, 0.9):
        m = r.compute_mask(threshold)
        assert m.shape == (12, 6) and m[0].all() and rows_are_whole(m)
        # the step's decision is its one probability against the threshold (bound only adds computations)
        assert (m[:, 0] | ~(torch.sigmoid(r.logits[:, 0]) > threshold)).all()


@pytest.mark.parametrize("interval", [1, 2, 3, 5])
def test_every_fora_schedule_is_a_step_router(interval):
    unit = Router.fora(13, 4, interval, "DDIMScheduler")
    step = Router.fora(13, 4, interval, "DDIMScheduler", granularity="step")
    assert step.granularity == "step" and step.logits.shape == (13, 1)
    assert step.compute_mask().equal(unit.compute_mask())
    assert Router.from_mask(unit.compute_mask(), granularity="step").compute_mask().equal(unit.compute_mask())
    warm = Router.initial(13, 4, f"fora-{interval}", "DDIMScheduler", max_reuse_run=interval, granularity="step")
    assert warm.granularity == "step" and warm.compute_mask().equal(unit.compute_mask())
    # at FORA's own budget the whole-step restriction of the warm start is FORA again
    assert budget_router(warm, 1.0 - unit.cache_usage()).compute_mask().equal(unit.compute_mask())


def test_step_budget_keeps_the_most_probable_whole_steps():
    r = random_step_router(20, 8, seed=4)
    for fraction, bound in ((0.35, None), (0.5, 2), (0.35, 3)):
        b = budget_router(r, fraction, bound)
        m = b.compute_mask()
        assert b.granularity == "step" and b.max_reuse_run == bound and rows_are_whole(m)
        assert int(m[:, 0].sum()) == round(fraction * 20)
        # the same steps as the exact per-step budget over the step probabilities
        assert m[:, 0].equal(budget_mask(r.probabilities()[:, :1], fraction, bound)[:, 0])
    free = budget_router(r, 0.35).compute_mask()[:, 0]
    p = torch.sigmoid(r.logits[1:, 0])
    assert p[~free[1:]].max() <= p[free[1:]].min()  # without a bound: simply the most probable steps


def test_step_router_file_round_trip_and_old_files(tmp_path):
    r = random_step_router(9, 6, seed=2, bound=2)
    r.save(tmp_path / "s.safetensors")
    back = Router.load(tmp_path / "s.safetensors")
    assert back.granularity == "step" and back.num_units == 6 and back.max_reuse_run == 2
    assert back.logits.shape == (9, 1) and torch.equal(back.logits, r.logits)
    assert back.compute_mask(0.3).equal(r.compute_mask(0.3))
    u = Router.fora(9, 6, 2)
    u.save(tmp_path / "u.safetensors")
    assert Router.load(tmp_path / "u.safetensors").granularity == "unit"
    from safetensors.torch import save_file

    # files written before granularities existed are per-unit routers
    save_file({"logits": torch.zeros(9, 6)}, str(tmp_path / "old.safetensors"),
              metadata={"format": "osmos.harmonica.router/1", "scheduler": "", "num_steps": "9"})
    old = Router.load(tmp_path / "old.safetensors")
    assert old.granularity == "unit" and old.num_units == 6


def test_bad_granularity_and_masks_raise():
    for make in (lambda g: Router(4, 2, granularity=g), lambda g: Router.initial(4, 2, 0.0, granularity=g),
                 lambda g: Router.fora(4, 2, 2, granularity=g),
                 lambda g: Router.from_mask(torch.ones(4, 2, dtype=torch.bool), granularity=g)):
        for bad in ("block", "Step", None):
            with pytest.raises(ValueError, match="granularity"):
                make(bad)
    mixed = torch.tensor([[1, 1], [1, 0], [0, 0]], dtype=torch.bool)
    with pytest.raises(ValueError, match="mask"):
        Router.from_mask(mixed, granularity="step")
    assert Router.from_mask(mixed).compute_mask().equal(mixed | torch.tensor([[1], [0], [0]], dtype=torch.bool))
    with pytest.raises(ValueError, match="granularity"):
        _train(beta=0.0, iterations=1, granularity="layer")
    with pytest.raises(ValueError, match="select_batches"):
        _train(beta=0.0, iterations=1, select_batches=-1)
    with pytest.raises(ValueError, match="select_batches"):
        _train(beta=0.0, iterations=1, select_batches=1)  # no warm start to compare against


def test_step_router_caches_like_the_same_per_unit_schedule():
    model, x = tiny_dit(), torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([True, False, True, False])[:, None].expand(T, 4)
    outs = []
    for g in ("unit", "step"):
        h = apply_harmonica(model, HarmonicaConfig(Router.from_mask(mask, granularity=g)))
        outs.append(run(model, x))
        h.remove()
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_training_a_step_router():
    lazy, _ = _train(beta=1.0, iterations=2, granularity="step", mode="leave_one_out")
    eager, _ = _train(beta=0.0, iterations=2, granularity="step", mode=None)
    for r in (lazy, eager):
        assert r.granularity == "step" and r.logits.shape == (T, 1) and rows_are_whole(r.compute_mask(0.5))
    assert lazy.probabilities()[1:].mean() < eager.probabilities()[1:].mean()
    bounded, _ = _train(beta=1.0, iterations=2, granularity="step", max_reuse_run=1, init="fora-2", mode=None)
    m = bounded.compute_mask()
    assert rows_are_whole(m) and not (~m[1:] & ~m[:-1]).any()


def _calibration():
    from diffusers import DDIMScheduler

    def sample_batch(gen):
        return torch.randn(2, 4, 8, 8, generator=gen), torch.zeros(2, dtype=torch.long)

    def denoise(m, x, t, labels):
        return m(x, timestep=t.expand(x.shape[0]), class_labels=labels).sample[:, :4]

    return DDIMScheduler(), sample_batch, denoise


def test_image_errors_are_the_final_sample_mse_and_selection_keeps_the_least():
    model = tiny_dit()
    sched, sample_batch, denoise = _calibration()
    fora, always = Router.fora(T, 4, 2), Router.always(T, 4)
    errors = image_errors(model, sched, {"fora-2": fora, "always": always}, sample_batch=sample_batch,
                          denoise=denoise, batches=2, seed=5)
    assert errors["always"] == 0.0 and errors["fora-2"] > 0.0  # no cache: exactly the uncached samples
    # the same number by sampling through apply_harmonica from the same noise
    gen, want = torch.Generator().manual_seed(5), 0.0
    for _ in range(2):
        x, labels = sample_batch(gen)
        ends = []
        for router in (None, fora):
            h = apply_harmonica(model, HarmonicaConfig(router)) if router is not None else None
            sched.set_timesteps(T)
            y = x
            with torch.no_grad():
                for t in sched.timesteps:
                    y = sched.step(denoise(model, y, t, labels), t, y).prev_sample
            if h is not None:
                h.remove()
            ends.append(y)
        want += float((ends[1] - ends[0]).pow(2).mean()) / 2
    assert errors["fora-2"] == pytest.approx(want, rel=1e-5)
    for order in (("fora-2", "always"), ("always", "fora-2")):
        cands = {"fora-2": fora, "always": always}
        chosen = select_by_image_error(model, sched, {k: cands[k] for k in order}, sample_batch=sample_batch,
                                       denoise=denoise, batches=1)
        assert chosen.name == "always" and chosen.router is always and set(chosen.errors) == set(order)
    assert all(type(getattr(b, a)).__name__ != "_SoftBranch" for _, b, a in
               __import__("osmos.accel.harmonica", fromlist=["cache_units"]).cache_units(model))
    with pytest.raises(ValueError, match="candidates"):
        image_errors(model, sched, {"a": Router.fora(T + 1, 4, 2), "b": fora}, sample_batch=sample_batch,
                     denoise=denoise)
    with pytest.raises(ValueError, match="batches"):
        image_errors(model, sched, {"a": fora}, sample_batch=sample_batch, denoise=denoise, batches=0)


def test_selection_by_labels_ranks_changed_samples_first_then_mse():
    model = tiny_dit()
    sched, sample_batch, denoise = _calibration()
    cands = {"fora-2": Router.fora(T, 4, 2), "fora-3": Router.fora(T, 4, 3), "always": Router.always(T, 4)}
    kw = dict(sample_batch=sample_batch, denoise=denoise, batches=2, seed=5)
    errors = image_errors(model, sched, cands, **kw)
    assert errors["fora-3"] > errors["fora-2"] > errors["always"] == 0.0
    # labels: the sign of each sample's mean; 'always' never changes one, the others may
    chosen = select_by_image_error(model, sched, cands, labels=lambda x: (x.mean((1, 2, 3)) > 0).long(), **kw)
    assert chosen.name == "always" and chosen.changed["always"] == 0.0 and chosen.errors == errors
    assert all(0.0 <= v <= 1.0 and v * 4 == int(v * 4) for v in chosen.changed.values())  # shares of 4 samples
    # a label that only the lower-MSE schedule changes: every sample of fora-2 differs from the reference
    marks = {}

    def labels(x):  # tells the three runs apart by their errors against the uncached run
        key = round(float(x.abs().sum()), 3)
        marks.setdefault(key, len(marks))
        return torch.full((x.shape[0],), marks[key])

    picked = select_by_image_error(model, sched, {"fora-3": cands["fora-3"], "fora-2": cands["fora-2"]},
                                   labels=labels, **kw)
    assert picked.changed == {"fora-3": 1.0, "fora-2": 1.0}  # both change every sample: the MSE decides
    assert picked.name == "fora-2"
    assert select_by_image_error(model, sched, cands, **kw).changed is None


def test_selection_by_labels_prefers_fewer_changed_samples_over_lower_mse(monkeypatch):
    import sys

    mod = sys.modules["osmos.accel.harmonica.select"]
    monkeypatch.setattr(mod, "_calibrate", lambda *a: ({"low-mse": 0.1, "keeps-labels": 0.2},
                                                        {"low-mse": 0.5, "keeps-labels": 0.25}))
    cands = {"low-mse": Router.fora(T, 4, 2), "keeps-labels": Router.fora(T, 4, 3)}
    chosen = select_by_image_error(None, None, cands, labels=lambda x: x, sample_batch=None, denoise=None)
    assert chosen.name == "keeps-labels" and chosen.router is cands["keeps-labels"]
    monkeypatch.setattr(mod, "_calibrate", lambda *a: ({"low-mse": 0.1, "keeps-labels": 0.2}, None))
    assert select_by_image_error(None, None, cands, sample_batch=None, denoise=None).name == "low-mse"


@pytest.mark.parametrize("granularity", ["unit", "step"])
def test_train_router_selection_returns_the_better_of_trained_and_warm_start(granularity):
    router, rec = _train(beta=1.0, iterations=2, init="fora-2", mode=None, select_batches=1, granularity=granularity)
    sel = rec.selection
    assert set(sel["errors"]) == {"trained", "warm start"} and sel["winner"] in sel["errors"]
    assert sel["errors"][sel["winner"]] == min(sel["errors"].values())
    warm = Router.fora(T, 4, 2)
    assert sel["cache_usage"] == pytest.approx(warm.cache_usage())
    # the returned router is the winner, at the warm start's cache usage, with the trained granularity
    assert router.granularity == granularity and router.cache_usage() == pytest.approx(warm.cache_usage())
    if sel["winner"] == "warm start":
        assert router.compute_mask().equal(warm.compute_mask())
