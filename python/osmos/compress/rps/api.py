"""`compress` a model with randomized parameter sharing, `to_dense` it back, `summary` of sizes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from osmos.compress.rps.layers import RPS_LAYERS, RPSLayer, RPSStore, usual_init_std
from osmos.ops import rps_indices, rps_scatter
from osmos.ops.rps_mapping import MAPPERS, LayerMap

STORE_NAME = "rps_store"     # the RPSStore, in the root's __dict__
PARAM_NAME = "rps_weight"    # M, a parameter of the root
DEFAULT_TARGETS = (nn.Linear, nn.Conv2d, nn.Embedding)


def _rps_type(module: nn.Module) -> type[RPSLayer] | None:
    for dense_type, rps_type in RPS_LAYERS.items():
        if type(module) is dense_type:
            return rps_type
    return None


def target_names(model: nn.Module, targets=DEFAULT_TARGETS) -> list[str]:
    """Names (model.named_modules order) of the layers `compress` would replace."""
    targets = tuple(targets)
    for t in targets:
        if t not in RPS_LAYERS:
            raise TypeError(f"targets may only contain {[c.__name__ for c in RPS_LAYERS]}, got {t!r}")
    return [name for name, mod in model.named_modules()
            if isinstance(mod, targets) and _rps_type(mod) is not None and mod.weight is not None]


def _power_of_two(x: float) -> float:
    return 2.0 ** round(math.log2(x))


def compress(model: nn.Module, ratio: float, mapper: str = "stable", seed: int = 0,
             targets=DEFAULT_TARGETS, *, init: str = "random", init_std: float = 0.02, use_sign: bool = True,
             tile: tuple[int, int] = (16, 16), deterministic: bool = False) -> nn.Module:
    """Replace the target layers of `model` (in place) by RPS layers reading one shared array M.

    Args:
        model: any nn.Module. If the model itself is a target layer it is wrapped in nn.Sequential.
        ratio: compression of the target weights, >= 1: M has m = ceil(n / ratio) entries, n the
            number of weights in the target layers. Biases (and other parameters) stay dense.
        mapper: "stable" (STABLE-RPS: global cyclic partitions, a bijection at 1x), "roast"
            (ROAST: tiles of consecutive weights hashed to contiguous runs of M) or "hashednet"
            (elementwise hash).
        seed: seeds every hash; (architecture, ratio, mapper, seed) fixes the mapping.
        targets: layer types to compress, a subset of (nn.Linear, nn.Conv2d, nn.Embedding).
        init: "random" (M ~ N(0, init_std^2); each layer's scale = its usual init std / init_std, so
            every layer starts at its usual scale) or "dense" (M[j] = mean of the current weights
            mapped to j, sign and scale removed: at ratio 1 with "stable" the model is unchanged).
        init_std: std of M's random init.
        use_sign: multiply every weight by a hashed sign.
        tile: ROAST tile (rows, cols) of the 2-D weight view.
        deterministic: bitwise reproducible backward on the GPU (sort-and-reduce scatter).
    Returns:
        the model (the same object unless it was wrapped), M registered as its parameter `rps_weight`.
    """
    if mapper not in MAPPERS:
        raise ValueError(f"mapper must be one of {sorted(MAPPERS)}, got {mapper!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 1:
        raise ValueError(f"ratio must be a number >= 1, got {ratio!r}")
    if init not in ("random", "dense"):
        raise ValueError(f"init must be 'random' or 'dense', got {init!r}")
    if not init_std > 0:
        raise ValueError(f"init_std must be > 0, got {init_std!r}")
    if STORE_NAME in model.__dict__:
        raise ValueError("model is already compressed (it has an rps_store); call to_dense first")
    if _rps_type(model) is not None and isinstance(model, tuple(targets)):
        model = nn.Sequential(model)
    names = target_names(model, targets)
    if not names:
        raise ValueError(f"model has no layer of the target types {[t.__name__ for t in targets]} to compress")
    n = sum(model.get_submodule(name).weight.numel() for name in names)
    m = max(1, math.ceil(n / ratio))
    return apply_rps(model, names, m, mapper=mapper, seed=seed, ratio=float(ratio), init=init, init_std=init_std,
                     use_sign=use_sign, tile=tile, deterministic=deterministic)


def apply_rps(model: nn.Module, names: list[str], m: int, *, mapper: str, seed: int, ratio: float, init: str,
              init_std: float, use_sign: bool, tile: tuple[int, int], deterministic: bool) -> nn.Module:
    """Replace the named layers by RPS layers over one M of size m (compress and load use this)."""
    first = model.get_submodule(names[0]).weight
    store = RPSStore(m, mapper=mapper, seed=seed, ratio=ratio, init_std=init_std, use_sign=use_sign, tile=tile,
                     deterministic=deterministic, device=first.device, dtype=first.dtype)
    offset = 0
    layers = []
    for number, name in enumerate(names):
        dense = model.get_submodule(name)
        w = dense.weight
        layer_map = LayerMap(mapper, m, offset, w.shape[0], w[0].numel(), seed=seed, layer=number,
                             tile=tuple(tile), use_sign=use_sign)
        scale = _power_of_two(usual_init_std(dense) / init_std)
        layers.append((name, dense, RPS_LAYERS[type(dense)](dense, store, layer_map, scale)))
        offset += w.numel()
    with torch.no_grad():
        if init == "random":
            store.weight.normal_(0.0, init_std)
        else:
            total = torch.zeros(m, dtype=torch.float64, device=first.device)
            count = torch.zeros(m, dtype=torch.float64, device=first.device)
            for _, dense, layer in layers:
                w2d = dense.weight.detach().reshape(layer.rows, layer.cols).to(torch.float64)
                total += rps_scatter(w2d.contiguous(), layer.config, 1.0 / layer.scale)
                index, _ = rps_indices(layer.config, layer.rows, layer.cols, first.device)
                count += torch.bincount(index.reshape(-1), minlength=m).to(torch.float64)
            store.weight.copy_(total / count.clamp(min=1))
    for name, _, layer in layers:
        _replace(model, name, layer)
    model.register_parameter(PARAM_NAME, store.weight)
    model.__dict__[STORE_NAME] = store
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def rps_layers(model: nn.Module) -> list[tuple[str, RPSLayer]]:
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, RPSLayer)]


def store_of(model: nn.Module) -> RPSStore:
    store = model.__dict__.get(STORE_NAME)
    if not isinstance(store, RPSStore):
        raise ValueError("model is not RPS-compressed (no rps_store); call osmos.compress.rps.compress first")
    return store


def to_dense(model: nn.Module) -> nn.Module:
    """Replace every RPS layer by the ordinary layer with its materialised weight; drop M. In place."""
    store_of(model)
    for name, layer in rps_layers(model):
        _replace(model, name, layer.to_dense())
    delattr(model, PARAM_NAME)
    del model.__dict__[STORE_NAME]
    return model


@dataclass
class RPSSummary:
    """Parameter counts and bytes of a compressed model before (dense) and after compression."""

    mapper: str
    seed: int
    layers: int
    dense_weights: int      # weights of the compressed layers, dense
    shared: int             # m, the size of M
    other_params: int       # biases and parameters of layers that were not compressed
    bytes_per_param: int

    @property
    def params_before(self) -> int:
        return self.dense_weights + self.other_params

    @property
    def params_after(self) -> int:
        return self.shared + self.other_params

    @property
    def ratio(self) -> float:
        return self.dense_weights / self.shared

    def __str__(self) -> str:
        b = self.bytes_per_param
        return (f"RPS ({self.mapper}, seed {self.seed}): {self.layers} layers, {self.dense_weights} weights -> "
                f"M of {self.shared} ({self.ratio:.1f}x); params {self.params_before} -> {self.params_after}, "
                f"bytes {self.params_before * b} -> {self.params_after * b}")


def summary(model: nn.Module) -> RPSSummary:
    store = store_of(model)
    layers = rps_layers(model)
    other = sum(p.numel() for p in model.parameters() if p is not store.weight)
    return RPSSummary(mapper=store.mapper, seed=store.seed, layers=len(layers),
                      dense_weights=sum(layer.rows * layer.cols for _, layer in layers), shared=store.weight.numel(),
                      other_params=other, bytes_per_param=store.weight.element_size())
