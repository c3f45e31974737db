"""Why memorized and normal prompts overlap under the memorization score, and which variant of the
score separates them: one guided-sampling trace per prompt, many scores computed from it.

    PYTHONPATH=python nice -n 10 python benchmarks/memorization_study.py --weights out/repl_study_m16/memorized.safetensors \\
        --memorize 16 --model-seed 0 [--guidance 3.0 7.5] [--samples 4] [--steps 10]

The model is a memorizing fine-tune built by benchmarks/replication_eval.py (or any shapes-unet-shaped
weights; `--weights shapes-memorized` loads the zoo model). Positives: its memorized captions.
Negatives: `--normal` fresh captions of the training form and `--unseen` captions of the memorized
form ("..., sample <j>", j never trained). Prompts come from `--prompt-seed`; run the study on a
development model / prompt seed and evaluate the chosen variant on held-out ones
(benchmarks/replication_eval.py).

Each variant's cost is in denoiser evaluations per prompt (2 per step and starting latent; the
trace computes the largest, smaller variants read a prefix). Prints a markdown table of ROC AUC
(memorized vs normal, vs unseen, vs both) and writes `--out` (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import osmos.zoo
from osmos.replication.denoisers import as_denoiser
from osmos.replication.memorization import highpass, trace_guidance
from osmos.replication.metrics import roc_auc
from osmos.zoo import data as D
from osmos.zoo.train import CaptionPool


def load_memorizer(weights: str):
    if weights.endswith(".safetensors"):
        from safetensors.torch import load_file

        pipe = osmos.zoo.load("shapes-unet")
        pipe.unet.load_state_dict(load_file(weights))
        return pipe
    return osmos.zoo.load(weights)


def prompt_sets(memorize: int, model_seed: int, normal: int, unseen: int, prompt_seed: int) -> dict[str, list[str]]:
    mem = CaptionPool(0, model_seed, memorize=memorize) if memorize else None
    g = torch.Generator().manual_seed(prompt_seed)
    norm = D.captions_with_named(D.sample_attributes(normal, g), "train", g, 1.0, 1.0)[0]
    forms = D.captions_with_named(D.sample_attributes(unseen, g), "train", g, 1.0, 1.0)[0]
    first = max(memorize, 1000)
    return {"memorized": mem.texts if mem else [], "normal": norm,
            "unseen": [f"{t}, sample {first + j}" for j, t in enumerate(forms)]}


def _pairwise_cosine(v: torch.Tensor) -> torch.Tensor:
    """v [P, N, F] -> mean cosine similarity over the N (N-1) ordered pairs, [P]."""
    v = torch.nn.functional.normalize(v, dim=2)
    gram = v @ v.transpose(1, 2)
    n = v.shape[1]
    return (gram.sum(dim=(1, 2)) - n) / (n * (n - 1))


def _laplacian(v: torch.Tensor) -> torch.Tensor:
    """v [..., C, H, W] -> its 4-neighbour Laplacian (reflect padding)."""
    shape = v.shape
    flat = torch.nn.functional.pad(v.reshape(-1, 1, *shape[-2:]), (1, 1, 1, 1), mode="reflect")
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return torch.nn.functional.conv2d(flat, k).view(shape)


def _fft_high(v: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """v [..., C, H, W] with spatial frequencies below `cutoff` cycles / pixel removed."""
    h, w = v.shape[-2:]
    fy, fx = torch.fft.fftfreq(h).abs().view(-1, 1), torch.fft.rfftfreq(w).view(1, -1)
    keep = (torch.maximum(fy, fx) >= cutoff).float()
    return torch.fft.irfft2(torch.fft.rfft2(v) * keep, s=(h, w))


def prefixes(steps: int, samples: int):
    """The trace prefixes every variant is read at: (s steps, n latents, index into [P, N, S], cost in
    denoiser calls per prompt) for s in {1, 2, 3, 5, steps} and n in {1, 2, samples}, within the trace."""
    for s in sorted({1, 2, 3, 5, steps}):
        for n in sorted({1, 2, samples}):
            if s <= steps and n <= samples:
                yield s, n, (slice(None), slice(0, n), slice(0, s)), 2 * s * n


def refined(trace, steps: int, samples: int) -> dict[str, tuple[torch.Tensor, int]]:
    """Second round: kernels and step weightings of the high-pass conditional noise."""
    d = trace.conditional
    a = trace.alphas_cumprod.view(1, 1, -1)
    x0_scale = ((1 - a) / a).sqrt()  # |x0(c) - x0(empty)| = x0_scale * |d|
    kernels = {"box3": highpass(d), "laplacian": _laplacian(d), "fft>0.25": _fft_high(d, 0.25),
               "fft>0.125": _fft_high(d, 0.125)}
    out = {}
    for kname, hp in kernels.items():
        e = hp.flatten(3).norm(dim=3)  # [P, N, S]
        step_normalised = e / e.median(dim=0).values.median(dim=0).values
        for s, n, sl, cost in prefixes(steps, samples):
            out[f"hp[{kname}] s{s} n{n}"] = (e[sl].mean(dim=(1, 2)), cost)
            out[f"hp[{kname}] x0-scaled s{s} n{n}"] = ((e * x0_scale)[sl].mean(dim=(1, 2)), cost)
            out[f"hp[{kname}] step-normalised s{s} n{n}"] = (step_normalised[sl].mean(dim=(1, 2)), cost)
            out[f"hp[{kname}] last step s{s} n{n}"] = (e[:, :n, s - 1].mean(dim=1), cost)
    return out


def variants(trace, steps: int, samples: int) -> dict[str, tuple[torch.Tensor, int]]:
    """name -> (score [P], denoiser evaluations per prompt)."""
    d = trace.conditional
    norms = d.flatten(3).norm(dim=3)  # [P, N, S]
    u_norms = trace.eps_uncond.flatten(3).norm(dim=3)
    c_norms = trace.eps_cond.flatten(3).norm(dim=3)
    a = trace.alphas_cumprod.view(1, 1, -1, 1, 1, 1)
    x0_c = (trace.latents - (1 - a).sqrt() * trace.eps_cond) / a.sqrt()
    hp = highpass(d).flatten(3).norm(dim=3)
    out = {}
    for s, n, sl, cost in prefixes(steps, samples):
        out[f"wen |d| s{s} n{n}"] = (norms[sl].mean(dim=(1, 2)), cost)
        out[f"|d|/|eps_u| s{s} n{n}"] = ((norms / u_norms)[sl].mean(dim=(1, 2)), cost)
        out[f"|d|/|eps_c| s{s} n{n}"] = ((norms / c_norms)[sl].mean(dim=(1, 2)), cost)
        out[f"highpass |d| s{s} n{n}"] = (hp[sl].mean(dim=(1, 2)), cost)
        out[f"highpass fraction s{s} n{n}"] = ((hp / norms)[sl].mean(dim=(1, 2)), cost)
        out[f"last-step |d| s{s} n{n}"] = (norms[:, :n, s - 1].mean(dim=1), cost)
        if n > 1:
            out[f"seed agreement of d s{s} n{n}"] = (_pairwise_cosine(d[:, :n, s - 1].flatten(2)), cost)
            x0 = x0_c[:, :n, s - 1].flatten(2)
            out[f"seed agreement of x0(c) s{s} n{n}"] = (_pairwise_cosine(x0 - x0.mean(dim=2, keepdim=True)), cost)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="a .safetensors of shapes-unet shape, or a zoo model name")
    p.add_argument("--memorize", type=int, required=True, help="memorized images of the model (CaptionPool)")
    p.add_argument("--model-seed", type=int, required=True, help="seed the memorized captions were drawn with")
    p.add_argument("--normal", type=int, default=64)
    p.add_argument("--unseen", type=int, default=32)
    p.add_argument("--prompt-seed", type=int, default=1000)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--num-inference-steps", type=int, default=25)
    p.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--refined", action="store_true", help="second round: high-pass kernels and step weightings")
    p.add_argument("--out", type=Path, default=Path("out/memorization_study.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_memorizer(args.weights)
    den = as_denoiser(pipe)
    sets = prompt_sets(args.memorize, args.model_seed, args.normal, args.unseen, args.prompt_seed)
    texts = sets["memorized"] + sets["normal"] + sets["unseen"]
    states, mask = den.encode(texts)
    k, n_norm = len(sets["memorized"]), len(sets["normal"])
    results = {"args": {k2: str(v) for k2, v in vars(args).items()}, "guidance": {}}
    tokens = mask.sum(dim=1).float()
    for guidance in args.guidance:
        t0 = time.time()
        trace = trace_guidance(den, states, mask, args.steps, args.num_inference_steps, guidance, args.samples,
                               torch.Generator().manual_seed(7))
        rows = {}
        table = refined(trace, args.steps, args.samples) if args.refined else variants(trace, args.steps, args.samples)
        for name, (score, cost) in table.items():
            pos, norm, unseen = score[:k], score[k:k + n_norm], score[k + n_norm:]
            rows[name] = {"cost": cost, "auc_normal": roc_auc(pos, norm), "auc_unseen": roc_auc(pos, unseen),
                          "auc_both": roc_auc(pos, score[k:]),
                          "corr_tokens_negatives": float(torch.corrcoef(torch.stack([score[k:], tokens[k:]]))[0, 1]),
                          "mean": [float(pos.mean()), float(norm.mean()), float(unseen.mean())]}
        results["guidance"][str(guidance)] = {"seconds": round(time.time() - t0, 1), "variants": rows}
        print(f"\nguidance {guidance} ({time.time() - t0:.0f} s); {k} memorized, {n_norm} normal, "
              f"{len(sets['unseen'])} unseen-form prompts\n")
        print("| variant | denoiser calls / prompt | AUC vs normal | AUC vs unseen | AUC vs both | corr(score, tokens) negatives | mean mem / normal / unseen |")
        print("|---|---|---|---|---|---|---|")
        for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["auc_both"]):
            m = r["mean"]
            print(f"| {name} | {r['cost']} | {r['auc_normal']:.3f} | {r['auc_unseen']:.3f} | {r['auc_both']:.3f} | "
                  f"{r['corr_tokens_negatives']:+.2f} | {m[0]:.3g} / {m[1]:.3g} / {m[2]:.3g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
