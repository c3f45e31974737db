"""RPS layers: Linear, Conv2d and Embedding whose weights are views into one shared array M.

Every layer of a compressed model reads the `RPSStore` (the module that owns M) and materialises
its weight as W = scale * sign * M[h] (osmos.ops.rps_gather); a linear layer runs the hashed linear
(osmos.ops.rps_linear: fused in Triton on the GPU, W never materialised). M is registered once,
on the model root (`rps_weight`); layers keep a plain reference to the store.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osmos.ops import rps_gather, rps_linear
from osmos.ops.rps_mapping import LayerMap


class RPSStore:
    """The shared parameter array `weight` [m] and the compression settings.

    Not a module (a container such as nn.Sequential would run it): the model root registers
    `weight` as its parameter `rps_weight` and keeps the store in its __dict__ as `rps_store`;
    layers keep a plain reference. deepcopy, .to() and load_state_dict keep them consistent."""

    def __init__(self, m: int, *, mapper: str, seed: int, ratio: float, init_std: float, use_sign: bool,
                 tile: tuple[int, int], deterministic: bool = False, device=None, dtype=None):
        self.weight = nn.Parameter(torch.empty(m, device=device, dtype=dtype))
        self.mapper, self.seed, self.ratio, self.init_std = mapper, seed, ratio, init_std
        self.use_sign, self.tile, self.deterministic = use_sign, tuple(tile), deterministic

    def __repr__(self) -> str:
        return f"RPSStore(m={self.weight.numel()}, mapper={self.mapper!r}, seed={self.seed}, ratio={self.ratio:g})"


def usual_init_std(layer: nn.Module) -> float:
    """Std of the weight init PyTorch gives the layer: kaiming_uniform(a=sqrt(5)) for Linear and
    Conv2d (U(-1/sqrt(fan_in), 1/sqrt(fan_in))), N(0, 1) for Embedding."""
    if isinstance(layer, nn.Embedding):
        return 1.0
    fan_in = layer.weight[0].numel()
    return 1.0 / math.sqrt(3.0 * fan_in)


class RPSLayer(nn.Module):
    """Base of the RPS layers: `weight` is materialised from the store on access.

    `scale` is a power of two (usual init std / M's init std, rounded), so scale * M is exact and
    a model compressed at 1x with STABLE-RPS reproduces the dense weights bit for bit."""

    dense_type: type[nn.Module]

    def __init__(self, store: RPSStore, layer_map: LayerMap, scale: float, weight_shape: tuple[int, ...]):
        super().__init__()
        self.__dict__["_store"] = store  # a plain reference: M is registered once, on the model root
        self.layer_map = layer_map
        self.config = layer_map.config()
        self.rows, self.cols = layer_map.rows, layer_map.cols
        self.scale = float(scale)
        self.weight_shape = tuple(weight_shape)

    @property
    def store(self) -> RPSStore:
        return self.__dict__["_store"]

    @property
    def weight(self) -> Tensor:
        M = self.store.weight
        W = rps_gather(M, self.config, self.rows, self.cols, self.scale, self.store.deterministic)
        return W.view(self.weight_shape)

    def dense_kwargs(self) -> dict:
        raise NotImplementedError

    def to_dense(self) -> nn.Module:
        """An ordinary layer with the materialised weight (and this layer's bias)."""
        M = self.store.weight
        dense = self.dense_type(**self.dense_kwargs(), device=M.device, dtype=M.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.weight)
            if getattr(self, "bias", None) is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        kw = ", ".join(f"{k}={v}" for k, v in self.dense_kwargs().items())
        return f"{kw}, mapper={self.layer_map.kind}, offset={self.layer_map.offset}, scale={self.scale:g}"


class RPSLinear(RPSLayer):
    dense_type = nn.Linear

    def __init__(self, dense: nn.Linear, store: RPSStore, layer_map: LayerMap, scale: float):
        super().__init__(store, layer_map, scale, tuple(dense.weight.shape))
        self.in_features, self.out_features = dense.in_features, dense.out_features
        self.bias = dense.bias

    def dense_kwargs(self) -> dict:
        return dict(in_features=self.in_features, out_features=self.out_features, bias=self.bias is not None)

    def forward(self, x: Tensor) -> Tensor:
        M = self.store.weight
        if self.store.deterministic or x.dtype != M.dtype:
            return F.linear(x, self.weight, self.bias)
        return rps_linear(x, M, self.config, self.rows, self.cols, self.scale, self.bias)


class RPSConv2d(RPSLayer):
    dense_type = nn.Conv2d

    def __init__(self, dense: nn.Conv2d, store: RPSStore, layer_map: LayerMap, scale: float):
        super().__init__(store, layer_map, scale, tuple(dense.weight.shape))
        self.in_channels, self.out_channels = dense.in_channels, dense.out_channels
        self.kernel_size, self.stride, self.padding = dense.kernel_size, dense.stride, dense.padding
        self.dilation, self.groups, self.padding_mode = dense.dilation, dense.groups, dense.padding_mode
        self._reversed_padding_repeated_twice = dense._reversed_padding_repeated_twice
        self.bias = dense.bias

    def dense_kwargs(self) -> dict:
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=self.kernel_size,
                    stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    bias=self.bias is not None, padding_mode=self.padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class RPSEmbedding(RPSLayer):
    dense_type = nn.Embedding

    def __init__(self, dense: nn.Embedding, store: RPSStore, layer_map: LayerMap, scale: float):
        if dense.max_norm is not None or dense.sparse:
            raise ValueError("RPS cannot compress an nn.Embedding with max_norm or sparse=True")
        super().__init__(store, layer_map, scale, tuple(dense.weight.shape))
        self.num_embeddings, self.embedding_dim = dense.num_embeddings, dense.embedding_dim
        self.padding_idx, self.norm_type, self.scale_grad_by_freq = dense.padding_idx, dense.norm_type, dense.scale_grad_by_freq

    def dense_kwargs(self) -> dict:
        return dict(num_embeddings=self.num_embeddings, embedding_dim=self.embedding_dim, padding_idx=self.padding_idx,
                    norm_type=self.norm_type, scale_grad_by_freq=self.scale_grad_by_freq)

    def forward(self, x: Tensor) -> Tensor:
        return F.embedding(x, self.weight, self.padding_idx, None, self.norm_type, self.scale_grad_by_freq, False)


RPS_LAYERS = {nn.Linear: RPSLinear, nn.Conv2d: RPSConv2d, nn.Embedding: RPSEmbedding}
