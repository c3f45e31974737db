"""The SPM adapter: one rank-1 (d, u) pair per adapted layer, and its safetensors file.

A layer with weight W computes W x + gamma * s * u (d^T x); d [in] starts Kaiming-uniform,
u [out] at zero, so a new SPM changes nothing. s is the adapter's `scale`, gamma the
per-prompt strength (1, or Facilitated Transport's value).

File: safetensors with tensors "<layer>.down" [in] and "<layer>.up" [out] and one metadata
entry "osmos_spm", a JSON object: format version, concept, surrogate, scale, architecture_hash,
layers {name: [kind, in, out]}, the training settings and the concept's wordings (the texts
Facilitated Transport compares prompts with; files written before wordings were stored load
with wordings [concept]).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open
from torch import nn

from osmos.erase.spm.targets import ArchitectureMismatch, LayerSpec, adapted_layers, architecture_hash, describe_mismatch

FORMAT_VERSION = 1
METADATA_KEY = "osmos_spm"


def _wordings(concept: str, wordings: Sequence[str] | None) -> list[str]:
    """The concept's wordings: `wordings` (order kept, duplicates dropped) or [concept]."""
    if isinstance(wordings, str):
        raise TypeError("wordings must be a sequence of strings, not one string")
    return list(dict.fromkeys(str(w) for w in (wordings or [concept])))


class SPM(nn.Module):
    """Rank-1 adapters for one concept on every adapted layer of a UNet architecture.

    Args:
        layers: {layer name: LayerSpec}, as `adapted_layers(unet)` returns.
        concept: the erased concept's text (used by Facilitated Transport).
        surrogate: the concept it is mapped to ("" = the empty prompt).
        scale: the strength s multiplying every u.
        settings: training settings, stored in the file as they are (JSON-serialisable).
        generator: seeds the Kaiming-uniform init of the d's.
        wordings: every text that names the concept (e.g. "circle", "disc", "round shape");
            Facilitated Transport gives a prompt the strength of its closest wording. Default [concept].
    """

    def __init__(self, layers: dict[str, LayerSpec], concept: str, surrogate: str = "", scale: float = 1.0,
                 settings: dict | None = None, generator: torch.Generator | None = None,
                 wordings: Sequence[str] | None = None):
        super().__init__()
        self.layers = dict(layers)
        self.layer_names = list(layers)
        self.index = {name: i for i, name in enumerate(self.layer_names)}
        self.concept, self.surrogate, self.scale = concept, surrogate, float(scale)
        self.settings = dict(settings or {})
        self.wordings = _wordings(concept, wordings)
        self.architecture_hash = architecture_hash(self.layers)
        downs, ups = [], []
        for spec in self.layers.values():
            bound = 1.0 / math.sqrt(spec.in_features)  # nn.Linear(in, 1)'s Kaiming-uniform bound
            downs.append(nn.Parameter((torch.rand(spec.in_features, generator=generator) * 2 - 1) * bound))
            ups.append(nn.Parameter(torch.zeros(spec.out_features)))
        self.down = nn.ParameterList(downs)
        self.up = nn.ParameterList(ups)

    @classmethod
    def for_unet(cls, unet: nn.Module, concept: str, surrogate: str = "", scale: float = 1.0,
                 settings: dict | None = None, generator: torch.Generator | None = None,
                 wordings: Sequence[str] | None = None) -> "SPM":
        return cls(adapted_layers(unet), concept, surrogate, scale, settings, generator, wordings)

    def check_compatible(self, unet: nn.Module) -> None:
        """Raise ArchitectureMismatch (naming the differing layers) unless unet has this SPM's layers."""
        found = adapted_layers(unet)
        if architecture_hash(found) != self.architecture_hash:
            raise ArchitectureMismatch(
                f"SPM for {self.concept!r} was made for architecture {self.architecture_hash}, this UNet is "
                f"{architecture_hash(found)}: {describe_mismatch(self.layers, found)}")

    def vectors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(d [in], s * u [out]) of the named layer."""
        i = self.index[name]
        return self.down[i], self.up[i] * self.scale

    def metadata(self) -> dict:
        return {
            "version": FORMAT_VERSION, "concept": self.concept, "surrogate": self.surrogate, "scale": self.scale,
            "architecture_hash": self.architecture_hash,
            "layers": {name: spec.as_list() for name, spec in self.layers.items()},
            "settings": self.settings, "wordings": self.wordings,
        }

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, d, u in zip(self.layer_names, self.down, self.up):
            tensors[f"{name}.down"] = d.detach().float().contiguous().cpu()
            tensors[f"{name}.up"] = u.detach().float().contiguous().cpu()
        return tensors

    def save(self, path: str | Path) -> None:
        save_file(self.state_tensors(), str(path), metadata={METADATA_KEY: json.dumps(self.metadata())})

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "SPM":
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported SPM format version {meta.get('version')!r} (this osmos reads {FORMAT_VERSION})")
        layers = {name: LayerSpec(*spec) for name, spec in meta["layers"].items()}
        spm = cls(layers, meta["concept"], meta.get("surrogate", ""), meta.get("scale", 1.0), meta.get("settings"),
                  wordings=meta.get("wordings"))
        if spm.architecture_hash != meta["architecture_hash"]:
            raise ValueError("SPM file is corrupt: its layer list does not match its architecture hash")
        with torch.no_grad():
            for i, name in enumerate(spm.layer_names):
                for kind, params in (("down", spm.down), ("up", spm.up)):
                    t = tensors.get(f"{name}.{kind}")
                    if t is None or t.shape != params[i].shape:
                        raise ValueError(f"SPM file lacks {name}.{kind} of shape {tuple(params[i].shape)}")
                    params[i].copy_(t)
        return spm

    @classmethod
    def load(cls, path: str | Path, unet: nn.Module | None = None) -> "SPM":
        """Read an SPM file; with `unet`, also check it fits that UNet (clear error if not)."""
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"{path} is not an osmos SPM file (no {METADATA_KEY!r} metadata)")
        spm = cls.from_tensors(load_file(str(path)), json.loads(raw))
        if unet is not None:
            spm.check_compatible(unet)
        return spm

    def extra_repr(self) -> str:
        return (f"concept={self.concept!r}, wordings={self.wordings}, surrogate={self.surrogate!r}, "
                f"layers={len(self.layer_names)}, scale={self.scale}")
