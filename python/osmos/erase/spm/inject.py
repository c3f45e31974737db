"""Running a UNet with SPM adapters: forward hooks that add the adapters through the fused op.

    with apply_spm(unet, [spm_a, spm_b]) as spms:
        spms.set_gamma(torch.tensor([[1.0, 0.0], [0.3, 1.0]]))   # per sample, per adapter
        unet(latents, t, encoder_hidden_states=text).sample

Every adapted layer's output becomes  base(x) + sum_i gamma[b, i] s_i u_i (d_i^T x)  (additive
composition; each sample b of the batch with its own gammas). The hooks never write to the
base weights, so removing or swapping SPMs restores the UNet exactly.

Plain nn.Linear layers in eager inference on a GPU (no grad mode, Triton kernel in use, see
osmos.ops.adapted_linear.fused_on_gpu) skip the base matmul and the hook: a forward installed
on the module while attached computes base and adapters in one kernel (osmos.ops.adapted_linear).
Everywhere else (CPU, training, torch.compile, 1x1 convs) the base layer runs and the hook adds
the adapters.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from osmos.erase.spm.adapter import SPM
from osmos.erase.spm.targets import adapted_layers
from osmos.ops import adapted_linear, adapter_inject, adapter_inject_
from osmos.ops._common import eager_cuda
from osmos.ops.adapted_linear import fused_on_gpu


class SPMHandle:
    """SPMs attached to a UNet by forward hooks. Use as a context manager, or call remove().

    gamma: None (every adapter at strength 1), a [C] vector for the whole batch, or [B, C] per
    sample. With a FacilitatedTransport, set_prompts(prompts) computes gamma from the text.
    """

    def __init__(self, unet: nn.Module, spms: Sequence[SPM], transport=None):
        if not spms:
            raise ValueError("spms must name at least one SPM")
        for spm in spms:
            spm.check_compatible(unet)
        self.unet, self.spms, self.transport = unet, list(spms), transport
        self.enabled = True
        self._gamma: Tensor | None = None
        self._hooks = []
        self._attached = True
        self._forwards: list[tuple[nn.Module, object]] = []  # (module, installed fused forward)
        for name, spec in adapted_layers(unet).items():
            module = unet.get_submodule(name)
            fusable = type(module) is nn.Linear  # its forward is exactly F.linear (not a subclass's)
            self._hooks.append(module.register_forward_hook(self._make_hook(name, spec.kind == "conv1x1", fusable)))
            if fusable:
                self._forwards.append((module, self._install_forward(module, name)))

    # ---- gammas -------------------------------------------------------------------------
    def set_gamma(self, gamma: Tensor | Sequence[float] | None) -> None:
        """Strengths for the next forward passes: None, [C] (whole batch) or [B, C]."""
        if gamma is not None:
            gamma = torch.as_tensor(gamma, dtype=torch.float32)
            if gamma.dim() not in (1, 2) or gamma.shape[-1] != len(self.spms):
                raise ValueError(f"gamma must be [C] or [batch, C] with C = {len(self.spms)} SPMs, got {tuple(gamma.shape)}")
        self._gamma = gamma

    def set_prompts(self, prompts: Sequence[str], classifier_free_guidance: bool = False) -> Tensor:
        """Facilitated Transport: gamma [B, C] from the prompts' text (cached per prompt). With
        classifier_free_guidance, the batch is diffusers' [unconditional; conditional] and both
        halves get the prompt's gammas. Returns the gamma set."""
        if self.transport is None:
            raise ValueError("set_prompts needs apply_spm(..., transport=FacilitatedTransport(...))")
        gamma = self.transport.gammas(prompts)
        if classifier_free_guidance:
            gamma = torch.cat([gamma, gamma])
        self.set_gamma(gamma)
        return gamma

    @contextmanager
    def gamma(self, gamma):
        """Temporarily use `gamma` (see set_gamma)."""
        previous = self._gamma
        self.set_gamma(gamma)
        try:
            yield self
        finally:
            self._gamma = previous

    @contextmanager
    def disabled(self):
        """Run the base UNet (the adapters are skipped, not zeroed)."""
        previous, self.enabled = self.enabled, False
        try:
            yield self
        finally:
            self.enabled = previous

    def _batch_gamma(self, batch: int, device: torch.device) -> Tensor:
        g = self._gamma
        if g is None:
            return torch.ones(batch, len(self.spms), device=device)
        if g.dim() == 1:
            return g.to(device).expand(batch, -1).contiguous()
        if g.shape[0] != batch:
            raise ValueError(f"gamma has {g.shape[0]} rows but the UNet runs a batch of {batch} "
                             "(for classifier-free guidance use set_prompts(..., classifier_free_guidance=True))")
        return g.to(device)

    # ---- the hook and the fused forward ------------------------------------------------
    def _adapters(self, name: str, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """(D [C, in], U [C, out] with the scales folded in) of layer `name`, in dtype on device."""
        pairs = [(spm, spm.index[name]) for spm in self.spms]
        down = torch.stack([spm.down[i] for spm, i in pairs]).to(device, dtype)
        up = torch.stack([spm.up[i] * spm.scale for spm, i in pairs]).to(device, dtype)
        return down, up

    def _fuses(self, module: nn.Module, x: Tensor) -> bool:
        """Whether the plain Linear `module` runs its adapted forward as one kernel on input x.
        Decided alike in the installed forward and in the hook (which then has nothing to add).
        Never after remove() (a forward someone wrapped around ours stays there and passes through),
        nor under torch.compile (the traced graph keeps base layer + adapter_inject)."""
        return (self._attached and self.enabled and eager_cuda(x) and not torch.is_grad_enabled()
                and x.dtype == module.weight.dtype and module.weight.device == x.device and x.dim() >= 2
                and not torch.is_autocast_enabled(x.device.type) and fused_on_gpu(x))

    def _install_forward(self, module: nn.Linear, name: str):
        base_forward = module.forward  # the class's, or a wrapper someone installed before

        def forward(x, *args, **kwargs):
            if not self._fuses(module, x):
                return base_forward(x, *args, **kwargs)
            down, up = self._adapters(name, x.dtype, x.device)
            return adapted_linear(x.contiguous(), module.weight, module.bias, down, up,
                                  self._batch_gamma(x.shape[0], x.device))

        module.forward = forward
        return forward

    def _make_hook(self, name: str, conv: bool, fusable: bool):
        def hook(module, args, output):
            if not self.enabled:
                return None
            x = args[0]
            if fusable and self._fuses(module, x):  # the installed forward already added the adapters
                return None
            down, up = self._adapters(name, output.dtype, output.device)
            gamma = self._batch_gamma(x.shape[0], output.device)
            if conv:  # NCHW -> token-major [B, HW, C] for the op, and back
                b, _, h, w = output.shape
                xt = x.flatten(2).transpose(1, 2).contiguous()
                yt = output.flatten(2).transpose(1, 2).contiguous()
                out = adapter_inject(yt, xt, down, up, gamma)
                return out.transpose(1, 2).reshape(b, -1, h, w).contiguous()
            x = x.contiguous()
            if torch.is_grad_enabled() and (output.requires_grad or down.requires_grad or up.requires_grad):
                return adapter_inject(output.contiguous(), x, down, up, gamma)
            return adapter_inject_(output.contiguous(), x, down, up, gamma)

        return hook

    def remove(self) -> None:
        """Detach every hook and installed forward; the UNet is its base self again."""
        self._attached = False
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for module, forward in self._forwards:
            if module.__dict__.get("forward") is forward:
                del module.forward
        self._forwards.clear()

    def __enter__(self) -> "SPMHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply_spm(unet: nn.Module, spms: Sequence[SPM], transport=None, gamma=None) -> SPMHandle:
    """Attach SPMs to `unet` (additive composition, per-sample gammas); returns the handle.

    Args:
        unet: a diffusers UNet2DConditionModel (or any module with Transformer2DModel blocks) of
            the architecture the SPMs were made for (ArchitectureMismatch otherwise).
        spms: the adapters, in the order of gamma's columns.
        transport: optional FacilitatedTransport over the SPMs' concepts (handle.set_prompts).
        gamma: initial strengths (see SPMHandle.set_gamma).
    """
    handle = SPMHandle(unet, spms, transport)
    handle.set_gamma(gamma)
    return handle
