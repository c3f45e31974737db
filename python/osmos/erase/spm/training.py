"""Training an SPM: the ESD-form erasure loss, Latent Anchoring and the training loop.

Batches are laid out in contiguous named blocks (BatchLayout) and split with the same layout,
so the rows of a prediction are always the rows of the conditioning that produced them. (The
reference code builds its anchor batch interleaved but splits it in halves, so half of its
anchors are the empty prompt.)

The pipe is anything with `unet`, `scheduler` (a diffusers scheduler with set_timesteps /
step, e.g. DDIMScheduler), `encode_prompt(prompts) -> states [N, L, dim]` or
`(states, added_cond_kwargs)` (batch-first tensors, e.g. SDXL's text_embeds / time_ids; an
"encoder_attention_mask" entry [N, L] is passed to the UNet as that argument instead, for text
encoders whose padding must not be attended, as in osmos.zoo), and `latent_shape` (channels,
height, width).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from osmos.erase.spm.adapter import SPM
from osmos.erase.spm.inject import apply_spm


# ---- batch layout -------------------------------------------------------------------------
class BatchLayout:
    """Named contiguous blocks of a batch, in order: e.g. [("target", 1), ("anchors", 4)]."""

    def __init__(self, blocks: Sequence[tuple[str, int]]):
        self.blocks = [(name, int(n)) for name, n in blocks if n > 0]
        self.size = sum(n for _, n in self.blocks)

    def cat(self, parts: dict[str, Tensor]) -> Tensor:
        """One batch from {name: [n, ...]} in the layout's order."""
        for name, n in self.blocks:
            if parts[name].shape[0] != n:
                raise ValueError(f"block {name!r} needs {n} rows, got {parts[name].shape[0]}")
        return torch.cat([parts[name] for name, _ in self.blocks])

    def split(self, batch: Tensor) -> dict[str, Tensor]:
        """{name: rows} of a batch laid out by cat."""
        if batch.shape[0] != self.size:
            raise ValueError(f"batch has {batch.shape[0]} rows, the layout {self.size}")
        return dict(zip([name for name, _ in self.blocks], batch.split([n for _, n in self.blocks])))


# ---- losses -------------------------------------------------------------------------------
def erasure_target(eps_target: Tensor, eps_surrogate: Tensor, eta: float = 1.0) -> Tensor:
    """eps(c_sur) - eta (eps(c_tar) - eps(c_sur)): where the base model's prediction for the
    concept is pushed (both from the frozen base model)."""
    return eps_surrogate - eta * (eps_target - eps_surrogate)


def erasure_loss(eps_adapted_target: Tensor, eps_base_target: Tensor, eps_base_surrogate: Tensor, eta: float = 1.0) -> Tensor:
    """L_era = mean || eps_{theta+SPM}(x_t, c_tar) - erasure_target ||^2."""
    target = erasure_target(eps_base_target, eps_base_surrogate, eta).detach()
    return torch.nn.functional.mse_loss(eps_adapted_target.float(), target.float())


def anchoring_loss(eps_adapted_anchors: Tensor, eps_base_anchors: Tensor) -> Tensor:
    """L_LA = mean over anchors || eps_{theta+SPM}(x_t, a) - eps_theta(x_t, a) ||^2 (0 without anchors)."""
    if eps_adapted_anchors.shape[0] == 0:
        return eps_adapted_anchors.new_zeros((), dtype=torch.float32)
    return torch.nn.functional.mse_loss(eps_adapted_anchors.float(), eps_base_anchors.detach().float())


# ---- anchors ------------------------------------------------------------------------------
def pooled(states: Tensor, content: Tensor | None = None) -> Tensor:
    """Mean over content tokens: [N, L, dim] (+ mask [N, L]) -> [N, dim]."""
    if content is None:
        return states.float().mean(1)
    w = content.float()[..., None]
    return (states.float() * w).sum(1) / w.sum(1).clamp_min(1)


class AnchorSampler:
    """Anchor embeddings for Latent Anchoring: vocabulary entries accepted with probability
    ((1 - cos(pooled(a), pooled(target))) / max)^power, so concepts far from the target are
    kept more often (measured on pooled content tokens, not on flattened 77 x dim vectors where
    everything is near-orthogonal), then rescaled to the target's norm x U(low, high), plus
    optional Gaussian perturbation of relative size `perturb`. With norm_range None the anchors
    keep their own norms (real prompts' states stay on the encoder's manifold).

    Args:
        vocab_states: [V, L, dim] encoder states of the vocabulary prompts.
        target_states: [L, dim] the concept's states.
        vocab_content / target_content: content-token masks (None = all tokens).
    """

    def __init__(self, vocab_states: Tensor, target_states: Tensor, vocab_content: Tensor | None = None,
                 target_content: Tensor | None = None, power: float = 1.0,
                 norm_range: tuple[float, float] | None = (0.8, 1.2),
                 perturb: float = 0.0):
        if vocab_states.dim() != 3 or vocab_states.shape[1:] != target_states.shape:
            raise ValueError(f"vocab_states must be [V, {', '.join(map(str, target_states.shape))}], got {tuple(vocab_states.shape)}")
        self.vocab = vocab_states.float()
        self.target_norm = float(target_states.float().norm())
        tgt = pooled(target_states[None], None if target_content is None else target_content[None])
        cos = torch.nn.functional.cosine_similarity(pooled(vocab_states, vocab_content), tgt, dim=-1)
        self.distance = (1 - cos).clamp_min(0)
        self.accept = (self.distance / self.distance.max().clamp_min(1e-12)) ** power
        self.norm_range, self.perturb = norm_range, perturb

    def sample_indices(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n vocabulary indices drawn by rejection with the acceptance probabilities."""
        if float(self.accept.max()) <= 0:
            raise ValueError("no vocabulary entry differs from the target; add more anchor prompts")
        picked: list[int] = []
        while len(picked) < n:
            idx = torch.randint(len(self.vocab), (4 * n,), generator=generator)
            keep = torch.rand(4 * n, generator=generator) < self.accept[idx]
            picked.extend(idx[keep].tolist())
        return torch.tensor(picked[:n], dtype=torch.long)

    def embed(self, indices: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """[n, L, dim] anchors for the given vocabulary indices (rescaled, perturbed)."""
        a = self.vocab[indices]
        if self.perturb:
            a = a + self.perturb * a.std() * torch.randn(a.shape, generator=generator)
        if self.norm_range is None:
            return a
        low, high = self.norm_range
        scale = low + (high - low) * torch.rand(len(indices), generator=generator)
        return a * (self.target_norm * scale / a.flatten(1).norm(dim=1).clamp_min(1e-12))[:, None, None]


# ---- training -----------------------------------------------------------------------------
@dataclass
class TrainSettings:
    concept: str
    surrogate: str = ""
    steps: int = 1000
    lr: float = 1e-4
    la_strength: float = 1000.0
    anchors_per_step: int = 4
    eta: float = 1.0
    scale: float = 1.0
    sampling_steps: int = 30
    seed: int = 0
    extra: dict = field(default_factory=dict)


def _encode(pipe, prompts: Sequence[str]) -> tuple[Tensor, dict]:
    out = pipe.encode_prompt(list(prompts))
    states, added = (out, {}) if isinstance(out, Tensor) else out
    return states, dict(added or {})


def _cat_added(layout: BatchLayout, parts: dict[str, dict]) -> dict:
    keys = next(iter(parts.values())).keys()
    return {k: layout.cat({name: parts[name][k] for name, _ in layout.blocks}) for k in keys}


def _unet(pipe, latents: Tensor, t, states: Tensor, added: dict) -> Tensor:
    added = dict(added)
    mask = added.pop("encoder_attention_mask", None)
    kwargs = {"added_cond_kwargs": added} if added else {}
    if mask is not None:
        kwargs["encoder_attention_mask"] = mask
    return pipe.unet(latents, t, encoder_hidden_states=states, **kwargs).sample


@torch.no_grad()
def partially_denoised(pipe, states: Tensor, added: dict, sampling_steps: int, generator: torch.Generator):
    """(x_t [N, *latent_shape] scaled for the model, t): noise denoised with pipe.unet as it is
    now (adapters attached) on the N conditionings for a random n < sampling_steps of scheduler
    steps, as the ESD-form losses need."""
    param = next(pipe.unet.parameters())
    pipe.scheduler.set_timesteps(sampling_steps)
    n = int(torch.randint(sampling_steps, (1,), generator=generator))
    latents = torch.randn((states.shape[0], *pipe.latent_shape), generator=generator).to(param.device, param.dtype)
    latents = latents * pipe.scheduler.init_noise_sigma
    for t in pipe.scheduler.timesteps[:n]:
        eps = _unet(pipe, pipe.scheduler.scale_model_input(latents, t), t, states, added)
        latents = pipe.scheduler.step(eps, t, latents).prev_sample
    t = pipe.scheduler.timesteps[n]
    return pipe.scheduler.scale_model_input(latents, t), t


def _save_checkpoint(path: Path, spm: SPM, opt: torch.optim.Optimizer, step: int, generator: torch.Generator) -> None:
    tensors = {f"spm.{k}": v for k, v in spm.state_tensors().items()}
    for i, p in enumerate(spm.parameters()):
        for k, v in opt.state.get(p, {}).items():
            tensors[f"opt.{i}.{k}"] = v.detach().cpu().reshape(-1) if v.dim() == 0 else v.detach().cpu()
    tensors["rng"] = generator.get_state()
    meta = {"step": str(step), "spm": json.dumps(spm.metadata())}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def _load_checkpoint(path: Path, spm: SPM, opt: torch.optim.Optimizer, generator: torch.Generator) -> int:
    from safetensors import safe_open

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    loaded = SPM.from_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("spm.")}, json.loads(meta["spm"]))
    with torch.no_grad():
        for p, q in zip(spm.parameters(), loaded.parameters()):
            p.copy_(q)
    for i, p in enumerate(spm.parameters()):
        state = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if state:
            if "step" in state:
                state["step"] = state["step"].reshape(())
            opt.state[p] = {k: v.to(p.device) for k, v in state.items()}
    generator.set_state(tensors["rng"])
    return int(meta["step"])


def train_spm(pipe, concept: str, surrogate: str = "", steps: int = 1000, lr: float = 1e-4, la_strength: float = 1000.0,
              anchors: AnchorSampler | Sequence[str] | None = None, anchors_per_step: int = 4, eta: float = 1.0,
              scale: float = 1.0, sampling_steps: int = 30, seed: int = 0, checkpoint: str | Path | None = None,
              checkpoint_every: int = 100, progress: bool = True, callback=None,
              prompts: Sequence[tuple[str, str]] | None = None, targets_per_step: int = 1,
              fixed_anchors: Sequence[str] = (), anchor_norm_range: tuple[float, float] | None = (0.8, 1.2),
              wordings: Sequence[str] | None = None) -> SPM:
    """Train an SPM that erases `concept` (mapping it to `surrogate`) from pipe.unet.

    Each step: draw `targets_per_step` (target, surrogate) prompt pairs (by default the one pair
    (concept, surrogate)) and noise, denoise it with the adapted UNet on the targets for a random
    number n < sampling_steps of scheduler steps (no grad) to get x_t; predict with the frozen
    base on [targets | surrogates | fixed anchors | sampled anchors] and with the adapted UNet on
    [targets | fixed anchors | sampled anchors]; minimise erasure_loss + la_strength *
    anchoring_loss with Adam on the SPM only.

    Args:
        anchors: an AnchorSampler, a vocabulary of anchor prompts (encoded once, sampled by
            distance from the concept), or None (no sampled anchors).
        prompts: (target prompt, surrogate prompt) pairs to erase, e.g. captions naming the
            concept and the same captions without it ("a red circle", "a red"). The concept
            then only names the SPM (and measures anchor distances). Default [(concept, surrogate)].
        targets_per_step: pairs drawn (with replacement) per step.
        fixed_anchors: prompts anchored at every step (e.g. "" for the unconditional branch of
            classifier-free guidance), on the x_t of the targets.
        anchor_norm_range: rescaling of vocabulary anchors to the concept's norm (None: keep).
        wordings: every text naming the concept in `prompts` (e.g. "circle", "disc", "round
            shape"), stored in the SPM for Facilitated Transport. Default [concept].
        checkpoint: a file to resume from (if present) and to save to every checkpoint_every
            steps and at the end (safetensors: SPM, optimizer state, RNG, step).
        callback: called as callback(step, {"loss", "erasure", "anchoring"}) after each step.
    Returns:
        the trained SPM (on the UNet's device; call .save(path) to write it).
    """
    unet = pipe.unet
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    pairs = [(str(a), str(b)) for a, b in prompts] if prompts else [(concept, surrogate)]
    k = int(targets_per_step)
    if k < 1:
        raise ValueError(f"targets_per_step must be >= 1, got {targets_per_step}")
    settings = TrainSettings(concept, surrogate, steps, lr, la_strength, anchors_per_step, eta, scale, sampling_steps, seed,
                             extra={"prompts": len(pairs), "targets_per_step": k, "fixed_anchors": list(fixed_anchors),
                                    "anchor_norm_range": anchor_norm_range})
    generator = torch.Generator().manual_seed(seed)
    spm = SPM.for_unet(unet, concept, surrogate, scale, settings=settings.__dict__, generator=generator,
                       wordings=wordings).to(device)
    unet.requires_grad_(False)
    opt = torch.optim.Adam(spm.parameters(), lr=lr)

    concept_states, _ = _encode(pipe, [concept])
    tar_all, tar_added_all = _encode(pipe, [a for a, _ in pairs])
    sur_all, sur_added_all = _encode(pipe, [b for _, b in pairs])
    use_la = la_strength > 0
    n_fixed = len(fixed_anchors) if use_la else 0
    if n_fixed:
        fixed_states, fixed_added = _encode(pipe, list(fixed_anchors))
    vocab_added: dict = {}
    if isinstance(anchors, (list, tuple)):
        vocab_states, vocab_added = _encode(pipe, anchors)
        anchors = AnchorSampler(vocab_states, concept_states[0], norm_range=anchor_norm_range)
    n_anchor = anchors_per_step if anchors is not None and use_la else 0

    start = 0
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint is not None and checkpoint.exists():
        start = _load_checkpoint(checkpoint, spm, opt, generator)

    rows = lambda added, idx: {key: v[idx] for key, v in added.items()}  # noqa: E731
    handle = apply_spm(unet, [spm])
    try:
        bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc=f"SPM {concept!r}")
        for step in bar:
            pick = torch.randint(len(pairs), (k,), generator=generator) if len(pairs) > 1 else torch.zeros(k, dtype=torch.long)
            tar_states, tar_added = tar_all[pick], rows(tar_added_all, pick)
            x_t, t = partially_denoised(pipe, tar_states, tar_added, sampling_steps, generator)

            states = {"target": tar_states, "surrogate": sur_all[pick]}
            added = {"target": tar_added, "surrogate": rows(sur_added_all, pick)}
            if n_fixed:
                states["fixed"], added["fixed"] = fixed_states, fixed_added
            if n_anchor:
                idx = anchors.sample_indices(n_anchor, generator)
                states["anchors"] = anchors.embed(idx, generator).to(device, dtype)
                added["anchors"] = rows(vocab_added, idx) if vocab_added else \
                    {key: v[:1].expand(n_anchor, *v.shape[1:]) for key, v in tar_added.items()}
            anchor_blocks = [("fixed", n_fixed), ("anchors", n_anchor)]
            base_layout = BatchLayout([("target", k), ("surrogate", k), *anchor_blocks])
            spm_layout = BatchLayout([("target", k), *anchor_blocks])
            x_base = x_t[torch.arange(base_layout.size) % k]
            x_spm = x_t[torch.arange(spm_layout.size) % k]

            with torch.no_grad(), handle.disabled():
                base = base_layout.split(_unet(pipe, x_base, t, base_layout.cat(states),
                                               _cat_added(base_layout, added) if tar_added else {}))
            adapted = spm_layout.split(_unet(pipe, x_spm, t, spm_layout.cat(states),
                                             _cat_added(spm_layout, added) if tar_added else {}))
            loss_era = erasure_loss(adapted["target"], base["target"], base["surrogate"], eta)
            if n_fixed or n_anchor:
                names = [name for name, size in anchor_blocks if size]
                loss_la = anchoring_loss(torch.cat([adapted[m] for m in names]), torch.cat([base[m] for m in names]))
            else:
                loss_la = loss_era.new_zeros(())
            loss = loss_era + la_strength * loss_la
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            values = {"loss": loss.item(), "erasure": loss_era.item(), "anchoring": loss_la.item()}
            bar.set_postfix(values)
            if callback is not None:
                callback(step, values)
            if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                _save_checkpoint(checkpoint, spm, opt, step + 1, generator)
    finally:
        handle.remove()
    return spm


def train_spm_selected(pipe, concept: str, validate, seeds: Sequence[int], on_candidate=None,
                       trained=None, **kwargs) -> tuple[SPM, list[float]]:
    """Best of several training draws: one SPM per seed in `seeds` (train_spm(pipe, concept,
    seed=seed, **kwargs)), each scored by validate(spm) -> float, lower = better erased (e.g. the
    fraction of images from validation prompts in which a classifier still sees the concept);
    the SPM with the lowest score is returned (the earliest seed on ties), with its settings'
    "selection" entry {"seeds", "scores", "chosen"} recording the choice (saved with the file).
    A score may also be a tuple of floats, compared in order (e.g. (concept rate, tie-breaker)).

    SPM training draws differ in how far the erasure carries from the training prompts to other
    wordings; a validation check picks a draw that generalises. The validation prompts must be
    disjoint from whatever the SPM is finally evaluated on, or the selection overfits them.
    on_candidate: called as on_candidate(seed, spm, score) after each candidate is scored (e.g.
    to save every candidate; each is the SPM train_spm gives for that seed alone).
    trained: optional trained(seed) -> SPM or None: an already trained candidate for that seed
    (e.g. read from a cache, so a new validate can re-score old candidates); None trains it.

    Returns:
        (the chosen SPM, the score of every seed in order).
    """
    if isinstance(seeds, (int, str)):
        raise TypeError(f"seeds must be a sequence of training seeds, e.g. [0, 1000, 2000], got {seeds!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one training seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must differ, got {seeds}")
    for key in ("seed", "checkpoint"):
        if kwargs.get(key) is not None:
            raise ValueError(f"train_spm_selected sets one {key} per candidate itself; do not pass {key}=")
    kwargs.pop("seed", None)
    best, scores = None, []
    for seed in seeds:
        spm = trained(seed) if trained is not None else None
        if spm is None:
            spm = train_spm(pipe, concept, seed=seed, **kwargs)
        raw = validate(spm)
        score = tuple(float(v) for v in raw) if isinstance(raw, (tuple, list)) else float(raw)
        parts = score if isinstance(score, tuple) else (score,)
        if not parts or any(v != v or v in (float("inf"), float("-inf")) for v in parts):
            raise ValueError(f"validate gave {raw} for seed {seed}; it must return a finite score (or a tuple of them)")
        if scores and isinstance(score, tuple) != isinstance(scores[0], tuple):
            raise ValueError("validate must return floats for every seed or tuples for every seed")
        scores.append(score)
        if on_candidate is not None:
            on_candidate(seed, spm, score)
        if best is None or score < min(scores[:-1]):
            best = spm
    best.settings["selection"] = {"seeds": seeds, "scores": scores, "chosen": seeds[scores.index(min(scores))]}
    return best, scores
