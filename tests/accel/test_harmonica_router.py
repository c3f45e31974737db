"""The router's reuse-run bound (no unit served from the cache more than k steps in a row), the
exact budget restriction, and the file format."""

import itertools

import pytest
import torch

from osmos.accel.harmonica.router import (
    Router,
    budget_mask,
    budget_router,
    limit_reuse_runs,
    max_reuse_fraction,
)


def longest_reuse_run(mask: torch.Tensor) -> int:
    """Longest run of consecutive False (reuse) steps of any unit in mask [T, U]."""
    best = 0
    for col in (~mask).T.tolist():
        run = 0
        for reused in col:
            run = run + 1 if reused else 0
            best = max(best, run)
    return best


def random_router(steps, units, seed, bound=None):
    r = Router(steps, units, "DDIMScheduler", max_reuse_run=bound)
    with torch.no_grad():
        r.logits.uniform_(-5, 5, generator=torch.Generator().manual_seed(seed))
    return r


@pytest.mark.parametrize("bound", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_threshold_mask_obeys_the_bound_and_only_adds_computations(bound, seed):
    free = random_router(12, 5, seed)
    bounded = random_router(12, 5, seed, bound)
    for threshold in (0.1, 0.5, 0.9):
        m_free, m = free.compute_mask(threshold), bounded.compute_mask(threshold)
        assert longest_reuse_run(m) <= bound and m[0].all()
        assert (m | m_free).equal(m)  # the bound only turns reuses into computations
        # the forced computations are exactly the steps after `bound` reuses in a row
        assert m.sum() - m_free.sum() == (m & ~m_free).sum()
    assert longest_reuse_run(free.compute_mask(0.9)) > bound  # the test exercises the bound


def test_bound_one_reproduces_alternation_and_leaves_obeying_masks_unchanged():
    reuse_all = Router(7, 3, max_reuse_run=1)
    with torch.no_grad():
        reuse_all.logits.fill_(-5.0)
    want = (torch.arange(7) % 2 == 0)[:, None].expand(7, 3)
    assert reuse_all.compute_mask().equal(want)  # never twice in a row: FORA-2
    for seed in range(5):
        for bound in (1, 2, 4):
            m = random_router(9, 4, seed, bound).compute_mask(0.3)
            assert limit_reuse_runs(m, bound).equal(m)
            # a router that already obeys the bound: its mask is the same with or without it
            fixed = Router.from_mask(m)
            assert Router.from_mask(m, max_reuse_run=bound).compute_mask().equal(fixed.compute_mask())
    with pytest.raises(ValueError, match="max_reuse_run"):
        Router(3, 2, max_reuse_run=0)


@pytest.mark.parametrize("bound", [None, 1, 2])
def test_budget_mask_is_the_exact_optimum_under_the_bound(bound):
    steps, units = 4, 2
    probs = torch.rand(steps, units, generator=torch.Generator().manual_seed(7))
    for computed in range(units, steps * units + 1):
        best = None
        for bits in itertools.product([True, False], repeat=(steps - 1) * units):
            m = torch.cat([torch.ones(1, units, dtype=torch.bool), torch.tensor(bits).view(steps - 1, units)])
            if m.sum() != computed or (bound is not None and longest_reuse_run(m) > bound):
                continue
            cost = probs[~m].sum().item()
            best = cost if best is None else min(best, cost)
        fraction = computed / (steps * units)
        if best is None:
            with pytest.raises(ValueError, match="infeasible"):
                budget_mask(probs, fraction, bound)
            assert 1 - fraction > max_reuse_fraction(steps, bound)
            continue
        m = budget_mask(probs, fraction, bound)
        assert m.sum() == computed and m[0].all()
        assert bound is None or longest_reuse_run(m) <= bound
        assert probs[~m].sum().item() == pytest.approx(best, abs=1e-12)


def test_budget_router_on_a_larger_router_hits_the_budget_within_the_bound():
    r = random_router(20, 12, 3)
    for bound, fraction in [(1, 0.5), (2, 0.35), (3, 0.35), (None, 0.2)]:
        m = budget_router(r, fraction, bound).compute_mask()
        assert m.sum() == round(fraction * 240) and m[0].all()
        assert bound is None or longest_reuse_run(m) <= bound
    # at the bound's tightest budget there is one schedule: FORA-(bound + 1)
    assert budget_router(r, 0.5, 1).compute_mask().equal(Router.fora(20, 12, 2).compute_mask())
    assert max_reuse_fraction(20, 2) == pytest.approx(13 / 20) and max_reuse_fraction(20, None) == pytest.approx(19 / 20)
    # the bound is kept with the result; None is no bound, whatever the router's own
    assert budget_router(r, 0.5, 2).max_reuse_run == 2
    assert budget_router(random_router(20, 12, 3, bound=2), 0.2).max_reuse_run is None


def test_save_load_keeps_the_bound(tmp_path):
    r = random_router(6, 4, 1, bound=2)
    r.save(tmp_path / "r.safetensors")
    back = Router.load(tmp_path / "r.safetensors")
    assert back.max_reuse_run == 2 and back.scheduler == "DDIMScheduler"
    assert torch.equal(back.logits, r.logits) and back.compute_mask(0.4).equal(r.compute_mask(0.4))
    free = random_router(6, 4, 1)
    free.save(tmp_path / "f.safetensors")
    assert Router.load(tmp_path / "f.safetensors").max_reuse_run is None
    # files written before the bound existed (no metadata key) load unbounded
    from safetensors.torch import save_file

    save_file({"logits": r.logits.detach()}, str(tmp_path / "old.safetensors"),
              metadata={"format": "osmos.harmonica.router/1", "scheduler": "", "num_steps": "6"})
    assert Router.load(tmp_path / "old.safetensors").max_reuse_run is None


def test_training_step_forces_the_refresh_the_bound_demands():
    from osmos.accel.harmonica.train import _bound_reuse_run

    logits = torch.tensor([-4.0, -4.0, 3.0], requires_grad=True)
    r = torch.sigmoid(logits)
    run = torch.tensor([1, 0, 5])
    eff, after = _bound_reuse_run(r, run, threshold=0.1, bound=1)
    assert eff[0].item() == 1.0 and eff[1].item() == r[1].item() and eff[2].item() == r[2].item()
    assert after.tolist() == [0, 1, 0]
    eff.sum().backward()
    assert logits.grad[0] == 0 and logits.grad[1] != 0  # a forced computation is no decision of the router
    same, run_same = _bound_reuse_run(r, run, 0.1, None)
    assert same is r and run_same is run


@pytest.mark.parametrize("interval", [1, 2, 3, 5])
def test_warm_start_is_the_fixed_schedule_before_training(interval):
    steps, units = 11, 4
    fora = Router.fora(steps, units, interval, "DDIMScheduler")
    warm = Router.initial(steps, units, f"fora-{interval}", "DDIMScheduler", max_reuse_run=interval)
    assert warm.compute_mask().equal(fora.compute_mask())
    assert warm.max_reuse_run == interval and warm.scheduler == "DDIMScheduler"
    # the logits sit at the training clamp, so the soft student starts as (nearly) the hard schedule
    assert warm.logits.abs().eq(5.0).all()
    # at FORA's own budget the exact restriction returns FORA's schedule
    assert budget_mask(warm.probabilities(), 1.0 - fora.cache_usage()).equal(fora.compute_mask())


def test_initial_logit_and_invalid_init():
    r = Router.initial(6, 3, -1.5, max_reuse_run=2)
    assert r.logits.eq(-1.5).all() and r.max_reuse_run == 2
    assert Router.initial(6, 3, 0).probabilities().eq(0.5).all()
    for bad in ("fora", "fora-0", "fora-x", "fora-2.5", "always", "FORA-2"):
        with pytest.raises(ValueError, match="init"):
            Router.initial(6, 3, bad)
    for bad in (True, None, [1.0]):
        with pytest.raises(TypeError, match="init"):
            Router.initial(6, 3, bad)
