"""Replication detection and mitigation: do generated images copy the training set?

Descriptors (`PixelDescriptor` baseline, `ModuleDescriptor` for SSCD / CLIP / DINO models from
local files), embedding indexes saved as memory-mappable .npy (`build_index`,
`EmbeddingIndex`), and `scan`, which finds each generation's top-1 training match with the
streaming exact search `osmos.ops.similarity_topk`. Metrics (`replication_scores`,
`replication_rate`, `calibrate_threshold`, `retrieval_precision_recall`, `roc_auc`), the
training-free `memorization_score` (Wen et al.), and inference-time mitigations
(`noise_text_embedding`, `insert_random_tokens`, `optimize_prompt_embedding`) that work on zoo and
diffusers pipelines through `as_denoiser`.
"""

from osmos.replication.denoisers import as_denoiser
from osmos.replication.descriptors import Descriptor, ModuleDescriptor, PixelDescriptor
from osmos.replication.images import ImageFolder
from osmos.replication.index import EmbeddingIndex, build_index
from osmos.replication.memorization import memorization_score
from osmos.replication.metrics import (calibrate_threshold, replication_rate, replication_scores,
                                       retrieval_precision_recall, roc_auc)
from osmos.replication.mitigations import (insert_random_tokens, noise_text_embedding, optimize_prompt_embedding,
                                           vocabulary_from_tokenizer)
from osmos.replication.scan import ReplicationReport, scan

__all__ = ["Descriptor", "PixelDescriptor", "ModuleDescriptor", "ImageFolder", "EmbeddingIndex", "build_index",
           "ReplicationReport", "scan", "replication_scores", "replication_rate", "calibrate_threshold",
           "retrieval_precision_recall", "roc_auc", "memorization_score", "as_denoiser", "noise_text_embedding",
           "insert_random_tokens", "vocabulary_from_tokenizer", "optimize_prompt_embedding"]
