"""ESD-style full fine-tune baseline (Gandikota et al., "Erasing Concepts from Diffusion Models").

ESD-x fine-tunes every parameter of the UNet's cross-attention modules (`attn2.to_q/k/v/to_out`)
with the same loss as SPM's erasure term, the frozen original model giving the target:

    L = || eps_theta'(x_t, c_tar, t) - [eps_theta(x_t, c_sur, t) - eta (eps_theta(x_t, c_tar, t) - eps_theta(x_t, c_sur, t))] ||^2

x_t comes from noise partially denoised by the model being tuned on the target prompt. The
frozen predictions run through torch.func.functional_call with the original cross-attention
tensors, so only those are held twice (not a second UNet). ESD-u ("selfattn-free", every
non-cross-attention parameter) is `params="unet_noxattn"`.

    edit = train_esd(pipe, "circle", steps=150, lr=1e-4)   # pipe as train_spm takes it
    ...                                                    # the UNet now has the concept erased
    edit.undo(pipe.unet)                                   # the original weights back, bitwise
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from osmos.erase.spm.training import BatchLayout, _cat_added, _encode, _unet, erasure_loss, partially_denoised

PARAM_SETS = ("xattn", "unet_noxattn")


def esd_parameters(unet: nn.Module, params: str = "xattn") -> dict[str, nn.Parameter]:
    """The parameters ESD tunes, by name: "xattn" = every `attn2.` parameter (ESD-x), or
    "unet_noxattn" = every other parameter (ESD-u). ValueError if the selection is empty."""
    if params not in PARAM_SETS:
        raise ValueError(f"params must be one of {PARAM_SETS}, got {params!r}")
    xattn = lambda name: ".attn2." in f".{name}"  # noqa: E731
    chosen = {n: p for n, p in unet.named_parameters() if xattn(n) == (params == "xattn")}
    if not chosen:
        raise ValueError(f"{type(unet).__name__} has no {params} parameters (no attn2 cross-attention modules)")
    return chosen


@dataclass
class ESDEdit:
    """A fine-tune in place: the original tensors of the tuned parameters, to undo it."""

    concept: str
    params: str
    original: dict[str, Tensor]
    losses: list[float] = field(default_factory=list)

    def undo(self, unet: nn.Module) -> None:
        """Restore the tuned parameters' original values (bitwise)."""
        named = dict(unet.named_parameters())
        with torch.no_grad():
            for name, value in self.original.items():
                named[name].copy_(value)

    def delta(self, unet: nn.Module) -> dict[str, Tensor]:
        """Tuned minus original, per parameter (for saving the edit compactly)."""
        named = dict(unet.named_parameters())
        return {name: (named[name].detach() - value) for name, value in self.original.items()}


def train_esd(pipe, concept: str, surrogate: str = "", steps: int = 200, lr: float = 1e-4, eta: float = 1.0,
              params: str = "xattn", sampling_steps: int = 30, seed: int = 0,
              prompts: Sequence[tuple[str, str]] | None = None, targets_per_step: int = 1,
              progress: bool = True, callback=None) -> ESDEdit:
    """Fine-tune pipe.unet in place so that `concept` is erased (mapped to `surrogate`).

    pipe: as for osmos.erase.spm.train_spm (unet, scheduler, encode_prompt, latent_shape).
    prompts / targets_per_step: (target, surrogate) pairs drawn per step, as in train_spm
    (default the one pair (concept, surrogate)). Adam on the chosen parameters, seeded.
    callback(step, {"loss"}) after each step. Returns the ESDEdit (undo() restores the model).
    """
    unet = pipe.unet
    tuned = esd_parameters(unet, params)
    original = {name: p.detach().clone() for name, p in tuned.items()}
    pairs = [(str(a), str(b)) for a, b in prompts] if prompts else [(concept, surrogate)]
    k = int(targets_per_step)
    if k < 1:
        raise ValueError(f"targets_per_step must be >= 1, got {targets_per_step}")
    generator = torch.Generator().manual_seed(seed)
    unet.requires_grad_(False)
    for p in tuned.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(tuned.values(), lr=lr)
    tar_all, tar_added_all = _encode(pipe, [a for a, _ in pairs])
    sur_all, sur_added_all = _encode(pipe, [b for _, b in pairs])
    rows = lambda added, idx: {key: v[idx] for key, v in added.items()}  # noqa: E731

    class _Frozen(nn.Module):  # pipe.unet with the original tuned tensors, for the targets
        def forward(self, *args, **kwargs):
            return torch.func.functional_call(unet, original, args, kwargs, strict=False)

    frozen_pipe = _PipeView(pipe, _Frozen())
    edit = ESDEdit(concept, params, original)
    try:
        bar = tqdm(range(steps), disable=not progress, desc=f"ESD-{'x' if params == 'xattn' else 'u'} {concept!r}")
        for step in bar:
            pick = torch.randint(len(pairs), (k,), generator=generator) if len(pairs) > 1 else torch.zeros(k, dtype=torch.long)
            tar_states, tar_added = tar_all[pick], rows(tar_added_all, pick)
            x_t, t = partially_denoised(pipe, tar_states, tar_added, sampling_steps, generator)
            layout = BatchLayout([("target", k), ("surrogate", k)])
            states = {"target": tar_states, "surrogate": sur_all[pick]}
            added = {"target": tar_added, "surrogate": rows(sur_added_all, pick)}
            with torch.no_grad():
                base = layout.split(_unet(frozen_pipe, x_t.repeat(2, 1, 1, 1), t, layout.cat(states),
                                          _cat_added(layout, added) if tar_added else {}))
            loss = erasure_loss(_unet(pipe, x_t, t, tar_states, tar_added), base["target"], base["surrogate"], eta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            edit.losses.append(loss.item())
            bar.set_postfix(loss=loss.item())
            if callback is not None:
                callback(step, {"loss": loss.item()})
    finally:
        unet.requires_grad_(False)
    return edit


class _PipeView:
    """`pipe` with another unet (the rest read through)."""

    def __init__(self, pipe, unet):
        self._pipe, self.unet = pipe, unet

    def __getattr__(self, name):
        return getattr(self._pipe, name)
