"""Training a HarmoniCa router: Step-Wise Denoising Training (SDT) with the Image-Error-Proxy
objective (IEPO). No training images are needed: trajectories start from noise.

Per iteration, for a fresh batch of noise and conditions, every sampling step t runs
 * the teacher: all units computed, no cache;
 * the student: unit output = r * fresh + (1 - r) * cache, r = sigmoid(router logits[t]);
and minimises lambda(t) * MSE(eps_teacher, eps_student) + beta * sum_k r[t, k]. The trajectory
advances with the student's (detached) output, so training sees the cache errors inference
will see. The same loop with the teacher's trajectory and cache and lambda = 1 is the
Learning-to-Cache baseline (`osmos.accel.harmonica.l2c`).

IEPO: lambda(t) is estimated by gradient-free sampling with the router's current hard mask (its
inference schedule: threshold and reuse-run bound), first after `iepo_warmup` iterations and then
every `refresh_every`:
 * "leave_one_out" (the paper's idea): lambda(t) = ||x0^(t,on) - x0^(t,off)||^2, the final latent
   sampled with the router's mask except step t fully computed (on) or fully reused (off). The
   paper compares the mask with "step t computed" only, which gives 0 to every step the mask
   does not cache: early in training, when every r is still above the threshold, lambda carried
   no information at all (all ones after normalisation), and later the uncached steps lost their
   quality term exactly when the router decides whether to start caching them. On shapes-dit
   the step the router then got most wrong, step 1 (reused by every unit), is the one that
   matters most: reusing all units at step 1 alone moved the final image 85x to 10^4x more than
   at step 5 (two measurements on a checkpoint of the model).
   Toggling the whole step measures every step (2 samplings per step; 1 where the mask row
   already is all-on or all-off).
 * "sequential" (the reference code): enable the mask's caching one step at a time from the last
   step backwards; lambda(t) is the change of the final latent when step t is enabled; steps
   the mask does not cache get the neutral weight 1.
lambda is normalised to mean 1 over the measured steps, so beta keeps its scale.

Reuse-run bound (`max_reuse_run`, see `Router`): training uses the mask inference will use.
When the router's hard decisions (r <= threshold) have reused a unit `max_reuse_run` steps in a
row along the student's trajectory, the student computes it at the next step (r = 1 there, a
constant: no gradient, no compute penalty the router could avoid). Without this the student
would see caches staler than inference ever serves and learn to pay for errors that do not
occur, and the steps after a forced refresh would be trained against the wrong cache -- the
training-inference mismatch SDT exists to remove. The bound is decided on hard decisions because
that is what it means at inference; the soft mixing in between stays differentiable.

Granularity (`Router`): with granularity="step" one logit per step is shared by all its units
(the loop is the same: r[t] is that probability expanded over the units).

Selection by measured image error (`select_batches`, with a "fora-N" warm start): the per-step
objective does not rank schedules exactly by how far their final images move (on shapes-dit,
refreshing a few units of an early step while the rest stay stale was worse than reusing the
whole step, which the per-step error cannot see). After training, the trained router restricted
to the warm start's cache usage and the warm start itself sample `select_batches` calibration
batches gradient-free; the one whose final samples are closer to the uncached model's is
returned (`select_by_image_error`; the winner and both errors go to `TrainRecord.selection`), so
the result is never worse than the warm start on the calibration batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from osmos.accel.harmonica.hooks import cache_units
from osmos.accel.harmonica.router import Router, budget_router


class _SoftBranch(nn.Module):
    """Training-time unit: "teacher" passes through; "fill" computes and caches; "student" mixes
    the fresh output with the cache (and caches the mix); "hard" computes or reuses."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.mode = "teacher"
        self.r: Tensor | None = None  # scalar probability of computing, this step
        self.hard: bool | None = None  # sampling mode: compute (True) or reuse (False)
        self.cache: Tensor | None = None

    def forward(self, *args, **kwargs):
        if self.mode == "teacher":
            return self.inner(*args, **kwargs)
        if self.mode == "fill":
            self.cache = self.inner(*args, **kwargs)
            return self.cache
        if self.mode == "hard":
            if self.hard or self.cache is None:
                self.cache = self.inner(*args, **kwargs)
            return self.cache
        fresh = self.inner(*args, **kwargs)
        out = fresh if self.cache is None else self.r * fresh + (1 - self.r) * self.cache
        self.cache = out.detach()
        return out


@dataclass
class TrainRecord:
    losses: list[float] = field(default_factory=list)
    cache_usage: list[float] = field(default_factory=list)
    lambdas: list[list[float]] = field(default_factory=list)
    selection: dict | None = None  # with select_batches: {"winner": ..., "errors": {candidate: MSE}}


class _Attached:
    def __init__(self, transformer: nn.Module):
        self.units = cache_units(transformer)
        self.branches = []
        for _, block, attr in self.units:
            b = _SoftBranch(getattr(block, attr))
            setattr(block, attr, b)
            self.branches.append(b)

    def set(self, mode: str, r: Tensor | None = None, hard: list[bool] | None = None) -> None:
        for k, b in enumerate(self.branches):
            b.mode = mode
            b.r = None if r is None else r[k]
            b.hard = None if hard is None else hard[k]

    def clear(self) -> None:
        for b in self.branches:
            b.cache = None

    def detach(self) -> None:
        for (_, block, attr), b in zip(self.units, self.branches):
            setattr(block, attr, b.inner)


@torch.no_grad()
def restart_trajectory(scheduler) -> None:
    """Before a new trajectory: a multistep solver (DPM-Solver++) keeps its step index and last model
    outputs between ``step`` calls, so a second pass over ``scheduler.timesteps`` would continue the
    first (and run off its end); ``set_timesteps`` with the same count resets them. DDIM steps keep no
    state, so this changes nothing there."""
    scheduler.set_timesteps(len(scheduler.timesteps))


def _sample(att: _Attached, transformer, scheduler, x: Tensor, cond, denoise, mask: list[list[bool]] | None) -> Tensor:
    """Gradient-free sampling; mask None = no cache (teacher), else hard router mask [T][2N]."""
    att.clear()
    restart_trajectory(scheduler)
    for i, t in enumerate(scheduler.timesteps):
        if mask is None:
            att.set("teacher")
        else:
            att.set("hard", hard=mask[i])
        eps = denoise(transformer, x, t, cond)
        x = scheduler.step(eps, t, x).prev_sample
    return x


def _bound_reuse_run(r: Tensor, run: Tensor, threshold: float, bound: int | None) -> tuple[Tensor, Tensor]:
    """One student step under the reuse-run bound: r [2N] the router's probabilities, run [2N]
    the units' current runs of hard reuses. Returns the effective r (1, a constant, where the
    bound forces a computation) and the runs after this step."""
    if bound is None:
        return r, run
    forced = (r.detach() <= threshold) & (run >= bound)
    r = torch.where(forced, torch.ones_like(r), r)
    return r, torch.where(r.detach() > threshold, 0, run + 1)


def step_error_weights(scheduler, error: str) -> Tensor:
    """[T] weight of each step's MSE between student and teacher outputs (scheduler.timesteps set).

    "output": 1 (the paper: MSE of the model outputs). "x0": the squared factor that turns an
    output error into an error of the clean sample x0 the step predicts -- (1 - a) / a for
    epsilon prediction, 1 - a for v prediction, 1 for sample prediction (a = alpha-bar at the
    step) -- normalised to mean 1 over the steps after the first, so beta keeps its scale.
    On shapes-dit (v prediction) reusing the last step's units changes the output 100x more than
    elsewhere (MSE ~1 vs ~1e-2) but hardly the image (1 - a = 1e-4 there): with "output" the
    router spent its compute on the last steps and reused early ones; across 28 fixed masks at 45-65%
    cache usage the per-step objective summed in x0 ranked them by final-image MSE with
    Spearman 0.91 against 0.79 for the output MSE (benchmarks/RESULTS.md)."""
    steps = len(scheduler.timesteps)
    if error == "output":
        return torch.ones(steps)
    if error != "x0":
        raise ValueError(f"error must be 'output' or 'x0', got {error!r}")
    alphas = getattr(scheduler, "alphas_cumprod", None)
    prediction = getattr(getattr(scheduler, "config", None), "prediction_type", None)
    if alphas is None or prediction not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"error='x0' needs a scheduler with alphas_cumprod and prediction_type epsilon, v_prediction "
                         f"or sample; {type(scheduler).__name__} has prediction_type {prediction!r}: use error='output'")
    a = alphas[scheduler.timesteps.long().cpu()].double()
    w = {"epsilon": (1 - a) / a, "v_prediction": 1 - a, "sample": torch.ones_like(a)}[prediction]
    w[0] = 0.0  # the first step always computes
    return (w / w[1:].mean()).float() if w[1:].sum() > 0 else torch.ones(steps)


def _iepo_lambdas(att, transformer, scheduler, x, cond, denoise, mask: Tensor, mode: str) -> Tensor:
    steps = mask.shape[0]
    rows = mask.tolist()
    lam = torch.zeros(steps)
    if mode == "leave_one_out":
        base = _sample(att, transformer, scheduler, x, cond, denoise, rows)
        for t in range(1, steps):
            ends = []
            for value in (True, False):  # step t fully computed / fully reused, the rest as the mask
                alt = [r if i != t else [value] * len(r) for i, r in enumerate(rows)]
                ends.append(base if alt[t] == rows[t] else _sample(att, transformer, scheduler, x, cond, denoise, alt))
            lam[t] = (ends[0] - ends[1]).pow(2).mean()
    elif mode == "sequential":
        current = [[True] * len(r) for r in rows]
        prev = _sample(att, transformer, scheduler, x, cond, denoise, current)
        for t in range(steps - 1, 0, -1):
            if all(rows[t]):
                continue
            current[t] = rows[t]
            now = _sample(att, transformer, scheduler, x, cond, denoise, current)
            lam[t] = (now - prev).pow(2).mean()
            prev = now
    else:
        raise ValueError(f"lambda_mode must be 'leave_one_out' or 'sequential', got {mode!r}")
    measured = torch.ones(steps - 1, dtype=torch.bool) if mode == "leave_one_out" else ~mask[1:].all(dim=1)
    mean = lam[1:][measured].mean() if measured.any() else torch.tensor(0.0)
    out = torch.ones(steps)
    if mean > 0:  # else caching changed nothing measurable: weigh the steps equally
        out[1:][measured] = lam[1:][measured] / mean
    out[0] = 0.0  # the first step always computes: student and teacher agree there
    return out


def train_router(
    transformer: nn.Module,
    scheduler,
    *,
    num_steps: int,
    sample_batch: Callable[[torch.Generator], tuple[Tensor, object]],
    denoise: Callable[[nn.Module, Tensor, Tensor, object], Tensor],
    beta: float,
    iterations: int = 200,
    lr: float = 0.01,
    lambda_mode: str | None = "leave_one_out",
    refresh_every: int = 50,
    iepo_warmup: int = 2,
    trajectory: str = "student",
    error: str = "x0",
    threshold: float = 0.1,
    init: float | str = 0.0,
    max_reuse_run: int | None = None,
    granularity: str = "unit",
    select_batches: int = 0,
    seed: int = 0,
    router: Router | None = None,
    progress: bool = True,
) -> tuple[Router, TrainRecord]:
    """Train a Router for `transformer` sampled by `scheduler` with `num_steps` steps.

    sample_batch(generator) -> (noise x_T, conditioning) draws a batch of starting points;
    denoise(transformer, x_t, t, conditioning) -> the model output scheduler.step consumes
    (apply classifier-free guidance there if the pipeline uses it). Returns the router and a
    record of losses, cache usage and lambda(t) per refresh.

    lambda_mode: "leave_one_out" or "sequential" (IEPO, first computed after `iepo_warmup`
    iterations, then refreshed every `refresh_every`), or None: every step weighs 1.
    trajectory: "student" (Step-Wise Denoising Training: the trajectory advances with the
    student's output and the cache holds the student's own outputs, as at inference) or "teacher" (Learning-to-Cache: trajectory and cache are the
    fully computed teacher's; see `osmos.accel.harmonica.l2c`). error: the space the per-step
    student-teacher MSE is measured in, "x0" (the clean sample each output implies; default) or
    "output" (the paper's model-output MSE; see `step_error_weights`). init: the new router's starting
    point (`Router.initial`): a logit for every (step, unit) (0: r = 0.5, where the MSE gradient
    is informative; at r near 1 the student is nearly the teacher and the compute penalty moves
    every logit alike -- on shapes-dit, starting at 0 instead of 2 gave a router 30-35% closer to
    the uncached images at equal cache usage) or "fora-N", a warm start at FORA-N's schedule, so
    that training only moves away from a known-good fixed schedule where its objective says so.
    max_reuse_run, granularity: the new router's reuse-run bound and granularity ("unit": one
    logit per (step, unit), the paper's; "step": one per step, whole steps computed or reused;
    see `Router`); a given `router` keeps its own.
    select_batches: 0, or (with init "fora-N") the number of calibration batches (drawn with
    `sample_batch` from a generator seeded seed + 1) on which the trained router, restricted to
    the warm start's cache usage (`budget_router`, under its own bound), is compared with the
    warm start by the MSE of the final samples to the uncached ones; the better one is returned
    (then a fixed router at that usage; a tie keeps the warm start) and `record.selection` says
    which won. That MSE is heavy-tailed (a few samples whose content the cache changes dominate
    it): use >= 100 calibration samples; on shapes-dit 32 ranked the candidates unreliably.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if beta < 0 or iterations < 1 or refresh_every < 1 or iepo_warmup < 0:
        raise ValueError("beta must be >= 0, iterations and refresh_every >= 1, iepo_warmup >= 0")
    if lambda_mode not in ("leave_one_out", "sequential", None):
        raise ValueError(f"lambda_mode must be 'leave_one_out', 'sequential' or None, got {lambda_mode!r}")
    if trajectory not in ("student", "teacher"):
        raise ValueError(f"trajectory must be 'student' or 'teacher', got {trajectory!r}")
    if isinstance(select_batches, bool) or not isinstance(select_batches, int) or select_batches < 0:
        raise ValueError(f"select_batches must be an int >= 0, got {select_batches!r}")
    if select_batches and not (isinstance(init, str) and router is None):
        raise ValueError("select_batches needs a warm start (init='fora-N', no `router` given) to compare against")
    from tqdm.auto import tqdm

    scheduler.set_timesteps(num_steps)
    weights = step_error_weights(scheduler, error)  # also checks `error` before any work
    units = cache_units(transformer)
    router = router or Router.initial(num_steps, len(units), init, type(scheduler).__name__, max_reuse_run,
                                      granularity)
    warm_start = Router.initial(num_steps, len(units), init, router.scheduler, router.max_reuse_run,
                                router.granularity) if select_batches else None
    router.check_compatible(num_steps, type(scheduler).__name__)
    opt = torch.optim.Adam(router.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    requires = [p.requires_grad for p in transformer.parameters()]
    for p in transformer.parameters():
        p.requires_grad_(False)
    att = _Attached(transformer)
    record = TrainRecord()
    lam = torch.ones(num_steps)
    # the teacher either leaves the cache to the student ("teacher" mode) or refills it ("fill")
    teacher_mode = "teacher" if trajectory == "student" else "fill"
    desc = "HarmoniCa router" if trajectory == "student" else "L2C router"
    try:
        for it in tqdm(range(iterations), desc=desc, disable=not progress):
            x, cond = sample_batch(gen)
            if lambda_mode is not None and it >= iepo_warmup and (it - iepo_warmup) % refresh_every == 0:
                lam = _iepo_lambdas(att, transformer, scheduler, x, cond, denoise, router.compute_mask(threshold), lambda_mode)
                record.lambdas.append(lam.tolist())
            att.clear()
            restart_trajectory(scheduler)
            total = 0.0
            run = torch.zeros(len(units), dtype=torch.long)  # consecutive hard reuses per unit
            for i, t in enumerate(scheduler.timesteps):
                if i == 0:  # the first step always computes: student = teacher, nothing to learn
                    with torch.no_grad():
                        att.set("fill")
                        eps_student = eps_teacher = denoise(transformer, x, t, cond)
                else:
                    r, run = _bound_reuse_run(router.probabilities()[i], run, threshold, router.max_reuse_run)
                    att.set("student", r=r)
                    eps_student = denoise(transformer, x, t, cond)
                    with torch.no_grad():
                        att.set(teacher_mode)
                        eps_teacher = denoise(transformer, x, t, cond)
                    loss = weights[i] * lam[i] * torch.nn.functional.mse_loss(eps_student, eps_teacher) + beta * r.sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    router.clamp_()
                    total += float(loss.detach())
                with torch.no_grad():
                    eps_next = eps_student.detach() if trajectory == "student" else eps_teacher
                    x = scheduler.step(eps_next, t, x).prev_sample
            record.losses.append(total / (num_steps - 1))
            record.cache_usage.append(router.cache_usage(threshold))
    finally:
        att.detach()
        for p, req in zip(transformer.parameters(), requires):
            p.requires_grad_(req)
    if warm_start is not None:
        from osmos.accel.harmonica.select import select_by_image_error

        usage = warm_start.cache_usage(threshold)
        trained = budget_router(router, 1.0 - usage, router.max_reuse_run)
        chosen = select_by_image_error(transformer, scheduler, {"warm start": warm_start, "trained": trained},
                                       sample_batch=sample_batch, denoise=denoise, batches=select_batches,
                                       seed=seed + 1, threshold=threshold)
        record.selection = {"winner": chosen.name, "errors": chosen.errors, "cache_usage": usage}
        router = chosen.router
    return router, record
