"""Feature Slicer and Operator Grouping for diffusers UNetMotionModel, and `streamline()` for it
and UNetSpatioTemporalConditionModel (whose block wrappers are in spatiotemporal.py).

* Spatial operators (ResnetBlock2D, the per-frame Transformer2DModel, down/up samplers) see
  (B*F, C, H, W) and are exact when run on slices of the B*F axis: `BatchSliced` runs the
  wrapped operator group on each slice and writes the results into one output.
* Up blocks concatenate their input with a skip connection before the first resnet; the
  concatenation is built one slice at a time, inside the resnet's slice loop, together with
  the previous up block's upsampling (`sliced_up_block_forward`).
* Motion modules (AnimateDiffTransformer3D) attend over frames at each spatial position, so they
  are exact when sliced over space, EXCEPT for their GroupNorm, whose statistics span every
  frame and position. `SpatiallySlicedMotion` computes those statistics over all slices first
  (osmos.ops.group_norm_stats), then runs norm -> proj_in -> transformer blocks -> proj_out ->
  residual per spatial slice (Operator Grouping), normalising each slice with the totals.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from osmos.accel.streamline.rehash import RehashConfig, RehashHandle, deep_blocks
from osmos.accel.streamline.rehash import rehash as install_rehash
from osmos.accel.streamline.spatiotemporal import SlicedSpatioTemporalResBlock, SlicedSpatioTemporalTransformer
from osmos.accel.streamline.slices import BatchSliced, SizeScale, bounds, frame_group_stats, scaled, take, write
from osmos.ops.group_norm import group_norm_apply


def _inner(module: nn.Module | None) -> nn.Module | None:
    return module.inner if isinstance(module, BatchSliced) else module


def _upsample_size(hidden: Tensor, skip: Tensor):
    """The output_size UNet forwards pass to an upsampler whose result meets `skip`: None for an
    exact 2x (their default), else the skip's size (odd latent sizes)."""
    if tuple(skip.shape[2:]) == tuple(2 * d for d in hidden.shape[2:]):
        return None
    return tuple(skip.shape[2:])


def _sliced_cat_resnet(resnet: nn.Module, hidden: Tensor, skip: Tensor, temb, slices: int,
                       upsamplers=(), scale: SizeScale | None = None) -> Tensor:
    """resnet(cat([up(hidden), skip], 1), temb) slice by slice along batch x frames, where `up`
    is the previous up block's deferred upsamplers (none when `hidden` already has skip's size)."""
    inner = _inner(resnet)
    size = _upsample_size(hidden, skip) if upsamplers else None
    n = hidden.shape[0]
    out = None
    cat_numel = skip.numel() // max(skip.shape[1], 1) * (skip.shape[1] + hidden.shape[1])
    for a, b in bounds(n, scaled(slices, cat_numel, scale)):
        part = hidden[a:b]
        for upsampler in upsamplers:
            part = _inner(upsampler)(hidden_states=part, output_size=size)
        piece = inner(input_tensor=torch.cat([part, skip[a:b]], dim=1), temb=take(temb, n, a, b))
        del part
        out = write(out, piece, n, a, b)
    return out


def sliced_up_block_forward(block: nn.Module, slices: int, previous: nn.Module | None = None,
                            defer_upsample: bool = False, scale: SizeScale | None = None):
    """A forward for a diffusers motion (UpBlockMotion, CrossAttnUpBlockMotion) or SVD
    (UpBlockSpatioTemporal, CrossAttnUpBlockSpatioTemporal) up block that builds each skip
    concatenation slice by slice inside the first (spatial) resnet's slice loop (same
    operations in the same order as the block's own forward otherwise). FreeU and training
    with gradient checkpointing use the original.

    Operator grouping across blocks: with `defer_upsample` the block returns its output before
    its upsamplers, and the next up block (given this one as `previous`) runs them slice by slice
    inside its first resnet's loop, so the upsampled tensor (the largest of the up path) never
    exists whole. The next block recognises a deferred input by its size (smaller than its skip)."""
    original = type(block).forward
    signature = inspect.signature(original)

    def forward(*args, **kwargs):
        if any(getattr(block, k, None) for k in ("s1", "s2", "b1", "b2")) or (
                torch.is_grad_enabled() and getattr(block, "gradient_checkpointing", False)):
            return original(block, *args, **kwargs)
        bound = signature.bind(block, *args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        hidden, skips, temb = a.pop("hidden_states"), a["res_hidden_states_tuple"], a.get("temb")
        del args, kwargs, bound  # only `hidden` keeps the input alive, so it is freed once consumed
        indicator = a.get("image_only_indicator")  # SVD blocks only
        n = len(block.resnets)
        attentions = getattr(block, "attentions", None) or [None] * n
        motions = getattr(block, "motion_modules", None) or [None] * n
        for i, (resnet, attn, motion) in enumerate(zip(block.resnets, attentions, motions)):
            skip, skips = skips[-1], skips[:-1]
            pending = previous.upsamplers if (i == 0 and previous is not None and previous.upsamplers
                                              and hidden.shape[2:] != skip.shape[2:]) else ()
            if isinstance(resnet, SlicedSpatioTemporalResBlock):
                hidden = _sliced_cat_resnet(resnet.inner.spatial_res_block, hidden, skip, temb, slices, pending, scale)
                hidden = resnet.temporal_stage(hidden, temb, indicator)
            else:
                hidden = _sliced_cat_resnet(resnet, hidden, skip, temb, slices, pending, scale)
            if attn is not None and indicator is not None:
                hidden = attn(hidden, encoder_hidden_states=a.get("encoder_hidden_states"),
                              image_only_indicator=indicator, return_dict=False)[0]
            elif attn is not None:
                hidden = attn(hidden_states=hidden, encoder_hidden_states=a.get("encoder_hidden_states"),
                              cross_attention_kwargs=a.get("cross_attention_kwargs"),
                              attention_mask=a.get("attention_mask"),
                              encoder_attention_mask=a.get("encoder_attention_mask"), return_dict=False)[0]
            if motion is not None:
                hidden = motion(hidden, num_frames=a["num_frames"])
        if not defer_upsample:
            for upsampler in block.upsamplers or []:
                hidden = upsampler(hidden, a.get("upsample_size"))
        return hidden

    return forward


class SpatiallySlicedMotion(nn.Module):
    """An AnimateDiffTransformer3D run over spatial slices with an exact two-pass GroupNorm."""

    def __init__(self, inner: nn.Module, slices: int, scale: SizeScale | None = None):
        super().__init__()
        self.inner = inner
        self.slices = slices
        self.scale = scale

    def forward(self, hidden_states: Tensor, encoder_hidden_states=None, timestep=None, class_labels=None,
                num_frames: int = 1, cross_attention_kwargs=None) -> Tensor:
        m = self.inner
        bf, c, h, w = hidden_states.shape
        b = bf // num_frames
        hw = h * w  # deeper levels have fewer positions than slices: bounds() clamps
        x = hidden_states.reshape(bf, c, hw)
        g = m.norm.num_groups
        stats_bf = frame_group_stats(x, g, num_frames)  # statistics over (C/G, F, H, W) per sample
        out = torch.empty_like(x)
        weight = m.norm.weight.float() if m.norm.weight is not None else None
        bias = m.norm.bias.float() if m.norm.bias is not None else None
        for s0, s1 in bounds(hw, scaled(self.slices, x.numel(), self.scale)):
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


def _slice_up_blocks(unet: nn.Module, slices: int, handle: StreamlineHandle,
                     keep_upsample: nn.Module | None = None, scale: SizeScale | None = None) -> None:
    """Give every up block the sliced forward; an up block followed by another defers its
    upsamplers to that block's first resnet loop (except `keep_upsample`)."""
    ups = list(unet.up_blocks)
    for i, block in enumerate(ups):
        previous = ups[i - 1] if i > 0 and ups[i - 1] is not keep_upsample else None
        defer = i + 1 < len(ups) and block is not keep_upsample
        block.forward = sliced_up_block_forward(block, slices, previous=previous, defer_upsample=defer, scale=scale)
        handle._forwards.append(block)


# supported UNet class -> (its up block classes, where the frames axis is in its `sample`)
_SUPPORTED = {
    "UNetMotionModel": ({"UpBlockMotion", "CrossAttnUpBlockMotion"}, 2),  # sample [B, C, F, H, W]
    "UNetSpatioTemporalConditionModel": ({"UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"}, 1),
}
_SPATIOTEMPORAL = {"SpatioTemporalResBlock": SlicedSpatioTemporalResBlock,
                   "TransformerSpatioTemporalModel": SlicedSpatioTemporalTransformer}
_WRAPPERS = (BatchSliced, SpatiallySlicedMotion, SlicedSpatioTemporalResBlock, SlicedSpatioTemporalTransformer)


def _wrap_block(block: nn.Module, spatial: int, temporal: int, handle: StreamlineHandle,
                scale: SizeScale | None) -> None:
    for group in ("resnets", "attentions", "downsamplers", "upsamplers", "motion_modules"):
        mods = getattr(block, group, None)
        for i in range(len(mods) if mods is not None else 0):
            kind = _SPATIOTEMPORAL.get(type(mods[i]).__name__)
            if kind is not None:
                wrapper = kind(mods[i], spatial, temporal, scale) if spatial > 1 or temporal > 1 else None
            elif group == "motion_modules":
                wrapper = SpatiallySlicedMotion(mods[i], temporal, scale) if temporal > 1 else None
            else:
                wrapper = BatchSliced(mods[i], spatial, scale) if spatial > 1 else None
            if wrapper is not None:
                handle._wrap(mods, str(i), wrapper)


def streamline(unet: nn.Module, spatial_slices: int = 1, temporal_slices: int = 1,
               rehash: RehashConfig | None = None, adaptive: bool = False) -> StreamlineHandle:
    """Slice the operators of a diffusers UNetMotionModel (AnimateDiff) or
    UNetSpatioTemporalConditionModel (SVD): spatial operators over `spatial_slices` slices of
    batch x frames, temporal ones over `temporal_slices` slices of space (see the module
    docstrings). Exact: outputs equal the unsliced model's to float rounding. With `adaptive`,
    the counts apply to the top level (the full-resolution activations, which set the peak) and
    each operator runs in fewer slices in proportion to its smaller input (`SizeScale`): about the
    same peak, fewer kernel calls (the results may differ from the non-adaptive slicing's in float
    rounding). `rehash` adds Step Rehash (not exact: the deep blocks' output is reused at non-key
    steps; see osmos.accel.streamline.rehash). Returns a handle whose remove() undoes everything."""
    for name, v in (("spatial_slices", spatial_slices), ("temporal_slices", temporal_slices)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not isinstance(adaptive, bool):
        raise TypeError(f"adaptive must be a bool, got {type(adaptive).__name__}")
    if rehash is not None and not isinstance(rehash, RehashConfig):
        raise TypeError(f"rehash must be a RehashConfig or None, got {type(rehash).__name__}")
    if type(unet).__name__ not in _SUPPORTED:
        raise TypeError(f"streamline supports diffusers {' and '.join(_SUPPORTED)}; got {type(unet).__name__}")
    up_types, frame_axis = _SUPPORTED[type(unet).__name__]
    if (any(isinstance(m, _WRAPPERS) for m in unet.modules())
            or any("forward" in block.__dict__ for block in _blocks(unet))):
        raise RuntimeError("this UNet is already streamlined; remove() the previous handle first")
    unknown = sorted({type(b).__name__ for b in unet.up_blocks} - up_types)
    if unknown and spatial_slices > 1:
        raise TypeError(f"streamline cannot slice the up block class(es) {', '.join(unknown)}")
    handle = StreamlineHandle()
    scale = SizeScale() if adaptive else None

    def check_slices(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        b, f, h, w = sample.shape[0], sample.shape[frame_axis], sample.shape[-2], sample.shape[-1]
        if scale is not None:
            scale.top = b * f * unet.conv_in.out_channels * h * w
        if spatial_slices > b * f:
            raise ValueError(f"spatial_slices={spatial_slices} is larger than batch x frames = {b * f}")
        if temporal_slices > h * w:
            raise ValueError(f"temporal_slices={temporal_slices} is larger than the latent's {h}x{w} = {h * w} positions")

    handle._hooks.append(unet.register_forward_pre_hook(check_slices, with_kwargs=True))
    for block in _blocks(unet):
        _wrap_block(block, spatial_slices, temporal_slices, handle, scale)
    if spatial_slices > 1:
        # Step Rehash replays its feature block's output: keep that block's upsampling inside it,
        # so non-key steps do not redo it
        feature = deep_blocks(unet, rehash.depth)[1] if rehash is not None else None
        _slice_up_blocks(unet, spatial_slices, handle, keep_upsample=feature, scale=scale)
    if rehash is not None:
        handle.rehash = install_rehash(unet, rehash)
    return handle
