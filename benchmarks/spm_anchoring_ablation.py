"""SPM Latent Anchoring ablation on shapes-unet: which training inputs let anchoring and erasure
coexist. One SPM per call, then the target rate on training captions / held-out templates and the
others' pair accuracy, with erasure_eval's prompt sets (2 seeds, 3 wordings, DDIM 15, CFG 3).

    PYTHONPATH=python python benchmarks/spm_anchoring_ablation.py --base                 # original model
    PYTHONPATH=python python benchmarks/spm_anchoring_ablation.py --targets word          # bare word vs ""
    PYTHONPATH=python python benchmarks/spm_anchoring_ablation.py --targets drop --k 2 --fixed-empty
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import osmos.zoo
from erasure_eval import Scorer, Settings, prompt_sets
from osmos.erase.spm import apply_spm, train_spm
from osmos.erase.zoo import SPMTrainingPipe, anchor_prompts, concept_of, erasure_prompt_pairs, generate


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--concept", default="circle")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--la", type=float, default=100.0, help="Latent Anchoring weight (0 = off)")
    ap.add_argument("--k", type=int, default=1, help="target captions a step")
    ap.add_argument("--targets", choices=("drop", "empty", "word"), default="drop",
                    help="captions with the concept dropped as surrogate | captions vs '' | the bare word vs ''")
    ap.add_argument("--anchors", choices=("words+captions", "words"), default="words+captions")
    ap.add_argument("--fixed-empty", action="store_true", help="anchor the empty prompt every step")
    ap.add_argument("--base", action="store_true", help="evaluate the original model only")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    s = Settings(seeds=(0, 1), variants=3, other_values=6, steps=15, spm_steps=a.steps)
    kind, value = concept_of(a.concept)
    sets = prompt_sets(kind, value, s)
    pipe = osmos.zoo.load("shapes-unet")
    scorer = Scorer(kind, value, sets, s.seeds)

    def rates(handle=None) -> dict:
        im = {n: generate(pipe, sets[n], s.seeds, num_inference_steps=s.steps, spm_handle=handle)
              for n in ("train", "tmpl", "others")}
        return {"train": scorer.target_rate(im["train"]), "tmpl": scorer.target_rate(im["tmpl"]),
                "others_pair_acc": scorer.pair_acc(im["others"])}

    if a.base:
        print(json.dumps({"concept": a.concept, "model": "original", **rates()}))
        return
    pairs = None if a.targets == "word" else erasure_prompt_pairs(kind, value, "drop" if a.targets == "drop" else "")
    t0 = time.perf_counter()
    spm = train_spm(SPMTrainingPipe.of(pipe), value, steps=a.steps, lr=a.lr, la_strength=a.la,
                    anchors=anchor_prompts(kind, value, a.anchors == "words+captions") if a.la else None,
                    anchors_per_step=4, sampling_steps=s.steps, progress=False, prompts=pairs,
                    targets_per_step=a.k if pairs else 1, fixed_anchors=[""] if a.fixed_empty else [],
                    anchor_norm_range=None if pairs else (0.8, 1.2))
    seconds = time.perf_counter() - t0
    with apply_spm(pipe.unet, [spm]) as handle:
        print(json.dumps({**vars(a), **rates(handle), "train_s": round(seconds)}))


if __name__ == "__main__":
    main()
