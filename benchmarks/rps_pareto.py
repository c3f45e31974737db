"""Accuracy against compression for randomized parameter sharing, on scikit-learn's bundled
digits (8x8 images, 10 classes; offline), with an MLP 64-256-256-10 and a small CNN
(conv3x3 32 - conv3x3 64 - maxpool - fc 128 - fc 10), and on the zoo's shapes world (16x16 RGB
renders of osmos.zoo.data, labelled by shape: 6 classes, every colour, style and background
mixed in; 8000 train / 2000 test renders, seeded) with a CNN (conv3x3 32 - pool - conv3x3 64 -
pool - fc 128 - fc 6). Compression counts the weights of the Linear and Conv2d layers.

Methods at each compression ratio (target-layer weights / stored weights), 3 seeds:
  stable     STABLE-RPS mapper + RPSGradScaler
  roast      ROAST mapper
  hashednet  HashedNet mapper
  magnitude  global magnitude pruning of the trained dense model to n / ratio weights, fine-tuned
  dense      the same architecture with every width scaled down to at most n / ratio weights
All train with Adam (lr 3e-3, batch 64). Also a stability sweep: SGD (lr 0.05, momentum 0.9) at
8x, M's init std from 1e-3 to 1, counting diverged runs (non-finite loss or final loss above the
initial one) for ROAST (no gradient scaling) and STABLE-RPS (with it).

Writes benchmarks/figures/rps_pareto.png and prints markdown tables (for RESULTS.md).
Usage: nice python benchmarks/rps_pareto.py [--epochs 10] [--seeds 3] [--archs mlp,cnn,shapes-cnn] [--no-stability]
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


def load_digits_split(seed: int = 0):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def load_shapes_split(seed: int = 0, n_train: int = 8000, n_test: int = 2000):
    """Zoo renders (16x16 RGB) labelled by shape; the other concepts vary freely."""
    from osmos.zoo.data import render, sample_attributes

    attrs = sample_attributes(n_train + n_test, torch.Generator().manual_seed(seed))
    x, y = render(attrs, 16), attrs.shape
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


TASKS = {"digits": load_digits_split, "shapes": load_shapes_split}


def mlp(width: float = 1.0) -> nn.Module:
    """MLP 64-256-256-10; ``width`` scales both hidden layers."""
    h = max(1, round(256 * width))
    return nn.Sequential(nn.Linear(64, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))


def cnn(width: float = 1.0) -> nn.Module:
    """Small CNN on the 8x8 digits: conv3x3(32) - conv3x3(64) - maxpool - fc(128) - fc(10);
    ``width`` scales every channel / hidden count."""
    c1, c2, f = (max(1, round(c * width)) for c in (32, 64, 128))
    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(c2 * 16, f), nn.ReLU(), nn.Linear(f, 10))


def shapes_cnn(width: float = 1.0) -> nn.Module:
    """CNN on the 16x16 zoo renders: conv3x3(32) - pool - conv3x3(64) - pool - fc(128) - fc(6);
    ``width`` scales every channel / hidden count."""
    c1, c2, f = (max(1, round(c * width)) for c in (32, 64, 128))
    return nn.Sequential(nn.Conv2d(3, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(c2 * 16, f), nn.ReLU(), nn.Linear(f, 6))


# name: (builder, title, task)
ARCHS = {"mlp": (mlp, "MLP 64-256-256-10", "digits"), "cnn": (cnn, "CNN conv32-conv64-pool-fc128-fc10", "digits"),
         "shapes-cnn": (shapes_cnn, "CNN conv32-pool-conv64-pool-fc128-fc6", "shapes")}


def target_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def weights_of(model: nn.Module) -> int:
    """Weights of the layers RPS compresses (biases are not shared)."""
    return sum(m.weight.numel() for m in target_layers(model))


def smaller_dense(build, budget: int) -> nn.Module:
    """The widest ``build(width)`` with at most ``budget`` target weights (at least width 1 unit)."""
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if weights_of(build(mid)) <= budget else (lo, mid)
    return build(lo)


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


def run(arch: str, method: str, ratio: float, seed: int, data, epochs: int) -> float:
    build = ARCHS[arch][0]
    torch.manual_seed(seed)
    n = weights_of(build())
    if method == "dense":
        model = smaller_dense(build, max(1, int(n / ratio)))
        train(model, data, epochs, torch.optim.Adam(model.parameters(), lr=3e-3), seed)
        return accuracy(model, data)
    if method == "magnitude":
        model = build()
        train(model, data, epochs, torch.optim.Adam(model.parameters(), lr=3e-3), seed)
        layers = target_layers(model)
        keep = max(1, round(n / ratio))
        scores = torch.cat([m.weight.detach().abs().reshape(-1) for m in layers])
        threshold = torch.topk(scores, keep).values[-1]
        masks = [(m.weight, (m.weight.detach().abs() >= threshold).float()) for m in layers]
        with torch.no_grad():
            for p, mk in masks:
                p.mul_(mk)
        train(model, data, max(1, epochs // 2), torch.optim.Adam(model.parameters(), lr=1e-3), seed + 1, masks=masks)
        return accuracy(model, data)
    model = rps.compress(build(), ratio=ratio, mapper=method, seed=seed)
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


def table(arch: str, results: dict, seeds: int, epochs: int) -> None:
    build, title, task = ARCHS[arch]
    print(f"\n#### Accuracy vs compression ({task}, {title}, {weights_of(build())} weights; "
          f"mean +- std over {seeds} seeds, {epochs} epochs)\n")
    print("| ratio | " + " | ".join(METHODS) + " |")
    print("|---|" + "---|" * len(METHODS))
    for ratio in RATIOS:
        cells = []
        for method in METHODS:
            accs = results[(arch, method, ratio)]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.3f} +- {sd:.3f}")
        print(f"| {ratio}x | " + " | ".join(cells) + " |")


def plot(archs: list[str], results: dict, seeds: int, out: str | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4.5), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for method in METHODS:
            runs = [results[(arch, method, r)] for r in RATIOS]
            means = [statistics.mean(a) for a in runs]
            sds = [statistics.stdev(a) if seeds > 1 else 0 for a in runs]
            ax.errorbar(RATIOS, means, yerr=sds, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("compression (dense weights / stored weights)")
        ax.set_ylabel(f"test accuracy ({ARCHS[arch][2]})")
        ax.set_title(f"RPS vs pruning vs smaller dense: {ARCHS[arch][1]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend()
    out = out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures", "rps_pareto.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--archs", default="mlp,cnn,shapes-cnn", help="comma-separated subset of " + ",".join(ARCHS))
    parser.add_argument("--out", default=None, help="figure path (default benchmarks/figures/rps_pareto.png)")
    parser.add_argument("--no-stability", action="store_true", help="skip the init-std stability sweep")
    args = parser.parse_args()
    archs = [a for a in args.archs.split(",") if a]
    unknown = sorted(set(archs) - set(ARCHS))
    if unknown:
        parser.error(f"unknown arch(s) {unknown}; choose from {sorted(ARCHS)}")
    torch.set_num_threads(1)
    datasets = {task: TASKS[task]() for task in {ARCHS[a][2] for a in archs} | {"digits"}}
    data = datasets["digits"]  # the stability sweep's
    t0 = time.time()
    results = {}
    for arch in archs:
        for method in METHODS:
            for ratio in RATIOS:
                accs = [run(arch, method, ratio, seed, datasets[ARCHS[arch][2]], args.epochs) for seed in range(args.seeds)]
                results[(arch, method, ratio)] = accs
                print(f"  {arch} {method:9s} {ratio:5g}x: {statistics.mean(accs):.3f} ({time.time() - t0:.0f}s)",
                      flush=True)
    stab = [] if args.no_stability else stability(data, max(5, args.epochs // 2), args.seeds)

    for arch in archs:
        table(arch, results, args.seeds, args.epochs)
    if stab:
        print("\n#### Stability: MLP, SGD at 8x, init std of M swept (diverged runs / seeds, mean accuracy)\n")
        print("| init std | ROAST diverged | ROAST acc | STABLE-RPS diverged | STABLE-RPS acc |")
        print("|---|---|---|---|---|")
        by = {(s, m): (d, a) for s, m, d, a in stab}
        for s in sorted({s for s, _, _, _ in stab}):
            (rd, ra), (sd_, sa) = by[(s, "roast")], by[(s, "stable")]
            print(f"| {s:g} | {rd}/{args.seeds} | {ra:.3f} | {sd_}/{args.seeds} | {sa:.3f} |")
    out = plot(archs, results, args.seeds, args.out)
    print(f"\nwrote {out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
