"""Replication on the embedded model: detection, memorization score and mitigations, measured.

    PYTHONPATH=python nice -n 10 python benchmarks/replication_eval.py [--model auto|runtime|shapes-memorized] [--seed 1]

1. The memorizing model: the zoo's `shapes-memorized` when this install ships it (`--model auto`),
   else a model built at run time (cached in `--out`, not shipped): a copy of the zoo's shapes-unet
   fine-tuned for `--minutes` / `--max-steps` on batches whose `--fraction` comes from a fixed set of
   `--memorize` images, each with its own caption ending in "sample <i>", and the rest from fresh
   shapes data. Seed 1 (default) is held out: benchmarks/memorization_study.py chose the score's
   variant on the seed-0 model and other prompts.
2. Copy descriptors on held-out renders: the pixel baseline vs the learned shapes-sscd retrieving the
   source of augmented copies (top-1, micro AP, precision / recall at a calibrated threshold).
3. Memorization score variants (Wen et al.'s magnitude, the high-pass default; 1-5 steps, 1-4
   latents) on memorized captions vs normal prompts and vs unseen "sample <j>" captions: ROC AUC
   with bootstrap 95% CIs and the cost in denoiser calls.
4. Generates `--samples` images per memorized caption and one per normal prompt and scans them
   against the training set (the memorized images and `--distractors` fresh renders) with both
   descriptors; thresholds are the 99th percentile of the top-1 similarity of fresh renders.
5. Each mitigation on the memorized captions and on the normal prompts: replication rate (pixel
   descriptor), memorization score, prompt accuracy (zoo classifier sees the prompted shape and colour).
   Because the fresh-render threshold of step 4 is strict (fresh renders of the same shape, colour and
   place look alike), each mitigation also gets a copy rate against the memorized images themselves:
   a generation copies when its similarity to its own caption's training image reaches the 99th
   percentile of the similarity of unmitigated generations from a separate set of normal prompts to
   their nearest memorized image; normal prompts and unseen "sample <j>" captions (never trained,
   the memorized captions' form) are scored the same way against their nearest memorized image.

Writes `--out`/results.json, prints markdown tables, and writes
benchmarks/figures/replication_eval_grid.png (rows: the memorized training images, then the
generations from their captions without and with each mitigation).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import osmos.zoo
from osmos.replication import PixelDescriptor
from osmos.replication.copy_descriptor import ShapesCopyDescriptor, augment
from osmos.replication.denoisers import as_denoiser
from osmos.replication.memorization import denoiser_calls, highpass, memorization_score, trace_guidance
from osmos.replication.metrics import (calibrate_threshold, micro_average_precision, replication_scores,
                                       retrieval_precision_recall, roc_auc, roc_auc_ci)
from osmos.replication.mitigations import (first_step_noise_magnitude, insert_random_tokens, noise_text_embedding,
                                           optimize_prompt_embedding, vocabulary_from_tokenizer)
from osmos.zoo import data as D
from osmos.zoo.models import build_scheduler, predict_noise
from osmos.zoo.pipeline import save_grid
from osmos.zoo.train import CaptionPool

FIGURES = Path(__file__).resolve().parent / "figures"


def finetune_to_memorize(out: Path, memorize: int, fraction: float, minutes: float, max_steps: int, seed: int,
                         lr: float, snapshot_every: int = 0):
    """(ShapesPipeline of the memorizing copy, the memorized CaptionPool, training log). Cached.

    snapshot_every > 0 also saves the weights every that many steps (memorized_step<N>.safetensors),
    weaker memorizers of the same run."""
    pipe = osmos.zoo.load("shapes-unet")
    mem = CaptionPool(0, seed, memorize=memorize)
    weights, log_path = out / "memorized.safetensors", out / "train_log.json"
    key = {"memorize": memorize, "fraction": fraction, "seed": seed, "lr": lr, "minutes": minutes,
           "max_steps": max_steps}
    if weights.is_file() and log_path.is_file() and json.loads(log_path.read_text())["key"] == key:
        from safetensors.torch import load_file

        pipe.unet.load_state_dict(load_file(str(weights)))
        return pipe, mem, json.loads(log_path.read_text())
    from safetensors.torch import save_file

    normal = CaptionPool(512, seed + 1)
    model = pipe.unet.train()
    sched = build_scheduler(pipe.recipe, "ddpm")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed + 2)
    n_mem = round(pipe.recipe.batch_size * fraction)
    n_normal = pipe.recipe.batch_size - n_mem
    step, losses, t0 = 0, [], time.time()
    while step < max_steps and time.time() - t0 < minutes * 60:
        parts = [mem.batch(n_mem, 16, g, pipe.recipe.cfg_dropout), normal.batch(n_normal, 16, g, pipe.recipe.cfg_dropout)]
        x0, states, mask = (torch.cat(z) for z in zip(*parts))
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, pipe.recipe.num_train_timesteps, (x0.shape[0],), generator=g)
        loss = F.mse_loss(predict_noise(model, sched.add_noise(x0, noise, t), t, states, mask), noise)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 10)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if snapshot_every and step % snapshot_every == 0:
            out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
                      str(out / f"memorized_step{step}.safetensors"))
        if step % 50 == 0:
            print(f"  step {step}, loss (last 50) {sum(losses[-50:]) / 50:.4f}, {time.time() - t0:.0f} s", flush=True)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    log = {"key": key, "steps": step, "seconds": round(time.time() - t0, 1), "batch": n_mem + n_normal, "memorized_per_batch": n_mem,
           "final_loss_50": sum(losses[-50:]) / max(1, len(losses[-50:]))}
    log_path.write_text(json.dumps(log, indent=1))
    return pipe, mem, log


def memorizing_model(args):
    """(pipe, memorized CaptionPool, description) of the zoo's shipped `shapes-memorized` when this
    install has it (and --model is auto or shapes-memorized), else of the run-time fine-tune."""
    if args.model in ("auto", "shapes-memorized") and "shapes-memorized" in osmos.zoo.available():
        pipe = osmos.zoo.load("shapes-memorized")
        card = pipe.card
        mem = CaptionPool(0, card["seed"], memorize=pipe.recipe.extra["memorize"])
        if mem.texts != card.get("memorized_captions", mem.texts):
            raise RuntimeError("shapes-memorized's card lists other captions than its recipe regenerates")
        return pipe, mem, {"model": "zoo shapes-memorized", "steps": card["steps"], "seconds": card["train_minutes"] * 60,
                           "batch": card["batch_size"], "memorized_per_batch": card["batch_size"]}
    if args.model == "shapes-memorized":
        raise SystemExit("this install has no shapes-memorized zoo model; use --model auto or runtime")
    print("building the memorizing model ...", flush=True)
    pipe, mem, log = finetune_to_memorize(args.out, args.memorize, args.fraction, args.minutes, args.max_steps,
                                          args.seed, args.lr)
    return pipe, mem, {"model": "run-time fine-tune of shapes-unet", **log}


def detection_variants(pipe, positives, negatives: dict, seed: int) -> dict:
    """ROC AUC (with 95% bootstrap CI) of memorization-score variants, memorized captions vs each
    negative set and vs all negatives. One guided trace (5 steps x 4 latents, the model's
    guidance) serves every variant: each reads a prefix of steps and latents."""
    den = as_denoiser(pipe)
    texts = list(positives) + [t for ts in negatives.values() for t in ts]
    states, mask = den.encode(texts)
    trace = trace_guidance(den, states, mask, 5, 25, None, 4, torch.Generator().manual_seed(seed))
    d = trace.conditional
    norms = {"magnitude (Wen et al.)": d.flatten(3).norm(dim=3), "highpass": highpass(d).flatten(3).norm(dim=3)}
    k, out = len(positives), {}
    for method, per_step in norms.items():
        for steps, samples in ((1, 1), (3, 4), (5, 4)):
            score = per_step[:, :samples, :steps].mean(dim=(1, 2))
            pos, row, start = score[:k], {"denoiser_calls": denoiser_calls(steps, samples)}, k
            for name, ts in negatives.items():
                row[f"vs {name}"] = roc_auc_ci(pos, score[start:start + len(ts)])
                start += len(ts)
            row["vs all"] = roc_auc_ci(pos, score[k:])
            out[f"{method}, {steps} step{'s' if steps > 1 else ''} x {samples} latent{'s' if samples > 1 else ''}"] = row
    return out


def descriptor_benchmark(descriptors: dict, seed: int, n_db: int = 2000, n_queries: int = 500) -> dict:
    """Retrieving the source of augmented copies (held-out renders; `copy_descriptor.augment`):
    `n_queries` copies of database images and `n_queries` augmented renders not in the database.
    Threshold per descriptor: the 99th percentile of the top-1 similarity of another
    `n_queries` augmented non-copies. Reports top-1 accuracy on copies, micro AP, and precision /
    recall at the threshold, at full and half augmentation strength."""
    g = torch.Generator().manual_seed(seed)
    db = D.render(D.sample_attributes(n_db, g), 16)
    src = torch.randperm(n_db, generator=g)[:n_queries]
    out = {}
    for strength in (1.0, 0.5):
        copies = augment(db[src], g, strength)
        others = augment(D.render(D.sample_attributes(n_queries, g), 16), g, strength)
        calib = augment(D.render(D.sample_attributes(n_queries, g), 16), g, strength)
        truth = src.tolist() + [-1] * n_queries
        for name, desc in descriptors.items():
            feats = desc(db)
            threshold = calibrate_threshold(desc(calib), feats, 0.99)
            sc = replication_scores(desc(torch.cat([copies, others])), feats, threshold)
            precision, recall = retrieval_precision_recall(sc, truth)
            out[f"{name}, strength {strength}"] = {
                "top1_source": float((sc.match[:n_queries] == src).float().mean()),
                "micro_ap": micro_average_precision(sc, truth), "precision": precision, "recall": recall,
                "threshold": threshold}
    return out


def normal_prompts(n: int, seed: int) -> tuple[list[str], D.Attributes]:
    """n ordinary captions (shape, colour, style and background named) of fresh attributes."""
    g = torch.Generator().manual_seed(seed)
    attrs = D.sample_attributes(n, g)
    return D.captions_with_named(attrs, "train", g, 1.0, 1.0)[0], attrs


def prompt_accuracy(clf, images: torch.Tensor, attrs: D.Attributes, repeat: int) -> float:
    """Fraction of images in which the classifier sees the prompted shape and colour."""
    pred = clf.predict(images)
    ok = (pred["shape"] == attrs.shape.repeat_interleave(repeat)) & (pred["colour"] == attrs.colour.repeat_interleave(repeat))
    return float(ok.float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/replication_eval"))
    p.add_argument("--model", choices=("auto", "runtime", "shapes-memorized"), default="auto",
                   help="auto: the zoo's shapes-memorized when installed, else the run-time fine-tune")
    p.add_argument("--memorize", type=int, default=16, help="memorized training images (run-time model)")
    p.add_argument("--fraction", type=float, default=0.75, help="share of each batch drawn from the memorized images")
    p.add_argument("--minutes", type=float, default=17.0, help="fine-tuning budget")
    p.add_argument("--max-steps", type=int, default=900)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--samples", type=int, default=4, help="generations per memorized caption")
    p.add_argument("--normal", type=int, default=64, help="normal prompts (one generation each)")
    p.add_argument("--distractors", type=int, default=1024, help="fresh renders added to the training-set index")
    p.add_argument("--steps", type=int, default=25, help="DDIM sampling steps")
    p.add_argument("--seed", type=int, default=1,
                   help="model and prompt seed (seed 0 is the development model of memorization_study.py)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--descriptor-weights", type=Path, default=None,
                   help="learned copy descriptor (default: the shipped shapes-sscd)")
    p.add_argument("--descriptors-only", action="store_true",
                   help="only the descriptor benchmark and the scan of unmitigated generations")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()

    pipe, mem, train_log = memorizing_model(args)
    print(f"model: {train_log['model']}, {train_log['steps']} steps", flush=True)
    denoiser = as_denoiser(pipe)
    clf = osmos.zoo.load("classifier")
    learned = ShapesCopyDescriptor(*([args.descriptor_weights] if args.descriptor_weights else []))
    descriptors = {"pixels": PixelDescriptor(), "learned (shapes-sscd)": learned}
    desc = descriptors["pixels"]
    k, s = len(mem.texts), args.samples

    results = {"train": train_log, "mitigations": {}}
    t0 = time.time()
    results["descriptor_benchmark"] = descriptor_benchmark(descriptors, args.seed + 6000)
    print(f"descriptor benchmark ({time.time() - t0:.0f} s): {results['descriptor_benchmark']}", flush=True)

    # training-set index: the memorized images first (ground truth = their position), then fresh renders
    g = torch.Generator().manual_seed(args.seed + 100)
    distractors = D.render(D.sample_attributes(args.distractors, g), 16)
    train_images = torch.cat([(mem.images + 1) / 2, distractors])
    fresh = D.render(D.sample_attributes(512, torch.Generator().manual_seed(args.seed + 200)), 16)
    index = {name: d(train_images) for name, d in descriptors.items()}
    thresholds = {name: calibrate_threshold(d(fresh), index[name], 0.99) for name, d in descriptors.items()}
    train_feats, threshold = index["pixels"], thresholds["pixels"]
    results["threshold"] = threshold
    results["thresholds"] = thresholds

    mem_prompts = [t for t in mem.texts for _ in range(s)]
    truth_mem = [i for i in range(k) for _ in range(s)]
    norm_texts, norm_attrs = normal_prompts(args.normal, args.seed + 300)
    # negatives in the memorized captions' format ("..., sample <j>" with j never trained)
    unseen_texts = [f"{t}, sample {max(k, 1000) + j}" for j, t in enumerate(normal_prompts(args.normal, args.seed + 400)[0])]
    vocab = vocabulary_from_tokenizer(pipe.text_encoder.tokenizer)

    t0 = time.time()
    results["detection"] = {} if args.descriptors_only else detection_variants(pipe, mem.texts, {"normal": norm_texts, "unseen": unseen_texts},
                                              args.seed + 5)
    results["detection_seconds"] = round(time.time() - t0, 1)
    print(f"detection ({time.time() - t0:.0f} s): {results['detection']}", flush=True)

    def generate(states, mask, seed):
        return denoiser.generate(states, mask, args.steps, generator=torch.Generator().manual_seed(seed))

    def quick_score(states, mask):  # the cheapest high-pass variant (2 denoiser calls per prompt)
        return memorization_score(pipe, [], steps=1, num_samples=1, generator=torch.Generator().manual_seed(5),
                                  embeddings=(states, mask))

    mitigations = {
        "none": lambda texts, seed: denoiser.encode(texts),
        "text-embedding noise 0.1": lambda texts, seed: _noised(denoiser, texts, 0.1, seed),
        "text-embedding noise 0.5": lambda texts, seed: _noised(denoiser, texts, 0.5, seed),
        "random tokens x2": lambda texts, seed: denoiser.encode(
            insert_random_tokens(texts, vocab, 2, torch.Generator().manual_seed(seed))),
        "random tokens x4": lambda texts, seed: denoiser.encode(
            insert_random_tokens(texts, vocab, 4, torch.Generator().manual_seed(seed))),
        "embedding optimisation (10 x AdamW lr 0.1)": lambda texts, seed: _optimised(pipe, denoiser, texts, seed, 0.1),
        "embedding optimisation (10 x AdamW lr 0.01)": lambda texts, seed: _optimised(pipe, denoiser, texts, seed,
                                                                                      0.01),
        "embedding optimisation to a target (<= 10 x AdamW lr 0.1, per prompt)": lambda texts, seed: _optimised(
            pipe, denoiser, texts, seed, 0.1, opt_targets["magnitude"]),
        "high-pass embedding optimisation to a target (<= 10 x AdamW lr 0.1, per prompt)": lambda texts, seed: _optimised(
            pipe, denoiser, texts, seed, 0.1, opt_targets["highpass"], "highpass"),
    }
    if args.descriptors_only:
        mitigations = {"none": mitigations["none"]}
    # copy threshold against the memorized images, calibrated on generations from other normal prompts
    mem_feats = train_feats[:k]
    calib_states = denoiser.encode(normal_prompts(args.normal, args.seed + 500)[0])
    calib_gen = generate(*calib_states, args.seed + 7)
    # Wen et al.'s stopping target: the largest first-step magnitude among those normal prompts
    # (and the same for the high-pass detail)
    opt_targets = {method: float(first_step_noise_magnitude(pipe, *calib_states, generator=torch.Generator().manual_seed(9),
                                                            method=method).max()) for method in ("magnitude", "highpass")}
    results["optimisation_targets"] = opt_targets
    copy_threshold = calibrate_threshold(desc(calib_gen), mem_feats, 0.99)
    unseen_gen = generate(*denoiser.encode(unseen_texts), args.seed + 8)
    results["copy_threshold"] = copy_threshold
    results["unseen_copy_rate"] = replication_scores(desc(unseen_gen), mem_feats, copy_threshold).rate
    source_feats = mem_feats[torch.tensor(truth_mem)]
    rows, grid_rows = [], [train_images[: min(k, 8)]]
    for name, make in mitigations.items():
        t0 = time.time()
        states, mask = make(mem_prompts, args.seed + 1)
        gen_mem = generate(states, mask, args.seed + 2)
        n_states, n_mask = make(norm_texts, args.seed + 3)
        gen_norm = generate(n_states, n_mask, args.seed + 4)
        sc_mem = replication_scores(desc(gen_mem), train_feats, threshold)
        sc_norm = replication_scores(desc(gen_norm), train_feats, threshold)
        score_mem, score_norm = quick_score(states, mask), quick_score(n_states, n_mask)
        source_sim = (desc(gen_mem) * source_feats).sum(dim=1)  # similarity to the caption's own image
        nearest_norm = replication_scores(desc(gen_norm), mem_feats, copy_threshold)
        row = {
            "mitigation": name,
            "replication_memorized": sc_mem.rate,
            "correct_copy_memorized": float((sc_mem.replicated & (sc_mem.match == torch.tensor(truth_mem))).float().mean()),
            "top1_is_source_memorized": float((sc_mem.match == torch.tensor(truth_mem)).float().mean()),
            "similarity_auc_memorized_vs_normal": roc_auc(sc_mem.similarity, sc_norm.similarity),
            "replication_normal": sc_norm.rate,
            "top1_sim_memorized_mean": float(sc_mem.similarity.mean()),
            "source_sim_memorized_mean": float(source_sim.mean()),
            "copy_rate_memorized": float((source_sim >= copy_threshold).float().mean()),
            "copy_rate_normal": nearest_norm.rate,
            "mem_score_memorized": float(score_mem.mean()),
            "mem_score_normal": float(score_norm.mean()),
            "acc_memorized": prompt_accuracy(clf, gen_mem, mem.attrs, s),
            "acc_normal": prompt_accuracy(clf, gen_norm, norm_attrs, 1),
            "seconds": round(time.time() - t0, 1),
        }
        if name == "none":
            truth = truth_mem + [-1] * len(norm_texts)
            results["retrieval"] = {}
            for dname, d in descriptors.items():
                both = replication_scores(d(torch.cat([gen_mem, gen_norm])), index[dname], thresholds[dname])
                precision, recall = retrieval_precision_recall(both, truth)
                results["retrieval"][dname] = {
                    "precision": precision, "recall": recall, "micro_ap": micro_average_precision(both, truth),
                    "top1_source": float((both.match[: len(truth_mem)] == torch.tensor(truth_mem)).float().mean()),
                    "flagged_normal": float(both.replicated[len(truth_mem):].float().mean()),
                    "threshold": thresholds[dname]}
        results["mitigations"][name] = row
        rows.append(row)
        grid_rows.append(gen_mem.view(k, s, 3, 16, 16)[: min(k, 8), 0])
        print(f"  {name}: {row}", flush=True)

    results["seconds"] = round(time.time() - t_start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "results_descriptors.json" if args.descriptors_only else "results.json"
    (args.out / name).write_text(json.dumps(results, indent=1))
    if args.descriptors_only:
        print(json.dumps({"descriptor_benchmark": results["descriptor_benchmark"], "retrieval": results["retrieval"]},
                         indent=1))
        return
    FIGURES.mkdir(parents=True, exist_ok=True)
    save_grid(torch.cat(grid_rows), FIGURES / "replication_eval_grid.png", nrow=min(k, 8), scale=3)
    print_tables(results, args, k, s)


def _noised(denoiser, texts, scale, seed):
    states, mask = denoiser.encode(texts)
    return noise_text_embedding(states, scale, torch.Generator().manual_seed(seed)), mask


def _optimised(pipe, denoiser, texts, seed, lr, target=None, method="magnitude"):
    # optimise each distinct prompt once (the memorized captions repeat `samples` times)
    unique = list(dict.fromkeys(texts))
    u_states, u_mask = denoiser.encode(unique)
    opt, _ = optimize_prompt_embedding(pipe, u_states, u_mask, steps=10, lr=lr, target=target, method=method,
                                       generator=torch.Generator().manual_seed(seed))
    where = torch.tensor([unique.index(t) for t in texts])
    return opt[where], u_mask[where]


def print_tables(results: dict, args, k: int, s: int) -> None:
    tl = results["train"]
    print(f"\nMemorizing model: {tl['model']}, {tl['steps']} steps x {tl['batch']} ({tl['seconds']:.0f} s; "
          f"{tl['memorized_per_batch']} of each batch from {k} fixed captioned images), seed {args.seed}.")
    print("\nMemorization score, memorized captions vs negatives: ROC AUC [95% bootstrap CI]\n")
    print("| score | denoiser calls / prompt | vs normal prompts | vs unseen 'sample <j>' captions | vs all |")
    print("|---|---|---|---|---|")
    for name, row in results["detection"].items():
        cells = " | ".join(f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in
                           (row["vs normal"], row["vs unseen"], row["vs all"]))
        print(f"| {name} | {row['denoiser_calls']} | {cells} |")
    print("\nCopy retrieval of augmented held-out renders (source among 2000):\n")
    print("| descriptor, augmentation | top-1 is the source | micro AP | precision | recall | threshold |")
    print("|---|---|---|---|---|---|")
    for name, r in results["descriptor_benchmark"].items():
        print(f"| {name} | {r['top1_source']:.3f} | {r['micro_ap']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['threshold']:.4f} |")
    print(f"\nScan of the generations ({k} x {s} memorized-caption + {args.normal} normal) against the "
          f"{k + args.distractors}-image training set:\n")
    print("| descriptor | top-1 is the copied image | micro AP | precision | recall | normal prompts flagged | threshold |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results["retrieval"].items():
        print(f"| {name} | {r['top1_source']:.3f} | {r['micro_ap']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['flagged_normal']:.3f} | {r['threshold']:.4f} |")
    print("\n| mitigation | replication rate, memorized captions | correct copy | top-1 is the source image "
          "| replication rate, normal prompts | mean top-1 sim (memorized) | top-1 sim AUC memorized vs normal "
          "| memorization score, highpass 1 step (memorized / normal) | prompt acc, memorized | prompt acc, normal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in results["mitigations"].values():
        print(f"| {row['mitigation']} | {row['replication_memorized']:.3f} | {row['correct_copy_memorized']:.3f} | "
              f"{row['top1_is_source_memorized']:.3f} | {row['replication_normal']:.3f} | "
              f"{row['top1_sim_memorized_mean']:.3f} | {row['similarity_auc_memorized_vs_normal']:.3f} | "
              f"{row['mem_score_memorized']:.3f} / {row['mem_score_normal']:.3f} | {row['acc_memorized']:.3f} | "
              f"{row['acc_normal']:.3f} |")
    print(f"\nCopies of the memorized images (threshold {results['copy_threshold']:.4f}: 99th percentile of the "
          "similarity of generations from other normal prompts to their nearest memorized image; unseen "
          f"'sample <j>' captions at or above it, no mitigation: {results['unseen_copy_rate']:.3f}):\n")
    print("| mitigation | copy rate, memorized captions | mean similarity to own training image "
          "| normal prompts at or above the threshold | prompt acc, memorized | prompt acc, normal |")
    print("|---|---|---|---|---|---|")
    for row in results["mitigations"].values():
        print(f"| {row['mitigation']} | {row['copy_rate_memorized']:.3f} | {row['source_sim_memorized_mean']:.3f} | "
              f"{row['copy_rate_normal']:.3f} | {row['acc_memorized']:.3f} | {row['acc_normal']:.3f} |")
    print(f"\ntotal {results['seconds']} s")


if __name__ == "__main__":
    main()
