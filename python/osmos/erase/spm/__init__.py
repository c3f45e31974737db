"""SPM: one-dimensional (rank-1) adapters that erase a concept from a diffusion UNet (Lyu et al.,
CVPR 2024), composable per sample, transferable across models of one architecture, with
Facilitated Transport and Latent Anchoring. The injection runs through osmos.ops.adapter_inject."""

from osmos.erase.spm.adapter import SPM
from osmos.erase.spm.export import merge_spm, save_lora, to_lora_state_dict
from osmos.erase.spm.inject import SPMHandle, apply_spm
from osmos.erase.spm.targets import ArchitectureMismatch, LayerSpec, adapted_layers, architecture_hash
from osmos.erase.spm.training import (
    AnchorSampler, BatchLayout, anchoring_loss, erasure_loss, erasure_target, train_spm,
    train_spm_selected,
)
from osmos.erase.spm.transport import FacilitatedTransport, PromptEncoding, transformers_encoder

__all__ = [
    "SPM", "SPMHandle", "apply_spm", "merge_spm", "save_lora", "to_lora_state_dict", "ArchitectureMismatch",
    "LayerSpec", "adapted_layers", "architecture_hash", "AnchorSampler", "BatchLayout", "anchoring_loss",
    "erasure_loss", "erasure_target", "train_spm", "train_spm_selected", "FacilitatedTransport", "PromptEncoding", "transformers_encoder",
]
