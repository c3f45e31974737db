"""Replication detection and mitigation: do generated images copy the training set?

Descriptors (`PixelDescriptor` baseline, the shipped learned `ShapesCopyDescriptor` for the zoo's
shapes world, `ModuleDescriptor` for SSCD / CLIP / DINO models from local files), embedding
indexes saved as memory-mappable .npy (`build_index`, `EmbeddingIndex`), and `scan`, which finds
each generation's top-1 training match with the streaming exact search `osmos.ops.similarity_topk`.
Metrics (`replication_scores`, `replication_rate`, `calibrate_threshold`,
`retrieval_precision_recall`, `micro_average_precision`, `roc_auc`, `roc_auc_ci`), the
training-free `memorization_score` (after Wen et al.; `score_prompts` flags a prompt list), and
inference-time mitigations (`noise_text_embedding`, `insert_random_tokens`,
`optimize_prompt_embedding`) that work on zoo and diffusers pipelines through `as_denoiser`.
"""

from osmos.replication.denoisers import as_denoiser, load_pipeline
from osmos.replication.descriptors import Descriptor, ModuleDescriptor, PixelDescriptor
from osmos.replication.images import ImageFolder
from osmos.replication.index import EmbeddingIndex, build_index
from osmos.replication.memorization import PromptScores, memorization_score, score_prompts
from osmos.replication.metrics import (calibrate_threshold, micro_average_precision, replication_rate,
                                       replication_scores, retrieval_precision_recall, roc_auc, roc_auc_ci)
from osmos.replication.mitigations import (first_step_noise_magnitude, insert_random_tokens, noise_text_embedding,
                                           optimize_prompt_embedding, vocabulary_from_tokenizer)
from osmos.replication.scan import ReplicationReport, scan

__all__ = ["Descriptor", "PixelDescriptor", "ModuleDescriptor", "ShapesCopyDescriptor", "ImageFolder",
           "EmbeddingIndex", "build_index", "ReplicationReport", "scan", "replication_scores", "replication_rate",
           "calibrate_threshold", "retrieval_precision_recall", "micro_average_precision", "roc_auc", "roc_auc_ci",
           "memorization_score", "score_prompts", "PromptScores", "as_denoiser", "load_pipeline",
           "noise_text_embedding", "insert_random_tokens", "vocabulary_from_tokenizer", "optimize_prompt_embedding",
           "first_step_noise_magnitude"]


def __getattr__(name: str):
    # imported on first use, so `python -m osmos.replication.copy_descriptor` runs the module only once
    if name == "ShapesCopyDescriptor":
        from osmos.replication.copy_descriptor import ShapesCopyDescriptor

        return ShapesCopyDescriptor
    raise AttributeError(f"module 'osmos.replication' has no attribute {name!r}")
