"""Denoisers whose answers are known, for the memorization and mitigation tests."""

from types import SimpleNamespace

import torch
from diffusers import DDIMScheduler

from osmos.replication.denoisers import Denoiser

SIDE = 4
PIXELS = SIDE * SIDE


class GaussianWorld(Denoiser):
    """The exact (Bayes-optimal) noise predictor of a world where each prompt's images are
    N(mu, s^2 I) on 1 x 4 x 4 latents and the empty prompt's are N(0, I).

    A prompt's states are [1, 17] = (mu, s). A memorized prompt is s ~ 0 (one training image mu):
    its conditional noise departs from the unconditional one much more than a normal prompt's
    (s near 1, mu small). Differentiable in the states.
    """

    def __init__(self, guidance: float = 3.0):
        sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
        super().__init__(SimpleNamespace(scheduler=sched, unet=torch.nn.Linear(1, 1)))
        self.latent_shape = (1, SIDE, SIDE)
        self.default_guidance = guidance

    @staticmethod
    def prompt(mu: torch.Tensor, s: float) -> torch.Tensor:
        return torch.cat([mu.flatten(), torch.tensor([float(s)])]).view(1, PIXELS + 1)

    def empty(self, n: int):
        return self.prompt(torch.zeros(PIXELS), 1.0).expand(n, 1, PIXELS + 1), None

    def eps(self, x, t, states, mask):
        a = self.scheduler.alphas_cumprod[int(t)].to(x.dtype)
        mu = states[:, 0, :PIXELS].reshape(-1, 1, SIDE, SIDE)
        s2 = states[:, 0, PIXELS].reshape(-1, 1, 1, 1) ** 2
        return (1 - a).sqrt() / (a * s2 + 1 - a) * (x - a.sqrt() * mu)


def memorized_and_normal(n: int = 6, seed: int = 0):
    """(memorized prompt states [n, 1, 17], normal prompt states [n, 1, 17])."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, PIXELS, generator=g) * 2 - 1
    memorized = torch.stack([GaussianWorld.prompt(images[i], 0.02) for i in range(n)])
    normal = torch.stack([GaussianWorld.prompt(0.1 * torch.randn(PIXELS, generator=g), 0.9) for _ in range(n)])
    return memorized, normal


def tiny_stable_diffusion(folder):
    """A real diffusers StableDiffusionPipeline with tiny random components (CLIP tokenizer on a
    20-word vocabulary written to `folder`, 1-layer CLIP text model, 4 x 8 x 8 latents)."""
    import json

    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in ("a", "cat", "dog", "red", "on", "the", "mat"):
        vocab[w + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=8, bos_token_id=0,
                                        eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=8, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8, sample_size=8)
    sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
