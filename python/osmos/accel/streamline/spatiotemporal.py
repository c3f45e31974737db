"""Feature Slicer wrappers for diffusers UNetSpatioTemporalConditionModel (Stable Video Diffusion).

* `SlicedSpatioTemporalResBlock` (SpatioTemporalResBlock): the spatial ResnetBlock2D runs on
  slices of batch x frames; the temporal res-block (GroupNorm -> SiLU -> Conv3d (3, 1, 1) ->
  + time embedding -> GroupNorm -> SiLU -> Conv3d) and the spatial/temporal AlphaBlender run on
  slices of space. Both GroupNorms take statistics over all frames and positions, so each is
  two-pass: the first pass accumulates statistics over every slice (group_norm_stats), the
  second normalises one slice at a time. The second norm's input (after the first conv) is
  parked in the output buffer between the passes, so nothing is computed twice.
* `SlicedSpatioTemporalTransformer` (TransformerSpatioTemporalModel): per layer, the spatial
  transformer block (attention over one frame's positions) runs on slices of batch x frames
  (the first layer grouped with the per-frame GroupNorm and proj_in), then the temporal block
  and the blender run in place on slices of space (the last layer grouped with proj_out and the
  residual add).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from osmos.accel.streamline.slices import SizeScale, bounds, frame_group_stats, scaled, take, write
from osmos.ops.group_norm import group_norm_apply, group_norm_stats


def _affine(norm: nn.GroupNorm):
    weight = norm.weight.float() if norm.weight is not None else None
    bias = norm.bias.float() if norm.bias is not None else None
    return weight, bias


def _to_video(x: Tensor, batch: int, frames: int) -> Tensor:
    """[B*F, C, S] -> [B, C, F, S, 1]: Conv3d's layout, positions standing in for H x W."""
    bf, c, s = x.shape
    return x.view(batch, frames, c, s).permute(0, 2, 1, 3).unsqueeze(-1)


def _from_video(x: Tensor) -> Tensor:
    """[B, C, F, S, 1] -> [B, F, C, S] view."""
    return x.squeeze(-1).permute(0, 2, 1, 3)


class _SpatioTemporalSliced(nn.Module):
    """Wraps an SVD module run in `spatial_slices` (batch x frames) and `temporal_slices` (space);
    with a SizeScale, the counts shrink with the activation size (adaptive slicing)."""

    def __init__(self, inner: nn.Module, spatial_slices: int, temporal_slices: int, scale: SizeScale | None = None):
        super().__init__()
        self.inner = inner
        self.spatial_slices = spatial_slices
        self.temporal_slices = temporal_slices
        self.scale = scale


class SlicedSpatioTemporalResBlock(_SpatioTemporalSliced):
    """A SpatioTemporalResBlock whose spatial part runs on batch x frames slices and whose
    temporal part runs on spatial slices with exact two-pass GroupNorms."""

    def forward(self, hidden_states: Tensor, temb: Tensor | None = None,
                image_only_indicator: Tensor | None = None) -> Tensor:
        spatial = self.inner.spatial_res_block
        n = hidden_states.shape[0]
        out = None
        for a, b in bounds(n, scaled(self.spatial_slices, hidden_states.numel(), self.scale)):
            out = write(out, spatial(hidden_states[a:b], take(temb, n, a, b)), n, a, b)
        return self.temporal_stage(out, temb, image_only_indicator)

    def temporal_stage(self, x: Tensor, temb: Tensor | None, image_only_indicator: Tensor) -> Tensor:
        """Temporal res-block + blend of the spatial part's output x [B*F, C, H, W]."""
        block, mixer = self.inner.temporal_res_block, self.inner.time_mixer
        frames = image_only_indicator.shape[-1]
        bf, c, h, w = x.shape
        batch, hw = bf // frames, h * w
        xs = x.reshape(bf, c, hw)
        stats1 = frame_group_stats(xs, block.norm1.num_groups, frames)
        w1, b1 = _affine(block.norm1)
        w2, b2 = _affine(block.norm2)
        tproj = None
        if block.time_emb_proj is not None and temb is not None:
            tproj = block.time_emb_proj(block.nonlinearity(temb.reshape(batch, frames, -1)))
            tproj = tproj[:, :, :, None, None].permute(0, 2, 1, 3, 4)  # [B, C, F, 1, 1]
        c_out = block.conv1.out_channels
        out = xs.new_empty((bf, c_out, hw))
        parked = out.view(batch, frames, c_out, hw)
        g2 = block.norm2.num_groups
        stats2 = None
        parts = bounds(hw, scaled(self.temporal_slices, x.numel(), self.scale))
        for s0, s1 in parts:  # pass 1: conv1 per slice, norm2 statistics
            part = group_norm_apply(xs[:, :, s0:s1], stats1, w1, b1, block.norm1.eps, silu=True)
            hidden = block.conv1(_to_video(part, batch, frames))
            if tproj is not None:
                hidden = hidden + tproj
            part_stats = group_norm_stats(hidden.view(batch, c_out, -1), g2)
            stats2 = part_stats if stats2 is None else stats2 + part_stats
            parked[..., s0:s1] = _from_video(hidden)
        stats2 = stats2[:, None].expand(-1, frames, -1, -1).reshape(bf, g2, 3).contiguous()
        for s0, s1 in parts:  # pass 2: norm2 -> conv2 -> residual -> blend
            part = group_norm_apply(out[:, :, s0:s1], stats2, w2, b2, block.norm2.eps, silu=True)
            hidden = block.conv2(block.dropout(_to_video(part, batch, frames)))
            spatial = _to_video(xs[:, :, s0:s1], batch, frames)
            shortcut = block.conv_shortcut(spatial) if block.conv_shortcut is not None else spatial
            mixed = mixer(x_spatial=spatial, x_temporal=shortcut + hidden, image_only_indicator=image_only_indicator)
            parked[..., s0:s1] = _from_video(mixed)
        return out.view(bf, c_out, h, w)


class SlicedSpatioTemporalTransformer(_SpatioTemporalSliced):
    """A TransformerSpatioTemporalModel run spatial layers on batch x frames slices and
    temporal layers on spatial slices."""

    def forward(self, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                image_only_indicator: Tensor | None = None, return_dict: bool = True):
        m = self.inner
        if len(m.transformer_blocks) == 0 or encoder_hidden_states is None or (
                torch.is_grad_enabled() and getattr(m, "gradient_checkpointing", False)):
            return m(hidden_states, encoder_hidden_states=encoder_hidden_states,
                     image_only_indicator=image_only_indicator, return_dict=return_dict)
        bf, c, h, w = hidden_states.shape
        frames = image_only_indicator.shape[-1]
        batch, hw = bf // frames, h * w
        context = encoder_hidden_states[None, :].reshape(batch, frames, -1, encoder_hidden_states.shape[-1])[:, 0]
        positions = torch.arange(frames, device=hidden_states.device).repeat(batch, 1).reshape(-1)
        emb = m.time_pos_embed(m.time_proj(positions).to(dtype=hidden_states.dtype))[:, None, :]
        residual = hidden_states.reshape(bf, c, hw)
        out = None
        tokens = None
        layers = list(zip(m.transformer_blocks, m.temporal_transformer_blocks))
        spatial_parts = bounds(bf, scaled(self.spatial_slices, hidden_states.numel(), self.scale))
        temporal_parts = bounds(hw, scaled(self.temporal_slices, hidden_states.numel(), self.scale))
        for k, (block, temporal) in enumerate(layers):
            new = None
            for a, b in spatial_parts:
                if k == 0:
                    part = m.norm(hidden_states[a:b])
                    part = m.proj_in(part.permute(0, 2, 3, 1).reshape(b - a, hw, part.shape[1]))
                else:
                    part = tokens[a:b]
                part = block(part, encoder_hidden_states=encoder_hidden_states[a:b])
                new = write(new, part, bf, a, b)
            tokens = new
            del new
            last = k == len(layers) - 1
            for s0, s1 in temporal_parts:
                spatial = tokens[:, s0:s1]
                ctx = context[:, None].broadcast_to(batch, s1 - s0, *context.shape[1:]).reshape(-1, *context.shape[1:])
                mixed = temporal(spatial + emb, num_frames=frames, encoder_hidden_states=ctx)
                mixed = m.time_mixer(x_spatial=spatial, x_temporal=mixed, image_only_indicator=image_only_indicator)
                if last:
                    y = m.proj_out(mixed).permute(0, 2, 1)  # [B*F, C, S]
                    if out is None:
                        out = residual.new_empty((bf, y.shape[1], hw))
                    out[:, :, s0:s1] = y + residual[:, :, s0:s1]
                else:
                    tokens[:, s0:s1] = mixed
        out = out.view(bf, -1, h, w)
        if not return_dict:
            return (out,)
        from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput
        return TransformerTemporalModelOutput(sample=out)
