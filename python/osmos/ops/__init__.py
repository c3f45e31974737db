"""osmos ops: one torch custom op per hot path (namespace `osmos`), each with a pure-torch
reference, input validation, and a kernel per device."""

from osmos.ops.topk_compress import topk_accumulate_, topk_compress, topk_decompress
from osmos.ops.similarity_topk import similarity_topk

__all__ = ["topk_compress", "topk_decompress", "topk_accumulate_", "similarity_topk"]
