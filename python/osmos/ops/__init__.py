"""osmos ops: one torch custom op per hot path (namespace `osmos`), each with a pure-torch
reference, input validation, and a kernel per device."""

from osmos.ops.topk_compress import topk_accumulate_, topk_compress, topk_decompress

__all__ = ["topk_compress", "topk_decompress", "topk_accumulate_"]
from osmos.ops.group_norm import group_norm_apply, group_norm_stats, sliced_group_norm  # noqa: E402

__all__ += ["group_norm_stats", "group_norm_apply", "sliced_group_norm"]
from osmos.ops.cache_select import cache_select  # noqa: E402

__all__ += ["cache_select"]
