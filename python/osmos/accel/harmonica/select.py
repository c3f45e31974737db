"""Choosing among cache schedules by the error they cause in the final samples.

The training objective is per step; what users see is the final image. `image_errors` samples a
few calibration batches gradient-free with each candidate router (hard masks, exactly as at
inference) and with no cache, from the same noise and conditioning, and reports the mean squared
difference of the final samples; `select_by_image_error` keeps the candidate with the least.
Evaluate a selected router on other prompts or seeds than the calibration batches. The mean is
heavy-tailed (a few samples whose shape or layout the cache changes dominate it): use >= 100
calibration samples (on shapes-dit, 32 ranked FORA first where 128 samples and two 144-image
evaluation sets ranked the learned routers first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from osmos.accel.harmonica.router import Router
from osmos.accel.harmonica.train import _Attached, _sample


@dataclass
class Selection:
    """name: the chosen candidate; router: it; errors: every candidate's calibration MSE;
    changed: with a `labels` function, every candidate's share of calibration samples whose labels
    differ from the uncached sample's (else None)."""

    name: str
    router: Router
    errors: dict[str, float]
    changed: dict[str, float] | None = None


def image_errors(transformer: nn.Module, scheduler, candidates: Mapping[str, Router], *,
                 sample_batch: Callable[[torch.Generator], tuple[Tensor, object]],
                 denoise: Callable[[nn.Module, Tensor, Tensor, object], Tensor],
                 batches: int = 2, seed: int = 1, threshold: float = 0.1) -> dict[str, float]:
    """{name: MSE between the final samples with that router and without a cache}, averaged over
    `batches` batches drawn by sample_batch from a generator seeded `seed` (sample_batch and
    denoise as in `train_router`). Every candidate must fit the transformer and share one step count."""
    return _calibrate(transformer, scheduler, candidates, sample_batch, denoise, batches, seed, threshold, None)[0]


def _calibrate(transformer, scheduler, candidates, sample_batch, denoise, batches, seed, threshold, labels):
    """(errors, changed): `image_errors`' MSEs and, with labels, each candidate's share of samples
    whose labels(final samples) differ from the uncached samples' (None without labels)."""
    if not candidates:
        raise ValueError("candidates must name at least one router")
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be an int >= 1, got {batches!r}")
    steps = {r.num_steps for r in candidates.values()}
    if len(steps) != 1:
        raise ValueError(f"candidates: every router must have the same step count, got {sorted(steps)}")
    num_steps = steps.pop()
    att = _Attached(transformer)
    try:
        for name, r in candidates.items():
            if r.num_units != len(att.branches):
                raise ValueError(f"candidates[{name!r}] has {r.num_units} units; the transformer has {len(att.branches)}")
            r.check_compatible(num_steps, type(scheduler).__name__)
        scheduler.set_timesteps(num_steps)
        masks = {name: r.compute_mask(threshold).tolist() for name, r in candidates.items()}
        gen = torch.Generator().manual_seed(seed)
        errors = dict.fromkeys(candidates, 0.0)
        changed, samples = dict.fromkeys(candidates, 0), 0
        for _ in range(batches):
            x, cond = sample_batch(gen)
            ref = _sample(att, transformer, scheduler, x, cond, denoise, None)
            ref_labels = None if labels is None else labels(ref).reshape(ref.shape[0], -1)
            samples += ref.shape[0]
            for name, rows in masks.items():
                out = _sample(att, transformer, scheduler, x, cond, denoise, rows)
                errors[name] += float((out - ref).pow(2).mean()) / batches
                if labels is not None:
                    changed[name] += int((labels(out).reshape(ref.shape[0], -1) != ref_labels).any(1).sum())
    finally:
        att.detach()
    return errors, (None if labels is None else {k: v / max(samples, 1) for k, v in changed.items()})


def select_by_image_error(transformer: nn.Module, scheduler, candidates: Mapping[str, Router], *,
                          labels: Callable[[Tensor], Tensor] | None = None, sample_batch, denoise,
                          batches: int = 2, seed: int = 1, threshold: float = 0.1) -> Selection:
    """The candidate whose final samples are closest to the uncached ones (`image_errors`, same
    keyword arguments; ties go to the candidate named first).

    labels: optional function from final samples [B, ...] to per-sample labels ([B] or [B, H]
    integers, e.g. a classifier's predicted classes). Then the candidate that changes the fewest
    samples' labels wins and the MSE only breaks ties: a low mean error can still hide a few samples
    whose content the cache changed (on shapes-dit at 50 steps the lowest-MSE learned schedules
    classified worse than FORA; benchmarks/RESULTS.md)."""
    errors, changed = _calibrate(transformer, scheduler, candidates, sample_batch, denoise, batches, seed,
                                 threshold, labels)
    key = errors.get if changed is None else (lambda n: (changed[n], errors[n]))
    name = min(candidates, key=key)
    return Selection(name, candidates[name], errors, changed)
