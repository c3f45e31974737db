"""osmos.ft: fault tolerance for training. `RSCodec` is the Reed-Solomon erasure code that
protects in-memory snapshots against the loss of whole nodes."""

from osmos.ft.ec import RSCodec

__all__ = ["RSCodec"]
