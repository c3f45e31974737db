"""The router: T x 2N logits over (sampling step, cache unit), and fixed-schedule baselines."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor


class Router(torch.nn.Module):
    """Logits theta [T, 2N]; r = sigmoid(theta). Inference computes unit k at step t iff
    r[t, k] > threshold; the first step always computes (the cache is empty).

    `scheduler` and `num_steps` record what the router was trained for: a router only fits the
    step grid it was trained on, so `check_compatible` refuses another one.
    """

    def __init__(self, num_steps: int, num_units: int, scheduler: str = "", init: float = 5.0):
        super().__init__()
        if num_steps < 1 or num_units < 1:
            raise ValueError(f"num_steps and num_units must be >= 1, got {num_steps} and {num_units}")
        self.logits = torch.nn.Parameter(torch.full((num_steps, num_units), float(init)))
        self.scheduler = scheduler

    @property
    def num_steps(self) -> int:
        return self.logits.shape[0]

    @property
    def num_units(self) -> int:
        return self.logits.shape[1]

    def probabilities(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def compute_mask(self, threshold: float = 0.1) -> Tensor:
        """bool [T, 2N]: True where the unit is recomputed."""
        mask = self.probabilities().detach() > threshold
        mask[0] = True
        return mask

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
    def from_mask(cls, mask: Tensor, scheduler: str = "") -> "Router":
        """A fixed router that computes exactly where mask [T, 2N] is True."""
        r = cls(mask.shape[0], mask.shape[1], scheduler)
        with torch.no_grad():
            r.logits.copy_(torch.where(mask.bool(), 5.0, -5.0))
        return r

    @classmethod
    def fora(cls, num_steps: int, num_units: int, interval: int, scheduler: str = "") -> "Router":
        """FORA: recompute every unit every `interval` steps, reuse in between."""
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        steps = torch.arange(num_steps)
        return cls.from_mask((steps % interval == 0)[:, None].expand(num_steps, num_units), scheduler)

    @classmethod
    def always(cls, num_steps: int, num_units: int, scheduler: str = "") -> "Router":
        """No caching: every unit computed at every step."""
        return cls.from_mask(torch.ones(num_steps, num_units, dtype=torch.bool), scheduler)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        meta = {"format": "osmos.harmonica.router/1", "scheduler": self.scheduler, "num_steps": str(self.num_steps)}
        save_file({"logits": self.logits.detach().contiguous()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "Router":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "osmos.harmonica.router/1":
                raise ValueError(f"{path} is not an osmos HarmoniCa router file")
            logits = f.get_tensor("logits")
        r = cls(logits.shape[0], logits.shape[1], meta.get("scheduler", ""))
        with torch.no_grad():
            r.logits.copy_(logits)
        return r

    def extra_repr(self) -> str:
        return f"steps={self.num_steps}, units={self.num_units}, scheduler={self.scheduler!r}, " + json.dumps(
            {"cache_usage@0.1": round(self.cache_usage(), 3)}
        )
