"""Save / load RPS-compressed models as safetensors; the mapper config and seed ride in the
file's metadata (JSON), so `load` rebuilds the identical mapping on any device."""

from __future__ import annotations

import json

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from osmos.compress.rps.api import _rps_type, apply_rps, rps_layers, store_of

METADATA_KEY = "osmos.rps"


def save(model: nn.Module, path: str) -> None:
    """Write the state dict (M once, plus every parameter / buffer that stays dense) and the
    compression config to `path` (.safetensors)."""
    store = store_of(model)
    config = dict(mapper=store.mapper, seed=store.seed, ratio=store.ratio, m=store.weight.numel(),
                  init_std=store.init_std, use_sign=store.use_sign, tile=list(store.tile),
                  deterministic=store.deterministic, layers=[name for name, _ in rps_layers(model)])
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata={METADATA_KEY: json.dumps(config)})


def read_config(path: str) -> dict:
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} holds no osmos RPS config (metadata key {METADATA_KEY!r})")
    return json.loads(metadata[METADATA_KEY])


def load(model: nn.Module, path: str) -> nn.Module:
    """Compress `model` (a freshly built dense model of the saved architecture) as the file says
    and load its tensors (strict). Returns the compressed model."""
    from safetensors.torch import load_file

    config = read_config(path)
    names = config["layers"]
    if _rps_type(model) is not None and names == ["0"]:
        model = nn.Sequential(model)  # compress wrapped a bare target layer the same way
    missing = [n for n in names if n not in dict(model.named_modules())]
    if missing:
        raise ValueError(f"model has no layers {missing} that {path} compressed")
    apply_rps(model, names, config["m"], mapper=config["mapper"], seed=config["seed"], ratio=config["ratio"],
              init="random", init_std=config["init_std"], use_sign=config["use_sign"], tile=tuple(config["tile"]),
              deterministic=config["deterministic"])
    state = load_file(path, device=str(store_of(model).weight.device))
    model.load_state_dict(state, strict=True)
    return model
