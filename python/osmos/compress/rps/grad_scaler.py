"""STABLE-RPS gradient scaling: divide the gradient of each entry j of M by a factor built from the
scales of the weights mapped to j, so that an SGD step moves every weight by about the amount it
would move in the dense model, whatever the init std of M (ROAST's instability removed).

Modes (s_i: scale of weight i, the sums over the weights i with h(i) = j, count = their number):
- "sq_sum_over_count" (default): (sum s_i)^2 / count. With one weight per entry (STABLE-RPS at 1x)
  this is s^2 and SGD on M is exactly SGD on the dense weights.
- "sum": sum s_i.
- "mean": sum s_i / count.
- "l2": sqrt(sum s_i^2).
Entries no weight maps to keep their gradient. For Adam-type optimizers (invariant to a constant
per-entry gradient scale) the scaling matters little; it is meant for SGD-type optimizers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from osmos.compress.rps.api import rps_layers, store_of
from osmos.ops import rps_indices

MODES = ("sq_sum_over_count", "sum", "mean", "l2")


def scaling_factors(model: nn.Module, mode: str = "sq_sum_over_count") -> Tensor:
    """The per-entry divisor [m] (float32 on M's device)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    store = store_of(model)
    M = store.weight
    count = torch.zeros(M.numel(), dtype=torch.float64, device=M.device)
    sum_s = torch.zeros_like(count)
    sum_s2 = torch.zeros_like(count)
    for _, layer in rps_layers(model):
        index, _ = rps_indices(layer.config, layer.rows, layer.cols, M.device)
        hits = torch.bincount(index.reshape(-1), minlength=M.numel()).to(torch.float64)
        count += hits
        sum_s += layer.scale * hits
        sum_s2 += layer.scale**2 * hits
    if mode == "sq_sum_over_count":
        factor = sum_s.square() / count.clamp(min=1)
    elif mode == "sum":
        factor = sum_s
    elif mode == "mean":
        factor = sum_s / count.clamp(min=1)
    else:
        factor = sum_s2.sqrt()
    return torch.where(count > 0, factor, torch.ones_like(factor)).to(torch.float32)


class RPSGradScaler:
    """Call `scaler.step()` after `loss.backward()` and before `optimizer.step()`:
    it divides M's gradient in place by `scaling_factors(model, mode)` (computed once)."""

    def __init__(self, model: nn.Module, mode: str = "sq_sum_over_count"):
        self.mode = mode
        self.store = store_of(model)
        self.factors = scaling_factors(model, mode)

    def step(self) -> None:
        grad = self.store.weight.grad
        if grad is not None:
            grad.div_(self.factors.to(grad.dtype))
