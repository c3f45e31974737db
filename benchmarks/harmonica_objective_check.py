"""Does the router-training objective rank cache schedules the way the final images do?

    PYTHONPATH=python python benchmarks/harmonica_objective_check.py
    PYTHONPATH=python python benchmarks/harmonica_objective_check.py --routers benchmarks/figures/harmonica_eval_20_cfg2.json

For fixed hard schedules (masks) on the shipped shapes-dit: FORA-2, FORA-3, two phase-shifted
FORA-2 variants, random schedules at FORA-2's and FORA-3's cache usage (random probabilities
restricted exactly to the budget with a reuse-run bound), and, with --routers, the routers trained
in a harmonica_eval run (their threshold masks and their restrictions to the FORA budgets), it
samples one fixed batch with the cache (the student's trajectory, as Step-Wise Denoising Training
sees it) and at every step runs the fully computed model on the same x_t (the teacher). Per
schedule it reports
 * final: MSE of the final cached sample to the uncached one from the same noise (what users see);
 * output: the mean over steps of MSE(student output, teacher output) -- the paper's per-step
   objective with lambda = 1;
 * x0: the same errors weighted per step by `step_error_weights(scheduler, "x0")` (the error of
   the clean sample each output implies; the default of `train_router`),
and the Spearman rank correlation of each objective with `final` over all schedules and within
each budget. An objective that ranks schedules unlike `final` trains routers towards schedules
that look good to it and are not.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import osmos.zoo
import torch
from osmos.accel.harmonica import cache_units
from osmos.accel.harmonica.pipeline import guided_denoiser, prompt_sampler
from osmos.accel.harmonica.router import budget_mask, limit_reuse_runs, max_reuse_fraction
from osmos.accel.harmonica.train import _Attached, step_error_weights
from osmos.zoo import data as D


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (no ties expected among float errors)."""
    ra = torch.tensor(a).argsort().argsort().double()
    rb = torch.tensor(b).argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def schedules(steps: int, units: int, routers_json: Path | None, n_random: int) -> dict[str, torch.Tensor]:
    """name -> bool mask [steps, units] (True = computed)."""
    t = torch.arange(steps)

    def every(computed: torch.Tensor) -> torch.Tensor:  # the same decision for every unit of a step
        return computed[:, None].expand(steps, units).clone()

    out = {"fora-2": every(t % 2 == 0), "fora-3": every(t % 3 == 0),
           "fora-2 odd steps (0,1,3,5,..)": every((t % 2 == 1) | (t == 0)),
           "fora-2 odd steps from 3 (0,3,5,..)": every(((t % 2 == 1) & (t >= 3)) | (t == 0))}
    g = torch.Generator().manual_seed(0)
    for k in range(n_random):
        out[f"random @0.50 K=2 #{k}"] = budget_mask(torch.rand(steps, units, generator=g), 0.5, 2)
        out[f"random @0.65 K=3 #{k}"] = budget_mask(torch.rand(steps, units, generator=g), 0.35, 3)
    if routers_json is not None:
        info = json.loads(routers_json.read_text())["training"]
        bound = info.get("max_reuse_run")
        for name, entry in info.items():
            if not isinstance(entry, dict) or "probabilities" not in entry:
                continue
            p = torch.tensor(entry["probabilities"])
            own = p > 0.1
            own[0] = True
            out[f"{name} own"] = limit_reuse_runs(own, bound)
            for usage, k in ((0.5, 2), (0.65, 3)):
                if usage <= max_reuse_fraction(steps, k) + 1e-9:
                    out[f"{name} @{usage:.2f} K={k}"] = budget_mask(p, 1.0 - usage, k)
    return out


@torch.no_grad()
def measure(pipe, masks: dict[str, torch.Tensor], steps: int, batch: int) -> list[dict]:
    pipe.scheduler.set_timesteps(steps)
    denoise = guided_denoiser(pipe)
    prompts = [D.prompt_for(s, c) for s in D.SHAPES for c in D.COLOURS]
    x_start, cond = prompt_sampler(pipe, prompts, batch)(torch.Generator().manual_seed(123))
    weights = step_error_weights(pipe.scheduler, "x0")
    att = _Attached(pipe.unet)
    try:
        def sample(mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            att.clear()
            x, errors = x_start.clone(), torch.zeros(steps)
            for i, t in enumerate(pipe.scheduler.timesteps):
                if mask is None:
                    att.set("teacher")
                else:
                    att.set("hard", hard=mask[i].tolist())
                out = denoise(pipe.unet, x, t, cond)
                if mask is not None and i > 0:
                    att.set("teacher")
                    errors[i] = (out - denoise(pipe.unet, x, t, cond)).pow(2).mean()
                x = pipe.scheduler.step(out, t, x).prev_sample
            return x, errors

        ref, _ = sample(None)
        rows = []
        for name, mask in masks.items():
            x, errors = sample(mask)
            rows.append({"schedule": name, "cache_usage": 1.0 - mask.float().mean().item(),
                         "final": float((x - ref).pow(2).mean()), "output": float(errors[1:].mean()),
                         "x0": float((weights * errors)[1:].mean()), "per_step_output": errors.tolist()})
            print(f"{name:40s} usage {rows[-1]['cache_usage']:.2f} final {rows[-1]['final']:.2e} "
                  f"output {rows[-1]['output']:.2e} x0 {rows[-1]['x0']:.2e}", flush=True)
    finally:
        att.detach()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--routers", type=Path, default=None, help="a harmonica_eval JSON whose trained routers to include")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--random", type=int, default=6, help="random schedules per budget")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "figures" / "harmonica_objective_check.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = osmos.zoo.load("shapes-dit", scheduler="ddim")
    units = len(cache_units(pipe.unet))
    rows = measure(pipe, schedules(args.steps, units, args.routers, args.random), args.steps, args.batch)
    groups = {"all": rows, "usage 0.50": [r for r in rows if abs(r["cache_usage"] - 0.5) < 0.03],
              "usage 0.65": [r for r in rows if abs(r["cache_usage"] - 0.65) < 0.03]}
    print("\n| schedules | n | Spearman(final, output MSE) | Spearman(final, x0 MSE) |\n|---|---|---|---|")
    summary = {}
    for label, sel in groups.items():
        final = [r["final"] for r in sel]
        summary[label] = {k: spearman(final, [r[k] for r in sel]) for k in ("output", "x0")}
        print(f"| {label} | {len(sel)} | {summary[label]['output']:.2f} | {summary[label]['x0']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "spearman": summary, "args": {k: str(v) for k, v in vars(args).items()}},
                                   indent=1))


if __name__ == "__main__":
    main()
