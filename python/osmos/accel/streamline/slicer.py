"""Feature Slicer and Operator Grouping for diffusers UNetMotionModel.

* Spatial operators (ResnetBlock2D, the per-frame Transformer2DModel, down/up samplers) see
  (B*F, C, H, W) and are exact when run on slices of the B*F axis: `BatchSliced` runs the
  wrapped operator group on each slice and writes the results into one output.
* Up blocks concatenate their input with a skip connection before the first resnet; the
  concatenation (the largest tensor of the pass) is built one slice at a time, inside the
  resnet's slice loop (`sliced_up_block_forward`).
* Motion modules (AnimateDiffTransformer3D) attend over frames at each spatial position, so they
  are exact when sliced over space, EXCEPT for their GroupNorm, whose statistics span every
  frame and position. `SpatiallySlicedMotion` computes those statistics over all slices first
  (osmos.ops.group_norm_stats), then runs norm -> proj_in -> transformer blocks -> proj_out ->
  residual per spatial slice (Operator Grouping), normalising each slice with the totals.
"""

from __future__ import annotations

import inspect
from dataclasses import fields, is_dataclass

import torch
from torch import Tensor, nn

from osmos.accel.streamline.rehash import RehashConfig, RehashHandle
from osmos.accel.streamline.rehash import rehash as install_rehash
from osmos.ops.group_norm import group_norm_apply, group_norm_stats


def _bounds(n: int, slices: int) -> list[tuple[int, int]]:
    s = max(1, min(slices, n))
    cuts = [n * i // s for i in range(s + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def _take(value, n: int, a: int, b: int):
    """Slice rows a:b of every tensor whose first axis is the sliced one (length n)."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[a:b]
    return value


class BatchSliced(nn.Module):
    """Runs `inner` on slices of the leading (batch x frames) axis of its tensor arguments."""

    def __init__(self, inner: nn.Module, slices: int):
        super().__init__()
        self.inner = inner
        self.slices = slices

    def forward(self, *args, **kwargs):
        lead = next((v for v in list(args) + list(kwargs.values()) if isinstance(v, Tensor) and v.dim() >= 4), None)
        if lead is None or self.slices <= 1:
            return self.inner(*args, **kwargs)
        n = lead.shape[0]
        parts = _bounds(n, self.slices)
        out = None
        for a, b in parts:
            piece = self.inner(*[_take(v, n, a, b) for v in args], **{k: _take(v, n, a, b) for k, v in kwargs.items()})
            out = _write(out, piece, n, a, b)
        return out


def _write(out, piece, n: int, a: int, b: int):
    """Place one slice's result into the full result (allocated on the first slice)."""
    if isinstance(piece, Tensor):
        if out is None:
            out = piece.new_empty((n,) + tuple(piece.shape[1:]))
        out[a:b] = piece
        return out
    if isinstance(piece, tuple):
        out = out or (None,) * len(piece)
        return tuple(_write(o, p, n, a, b) for o, p in zip(out, piece))
    if is_dataclass(piece):
        if out is None:
            out = type(piece)(**{f.name: None for f in fields(piece)})
        for f in fields(piece):
            setattr(out, f.name, _write(getattr(out, f.name), getattr(piece, f.name), n, a, b))
        return out
    return piece if out is None else out


def _sliced_cat_resnet(resnet: nn.Module, hidden: Tensor, skip: Tensor, temb, slices: int) -> Tensor:
    """resnet(cat([hidden, skip], 1), temb) slice by slice along batch x frames."""
    inner = resnet.inner if isinstance(resnet, BatchSliced) else resnet
    n = hidden.shape[0]
    out = None
    for a, b in _bounds(n, slices):
        piece = inner(input_tensor=torch.cat([hidden[a:b], skip[a:b]], dim=1), temb=_take(temb, n, a, b))
        out = _write(out, piece, n, a, b)
    return out


def sliced_up_block_forward(block: nn.Module, slices: int):
    """A forward for a diffusers UpBlockMotion / CrossAttnUpBlockMotion that builds each
    skip concatenation slice by slice (same operations in the same order as the block's own
    forward otherwise). FreeU and training with gradient checkpointing use the original."""
    original = type(block).forward
    signature = inspect.signature(original)

    def forward(*args, **kwargs):
        if any(getattr(block, k, None) for k in ("s1", "s2", "b1", "b2")) or (
                torch.is_grad_enabled() and getattr(block, "gradient_checkpointing", False)):
            return original(block, *args, **kwargs)
        bound = signature.bind(block, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        hidden, skips, temb = a["hidden_states"], a["res_hidden_states_tuple"], a.get("temb")
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attn, motion in zip(block.resnets, attentions, block.motion_modules):
            skip, skips = skips[-1], skips[:-1]
            hidden = _sliced_cat_resnet(resnet, hidden, skip, temb, slices)
            if attn is not None:
                hidden = attn(hidden_states=hidden, encoder_hidden_states=a.get("encoder_hidden_states"),
                              cross_attention_kwargs=a.get("cross_attention_kwargs"),
                              attention_mask=a.get("attention_mask"),
                              encoder_attention_mask=a.get("encoder_attention_mask"), return_dict=False)[0]
            hidden = motion(hidden, num_frames=a["num_frames"])
        for upsampler in block.upsamplers or []:
            hidden = upsampler(hidden_states=hidden, output_size=a.get("upsample_size"))
        return hidden

    return forward


class SpatiallySlicedMotion(nn.Module):
    """An AnimateDiffTransformer3D run over spatial slices with an exact two-pass GroupNorm."""

    def __init__(self, inner: nn.Module, slices: int):
        super().__init__()
        self.inner = inner
        self.slices = slices

    def forward(self, hidden_states: Tensor, encoder_hidden_states=None, timestep=None, class_labels=None,
                num_frames: int = 1, cross_attention_kwargs=None) -> Tensor:
        m = self.inner
        bf, c, h, w = hidden_states.shape
        b = bf // num_frames
        hw = h * w  # deeper levels have fewer positions than slices: _bounds clamps
        x = hidden_states.reshape(bf, c, hw)
        g = m.norm.num_groups
        # statistics over (C/G, F, H, W) per sample: per-frame stats summed over frames
        stats = group_norm_stats(x, g).view(b, num_frames, g, 3).sum(1)
        stats_bf = stats[:, None].expand(b, num_frames, g, 3).reshape(bf, g, 3).contiguous()
        out = torch.empty_like(x)
        weight = m.norm.weight.float() if m.norm.weight is not None else None
        bias = m.norm.bias.float() if m.norm.bias is not None else None
        for s0, s1 in _bounds(hw, self.slices):
            part = group_norm_apply(x[:, :, s0:s1], stats_bf, weight, bias, m.norm.eps)  # [B*F, C, S]
            s = s1 - s0
            tokens = part.view(b, num_frames, c, s).permute(0, 3, 1, 2).reshape(b * s, num_frames, c)
            tokens = m.proj_in(input=tokens)
            for block in m.transformer_blocks:
                tokens = block(hidden_states=tokens, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                               cross_attention_kwargs=cross_attention_kwargs, class_labels=class_labels)
            tokens = m.proj_out(input=tokens)
            y = tokens.view(b, s, num_frames, c).permute(0, 2, 3, 1).reshape(bf, c, s)
            out[:, :, s0:s1] = y + x[:, :, s0:s1]
        return out.view(bf, c, h, w)


class StreamlineHandle:
    """What streamline() returns; `remove()` restores the original modules."""

    def __init__(self):
        self._swaps: list[tuple[nn.Module, str, nn.Module]] = []
        self._forwards: list[nn.Module] = []  # blocks given an instance forward (sliced up blocks)
        self._hooks = []
        self.rehash: RehashHandle | None = None  # Step Rehash, when streamline(rehash=...) installed it

    def _wrap(self, parent: nn.Module, name: str, wrapper: nn.Module) -> None:
        self._swaps.append((parent, name, getattr(parent, name) if not name.isdigit() else parent[int(name)]))
        if name.isdigit():
            parent[int(name)] = wrapper
        else:
            setattr(parent, name, wrapper)

    def remove(self) -> None:
        if self.rehash is not None:
            self.rehash.remove()
            self.rehash = None
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for block in self._forwards:
            block.__dict__.pop("forward", None)
        self._forwards.clear()
        for parent, name, original in reversed(self._swaps):
            if name.isdigit():
                parent[int(name)] = original
            else:
                setattr(parent, name, original)
        self._swaps.clear()

    @property
    def wrapped(self) -> int:
        return len(self._swaps)


def _blocks(unet: nn.Module):
    yield from unet.down_blocks
    if unet.mid_block is not None:
        yield unet.mid_block
    yield from unet.up_blocks


def streamline(unet: nn.Module, spatial_slices: int = 1, temporal_slices: int = 1,
               rehash: RehashConfig | None = None) -> StreamlineHandle:
    """Slice a diffusers UNetMotionModel's operators (see the module docstring). Exact: outputs
    equal the unsliced model's to float rounding. `rehash` adds Step Rehash (not exact: the deep
    blocks' output is reused at non-key steps; see osmos.accel.streamline.rehash). Returns a
    handle whose remove() undoes everything."""
    for name, v in (("spatial_slices", spatial_slices), ("temporal_slices", temporal_slices)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if rehash is not None and not isinstance(rehash, RehashConfig):
        raise TypeError(f"rehash must be a RehashConfig or None, got {type(rehash).__name__}")
    if type(unet).__name__ != "UNetMotionModel":
        raise TypeError(
            f"streamline supports diffusers UNetMotionModel (AnimateDiff); got {type(unet).__name__}"
        )
    if (any(isinstance(m, (BatchSliced, SpatiallySlicedMotion)) for m in unet.modules())
            or any("forward" in block.__dict__ for block in _blocks(unet))):
        raise RuntimeError("this UNet is already streamlined; remove() the previous handle first")
    handle = StreamlineHandle()

    def check_slices(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        b, _, f, h, w = sample.shape
        if spatial_slices > b * f:
            raise ValueError(f"spatial_slices={spatial_slices} is larger than batch x frames = {b * f}")
        if temporal_slices > h * w:
            raise ValueError(f"temporal_slices={temporal_slices} is larger than the latent's {h}x{w} = {h * w} positions")

    handle._hooks.append(unet.register_forward_pre_hook(check_slices, with_kwargs=True))
    for block in _blocks(unet):
        for group in ("resnets", "attentions", "downsamplers", "upsamplers"):
            mods = getattr(block, group, None)
            if mods is None:
                continue
            for i in range(len(mods)):
                if spatial_slices > 1:
                    handle._wrap(mods, str(i), BatchSliced(mods[i], spatial_slices))
        mods = getattr(block, "motion_modules", None)
        if mods is not None:
            for i in range(len(mods)):
                if temporal_slices > 1:
                    handle._wrap(mods, str(i), SpatiallySlicedMotion(mods[i], temporal_slices))
        if spatial_slices > 1 and type(block).__name__ in ("UpBlockMotion", "CrossAttnUpBlockMotion"):
            block.forward = sliced_up_block_forward(block, spatial_slices)
            handle._forwards.append(block)
    if rehash is not None:
        handle.rehash = install_rehash(unet, rehash)
    return handle
