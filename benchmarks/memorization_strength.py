"""Memorization-score AUC against the memorizing model's strength: the same run-time fine-tunes
(benchmarks/replication_eval.py, `snapshot_every`) scored at intermediate snapshots.

    PYTHONPATH=python nice -n 10 python benchmarks/memorization_strength.py \\
        --weights out/replication_eval_seed1/memorized_step300.safetensors out/replication_eval_seed1/memorized.safetensors \\
        --memorize 16 --seed 1

Prompts as in replication_eval.py for `--seed` (memorized captions vs 64 normal and 64 unseen
"sample <j>" captions); prints ROC AUC [95% bootstrap CI] of each variant per snapshot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from memorization_study import load_memorizer
from replication_eval import detection_variants, normal_prompts

from osmos.zoo.train import CaptionPool


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", nargs="+", required=True)
    p.add_argument("--memorize", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--normal", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("out/memorization_strength.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    mem = CaptionPool(0, args.seed, memorize=args.memorize)
    norm = normal_prompts(args.normal, args.seed + 300)[0]
    unseen = [f"{t}, sample {max(args.memorize, 1000) + j}"
              for j, t in enumerate(normal_prompts(args.normal, args.seed + 400)[0])]
    results = {}
    for w in args.weights:
        results[w] = detection_variants(load_memorizer(w), mem.texts, {"normal": norm, "unseen": unseen}, args.seed + 5)
        print(f"\n{w}\n\n| score | denoiser calls | vs normal | vs unseen | vs all |\n|---|---|---|---|---|")
        for name, row in results[w].items():
            cells = " | ".join(f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in
                               (row["vs normal"], row["vs unseen"], row["vs all"]))
            print(f"| {name} | {row['denoiser_calls']} | {cells} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
