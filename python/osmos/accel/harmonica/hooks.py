"""Attaching a HarmoniCa cache to a diffusers transformer.

`apply_harmonica(transformer, HarmonicaConfig(router))` wraps the attention (`attn1`) and MLP
(`ff`) branch of every block in `transformer.transformer_blocks` (diffusers DiT, PixArt and
other BasicTransformerBlock stacks, and the zoo's shapes-dit). Each call of the transformer is one
sampling step; the step counter advances by itself and wraps after the router's T steps, so a
pipeline needs no changes and there is no context to set. Modulation, gating and residual adds
still run on reuse steps: only the branch itself is skipped.

For batches that mix requests at different steps, `handle.set_sample_steps(steps)` gives each
sample its own step; the cache then holds one row per sample and `osmos.ops.cache_select`
picks reused or fresh rows per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from osmos.accel.harmonica.router import Router
from osmos.ops.cache_select import cache_select

UNIT_BRANCHES = ("attn1", "ff")


@dataclass
class HarmonicaConfig:
    """router: the trained (or fixed) Router; threshold: compute a unit iff sigmoid(logit) > it;
    scheduler: the scheduler's class name, checked against the router's when both are set;
    calls_per_step: transformer calls per sampling step (2 for pipelines that run the
    conditional and unconditional passes separately)."""

    router: Router
    threshold: float = 0.1
    scheduler: str | None = None
    calls_per_step: int = 1


def cache_units(transformer: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, parent block, attribute) of every cache unit, in router column order:
    block 0 attention, block 0 MLP, block 1 attention, ..."""
    blocks = getattr(transformer, "transformer_blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise TypeError(
            f"{type(transformer).__name__} has no `transformer_blocks`; HarmoniCa supports diffusers "
            "transformers built from BasicTransformerBlock (DiT, PixArt) and the zoo's shapes-dit"
        )
    units = []
    for i, block in enumerate(blocks):
        for attr in UNIT_BRANCHES:
            if not isinstance(getattr(block, attr, None), nn.Module):
                raise TypeError(f"block {i} ({type(block).__name__}) has no `{attr}` branch to cache")
            units.append((f"transformer_blocks.{i}.{attr}", block, attr))
    return units


class _State:
    def __init__(self, mask: Tensor, calls_per_step: int):
        self.mask = mask  # bool [T, 2N]
        self.rows = mask.tolist()  # python bools: data-independent control flow under torch.compile
        self.calls_per_step = calls_per_step
        self.calls = 0
        self.sample_steps: Tensor | None = None

    @property
    def step(self) -> int:
        return (self.calls // self.calls_per_step) % len(self.rows)


class CachedBranch(nn.Module):
    """One cache unit: returns the cached branch output on reuse steps, else computes it."""

    def __init__(self, inner: nn.Module, index: int, state: _State):
        super().__init__()
        self.inner = inner
        self.index = index
        self._state = state
        self.cache: Tensor | None = None

    def forward(self, *args, **kwargs):
        st = self._state
        if st.sample_steps is not None:
            return self._per_sample(st, *args, **kwargs)
        reuse = not st.rows[st.step][self.index]
        if reuse and self.cache is not None:
            return self.cache
        out = self.inner(*args, **kwargs)
        self.cache = out
        return out

    def _per_sample(self, st: _State, *args, **kwargs):
        use_cache = ~st.mask[st.sample_steps, self.index]
        if self.cache is None or self.cache.shape[0] != use_cache.shape[0]:
            self.cache = self.inner(*args, **kwargs)
            return self.cache
        if bool(use_cache.all()):
            return self.cache
        fresh = self.inner(*args, **kwargs)
        return cache_select(None, None, fresh.contiguous(), self.cache, use_cache.to(fresh.device))


class HarmonicaHandle:
    """What apply_harmonica returns: `remove()` restores the original modules, `reset()` starts
    a new generation, `step` is the current sampling step."""

    def __init__(self, transformer: nn.Module, config: HarmonicaConfig):
        self.transformer = transformer
        self.config = config
        self._state = _State(config.router.compute_mask(config.threshold).cpu(), config.calls_per_step)
        self._units = cache_units(transformer)
        self._wrappers: list[CachedBranch] = []
        for i, (_, block, attr) in enumerate(self._units):
            wrapper = CachedBranch(getattr(block, attr), i, self._state)
            setattr(block, attr, wrapper)
            self._wrappers.append(wrapper)
        self._hook = transformer.register_forward_hook(self._advance)

    def _advance(self, module, args, output):
        self._state.calls += 1

    @property
    def step(self) -> int:
        return self._state.step

    def reset(self) -> None:
        self._state.calls = 0
        self._state.sample_steps = None
        for w in self._wrappers:
            w.cache = None

    def set_sample_steps(self, steps: Tensor | None) -> None:
        """Per-sample steps [B] (int) for batches mixing requests at different steps; None
        returns to the shared step counter."""
        if steps is not None:
            steps = torch.as_tensor(steps, dtype=torch.long).cpu()
            if steps.dim() != 1 or (steps < 0).any() or (steps >= self._state.mask.shape[0]).any():
                raise ValueError(f"steps must be a vector of ints in [0, {self._state.mask.shape[0]})")
        self._state.sample_steps = steps

    def computed_fraction(self) -> float:
        """Fraction of unit evaluations the router computes over one generation."""
        return self._state.mask.float().mean().item()

    def remove(self) -> None:
        for (_, block, attr), w in zip(self._units, self._wrappers):
            setattr(block, attr, w.inner)
        self._hook.remove()
        self._wrappers = []


def apply_harmonica(transformer: nn.Module, config: HarmonicaConfig) -> HarmonicaHandle:
    """Attach a HarmoniCa cache to `transformer` (see the module docstring)."""
    if not isinstance(config, HarmonicaConfig):
        raise TypeError(f"config must be a HarmonicaConfig, got {type(config).__name__}")
    if config.calls_per_step < 1:
        raise ValueError(f"calls_per_step must be >= 1, got {config.calls_per_step}")
    units = cache_units(transformer)
    if len(units) != config.router.num_units:
        raise ValueError(f"the router has {config.router.num_units} units; this transformer has {len(units)} (2 per block)")
    if config.scheduler:
        config.router.check_compatible(config.router.num_steps, config.scheduler)
    if any(isinstance(getattr(b, a), CachedBranch) for _, b, a in units):
        raise RuntimeError("this transformer already has a HarmoniCa cache attached; remove() it first")
    return HarmonicaHandle(transformer, config)
