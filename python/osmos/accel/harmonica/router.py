"""The router: T x 2N logits over (sampling step, cache unit) -- or T logits, one per step, with
granularity "step" -- and fixed-schedule baselines."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

GRANULARITIES = ("unit", "step")


def _check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be 'unit' or 'step', got {granularity!r}")
    return granularity


def _check_max_reuse_run(max_reuse_run: int | None) -> int | None:
    if max_reuse_run is not None and (isinstance(max_reuse_run, bool) or not isinstance(max_reuse_run, int)
                                      or max_reuse_run < 1):
        raise ValueError(f"max_reuse_run must be None or an int >= 1, got {max_reuse_run!r}")
    return max_reuse_run


def limit_reuse_runs(mask: Tensor, max_reuse_run: int | None) -> Tensor:
    """mask bool [T, 2N] (True = computed) with every run of more than `max_reuse_run`
    consecutive reuse steps of a unit broken: walking the steps, a unit that has been served
    from the cache `max_reuse_run` steps in a row is recomputed at the next step. A mask that
    already obeys the limit is returned unchanged; None: no limit."""
    _check_max_reuse_run(max_reuse_run)
    mask = mask.clone()
    if max_reuse_run is None:
        return mask
    run = torch.zeros(mask.shape[1], dtype=torch.long)
    for t in range(mask.shape[0]):
        mask[t] |= run >= max_reuse_run
        run = torch.where(mask[t], 0, run + 1)
    return mask


def _max_reuses(num_steps: int, max_reuse_run: int | None) -> int:
    later = num_steps - 1  # the first step always computes
    if max_reuse_run is None:
        return later
    k = max_reuse_run
    return later // (k + 1) * k + min(later % (k + 1), k)


def max_reuse_fraction(num_steps: int, max_reuse_run: int | None) -> float:
    """The largest fraction of a unit's T evaluations that can be served from the cache: the
    first step always computes, and at most `max_reuse_run` reuses follow each computation."""
    return _max_reuses(num_steps, _check_max_reuse_run(max_reuse_run)) / num_steps


def budget_mask(probabilities: Tensor, compute_fraction: float, max_reuse_run: int | None = None) -> Tensor:
    """bool [T, 2N]: the first step plus the most probable (step, unit) pairs, round(compute_fraction
    * T * 2N) computed in total, such that no unit is reused more than `max_reuse_run` steps in
    a row. "Most probable" = the reused pairs have the least summed probability; without a
    limit these are simply the least probable pairs. Exact: a dynamic programme per unit over
    (reuse count, current reuse run), merged across units by the total reuse count.
    Raises ValueError if the limit makes the budget infeasible (see `max_reuse_fraction`)."""
    if not 0.0 <= compute_fraction <= 1.0:
        raise ValueError(f"compute_fraction must be in [0, 1], got {compute_fraction}")
    _check_max_reuse_run(max_reuse_run)
    steps, units = probabilities.shape
    total = max(units, round(compute_fraction * steps * units))
    reuses = steps * units - total
    if reuses > _max_reuses(steps, max_reuse_run) * units:
        raise ValueError(f"compute_fraction {compute_fraction} is infeasible with max_reuse_run={max_reuse_run}: at most "
                         f"{max_reuse_fraction(steps, max_reuse_run):.3f} of the evaluations can be reused")
    k = steps if max_reuse_run is None else max_reuse_run
    p = probabilities.detach().double().cpu()
    inf = float("inf")
    # cost[u, c, j]: least summed reuse probability of unit u after the steps so far, with c
    # reuses in total and the last j steps reused (j = 0: the last step computed)
    cost = torch.full((units, steps, k + 1), inf, dtype=torch.float64)
    cost[:, 0, 0] = 0.0
    came_from = []  # per step: the run j before a computation, [u, c]
    for t in range(1, steps):
        best, arg = cost.min(dim=2)
        new = torch.full_like(cost, inf)
        new[:, :, 0] = best
        new[:, 1:, 1:] = cost[:, :-1, :-1] + p[t][:, None, None]
        came_from.append(arg)
        cost = new
    per_unit, end_run = cost.min(dim=2)  # [u, c]
    # merge the units: spent[r] = least cost of r reuses over the units so far
    spent = torch.full((reuses + 1,), inf, dtype=torch.float64)
    spent[0] = 0.0
    picks = []
    for u in range(units):
        merged = torch.full_like(spent, inf)
        choice = torch.zeros(reuses + 1, dtype=torch.long)
        for c in range(min(steps, reuses + 1)):
            cand = torch.full_like(spent, inf)
            cand[c:] = spent[: reuses + 1 - c] + per_unit[u, c]
            better = cand < merged
            merged = torch.where(better, cand, merged)
            choice = torch.where(better, c, choice)
        picks.append(choice)
        spent = merged
    mask = torch.ones(steps, units, dtype=torch.bool)
    r = reuses
    for u in range(units - 1, -1, -1):
        c = int(picks[u][r])
        r -= c
        j = int(end_run[u, c])
        for t in range(steps - 1, 0, -1):
            if j > 0:
                mask[t, u] = False
                c, j = c - 1, j - 1
            else:
                j = int(came_from[t - 1][u, c])
    return mask


class Router(torch.nn.Module):
    """Logits theta [T, 2N]; r = sigmoid(theta). Inference computes unit k at step t iff
    r[t, k] > threshold; the first step always computes (the cache is empty).

    `granularity`: "unit" (the paper's router: one logit per (step, unit)) or "step" (one logit
    per step, theta [T, 1], shared by all 2N units of the step: a step is computed or reused
    whole). Step routing contains every FORA schedule; what it learns is which steps to reuse
    (for instance more computation at the early, high-noise steps than a uniform interval gives).
    Everything downstream sees r as [T, 2N] (`probabilities` expands the step logits), so
    training's soft mixing, the threshold, the reuse-run bound and the budget projection
    (`budget_router` picks whole steps) work unchanged.

    `max_reuse_run` bounds how stale a cache entry may get: a unit served from the cache at
    that many consecutive steps is recomputed at the next one, whatever its probability
    (1: never reused twice in a row, FORA-2's staleness; None: no bound). Unbounded routers
    learned on shapes-dit reuse the same early-step units several steps in a row, and the
    error of that stale output then propagates through every later step.

    `scheduler` and `num_steps` record what the router was trained for: a router only fits the
    step grid it was trained on, so `check_compatible` refuses another one. They, the bound and
    the granularity are saved with the router.
    """

    def __init__(self, num_steps: int, num_units: int, scheduler: str = "", init: float = 5.0,
                 max_reuse_run: int | None = None, granularity: str = "unit"):
        super().__init__()
        if num_steps < 1 or num_units < 1:
            raise ValueError(f"num_steps and num_units must be >= 1, got {num_steps} and {num_units}")
        self.granularity = _check_granularity(granularity)
        self._num_units = num_units
        columns = num_units if granularity == "unit" else 1
        self.logits = torch.nn.Parameter(torch.full((num_steps, columns), float(init)))
        self.scheduler = scheduler
        self.max_reuse_run = _check_max_reuse_run(max_reuse_run)

    @property
    def num_steps(self) -> int:
        return self.logits.shape[0]

    @property
    def num_units(self) -> int:
        return self._num_units

    def probabilities(self) -> Tensor:
        """r [T, 2N] (a step router's T probabilities expanded over the units; differentiable)."""
        r = torch.sigmoid(self.logits)
        return r if self.granularity == "unit" else r.expand(-1, self._num_units)

    def compute_mask(self, threshold: float = 0.1) -> Tensor:
        """bool [T, 2N]: True where the unit is recomputed (threshold, first step, reuse-run bound)."""
        mask = self.probabilities().detach().cpu() > threshold
        mask[0] = True
        return limit_reuse_runs(mask, self.max_reuse_run)

    def cache_usage(self, threshold: float = 0.1) -> float:
        """Fraction of unit evaluations served from the cache."""
        return 1.0 - self.compute_mask(threshold).float().mean().item()

    def clamp_(self, bound: float = 5.0) -> "Router":
        with torch.no_grad():
            self.logits.clamp_(-bound, bound)
        return self

    def check_compatible(self, num_steps: int, scheduler: str | None = None) -> None:
        if num_steps != self.num_steps:
            raise ValueError(f"this router was trained for {self.num_steps} sampling steps, not {num_steps}")
        if scheduler and self.scheduler and scheduler != self.scheduler:
            raise ValueError(f"this router was trained with the {self.scheduler} scheduler, not {scheduler}")

    # ------------------------------------------------------------------ baselines
    @classmethod
    def from_mask(cls, mask: Tensor, scheduler: str = "", max_reuse_run: int | None = None,
                  granularity: str = "unit") -> "Router":
        """A fixed router that computes exactly where mask [T, 2N] is True (and the bound forces).
        granularity "step" needs every row of the mask to be all True or all False."""
        mask = mask.bool().cpu()
        r = cls(mask.shape[0], mask.shape[1], scheduler, max_reuse_run=max_reuse_run, granularity=granularity)
        if granularity == "step":
            if not mask.all(dim=1).eq(mask.any(dim=1)).all():
                raise ValueError("mask: granularity 'step' needs each step's units all computed or all reused")
            mask = mask[:, :1]
        with torch.no_grad():
            r.logits.copy_(torch.where(mask, 5.0, -5.0))
        return r

    @classmethod
    def initial(cls, num_steps: int, num_units: int, init: float | str, scheduler: str = "",
                max_reuse_run: int | None = None, granularity: str = "unit") -> "Router":
        """A router to start training from. init: a number (every logit; 0: r = 0.5 everywhere) or
        "fora-N" (a warm start at FORA-N's schedule: logits +5 where FORA-N computes, -5 where it
        reuses; "fora-1" computes everything)."""
        _check_granularity(granularity)
        if isinstance(init, str):
            prefix, _, interval = init.partition("-")
            if prefix != "fora" or not interval.isdigit() or int(interval) < 1:
                raise ValueError(f"init must be a number or 'fora-N' with N >= 1, got {init!r}")
            warm = cls.fora(num_steps, num_units, int(interval), scheduler)
            return cls.from_mask(warm.compute_mask(), scheduler, max_reuse_run, granularity)
        if isinstance(init, bool) or not isinstance(init, (int, float)):
            raise TypeError(f"init must be a number or 'fora-N', got {type(init).__name__}")
        return cls(num_steps, num_units, scheduler, init=float(init), max_reuse_run=max_reuse_run,
                   granularity=granularity)

    @classmethod
    def fora(cls, num_steps: int, num_units: int, interval: int, scheduler: str = "",
             granularity: str = "unit") -> "Router":
        """FORA: recompute every unit every `interval` steps, reuse in between (the same schedule
        at either granularity)."""
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        steps = torch.arange(num_steps)
        return cls.from_mask((steps % interval == 0)[:, None].expand(num_steps, num_units), scheduler,
                             granularity=granularity)

    @classmethod
    def always(cls, num_steps: int, num_units: int, scheduler: str = "") -> "Router":
        """No caching: every unit computed at every step."""
        return cls.from_mask(torch.ones(num_steps, num_units, dtype=torch.bool), scheduler)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        meta = {"format": "osmos.harmonica.router/1", "scheduler": self.scheduler, "num_steps": str(self.num_steps),
                "max_reuse_run": "" if self.max_reuse_run is None else str(self.max_reuse_run),
                "granularity": self.granularity, "num_units": str(self.num_units)}
        save_file({"logits": self.logits.detach().contiguous()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "Router":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "osmos.harmonica.router/1":
                raise ValueError(f"{path} is not an osmos HarmoniCa router file")
            logits = f.get_tensor("logits")
        bound = meta.get("max_reuse_run", "")  # absent in files written before the bound existed
        granularity = meta.get("granularity", "unit")  # absent in files written before step routing
        units = int(meta.get("num_units", logits.shape[1]))
        if granularity == "step" and logits.shape[1] != 1:
            raise ValueError(f"{path}: a step router's logits must be [T, 1], got {list(logits.shape)}")
        r = cls(logits.shape[0], units, meta.get("scheduler", ""), max_reuse_run=int(bound) if bound else None,
                granularity=granularity)
        with torch.no_grad():
            r.logits.copy_(logits)
        return r

    def extra_repr(self) -> str:
        return (f"steps={self.num_steps}, units={self.num_units}, granularity={self.granularity!r}, "
                f"scheduler={self.scheduler!r}, max_reuse_run={self.max_reuse_run}, ") + json.dumps(
            {"cache_usage@0.1": round(self.cache_usage(), 3)})


def budget_router(router: Router, compute_fraction: float, max_reuse_run: int | None = None) -> Router:
    """A fixed router computing `budget_mask(router.probabilities(), compute_fraction,
    max_reuse_run)` (None: no bound; pass `router.max_reuse_run` to keep the router's own);
    the result carries that bound and the router's granularity. A step router keeps whole
    steps: its most probable round(compute_fraction * T) steps (the first among them)."""
    if router.granularity == "step":
        steps = budget_mask(router.probabilities()[:, :1], compute_fraction, max_reuse_run)
        mask = steps.expand(-1, router.num_units)
    else:
        mask = budget_mask(router.probabilities(), compute_fraction, max_reuse_run)
    return Router.from_mask(mask, router.scheduler, max_reuse_run, router.granularity)
