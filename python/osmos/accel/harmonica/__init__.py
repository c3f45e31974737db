"""HarmoniCa: a learned feature cache for diffusion transformers.

The cache units are the attention and MLP branch outputs of every transformer block (before
gating and the residual add): 2N units for N blocks. A `Router` (T x 2N logits) decides, per
sampling step, which units are recomputed and which reuse their cached output (granularity
"step": T logits, whole steps computed or reused).
"""

from osmos.accel.harmonica.hooks import HarmonicaConfig, HarmonicaHandle, apply_harmonica, cache_units
from osmos.accel.harmonica.router import Router

__all__ = ["HarmonicaConfig", "HarmonicaHandle", "Router", "apply_harmonica", "cache_units"]

from osmos.accel.harmonica.train import TrainRecord, train_router  # noqa: E402
from osmos.accel.harmonica.select import Selection, image_errors, select_by_image_error  # noqa: E402

__all__ += ["Selection", "TrainRecord", "image_errors", "select_by_image_error", "train_router"]
