"""Streamlined Inference for video diffusion: exact Feature Slicer + Operator Grouping.

`streamline(unet, spatial_slices=S, temporal_slices=T)` makes every spatial operator of a
diffusers UNetMotionModel (AnimateDiff) run slice by slice along batch x frames, and every
motion module slice by slice along space with an exact two-pass GroupNorm, so only one slice's
intermediates are alive at a time. Results equal the unsliced model's to float rounding.
"""

from osmos.accel.streamline.slicer import StreamlineHandle, streamline

__all__ = ["StreamlineHandle", "streamline"]
