"""Step Rehash for diffusers UNets: reuse the deep blocks' output at non-key steps.

Works on any UNet with `down_blocks`, `up_blocks` (and optionally `mid_block`): diffusers'
UNetMotionModel (AnimateDiff; also through `streamline(unet, rehash=...)`),
UNet2DConditionModel and UNetSpatioTemporalConditionModel. `rehash(unet, config)` installs it.

Features after the temporal layers of the deep up-blocks change little between adjacent
denoising steps. At a key step the whole UNet runs and the outputs of its deep part (the down
blocks below `depth`, the mid block and the up blocks above the last `depth`) are kept; at the
other steps those blocks return the kept outputs without computing, and only the shallow
blocks run: down_blocks[:depth] and up_blocks[-depth:], which take the fresh skip connections
from conv_in and the shallow down blocks and the cached output of up_blocks[-depth - 1].

Key steps come from a fixed interval (the DeepCache-style schedule) or from a search over a
calibration run (`calibrate_rehash`): the deep feature is recorded at every step, and the key
steps for a budget are those minimising the summed relative change between each step's feature
and the feature of the key step it would reuse (dynamic programming, exact for the budget).

The step index is counted per UNet call; a call whose timestep is larger than the previous
call's starts a new run (samplers walk timesteps downwards), as does `handle.reset()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class RehashConfig:
    """Which denoising steps compute the deep blocks.

    key_steps: step indices (0-based, per run) that compute everything; step 0 always does.
    interval: every interval-th step is a key step (0, interval, 2 * interval, ...).
    depth: shallow levels that always run (1 = the outermost down and up block).
    Give exactly one of key_steps / interval.
    """

    key_steps: Sequence[int] | None = None
    interval: int | None = None
    depth: int = 1

    def __post_init__(self):
        if (self.key_steps is None) == (self.interval is None):
            raise ValueError("RehashConfig needs exactly one of key_steps or interval")
        if self.interval is not None and (isinstance(self.interval, bool) or not isinstance(self.interval, int)
                                          or self.interval < 1):
            raise ValueError(f"interval must be an int >= 1, got {self.interval!r}")
        if self.key_steps is not None and any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                              for s in self.key_steps):
            raise ValueError(f"key_steps must be ints >= 0, got {list(self.key_steps)!r}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {self.depth!r}")

    def is_key(self, step: int) -> bool:
        if self.interval is not None:
            return step % self.interval == 0
        return step == 0 or step in set(self.key_steps)


def deep_blocks(unet: nn.Module, depth: int) -> tuple[list[nn.Module], nn.Module]:
    """(blocks that Step Rehash skips, the up block whose output is the reused feature)."""
    downs, ups = list(unet.down_blocks), list(unet.up_blocks)
    if depth >= min(len(downs), len(ups)):
        raise ValueError(f"depth must be below the UNet's {min(len(downs), len(ups))} levels, got {depth}")
    skipped = downs[depth:] + ([unet.mid_block] if unet.mid_block is not None else []) + ups[:-depth]
    return skipped, ups[-depth - 1]


class _RehashState:
    def __init__(self, config: RehashConfig):
        self.config = config
        self.step = -1
        self.last_t: float | None = None
        self.reuse = False
        self.cache: dict[int, object] = {}
        self.computed = 0
        self.reused = 0

    def reset(self) -> None:
        self.step, self.last_t, self.reuse = -1, None, False
        self.cache.clear()

    def begin_call(self, t: float) -> None:
        if self.last_t is None or t > self.last_t:
            self.reset()
        if self.last_t is None or t != self.last_t:
            self.step += 1
        self.last_t = t
        self.reuse = not self.config.is_key(self.step) and bool(self.cache)
        if self.reuse:
            self.reused += 1
        else:
            self.computed += 1


def _timestep(args, kwargs) -> float:
    t = args[1] if len(args) > 1 else kwargs.get("timestep")
    return float(torch.as_tensor(t).flatten()[0]) if t is not None else 0.0


class RehashHandle:
    """Installed Step Rehash; `remove()` restores the blocks' own forward methods."""

    def __init__(self, unet: nn.Module, config: RehashConfig):
        self.state = _RehashState(config)
        skipped, _ = deep_blocks(unet, config.depth)
        self._blocks = skipped
        self._previous = [block.__dict__.get("forward") for block in skipped]  # e.g. a sliced forward
        self._hook = unet.register_forward_pre_hook(
            lambda module, args, kwargs: self.state.begin_call(_timestep(args, kwargs)), with_kwargs=True)
        for block in skipped:
            block.forward = self._reusing(block, block.forward)

    def _reusing(self, block: nn.Module, forward: Callable):
        state, key = self.state, id(block)

        def run(*args, **kwargs):
            if state.reuse and key in state.cache:
                return state.cache[key]
            out = forward(*args, **kwargs)
            state.cache[key] = out
            return out

        run.osmos_rehash = True
        return run

    def reset(self) -> None:
        """Forget the cached features: the next call starts a new run at step 0."""
        self.state.reset()

    @property
    def stats(self) -> dict[str, int]:
        """UNet calls that computed the deep blocks / reused them, since installation."""
        return {"computed": self.state.computed, "reused": self.state.reused}

    def remove(self) -> None:
        self._hook.remove()
        for block, previous in zip(self._blocks, self._previous):
            if previous is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = previous
        self._blocks, self._previous = [], []
        self.state.reset()


def rehash(unet: nn.Module, config: RehashConfig) -> RehashHandle:
    """Install Step Rehash on a diffusers UNet; `handle.remove()` undoes it."""
    if not isinstance(config, RehashConfig):
        raise TypeError(f"config must be a RehashConfig, got {type(config).__name__}")
    if not (hasattr(unet, "down_blocks") and hasattr(unet, "up_blocks")):
        raise TypeError(f"Step Rehash needs a UNet with down_blocks and up_blocks; got {type(unet).__name__}")
    skipped, _ = deep_blocks(unet, config.depth)
    if any(getattr(block.__dict__.get("forward"), "osmos_rehash", False) for block in skipped):
        raise RuntimeError("Step Rehash is already installed on this UNet; remove() the previous handle first")
    return RehashHandle(unet, config)


def choose_key_steps(features: Sequence[Tensor], budget: int) -> list[int]:
    """Key steps (step 0 included, `budget` in all) minimising the summed relative change
    ||F_j - F_key|| / ||F_j|| over the non-key steps j, each reusing the last key step before it."""
    n = len(features)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an int >= 1, got {budget!r}")
    if n == 0:
        return []
    budget = min(budget, n)
    flat = torch.stack([f.detach().float().flatten() for f in features])
    norms = flat.norm(dim=1).clamp_min(1e-12)
    change = torch.cdist(flat, flat) / norms[None, :]  # change[i, j]: reuse step i's feature at step j
    # seg[i][e]: cost of key i serving steps i + 1 .. e - 1
    seg = [[0.0] * (n + 1) for _ in range(n)]
    for i in range(n):
        total = 0.0
        for e in range(i + 1, n + 1):
            seg[i][e] = total
            if e < n:
                total += float(change[i, e])
    inf = float("inf")
    best = [[inf] * n for _ in range(budget + 1)]  # best[m][i]: m keys, the last at i, steps < i covered
    back = [[-1] * n for _ in range(budget + 1)]
    best[1][0] = 0.0
    for m in range(2, budget + 1):
        for i in range(1, n):
            for p in range(i):
                cost = best[m - 1][p] + seg[p][i]
                if cost < best[m][i]:
                    best[m][i], back[m][i] = cost, p
    last = min(range(n), key=lambda i: best[budget][i] + seg[i][n])
    keys, m = [], budget
    while last >= 0 and m >= 1:
        keys.append(last)
        last, m = back[m][last], m - 1
    return sorted(keys)


def calibrate_rehash(unet: nn.Module, run: Callable[[], object], budget: int, depth: int = 1) -> RehashConfig:
    """Run `run()` (one full sampling run through `unet`) while recording the deep feature at
    every step, and return the RehashConfig whose `budget` key steps lose the least."""
    _, feature_block = deep_blocks(unet, depth)
    steps: list[list[Tensor]] = []  # the deep feature of each UNet call, grouped by timestep
    last_t: list[float] = []

    def note_step(module, args, kwargs):
        t = _timestep(args, kwargs)
        if not last_t or t != last_t[0]:
            steps.append([])
        last_t[:] = [t]

    hooks = [unet.register_forward_pre_hook(note_step, with_kwargs=True),
             feature_block.register_forward_hook(lambda module, args, out: steps[-1].append(out.detach().float().cpu()))]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    features = [torch.cat([f.flatten() for f in step]) for step in steps if step]
    return RehashConfig(key_steps=tuple(choose_key_steps(features, budget)), depth=depth)
