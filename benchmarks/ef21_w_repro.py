"""EF21 vs EF21-W reproduction (Error Feedback Reloaded, ICLR 2024) with osmos.compress.ef21.simulate.

Problem: logistic regression with the nonconvex regulariser lam * sum x_j^2 / (1 + x_j^2), lam = 0.1,
on data that ships offline (scikit-learn's breast_cancer and digits (even vs odd), and synthetic
Gaussian data), split into n consecutive chunks; worker i's rows are multiplied by s_i to make the
L_i heterogeneous (profiles below). For Top1 and TopK (k = d/10) it runs
  EF21 (old stepsize, L_QM), EF21 (new stepsize, L_AM), EF21-W (weights L_i / sum L_j, L_AM),
plots ||grad f(x^t)||^2 against uplink bits per worker (32 bits per value + ceil(log2 d) per
index) and prints bits-to-target speed-ups over EF21-old next to the predicted gamma_new/gamma_old
(about L_QM / L_AM). Target: the smallest ||grad f||^2 EF21-old reaches in the run, so the
speed-up is (EF21-old's bits to reach it) / (the method's bits to reach it).

    PYTHONPATH=python nice -n 10 python benchmarks/ef21_w_repro.py [--steps 3000] [--out benchmarks/figures/ef21_w_repro.png]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from osmos.compress.ef21 import LogisticNonconvex, TopK, l_am, l_qm, simulate


def _standardise(A):
    A = torch.as_tensor(A, dtype=torch.float64)
    return (A - A.mean(0)) / A.std(0).clamp_min(1e-12)


def dataset(name: str, n: int):
    """(A [N, d], b [N] in {-1, +1}) with N >= n rows."""
    if name == "breast_cancer":
        from sklearn.datasets import load_breast_cancer
        data = load_breast_cancer()
        return _standardise(data.data), torch.as_tensor(data.target * 2.0 - 1, dtype=torch.float64)
    if name == "digits":
        from sklearn.datasets import load_digits
        data = load_digits()
        return _standardise(data.data), torch.as_tensor((data.target % 2) * 2.0 - 1, dtype=torch.float64)
    if name == "synthetic":
        gen = torch.Generator().manual_seed(0)
        A = torch.randn(10 * n, 40, generator=gen, dtype=torch.float64)
        b = torch.where(A @ torch.randn(40, generator=gen, dtype=torch.float64) + 0.5 * torch.randn(10 * n, generator=gen, dtype=torch.float64) > 0, 1.0, -1.0)
        return A, b
    raise ValueError(name)


def scales(profile: str, n: int):
    """Per-worker feature scale s_i (L_i grows like s_i^2): none, mild (1..3 linear), heavy
    (a few workers up to 30x)."""
    u = torch.linspace(0, 1, n, dtype=torch.float64)
    if profile == "none":
        return None
    if profile == "mild":
        return 1 + 2 * u
    if profile == "heavy":
        return torch.exp(math.log(30.0) * u ** 8)
    raise ValueError(profile)


SETTINGS = [  # (dataset, n workers, heterogeneity profile)
    ("breast_cancer", 10, "none"),
    ("breast_cancer", 10, "heavy"),
    ("digits", 100, "mild"),
    ("digits", 100, "heavy"),
    ("synthetic", 1000, "none"),
    ("synthetic", 1000, "heavy"),
]
METHODS = [("EF21 old (L_QM)", "ef21", "qm"), ("EF21 new (L_AM)", "ef21", "am"), ("EF21-W", "ef21-w", "theory")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--out", default="benchmarks/figures/ef21_w_repro.png")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = [("Top1", TopK(k=1)), ("TopK d/10", None)]
    fig, axes = plt.subplots(len(comps), len(SETTINGS), figsize=(4 * len(SETTINGS), 3.4 * len(comps)), squeeze=False)
    rows = []
    t0 = time.perf_counter()
    for col, (data_name, n, profile) in enumerate(SETTINGS):
        A, b = dataset(data_name, n)
        problem = LogisticNonconvex(A, b, lam=0.1).split(n, scales(profile, n))
        ratio = l_qm(problem.L_i) / l_am(problem.L_i)
        for row, (comp_name, comp) in enumerate(comps):
            comp = comp or TopK(k=max(1, problem.d // 10))
            ax = axes[row][col]
            results = {}
            for label, method, step in METHODS:
                res = simulate(problem, n, method, comp, args.steps, stepsize=step, record_every=max(1, args.steps // 300))
                results[label] = res
                ax.semilogy([r["bits"] for r in res.records], [r["grad_norm_sq"] for r in res.records], label=label,
                            linestyle="--" if method == "ef21-w" else "-")
            base = results[METHODS[0][0]]
            start = base.records[0]["grad_norm_sq"]
            target = min(r["grad_norm_sq"] for r in base.records)
            bits = {label: res.bits_to_reach(target) for label, res in results.items()}
            predicted = results[METHODS[1][0]].stepsize / base.stepsize

            def speedup(label):
                return None if bits[label] is None or bits[METHODS[0][0]] is None else bits[METHODS[0][0]] / bits[label]

            rows.append({"setting": f"{data_name} n={n} {profile}", "compressor": f"{comp_name} (k={comp.num_selected(problem.d)}, d={problem.d})",
                         "L_QM/L_AM": ratio, "predicted": predicted, "target": target / start, "bits_old": bits[METHODS[0][0]],
                         "speedup_new": speedup(METHODS[1][0]), "speedup_w": speedup(METHODS[2][0]),
                         "final_old": base.records[-1]["grad_norm_sq"] / start,
                         "final_w": results[METHODS[2][0]].records[-1]["grad_norm_sq"] / start})
            ax.axhline(target, color="grey", linewidth=0.6)
            ax.set_title(f"{data_name} n={n} {profile}\n{comp_name}, L_QM/L_AM={ratio:.2f}", fontsize=9)
            ax.set_xlabel("bits per worker")
            if col == 0:
                ax.set_ylabel("||grad f(x)||^2")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)

    def fmt(v, f="{:.2f}"):
        return "not reached" if v is None else f.format(v)

    print(f"# EF21 / EF21-W reproduction: {args.steps} rounds ({time.perf_counter() - t0:.0f} s)\n")
    print("| setting | compressor | L_QM/L_AM | predicted gamma_new/gamma_old | target ‖∇f‖² / start "
          "| bits/worker to target, EF21 old | speed-up EF21 new | speed-up EF21-W | final ‖∇f‖² / start, old / EF21-W |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['compressor']} | {r['L_QM/L_AM']:.2f} | {r['predicted']:.2f} | {r['target']:.1e} | "
              f"{fmt(r['bits_old'], '{:.3g}')} | {fmt(r['speedup_new'])}x | {fmt(r['speedup_w'])}x | "
              f"{r['final_old']:.1e} / {r['final_w']:.1e} |")
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()
