"""Architectures and training recipes of the zoo's denoisers (all diffusers classes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from osmos.zoo.text import HIDDEN_SIZE


@dataclass(frozen=True)
class Recipe:
    """How one zoo model is built and trained. ``config`` is the diffusers model config."""

    name: str
    model_class: str  # a diffusers class name
    size: int  # image side in pixels
    config: dict
    batch_size: int = 32
    lr: float = 1.5e-3
    warmup_steps: int = 25
    ema_decay: float = 0.99
    cfg_dropout: float = 0.1  # probability of training on the empty prompt (classifier-free guidance)
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # what the model predicts: "epsilon" or "v_prediction" (diffusers' names)
    # min-SNR loss weighting (Hang et al. 2023): every sample's loss is scaled so that its implicit weight on
    # the x0 error (SNR for epsilon, SNR + 1 for v) is capped at snr_gamma; None = plain MSE on the target
    snr_gamma: float | None = None
    default_guidance: float = 3.0
    default_scheduler: str = "ddim"  # the sampler a pipeline uses unless told: "ddim" or "dpm"
    # "bfloat16": train with mixed precision (matmuls and convolutions in bfloat16 under autocast; weights,
    # optimizer, EMA and loss in float32) where the device computes bfloat16 natively; "float32" everywhere else
    train_precision: str = "float32"
    train_compile: bool = False  # train the denoiser through torch.compile (as --compile; eager if compiling fails)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _unet_config(size: int) -> dict:
    return dict(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN_SIZE,
        attention_head_dim=8,
        norm_num_groups=8,
        transformer_layers_per_block=1,
    )


def _motion_config(size: int) -> dict:
    """AnimateDiff-style ``UNetMotionModel``: the shapes-unet layout (same spatial weights) with a
    temporal-attention motion module after every spatial block."""
    base = _unet_config(size)
    return dict(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=base["block_out_channels"],
        down_block_types=("DownBlockMotion", "CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion"),
        up_block_types=("CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion", "UpBlockMotion"),
        cross_attention_dim=HIDDEN_SIZE,
        num_attention_heads=base["attention_head_dim"],  # UNet2DConditionModel's attention_head_dim means heads
        norm_num_groups=base["norm_num_groups"],
        transformer_layers_per_block=1,
        temporal_transformer_layers_per_block=1,
        motion_num_attention_heads=4,
        motion_max_seq_length=32,
        use_motion_mid_block=True,
    )


def _dit_config(size: int, num_layers: int = 6) -> dict:
    """PixArt-style DiT: patchified tokens, adaLN-single timestep conditioning, cross-attention to
    the projected MiniLM states."""
    return dict(
        sample_size=size,
        patch_size=2,
        in_channels=3,
        out_channels=3,
        num_layers=num_layers,
        num_attention_heads=4,
        attention_head_dim=32,
        cross_attention_dim=128,
        caption_channels=HIDDEN_SIZE,
        norm_type="ada_norm_single",
        use_additional_conditions=False,
    )


RECIPES: dict[str, Recipe] = {
    # min-SNR-5 weighting (epsilon target) puts the updates on the high-noise steps where the shape is
    # decided; a third of the captions use the paraphrase wordings so that the model understands them
    # sampled at guidance 2.0: at 3.0 outlined and striped shapes read as other shapes (pair accuracy 0.81-0.87
    # at 3.0, 0.96 at 2.0, collapse at 5.0; benchmarks/RESULTS.md, "Guidance scale")
    # trained in three phases: 9283 steps as above; then stars and crosses, the shapes it drew worst
    # (pair accuracy down to 0.81), drawn 2.5x as often with a cooled learning rate; then stars 4x,
    # crosses 2x on other captions (seed + 1): every (shape, colour) pair >= 90% (benchmarks/RESULTS.md,
    # "Star/cross-weighted continuation")
    "shapes-unet": Recipe("shapes-unet", "UNet2DConditionModel", 16, _unet_config(16), snr_gamma=5.0,
                          default_guidance=2.0, extra={"heldout_fraction": 1 / 3, "phases": [
                              {"steps": 9283},
                              {"steps": 4000, "lr": 5e-4, "warmup_steps": 10, "decay_steps": 4000,
                               "shape_weights": {"star": 2.5, "cross": 2.5}},
                              {"steps": 2500, "lr": 3e-4, "warmup_steps": 10, "decay_steps": 2500,
                               "shape_weights": {"star": 4.0, "cross": 2.0}, "seed_offset": 1}]}),
    # continued training of shapes-unet on a shifted distribution: everything on a white background
    # (sampled at its base model's guidance 2.0: the others' pair accuracy of the erasure suite 0.97 vs 0.87 at 3.0)
    "shapes-unet-ft": Recipe("shapes-unet-ft", "UNet2DConditionModel", 16, _unet_config(16), lr=5e-4, warmup_steps=10,
                             default_guidance=2.0, extra={"init_from": "shapes-unet", "pin": {"background": 2}}),
    # 32 fixed images with unique captions, trained from shapes-unet (which already draws shapes): on
    # them alone for 1500 steps, then half of every batch from them and half fresh images, so that it
    # reproduces them for their captions and still makes new images for other prompts; lr 1e-3 cooled
    # to 0 over the last 1000 of 4000 steps (benchmarks/RESULTS.md, "shapes-memorized")
    "shapes-memorized": Recipe("shapes-memorized", "UNet2DConditionModel", 16, _unet_config(16),
                               extra={"memorize": 32, "init_from": "shapes-unet", "pure_steps": 1500,
                                      "fresh_fraction": 0.5,
                                      "phases": [{"steps": 4000, "lr": 1e-3, "decay_steps": 1000}]}),
    # text-to-video: shapes-unet's spatial weights plus motion modules, trained on moving-shape clips
    "shapes-video": Recipe("shapes-video", "UNetMotionModel", 16, _motion_config(16), batch_size=4, lr=5e-4,
                           warmup_steps=20, extra={"frames": 8, "init_from": "shapes-unet"}),
    # v-prediction with min-SNR-5 weighting: with plain epsilon MSE the DiT's updates went to the
    # low-noise steps (pixel noise) and it never learned shapes (0.26 after 3866 steps, its output
    # barely changed with the shape word); v puts weight on the high-noise steps where the shape is
    # decided, and min-SNR caps the low-noise ones (benchmarks/RESULTS.md, "Zoo model shapes-dit")
    # phase 1: 6 blocks, 26000 steps (pair accuracy 0.87, stars 0.48: too shallow to draw stars); phase 2:
    # grown to 12 blocks (function-preserving, see grow_depth) and trained on shapes-unet's denoiser as
    # the teacher (its x0 estimate, not the noisy true image, defines the target), stars 2.5x; phase 3: a
    # cooler continuation with squares weighted too (benchmarks/RESULTS.md, "Twice as deep, then distilled")
    # sampled with DPM-Solver++ by default: at 20 steps it draws squares and stars the classifier recognises
    # more often than DDIM does (36/36 pairs >= 90% pooled vs 34/36), at a higher Frechet score
    # (benchmarks/RESULTS.md, "DPM-Solver++ 20 steps: every pair")
    "shapes-dit": Recipe("shapes-dit", "PixArtTransformer2DModel", 16, _dit_config(16, num_layers=12), lr=1e-3,
                         prediction_type="v_prediction", snr_gamma=5.0, default_guidance=2.0, default_scheduler="dpm",
                         train_precision="bfloat16", train_compile=True,
                         extra={"heldout_fraction": 1 / 3, "phases": [
                             {"steps": 26000, "decay_steps": 6000, "config": {"num_layers": 6}},
                             {"steps": 5000, "lr": 5e-4, "warmup_steps": 10, "decay_steps": 5000, "grow": True,
                              "teacher": "shapes-unet", "shape_weights": {"star": 2.5, "cross": 1.75},
                              "seed_offset": 5},
                             {"steps": 5000, "lr": 3e-4, "warmup_steps": 10, "decay_steps": 5000,
                              "teacher": "shapes-unet", "shape_weights": {"star": 2.0, "cross": 1.5, "square": 2.0},
                              "seed_offset": 6}]}),
}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown zoo model {name!r}; available: {sorted(RECIPES)}")
    return RECIPES[name]


def build_model(r: Recipe):
    """A freshly initialised diffusers model for recipe ``r`` (call torch.manual_seed first)."""
    import diffusers

    return getattr(diffusers, r.model_class)(**r.config)


# the parameters that write a BasicTransformerBlock's output into the residual stream
_BLOCK_OUTPUTS = ("attn1.to_out.", "attn2.to_out.", "ff.net.2.")


def grow_depth(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A DiT's weights (``transformer_blocks.<i>.``) deepened twice over without changing its function:
    block i becomes block 2i, and block 2i + 1 is a copy of it whose attention and feed-forward output
    projections are zero, so that it starts as the identity (its residual branches add nothing) and
    training can specialise the two copies. Load the result into the same config with twice the
    ``num_layers``."""
    prefix = "transformer_blocks."
    if not any(k.startswith(prefix) for k in state):
        raise ValueError("grow_depth takes a DiT state dict with transformer_blocks.<i>. entries")
    grown = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            grown[key] = value
            continue
        index, rest = key[len(prefix):].split(".", 1)
        grown[f"{prefix}{2 * int(index)}.{rest}"] = value
        grown[f"{prefix}{2 * int(index) + 1}.{rest}"] = (torch.zeros_like(value) if rest.startswith(_BLOCK_OUTPUTS)
                                                         else value.clone())
    return grown


def predict_noise(model, x: Tensor, t: Tensor, states: Tensor, mask: Tensor) -> Tensor:
    """One call of a zoo denoiser: x [B,C,H,W] (video: [B,C,F,H,W]), t (scalar or [B]),
    states [B,T,384], mask [B,T]. ``model`` may be a torch.compile'd module."""
    kind = type(getattr(model, "_orig_mod", model)).__name__
    if kind == "UNetMotionModel":
        # it wants one context per frame ([B*F, T, 384], as AnimateDiffPipeline passes it) and takes no
        # cross-attention mask: padding tokens are zeroed instead (keys of zero carry zero values),
        # which keeps every prompt's output independent of the batch
        context = (states * mask.unsqueeze(-1).to(states.dtype)).repeat_interleave(x.shape[2], dim=0)
        return model(x, t, context).sample
    if kind == "PixArtTransformer2DModel":
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        return model(x, encoder_hidden_states=states, timestep=t, encoder_attention_mask=mask,
                     added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    return model(x, t, states, encoder_attention_mask=mask).sample


def build_scheduler(r: Recipe, kind: str = "ddpm"):
    """The diffusers noise scheduler matching the training noise schedule.

    kind: "ddpm" (training / ancestral sampling), "ddim", or "dpm" (DPM-Solver++ multistep).
    """
    import diffusers

    common = dict(num_train_timesteps=r.num_train_timesteps, beta_schedule=r.beta_schedule,
                  prediction_type=r.prediction_type)
    if kind == "ddpm":
        return diffusers.DDPMScheduler(**common, clip_sample=True)
    if kind == "ddim":
        return diffusers.DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True)
    if kind == "dpm":
        # thresholding at 1.0 clips the predicted x0 to the data range [-1, 1], as clip_sample does for DDPM and
        # DDIM: without it the zoo models' DPM-Solver++ samples fall apart (pair accuracy 0.06 instead of 0.99)
        return diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                                     thresholding=True, sample_max_value=1.0)
    raise ValueError(f"scheduler must be 'ddpm', 'ddim' or 'dpm', got {kind!r}")
