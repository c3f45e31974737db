"""Randomized parameter sharing (ROAST, STABLE-RPS, HashedNet): every weight of the compressed
layers is a signed, scaled view into one shared array M ("In defense of parameter sharing for
model-compression", ICLR 2024).

    model = compress(model, ratio=10, mapper="stable")
    scaler = RPSGradScaler(model)          # STABLE-RPS gradient scaling for SGD-type optimizers
    loss.backward(); scaler.step(); optimizer.step()
    save(model, "m.safetensors"); model2 = load(build_dense_model(), "m.safetensors")
    dense = to_dense(model)
"""

from osmos.compress.rps.api import compress, rps_layers, summary, target_names, to_dense
from osmos.compress.rps.grad_scaler import MODES, RPSGradScaler, scaling_factors
from osmos.compress.rps.io import load, read_config, save
from osmos.compress.rps.layers import RPSConv2d, RPSEmbedding, RPSLayer, RPSLinear, RPSStore

__all__ = ["compress", "to_dense", "summary", "save", "load", "read_config", "target_names", "rps_layers",
           "RPSGradScaler", "scaling_factors", "MODES", "RPSStore", "RPSLayer", "RPSLinear", "RPSConv2d",
           "RPSEmbedding"]
