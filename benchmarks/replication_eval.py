"""Replication on the embedded model: detection, memorization score and mitigations, measured.

    PYTHONPATH=python nice -n 10 python benchmarks/replication_eval.py [--minutes 8] [--memorize 16]

1. Builds a model that memorizes (cached in out/replication_eval/, not shipped): a copy of the
   zoo's shapes-unet fine-tuned for a few minutes on batches whose `--fraction` comes from a fixed
   set of `--memorize` images, each with its own caption ending in "sample <i>", and the rest from
   fresh shapes data (the duplicated images of a web-scale training set, in miniature).
2. Generates `--samples` images per memorized caption and one per normal prompt, and scans them
   (PixelDescriptor, osmos.ops.similarity_topk) against the training set (the memorized images and
   `--distractors` fresh renders). The threshold is calibrated: the 99th percentile of the top-1
   similarity of fresh renders (not in the training set). Reports replication rates and the
   retrieval precision / recall against the known copied image.
3. Memorization score (Wen et al.; first sampling step, and mean of the first 5) of memorized vs
   normal prompts: ROC AUC.
4. Each mitigation on the memorized captions and on the normal prompts: replication rate, mean
   memorization score, prompt accuracy (zoo classifier sees the prompted shape and colour).

Writes out/replication_eval/results.json, prints a markdown table, and writes
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
from osmos.replication.denoisers import as_denoiser
from osmos.replication.memorization import memorization_score
from osmos.replication.metrics import calibrate_threshold, replication_scores, retrieval_precision_recall, roc_auc
from osmos.replication.mitigations import (insert_random_tokens, noise_text_embedding, optimize_prompt_embedding,
                                           vocabulary_from_tokenizer)
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
    p.add_argument("--memorize", type=int, default=8, help="memorized training images")
    p.add_argument("--fraction", type=float, default=0.75, help="share of each batch drawn from the memorized images")
    p.add_argument("--minutes", type=float, default=9.0, help="fine-tuning budget")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--samples", type=int, default=4, help="generations per memorized caption")
    p.add_argument("--normal", type=int, default=48, help="normal prompts (one generation each)")
    p.add_argument("--distractors", type=int, default=1024, help="fresh renders added to the training-set index")
    p.add_argument("--steps", type=int, default=25, help="DDIM sampling steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()

    print("building the memorizing model ...", flush=True)
    pipe, mem, train_log = finetune_to_memorize(args.out, args.memorize, args.fraction, args.minutes, args.max_steps,
                                                args.seed, args.lr)
    print(f"fine-tuned {train_log['steps']} steps x {train_log['batch']} in {train_log['seconds']} s", flush=True)
    denoiser = as_denoiser(pipe)
    clf = osmos.zoo.load("classifier")
    desc = PixelDescriptor()
    k, s = args.memorize, args.samples

    # training-set index: the memorized images first (ground truth = their position), then fresh renders
    g = torch.Generator().manual_seed(args.seed + 100)
    distractors = D.render(D.sample_attributes(args.distractors, g), 16)
    train_images = torch.cat([(mem.images + 1) / 2, distractors])
    train_feats = desc(train_images)
    fresh = D.render(D.sample_attributes(512, torch.Generator().manual_seed(args.seed + 200)), 16)
    threshold = calibrate_threshold(desc(fresh), train_feats, 0.99)

    mem_prompts = [t for t in mem.texts for _ in range(s)]
    truth_mem = [i for i in range(k) for _ in range(s)]
    norm_texts, norm_attrs = normal_prompts(args.normal, args.seed + 300)
    # negatives in the memorized captions' format ("..., sample <j>" with j never trained)
    unseen_texts = [f"{t}, sample {k + j}" for j, t in enumerate(normal_prompts(args.normal, args.seed + 400)[0])]
    vocab = vocabulary_from_tokenizer(pipe.text_encoder.tokenizer)

    def generate(states, mask, seed):
        return denoiser.generate(states, mask, args.steps, generator=torch.Generator().manual_seed(seed))

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
    }
    rows, grid_rows = [], [train_images[: min(k, 8)]]
    results = {"threshold": threshold, "train": train_log, "mitigations": {}}
    for name, make in mitigations.items():
        t0 = time.time()
        states, mask = make(mem_prompts, args.seed + 1)
        gen_mem = generate(states, mask, args.seed + 2)
        n_states, n_mask = make(norm_texts, args.seed + 3)
        gen_norm = generate(n_states, n_mask, args.seed + 4)
        sc_mem = replication_scores(desc(gen_mem), train_feats, threshold)
        sc_norm = replication_scores(desc(gen_norm), train_feats, threshold)
        score_mem = memorization_score(pipe, [], generator=torch.Generator().manual_seed(5), embeddings=(states, mask))
        score_norm = memorization_score(pipe, [], generator=torch.Generator().manual_seed(5),
                                        embeddings=(n_states, n_mask))
        row = {
            "mitigation": name,
            "replication_memorized": sc_mem.rate,
            "correct_copy_memorized": float((sc_mem.replicated & (sc_mem.match == torch.tensor(truth_mem))).float().mean()),
            "top1_is_source_memorized": float((sc_mem.match == torch.tensor(truth_mem)).float().mean()),
            "similarity_auc_memorized_vs_normal": roc_auc(sc_mem.similarity, sc_norm.similarity),
            "replication_normal": sc_norm.rate,
            "top1_sim_memorized_mean": float(sc_mem.similarity.mean()),
            "mem_score_memorized": float(score_mem.mean()),
            "mem_score_normal": float(score_norm.mean()),
            "acc_memorized": prompt_accuracy(clf, gen_mem, mem.attrs, s),
            "acc_normal": prompt_accuracy(clf, gen_norm, norm_attrs, 1),
            "seconds": round(time.time() - t0, 1),
        }
        if name == "none":
            both = replication_scores(desc(torch.cat([gen_mem, gen_norm])), train_feats, threshold)
            precision, recall = retrieval_precision_recall(both, truth_mem + [-1] * len(norm_texts))
            results["retrieval"] = {"precision": precision, "recall": recall}
            unseen = memorization_score(pipe, unseen_texts, generator=torch.Generator().manual_seed(5))
            five = [memorization_score(pipe, [], steps=5, generator=torch.Generator().manual_seed(5), embeddings=e)
                    for e in ((states, mask), (n_states, n_mask))]
            results["detection"] = {
                "auc_vs_normal": roc_auc(score_mem, score_norm),
                "auc_vs_normal_5_steps": roc_auc(*five),
                "auc_vs_unseen_sample_captions": roc_auc(score_mem, unseen),
                "mean_memorized": float(score_mem.mean()), "mean_normal": float(score_norm.mean()),
                "mean_unseen": float(unseen.mean()),
            }
        results["mitigations"][name] = row
        rows.append(row)
        grid_rows.append(gen_mem.view(k, s, 3, 16, 16)[: min(k, 8), 0])
        print(f"  {name}: {row}", flush=True)

    results["seconds"] = round(time.time() - t_start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    FIGURES.mkdir(parents=True, exist_ok=True)
    save_grid(torch.cat(grid_rows), FIGURES / "replication_eval_grid.png", nrow=min(k, 8), scale=3)
    print_tables(results, args, k, s)


def _noised(denoiser, texts, scale, seed):
    states, mask = denoiser.encode(texts)
    return noise_text_embedding(states, scale, torch.Generator().manual_seed(seed)), mask


def _optimised(pipe, denoiser, texts, seed, lr):
    # optimise each distinct prompt once (the memorized captions repeat `samples` times)
    unique = list(dict.fromkeys(texts))
    u_states, u_mask = denoiser.encode(unique)
    opt, _ = optimize_prompt_embedding(pipe, u_states, u_mask, steps=10, lr=lr,
                                       generator=torch.Generator().manual_seed(seed))
    where = torch.tensor([unique.index(t) for t in texts])
    return opt[where], u_mask[where]


def print_tables(results: dict, args, k: int, s: int) -> None:
    r, d, tl = results["retrieval"], results["detection"], results["train"]
    print(f"\nMemorizing model: shapes-unet fine-tuned {tl['steps']} steps x {tl['batch']} "
          f"({tl['seconds']} s; {tl['memorized_per_batch']} of each batch from {k} fixed captioned images), "
          f"seed {args.seed}.")
    print(f"Threshold (PixelDescriptor, 99th pct of fresh renders' top-1 vs the {k + args.distractors}-image "
          f"training index): {results['threshold']:.4f}")
    print(f"Retrieval ({k} x {s} memorized-caption + {args.normal} normal generations): "
          f"precision {r['precision']:.3f}, recall {r['recall']:.3f}")
    print(f"Memorization score ROC AUC: memorized vs normal prompts {d['auc_vs_normal']:.3f} (first step), "
          f"{d['auc_vs_normal_5_steps']:.3f} (first 5 steps); vs unseen "
          f"'sample <j>' captions {d['auc_vs_unseen_sample_captions']:.3f} (means {d['mean_memorized']:.3f} / "
          f"{d['mean_normal']:.3f} / {d['mean_unseen']:.3f})\n")
    print("| mitigation | replication rate, memorized captions | correct copy | top-1 is the source image "
          "| replication rate, normal prompts | mean top-1 sim (memorized) | top-1 sim AUC memorized vs normal "
          "| memorization score (memorized / normal) | prompt acc, memorized | prompt acc, normal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in results["mitigations"].values():
        print(f"| {row['mitigation']} | {row['replication_memorized']:.3f} | {row['correct_copy_memorized']:.3f} | "
              f"{row['top1_is_source_memorized']:.3f} | {row['replication_normal']:.3f} | "
              f"{row['top1_sim_memorized_mean']:.3f} | {row['similarity_auc_memorized_vs_normal']:.3f} | "
              f"{row['mem_score_memorized']:.2f} / {row['mem_score_normal']:.2f} | {row['acc_memorized']:.3f} | "
              f"{row['acc_normal']:.3f} |")
    print(f"\ntotal {results['seconds']} s")


if __name__ == "__main__":
    main()
