"""UCE / RECE edits on disk: the edited key/value weights as safetensors, with a JSON header.

The file holds one tensor per edited layer (its edited weight, under the layer's module name),
`osmos.input_map` (the float64 D x D map X with W_edited = W_original X), and in the metadata
under "osmos": format, method, settings, validation scores, the kept epoch and the base model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from osmos.erase.closed_form import ClosedFormEdit, cross_attention_kv

FORMAT = "osmos.closed_form/1"
INPUT_MAP = "osmos.input_map"


def save_edit(edit: ClosedFormEdit, unet: nn.Module, path: str | Path, base_model: str | None = None) -> None:
    """Write the edited weights of `unet` (as left by `edit`) and the edit's record to `path`."""
    tensors = {name: w.detach().cpu().contiguous() for name, w in edit.edited_weights(unet).items()}
    tensors[INPUT_MAP] = edit.input_map.detach().cpu().contiguous()
    header = dict(format=FORMAT, method=edit.method, settings=edit.settings, epoch_scores=edit.epoch_scores,
                  best_epoch=edit.best_epoch, base_model=base_model)
    save_file(tensors, str(path), metadata={"osmos": json.dumps(header)})


def load_edit(unet: nn.Module, path: str | Path) -> ClosedFormEdit:
    """Apply a saved edit to `unet` (in place); returns its record, whose `.undo(unet)` reverts it.

    Raises ValueError if the file is not an osmos closed-form edit or its layers or shapes do not
    match the model's cross-attention keys and values.
    """
    layers = cross_attention_kv(unet)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("osmos", "{}"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not an osmos UCE/RECE edit file (format {meta.get('format')!r})")
        names = [k for k in f.keys() if k != INPUT_MAP]
        tensors = {k: f.get_tensor(k) for k in names}
        input_map = f.get_tensor(INPUT_MAP)
    for name, w in tensors.items():
        if name not in layers:
            raise ValueError(f"{path} edits {name}, which this model does not have (another architecture?)")
        if tuple(w.shape) != tuple(layers[name].weight.shape):
            raise ValueError(f"{path}: {name} has shape {tuple(w.shape)}, the model's is {tuple(layers[name].weight.shape)}")
    original = {name: layers[name].weight.detach().clone() for name in names}
    with torch.no_grad():
        for name, w in tensors.items():
            layers[name].weight.copy_(w)
    return ClosedFormEdit(meta["method"], tuple(names), original, input_map, meta["settings"],
                          meta.get("epoch_scores", []), meta.get("best_epoch", 0))
