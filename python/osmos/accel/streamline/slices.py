"""Slicing primitives shared by the Feature Slicer's wrappers: slice bounds, slice counts scaled
to activation sizes (`SizeScale`), taking a slice of every argument, assembling per-slice
results, and `BatchSliced` (any per-frame operator run on slices of the batch x frames axis)."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import torch
from torch import Tensor, nn

from osmos.ops.group_norm import group_norm_stats


def bounds(n: int, slices: int) -> list[tuple[int, int]]:
    s = max(1, min(slices, n))
    cuts = [n * i // s for i in range(s + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


class SizeScale:
    """Slice counts in proportion to activation size (streamline(adaptive=True)). `top` is the
    element count of the UNet's top-level activation in the current forward (batch x frames x
    conv_in's channels x H x W, set by a forward pre-hook). An operator whose input holds `numel`
    elements runs in ceil(slices * numel / top) slices (at most `slices`): every slice holds about
    as many elements as a top-level slice, so the deeper, smaller levels (which do not set the
    peak) run in fewer, larger slices, with fewer and larger kernel calls."""

    def __init__(self):
        self.top = 0

    def count(self, slices: int, numel: int) -> int:
        if self.top <= 0:
            return slices
        return max(1, min(slices, -(-slices * numel // self.top)))


def scaled(slices: int, numel: int, scale: SizeScale | None) -> int:
    """The slice count for an input of `numel` elements: `slices`, scaled when `scale` is given."""
    return slices if scale is None else scale.count(slices, numel)


def take(value, n: int, a: int, b: int):
    """Slice rows a:b of every tensor whose first axis is the sliced one (length n)."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[a:b]
    return value


class BatchSliced(nn.Module):
    """Runs `inner` on slices of the leading (batch x frames) axis of its tensor arguments."""

    def __init__(self, inner: nn.Module, slices: int, scale: SizeScale | None = None):
        super().__init__()
        self.inner = inner
        self.slices = slices
        self.scale = scale

    def forward(self, *args, **kwargs):
        lead = next((v for v in list(args) + list(kwargs.values()) if isinstance(v, Tensor) and v.dim() >= 4), None)
        count = scaled(self.slices, lead.numel(), self.scale) if lead is not None else 1
        if count <= 1:
            return self.inner(*args, **kwargs)
        n = lead.shape[0]
        parts = bounds(n, count)
        out = None
        for a, b in parts:
            piece = self.inner(*[take(v, n, a, b) for v in args], **{k: take(v, n, a, b) for k, v in kwargs.items()})
            out = write(out, piece, n, a, b)
        return out


def write(out, piece, n: int, a: int, b: int):
    """Place one slice's result into the full result (allocated on the first slice)."""
    if isinstance(piece, Tensor):
        if out is None:
            out = piece.new_empty((n,) + tuple(piece.shape[1:]))
        out[a:b] = piece
        return out
    if isinstance(piece, tuple):
        out = out or (None,) * len(piece)
        return tuple(write(o, p, n, a, b) for o, p in zip(out, piece))
    if is_dataclass(piece):
        if out is None:
            out = type(piece)(**{f.name: None for f in fields(piece)})
        for f in fields(piece):
            setattr(out, f.name, write(getattr(out, f.name), getattr(piece, f.name), n, a, b))
        return out
    return piece if out is None else out


def frame_group_stats(x: Tensor, num_groups: int, num_frames: int) -> Tensor:
    """GroupNorm statistics over (C / G, frames, positions) of x [B*F, C, L], one row per frame
    ([B*F, G, 3], each frame's row holding its sample's totals), for group_norm_apply on
    spatial slices of x."""
    bf = x.shape[0]
    stats = group_norm_stats(x, num_groups).view(bf // num_frames, num_frames, num_groups, 3).sum(1)
    return stats[:, None].expand(-1, num_frames, -1, -1).reshape(bf, num_groups, 3).contiguous()
