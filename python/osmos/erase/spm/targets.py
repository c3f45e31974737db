"""Which layers of a diffusers UNet carry SPM adapters, and the architecture hash of that set.

SPM adapts every Linear and 1x1 Conv inside each Transformer2DModel of the UNet (Lyu et al.):
proj_in / proj_out (a 1x1 Conv in SD 1.x, a Linear in SD 2.x / XL), self- and cross-attention
to_q / to_k / to_v / to_out.0, and the feed-forward ff.net.0.proj / ff.net.2.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from torch import nn

TARGET_SUFFIXES = (
    "proj_in", "proj_out",
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ff.net.0.proj", "ff.net.2",
)
TRANSFORMER_CLASSES = ("Transformer2DModel",)


@dataclass(frozen=True)
class LayerSpec:
    """An adapted layer: kind ("linear" or "conv1x1"), input and output channels."""

    kind: str
    in_features: int
    out_features: int

    def as_list(self) -> list:
        return [self.kind, self.in_features, self.out_features]


def _spec(module: nn.Module) -> LayerSpec | None:
    if isinstance(module, nn.Linear):
        return LayerSpec("linear", module.in_features, module.out_features)
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1 and module.stride == (1, 1):
        return LayerSpec("conv1x1", module.in_channels, module.out_channels)
    return None


def adapted_layers(unet: nn.Module) -> dict[str, LayerSpec]:
    """{module name in unet: LayerSpec} of every layer SPM adapts, in module order."""
    layers: dict[str, LayerSpec] = {}
    for name, module in unet.named_modules():
        if type(module).__name__ not in TRANSFORMER_CLASSES:
            continue
        for sub_name, sub in module.named_modules():
            if not any(sub_name == s or sub_name.endswith("." + s) for s in TARGET_SUFFIXES):
                continue
            spec = _spec(sub)
            if spec is not None:
                layers[f"{name}.{sub_name}" if name else sub_name] = spec
    if not layers:
        raise ValueError(f"{type(unet).__name__} has no Transformer2DModel layers that SPM can adapt")
    return layers


def architecture_hash(layers: dict[str, LayerSpec]) -> str:
    """16 hex digits identifying the adapted-layer structure (names, kinds, shapes). Fine-tuned
    variants of one base model share it; a different architecture does not."""
    text = json.dumps([[name, *spec.as_list()] for name, spec in sorted(layers.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ArchitectureMismatch(ValueError):
    """An SPM was trained on a UNet whose adapted layers differ from this one's."""


def describe_mismatch(expected: dict[str, LayerSpec], found: dict[str, LayerSpec], limit: int = 5) -> str:
    """Human-readable difference between two adapted-layer sets (at most `limit` per kind)."""
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    shape = [f"{n}: {expected[n].as_list()} vs {found[n].as_list()}" for n in expected if n in found and expected[n] != found[n]]
    parts = []
    for title, items in (("missing in this UNet", missing), ("not in the SPM", extra), ("shape differs", shape)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{title}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)
