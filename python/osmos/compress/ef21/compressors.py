"""Contractive compressors for EF21, behind one small interface.

A compressor C maps a vector v to C(v) with E||C(v) - v||^2 <= (1 - alpha) ||v||^2 (alpha in (0, 1]).
EF21 never needs C(v) itself, only one worker step: with v = x - g, return C(v) as
(values, indices) and set g <- g + C(v) in place. Subclass `Compressor` and implement
`num_selected`, `alpha` and `step_` to add one; `shares_indices` tells the DDP hook whether
the indices must travel (TopK) or every rank can recompute them from the shared seed (RandK,
identity), in which case only the values are sent.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from osmos.ops import topk_compress
from osmos.ops.topk_compress import magnitude_keys


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (0.0 < ratio <= 1.0):
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
    return float(ratio)


class Compressor:
    """One EF21 worker step with a contractive compressor.

    `step_(x, g, seed)`: x and g are 1-D of equal length d, g float32 (or float64) and updated in
    place (g <- g + C(x - g)); returns (values [k] in g's dtype, indices [k] int64 ascending), or
    (values [d], None) for a dense message. `seed` is the same on every rank for the same round
    and parameter, so randomized compressors can pick identical coordinates everywhere.
    """

    name = "compressor"
    shares_indices = False

    def num_selected(self, d: int) -> int:
        """Entries sent for a vector of length d."""
        raise NotImplementedError

    def alpha(self, d: int) -> float:
        """Contraction parameter for vectors of length d."""
        raise NotImplementedError

    def step_(self, x: Tensor, g: Tensor, seed: int) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def step_batch_(self, x: Tensor, g: Tensor, seed: int) -> tuple[Tensor, Tensor | None]:
        """Rows of x [n, d] and g [n, d] as n workers: values [n, k], indices [n, k] (or None)."""
        out = [self.step_(x[i], g[i], seed) for i in range(x.shape[0])]
        values = torch.stack([v for v, _ in out])
        return values, None if out[0][1] is None else torch.stack([i for _, i in out])

    def indices(self, d: int, seed: int, device) -> Tensor | None:
        """For `shares_indices` compressors: the indices every rank selects for (d, seed)
        (None: all d in order)."""
        raise NotImplementedError

    def index_bits(self, d: int) -> int:
        """Bits per sent index: ceil(log2 d) when indices travel (d > 1), else 0."""
        if self.shares_indices or d <= 1:
            return 0
        return math.ceil(math.log2(d))

    def bits(self, d: int) -> int:
        """Uplink bits of one worker message for a vector of length d: 32 per value + indices."""
        k = self.num_selected(d)
        return k * (32 + self.index_bits(d))


class _SelectK(Compressor):
    """Keeps k = ceil(ratio * d) entries (at least 1), or a fixed k (at most d)."""

    def __init__(self, ratio: float | None = None, k: int | None = None):
        if (ratio is None) == (k is None):
            raise ValueError("give exactly one of ratio and k")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        self.ratio = None if ratio is None else _check_ratio(ratio)
        self.k = k

    def num_selected(self, d: int) -> int:
        if self.k is not None:
            return min(self.k, d)
        return min(d, max(1, math.ceil(self.ratio * d)))

    def alpha(self, d: int) -> float:
        return self.num_selected(d) / d

    def __repr__(self) -> str:
        arg = f"k={self.k}" if self.k is not None else f"ratio={self.ratio}"
        return f"{type(self).__name__}({arg})"


class TopK(_SelectK):
    """The k largest |x - g| entries (osmos.ops.topk_compress; ties go to the lower index)."""

    name = "topk"

    def step_(self, x, g, seed):
        return topk_compress(x, g, self.num_selected(x.numel()))

    def step_batch_(self, x, g, seed):
        """Vectorised over workers for the simulator. Same magnitude order as the op
        (`magnitude_keys`; float64 compares |d| directly); ties go to the lower index for k = 1,
        and are unspecified for k > 1 (torch.topk)."""
        k = self.num_selected(x.shape[1])
        d = x.to(g.dtype) - g
        keys = magnitude_keys(d) if d.dtype != torch.float64 else d.abs()
        if k == 1:
            indices = torch.argmax(keys, dim=1, keepdim=True)  # first maximum: the lower index
        else:
            indices = torch.sort(torch.topk(keys, k, dim=1, sorted=False).indices, dim=1).values
        values = torch.gather(d, 1, indices)
        g.scatter_add_(1, indices, values)
        return values, indices


class RandK(_SelectK):
    """k uniformly random entries of x - g, the same k on every rank (seeded by round and
    parameter), so only values travel.

    The unbiased RandK multiplies by d/k (variance omega = d/k - 1); EF21 needs a contractive
    compressor and the contractive scaling 1/(omega + 1) = k/d cancels that factor, so the
    selected entries are sent unscaled (alpha = k/d).
    """

    name = "randk"
    shares_indices = True

    def indices(self, d: int, seed: int, device) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(d, generator=gen)[: self.num_selected(d)]
        return torch.sort(idx).values.to(device)

    def step_(self, x, g, seed):
        idx = self.indices(x.numel(), seed, x.device)
        values = x.reshape(-1)[idx].to(g.dtype) - g[idx]
        g.index_add_(0, idx, values)
        return values, idx

    def step_batch_(self, x, g, seed):
        idx = self.indices(x.shape[1], seed, x.device).expand(x.shape[0], -1)
        values = torch.gather(x.to(g.dtype), 1, idx) - torch.gather(g, 1, idx)
        g.scatter_add_(1, idx, values)
        return values, idx


class Identity(Compressor):
    """No compression (alpha = 1): the dense difference x - g is sent; g <- x."""

    name = "identity"
    shares_indices = True

    def num_selected(self, d):
        return d

    def alpha(self, d):
        return 1.0

    def indices(self, d, seed, device):
        return None

    def step_(self, x, g, seed):
        values = x.reshape(-1).to(g.dtype) - g
        g.copy_(x.reshape(-1))
        return values, None

    def step_batch_(self, x, g, seed):
        values = x.to(g.dtype) - g
        g.copy_(x)
        return values, None

    def __repr__(self):
        return "Identity()"


COMPRESSORS = {"topk": TopK, "randk": RandK, "identity": Identity}


def make_compressor(compressor: str | Compressor, ratio: float | None = None) -> Compressor:
    """A Compressor instance from a name ("topk", "randk", "identity", "top1") and a ratio."""
    if isinstance(compressor, Compressor):
        return compressor
    if not isinstance(compressor, str):
        raise TypeError(f"compressor must be a name or a Compressor, got {type(compressor).__name__}")
    name = compressor.lower()
    if name == "identity":
        return Identity()
    if name.startswith("top") and name[3:].isdigit():
        return TopK(k=int(name[3:]))
    if name not in COMPRESSORS:
        raise ValueError(f"compressor must be one of {sorted(COMPRESSORS)} or 'top<k>', got {compressor!r}")
    return COMPRESSORS[name](ratio=_check_ratio(1.0 if ratio is None else ratio))
