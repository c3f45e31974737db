"""SPMs for the rest of the ecosystem: LoRA state dicts and merging into the base weights.

Both fix gamma (no Facilitated Transport): a LoRA of rank 1 per layer with A = d^T and
B = gamma * s * u (alpha = rank = 1, so the LoRA scale is 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from osmos.erase.spm.adapter import SPM

LORA_FORMATS = ("diffusers", "kohya")


def _shaped(spm: SPM, name: str, gamma: float) -> tuple[Tensor, Tensor]:
    d, u = spm.vectors(name)
    a, b = d.detach().float()[None, :], (u.detach().float() * gamma)[:, None]
    if spm.layers[name].kind == "conv1x1":
        a, b = a[:, :, None, None], b[:, :, None, None]
    return a.contiguous(), b.contiguous()


def to_lora_state_dict(spm: SPM, format: str = "diffusers", gamma: float = 1.0, prefix: str = "unet") -> dict[str, Tensor]:
    """The SPM as LoRA tensors.

    format "diffusers": "{prefix}.{layer}.lora_A.weight" [1, in(,1,1)] / ".lora_B.weight" [out, 1(,1,1)]
    (PEFT keys, as diffusers' load_lora_weights reads them).
    format "kohya": "lora_unet_{layer with _}.lora_down.weight" / ".lora_up.weight" / ".alpha".
    """
    if format not in LORA_FORMATS:
        raise ValueError(f"format must be one of {LORA_FORMATS}, got {format!r}")
    out: dict[str, Tensor] = {}
    for name in spm.layer_names:
        a, b = _shaped(spm, name, gamma)
        if format == "diffusers":
            out[f"{prefix}.{name}.lora_A.weight"] = a
            out[f"{prefix}.{name}.lora_B.weight"] = b
        else:
            key = "lora_unet_" + name.replace(".", "_")
            out[f"{key}.lora_down.weight"] = a
            out[f"{key}.lora_up.weight"] = b
            out[f"{key}.alpha"] = torch.tensor(1.0)
    return out


def save_lora(spm: SPM, path: str | Path, format: str = "diffusers", gamma: float = 1.0) -> None:
    save_file(to_lora_state_dict(spm, format, gamma), str(path),
              metadata={"osmos_spm_concept": spm.concept, "format": f"lora-{format}"})


@torch.no_grad()
def merge_spm(unet: nn.Module, spms: Sequence[SPM], gamma: Sequence[float] | None = None) -> nn.Module:
    """Add sum_i gamma_i s_i u_i d_i^T into the adapted layers' weights, in place (float32 math,
    stored in the weights' dtype). Returns unet."""
    gamma = [1.0] * len(spms) if gamma is None else list(gamma)
    if len(gamma) != len(spms):
        raise ValueError(f"gamma must have one value per SPM ({len(spms)}), got {len(gamma)}")
    for spm in spms:
        spm.check_compatible(unet)
    for name in spms[0].layer_names:
        weight = unet.get_submodule(name).weight
        delta = torch.zeros(weight.shape[0], weight.shape[1], dtype=torch.float32, device=weight.device)
        for spm, g in zip(spms, gamma):
            d, u = spm.vectors(name)
            delta += g * torch.outer(u.float(), d.float()).to(weight.device)
        weight.copy_((weight.float() + delta.reshape(weight.shape)).to(weight.dtype))
    return unet
