"""osmos ops: one torch custom op per hot path (namespace `osmos`), each with a pure-torch
reference, input validation, and a kernel per device."""

from osmos.ops.adapter_inject import adapter_inject, adapter_inject_
from osmos.ops.gf256_matmul import gf256_matmul
from osmos.ops.topk_compress import topk_accumulate_, topk_compress, topk_decompress

__all__ = [
    "adapter_inject",
    "adapter_inject_",
    "gf256_matmul",
    "topk_accumulate_",
    "topk_compress",
    "topk_decompress",
]
