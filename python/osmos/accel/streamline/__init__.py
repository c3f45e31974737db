"""Streamlined Inference for video diffusion: exact Feature Slicer + Operator Grouping, and
Step Rehash (reuse of the deep blocks' output at non-key steps, key steps from a calibration run).

`streamline(unet, spatial_slices=S, temporal_slices=T)` makes every spatial operator of a
diffusers UNetMotionModel (AnimateDiff) or UNetSpatioTemporalConditionModel (SVD) run slice by
slice along batch x frames, and every temporal operator slice by slice along space with exact
two-pass GroupNorms, so only one slice's intermediates are alive at a time. Results equal the
unsliced model's to float rounding.
"""

from osmos.accel.streamline.rehash import (
           RehashConfig,
           RehashHandle,
           calibrate_rehash,
           choose_key_steps,
           rehash,
)
from osmos.accel.streamline.slicer import StreamlineHandle, streamline

__all__ = ["RehashConfig", "RehashHandle", "StreamlineHandle", "calibrate_rehash", "choose_key_steps", "rehash",
           "streamline"]
