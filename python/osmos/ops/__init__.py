"""osmos ops: one torch custom op per hot path (namespace `osmos`), each with a pure-torch
reference, input validation, and a kernel per device."""

from osmos.ops.rps_gather import rps_gather, rps_indices, rps_scatter
from osmos.ops.rps_linear import rps_linear
from osmos.ops.topk_compress import topk_accumulate_, topk_compress, topk_decompress

__all__ = ["topk_compress", "topk_decompress", "topk_accumulate_", "rps_gather", "rps_scatter", "rps_indices", "rps_linear"]
