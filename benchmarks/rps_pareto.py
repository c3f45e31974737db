"""Accuracy against compression for randomized parameter sharing, on scikit-learn's bundled
digits (8x8 images, 10 classes; offline), with an MLP 64-256-256-10.

Methods at each compression ratio (target-layer weights / stored weights), 3 seeds:
  stable     STABLE-RPS mapper + RPSGradScaler
  roast      ROAST mapper
  hashednet  HashedNet mapper
  magnitude  global magnitude pruning of the trained dense model to n / ratio weights, fine-tuned
  dense      a smaller dense MLP (two equal hidden layers) with about n / ratio weights
All train with Adam (lr 3e-3, batch 64). Also a stability sweep: SGD (lr 0.05, momentum 0.9) at
8x, M's init std from 1e-3 to 1, counting diverged runs (non-finite loss or final loss above the
initial one) for ROAST (no gradient scaling) and STABLE-RPS (with it).

Writes benchmarks/figures/rps_pareto.png and prints markdown tables (for RESULTS.md).
Usage: nice python benchmarks/rps_pareto.py [--epochs 10] [--seeds 3]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from osmos.compress import rps

RATIOS = [1, 2, 5, 10, 30, 100, 300, 1000]
METHODS = ["stable", "roast", "hashednet", "magnitude", "dense"]
HIDDEN = 256


def load_digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def mlp(hidden: int = HIDDEN) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def weights_of(hidden: int) -> int:
    return 64 * hidden + hidden * hidden + hidden * 10


def train(model, data, epochs, opt, seed, scaler=None, masks=None):
    xtr, ytr, _, _ = data
    g = torch.Generator().manual_seed(seed)
    first = last = None
    for _ in range(epochs):
        perm = torch.randperm(len(ytr), generator=g)
        for b in range(0, len(ytr), 64):
            idx = perm[b:b + 64]
            opt.zero_grad()
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            if not torch.isfinite(loss):
                return first, float("nan")
            loss.backward()
            if scaler is not None:
                scaler.step()
            opt.step()
            if masks is not None:
                with torch.no_grad():
                    for p, mk in masks:
                        p.mul_(mk)
            last = float(loss.detach())
            first = last if first is None else first
    return first, last


@torch.no_grad()
def accuracy(model, data) -> float:
    _, _, xte, yte = data
    return float((model(xte).argmax(1) == yte).float().mean())


def run(method: str, ratio: float, seed: int, data, epochs: int) -> float:
    torch.manual_seed(seed)
    n = weights_of(HIDDEN)
    if method == "dense":
        # largest equal hidden width with at most n / ratio weights (at least 1)
        h = max(1, int((-74 + math.sqrt(74**2 + 4 * n / ratio)) / 2))
        model = mlp(h)
        train(model, data, epochs, torch.optim.Adam(model.parameters(), lr=3e-3), seed)
        return accuracy(model, data)
    if method == "magnitude":
        model = mlp()
        train(model, data, epochs, torch.optim.Adam(model.parameters(), lr=3e-3), seed)
        layers = [m for m in model if isinstance(m, nn.Linear)]
        keep = max(1, round(n / ratio))
        scores = torch.cat([m.weight.detach().abs().reshape(-1) for m in layers])
        threshold = torch.topk(scores, keep).values[-1]
        masks = [(m.weight, (m.weight.detach().abs() >= threshold).float()) for m in layers]
        with torch.no_grad():
            for p, mk in masks:
                p.mul_(mk)
        train(model, data, max(1, epochs // 2), torch.optim.Adam(model.parameters(), lr=1e-3), seed + 1, masks=masks)
        return accuracy(model, data)
    model = rps.compress(mlp(), ratio=ratio, mapper=method, seed=seed)
    scaler = rps.RPSGradScaler(model) if method == "stable" else None
    train(model, data, epochs, torch.optim.Adam(model.parameters(), lr=3e-3), seed, scaler=scaler)
    return accuracy(model, data)


def stability(data, epochs: int, seeds: int):
    rows = []
    for init_std in [1e-3, 1e-2, 1e-1, 1.0]:
        for mapper in ["roast", "stable"]:
            diverged, accs = 0, []
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = rps.compress(mlp(), ratio=8, mapper=mapper, seed=seed, init_std=init_std)
                scaler = rps.RPSGradScaler(model) if mapper == "stable" else None
                opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
                first, last = train(model, data, epochs, opt, seed, scaler=scaler)
                bad = not math.isfinite(last) or last > first
                diverged += bad
                accs.append(0.0 if bad else accuracy(model, data))
            rows.append((init_std, mapper, diverged, statistics.mean(accs)))
            print(f"  stability init_std={init_std:g} {mapper}: diverged {diverged}/{seeds}, mean acc {statistics.mean(accs):.3f}",
                  flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_digits_split()
    t0 = time.time()
    results = {}
    for method in METHODS:
        for ratio in RATIOS:
            accs = [run(method, ratio, seed, data, args.epochs) for seed in range(args.seeds)]
            results[(method, ratio)] = accs
            print(f"  {method:9s} {ratio:5g}x: {statistics.mean(accs):.3f} ({time.time() - t0:.0f}s)", flush=True)
    stab = stability(data, max(5, args.epochs // 2), args.seeds)

    n = weights_of(HIDDEN)
    print(f"\n### Accuracy vs compression (digits, MLP 64-{HIDDEN}-{HIDDEN}-10, {n} weights; "
          f"mean +- std over {args.seeds} seeds, {args.epochs} epochs)\n")
    print("| ratio | " + " | ".join(METHODS) + " |")
    print("|---|" + "---|" * len(METHODS))
    for ratio in RATIOS:
        cells = []
        for method in METHODS:
            accs = results[(method, ratio)]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.3f} +- {sd:.3f}")
        print(f"| {ratio}x | " + " | ".join(cells) + " |")
    print("\n### Stability: SGD at 8x, init std of M swept (diverged runs / seeds, mean accuracy)\n")
    print("| init std | ROAST diverged | ROAST acc | STABLE-RPS diverged | STABLE-RPS acc |")
    print("|---|---|---|---|---|")
    by = {(s, m): (d, a) for s, m, d, a in stab}
    for s in sorted({s for s, _, _, _ in stab}):
        (rd, ra), (sd_, sa) = by[(s, "roast")], by[(s, "stable")]
        print(f"| {s:g} | {rd}/{args.seeds} | {ra:.3f} | {sd_}/{args.seeds} | {sa:.3f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        means = [statistics.mean(results[(method, r)]) for r in RATIOS]
        sds = [statistics.stdev(results[(method, r)]) if args.seeds > 1 else 0 for r in RATIOS]
        ax.errorbar(RATIOS, means, yerr=sds, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("compression (dense weights / stored weights)")
    ax.set_ylabel("test accuracy (digits)")
    ax.set_title(f"RPS vs pruning vs smaller dense, MLP 64-{HIDDEN}-{HIDDEN}-10")
    ax.grid(alpha=0.3)
    ax.legend()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures", "rps_pareto.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"\nwrote {out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
