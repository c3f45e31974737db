"""osmos ops: one torch custom op per hot path (namespace `osmos`), each with a pure-torch
reference, input validation, and a kernel per device."""

from osmos.ops.adapted_linear import adapted_linear
from osmos.ops.adapter_inject import adapter_inject, adapter_inject_
from osmos.ops.cache_select import cache_select
from osmos.ops.gf256_matmul import gf256_matmul
from osmos.ops.group_norm import group_norm_apply, group_norm_stats, sliced_group_norm
from osmos.ops.rps_gather import rps_gather, rps_indices, rps_scatter
from osmos.ops.rps_linear import rps_linear
from osmos.ops.similarity_topk import similarity_topk
from osmos.ops.topk_compress import topk_accumulate_, topk_compress, topk_decompress

__all__ = [
    "adapted_linear",
    "adapter_inject",
    "adapter_inject_",
    "cache_select",
    "gf256_matmul",
    "group_norm_apply",
    "group_norm_stats",
    "rps_gather",
    "rps_indices",
    "rps_linear",
    "rps_scatter",
    "similarity_topk",
    "sliced_group_norm",
    "topk_accumulate_",
    "topk_compress",
    "topk_decompress",
]
