"""Replication detection: do generated images copy the training set?

Descriptors (`PixelDescriptor` baseline, `ModuleDescriptor` for SSCD / CLIP / DINO models from
local files), embedding indexes saved as memory-mappable .npy (`build_index`,
`EmbeddingIndex`), and `scan`, which finds each generation's top-1 training match with the
streaming exact search `osmos.ops.similarity_topk`.
"""

from osmos.replication.descriptors import Descriptor, ModuleDescriptor, PixelDescriptor
from osmos.replication.images import ImageFolder
from osmos.replication.index import EmbeddingIndex, build_index
from osmos.replication.scan import ReplicationReport, scan

__all__ = ["Descriptor", "PixelDescriptor", "ModuleDescriptor", "ImageFolder", "EmbeddingIndex", "build_index",
           "ReplicationReport", "scan"]
