"""Training-free detection of memorized prompts at generation time (after Wen et al., ICLR 2024).

A memorized prompt pulls the sample towards one training image from the first denoising steps,
so the text-conditional part of the noise prediction, d = eps(x_t, c) - eps(x_t, empty), differs
from a normal prompt's: Wen et al. use its magnitude ||d||; the default here is the magnitude of
its fine detail (`highpass`), which separates memorized prompts better on the zoo's memorizing
models. Classifier-free guidance computes both terms anyway, so the score costs a few denoiser
calls and needs no reference set. `score_prompts` scores a prompt list and flags it at a threshold
(the `osmos replication score` command).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from osmos.replication.denoisers import Denoiser, as_denoiser


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass
class GuidanceTrace:
    """The first `steps` steps of classifier-free-guided sampling, per prompt and starting latent.

    eps_uncond, eps_cond, latents: [B, num_samples, steps, C, H, W] float32 (latents = x_t fed to
    the step); alphas_cumprod: [steps] (alpha-bar of each step's timestep).
    """

    eps_uncond: Tensor
    eps_cond: Tensor
    latents: Tensor
    alphas_cumprod: Tensor

    @property
    def conditional(self) -> Tensor:
        """eps(x_t, c) - eps(x_t, empty), [B, num_samples, steps, C, H, W]."""
        return self.eps_cond - self.eps_uncond


def trace_guidance(denoiser: Denoiser, states: Tensor, mask: Tensor | None, steps: int = 1,
                   num_inference_steps: int = 25, guidance_scale: float | None = None, num_samples: int = 1,
                   generator: torch.Generator | None = None) -> GuidanceTrace:
    """Runs the first `steps` of `num_inference_steps` guided sampling steps from `num_samples`
    starting latents per prompt and records both noise predictions (2 * steps * num_samples
    denoiser evaluations per prompt, batched).

    states [B, T, D] (mask [B, T] or None): encoded prompts.
    """
    _check_positive("steps", steps)
    _check_positive("num_inference_steps", num_inference_steps)
    _check_positive("num_samples", num_samples)
    if steps > num_inference_steps:
        raise ValueError(f"steps must be <= num_inference_steps ({num_inference_steps}), got {steps}")
    guidance = denoiser.default_guidance if guidance_scale is None else float(guidance_scale)
    b = states.shape[0]
    n = b * num_samples
    cond = states.repeat_interleave(num_samples, 0)
    cond_mask = None if mask is None else mask.repeat_interleave(num_samples, 0)
    empty, empty_mask = denoiser.empty(n)
    both = torch.cat([empty.to(cond.dtype), cond])
    both_mask = None if mask is None else torch.cat([empty_mask, cond_mask])
    sched = denoiser.scheduler
    x = torch.randn((n, *denoiser.latent_shape), generator=generator).to(states.device) * sched.init_noise_sigma
    sched.set_timesteps(num_inference_steps)
    record = {"u": [], "c": [], "x": []}
    alphas = []
    with torch.no_grad():
        for t in sched.timesteps[:steps]:
            inp = sched.scale_model_input(torch.cat([x, x]), t)
            eps_u, eps_c = denoiser.eps(inp, t, both, both_mask).chunk(2)
            for key, value in (("u", eps_u), ("c", eps_c), ("x", x)):
                record[key].append(value.float().cpu())
            alphas.append(float(sched.alphas_cumprod[int(t)]))
            x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample

    def stack(key):
        return torch.stack(record[key], dim=1).view(b, num_samples, steps, *denoiser.latent_shape)

    return GuidanceTrace(stack("u"), stack("c"), stack("x"), torch.tensor(alphas))


def conditional_noise_norms(denoiser: Denoiser, states: Tensor, mask: Tensor | None, steps: int = 1,
                            num_inference_steps: int = 25, guidance_scale: float | None = None,
                            num_samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """||eps(x_t, c) - eps(x_t, empty)||_2 per prompt and step, for the first `steps` steps of
    classifier-free-guided sampling with `num_inference_steps` steps.

    states [B, T, D] (mask [B, T] or None): encoded prompts. Each prompt is sampled from
    `num_samples` starting latents. Returns float32 [B, num_samples, steps] (L2 norm over all
    latent elements).
    """
    trace = trace_guidance(denoiser, states, mask, steps, num_inference_steps, guidance_scale, num_samples, generator)
    return trace.conditional.flatten(3).norm(dim=3)


def highpass(v: Tensor) -> Tensor:
    """v [..., C, H, W] minus its 3 x 3 box blur (reflect padding): the detail the text adds."""
    shape = v.shape
    flat = v.reshape(-1, 1, *shape[-2:])
    blur = F.avg_pool2d(F.pad(flat, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    return (flat - blur).view(shape)


METHODS = ("highpass", "magnitude")
DEFAULTS = {"highpass": {"steps": 5, "num_samples": 4}, "magnitude": {"steps": 1, "num_samples": 1}}


def denoiser_calls(steps: int, num_samples: int) -> int:
    """Denoiser evaluations per prompt of a score over `steps` steps and `num_samples` latents
    (conditional + unconditional per step and latent; the same two a guided generation makes)."""
    return 2 * steps * num_samples


def memorization_score(pipe, prompts: list[str] | str, steps: int | None = None, num_inference_steps: int = 25,
                       guidance_scale: float | None = None, num_samples: int | None = None,
                       generator: torch.Generator | None = None,
                       embeddings: tuple[Tensor, Tensor | None] | None = None, method: str = "highpass") -> Tensor:
    """Memorization score of each prompt, from the text-conditional noise d = eps(x_t, c) -
    eps(x_t, empty) of the first `steps` guided sampling steps from `num_samples` starting latents
    (averaged over both). Higher = more likely memorized; compare prompts of one model (the scale
    depends on the model and latent size). Needs no reference set.

    method "magnitude": ||d|| (Wen et al.; defaults 1 step, 1 latent). method "highpass" (default):
    ||d - blur3x3(d)||, the fine detail the prompt adds. A memorized prompt pulls every sample towards
    one sharp training image, a normal prompt towards the blurry average of many, so the detail
    separates them where the magnitude (dominated by the prompt's large uniform areas, e.g. the
    background colour) does not (benchmarks/memorization_study.py; defaults 5 steps, 4 latents).
    Cost: `denoiser_calls(steps, num_samples)` denoiser evaluations per prompt.

    pipe: a zoo ShapesPipeline or a diffusers Stable-Diffusion-style pipeline.
    embeddings: optional (states, mask) to score instead of encoding `prompts` (e.g. mitigated
    embeddings). Returns float32 [len(prompts)].
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    steps = DEFAULTS[method]["steps"] if steps is None else steps
    num_samples = DEFAULTS[method]["num_samples"] if num_samples is None else num_samples
    denoiser = as_denoiser(pipe)
    if isinstance(prompts, str):
        prompts = [prompts]
    if embeddings is None:
        if not prompts:
            raise ValueError("prompts must not be empty")
        embeddings = denoiser.encode(prompts)
    states, mask = embeddings
    trace = trace_guidance(denoiser, states, mask, steps, num_inference_steps, guidance_scale, num_samples, generator)
    d = trace.conditional
    if method == "highpass":
        d = highpass(d)
    return d.flatten(3).norm(dim=3).mean(dim=(1, 2))


@dataclass
class PromptScores:
    """Memorization scores of a list of prompts and the ones flagged at `threshold` (None: no
    threshold, nothing flagged). `threshold_source` says where the threshold came from."""

    prompts: list[str]
    scores: list[float]
    threshold: float | None
    threshold_source: str
    method: str
    steps: int
    num_samples: int
    num_inference_steps: int
    guidance_scale: float
    denoiser_calls_per_prompt: int

    @property
    def flagged(self) -> list[bool]:
        return [self.threshold is not None and s >= self.threshold for s in self.scores]

    def summary(self) -> str:
        thr = "no threshold" if self.threshold is None else (
            f"{sum(self.flagged)} flagged at >= {self.threshold:.4g} ({self.threshold_source})")
        return (f"{len(self.prompts)} prompts scored ({self.method}, {self.steps} steps x {self.num_samples} latents, "
                f"{self.denoiser_calls_per_prompt} denoiser calls each): {thr}")

    def save(self, folder, **extra) -> Path:
        """scores.json (settings + per-prompt rows) and scores.csv (prompt, score, flagged)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"prompt": p, "score": s, "flagged": f} for p, s, f in zip(self.prompts, self.scores, self.flagged)]
        settings = {k: v for k, v in asdict(self).items() if k not in ("prompts", "scores")}
        (folder / "scores.json").write_text(json.dumps({**extra, **settings, "n_flagged": sum(self.flagged),
                                                        "prompts": rows}, indent=1))
        with open(folder / "scores.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["prompt", "score", "flagged"])
            for r in rows:
                w.writerow([r["prompt"], f"{r['score']:.6g}", int(r["flagged"])])
        return folder


def score_prompts(pipe, prompts: list[str], threshold: float | None = None,
                  calibration_prompts: list[str] | None = None, quantile: float = 0.99, method: str = "highpass",
                  steps: int | None = None, num_samples: int | None = None, num_inference_steps: int | None = None,
                  guidance_scale: float | None = None, seed: int = 0, batch_size: int = 16,
                  progress: bool = False) -> PromptScores:
    """`memorization_score` of every prompt in batches of `batch_size`, each batch from the same
    seeded starting latents, and the prompts at or above a threshold: `threshold`, or the
    `quantile` of the scores of `calibration_prompts` (prompts known not to be memorized), or none.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if threshold is not None and calibration_prompts is not None:
        raise ValueError("give threshold or calibration_prompts, not both")
    if not prompts:
        raise ValueError("prompts must not be empty")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    _check_positive("batch_size", batch_size)
    denoiser = as_denoiser(pipe)
    steps = DEFAULTS[method]["steps"] if steps is None else steps
    num_samples = DEFAULTS[method]["num_samples"] if num_samples is None else num_samples
    num_inference_steps = 25 if num_inference_steps is None else num_inference_steps
    guidance = denoiser.default_guidance if guidance_scale is None else float(guidance_scale)

    def run(texts: list[str]) -> list[float]:
        out = []
        batches = range(0, len(texts), batch_size)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="memorization score", unit="batch")
        for i in batches:
            out += memorization_score(denoiser, texts[i:i + batch_size], steps, num_inference_steps, guidance,
                                      num_samples, torch.Generator().manual_seed(seed), method=method).tolist()
        return out

    source = "none"
    if calibration_prompts is not None:
        if not calibration_prompts:
            raise ValueError("calibration_prompts must not be empty")
        threshold = float(torch.quantile(torch.tensor(run(calibration_prompts), dtype=torch.float64), quantile))
        source = f"quantile {quantile} of {len(calibration_prompts)} calibration prompts"
    elif threshold is not None:
        threshold, source = float(threshold), "given"
    return PromptScores(list(prompts), run(list(prompts)), threshold, source, method, steps, num_samples,
                        num_inference_steps, guidance, denoiser_calls(steps, num_samples))


__all__ = ["GuidanceTrace", "trace_guidance", "conditional_noise_norms", "highpass", "denoiser_calls",
           "memorization_score", "PromptScores", "score_prompts", "METHODS"]
