"""Inference of RPS-compressed MLPs on the CPU: the ops' kernels called directly (the default for
calls autograd does not record) vs through the torch custom ops (what every call did before),
interleaved in one process on the same inputs; medians over ROUNDS forwards, 1 torch thread.

    PYTHONPATH=python python benchmarks/rps_inference.py [ROUNDS]
"""

import statistics
import sys
import time

import torch
import torch.nn as nn

from osmos.compress.rps import compress

MODELS = (("digits MLP 64-256-256-10", (64, 256, 256, 10), 64), ("MLP 784-1024-1024-10", (784, 1024, 1024, 10), 256))


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    torch.set_num_threads(1)
    mods = [sys.modules["osmos.ops.rps_gather"], sys.modules["osmos.ops.rps_linear"]]
    direct = [m.eager_untracked for m in mods]
    print("| model (8x, STABLE-RPS) | batch | kernels called directly (us) | through the custom ops (us) | ops / direct | same outputs |")
    print("|---|---|---|---|---|---|")
    for name, widths, batch in MODELS:
        torch.manual_seed(0)
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        model = compress(nn.Sequential(*layers[:-1]), 8, mapper="stable", seed=0)
        x = torch.randn(batch, widths[0])
        times, outs = {"direct": [], "op": []}, {}
        with torch.no_grad():
            for _ in range(rounds):
                for k in times:
                    for m, d in zip(mods, direct):
                        m.eager_untracked = d if k == "direct" else (lambda *a: False)
                    t0 = time.perf_counter()
                    outs[k] = model(x)
                    times[k].append(time.perf_counter() - t0)
        for m, d in zip(mods, direct):
            m.eager_untracked = d
        med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        print(f"| {name} | {batch} | {med['direct']:.1f} | {med['op']:.1f} | {med['op'] / med['direct']:.2f}x | "
              f"{torch.equal(outs['direct'], outs['op'])} |")


if __name__ == "__main__":
    main()
