"""apply_spm's fused forward for plain Linear layers (one adapted_linear call instead of base layer
then hook). It runs on a GPU only; here the device checks are patched so the CPU takes it, where
adapted_linear is bitwise base layer + adapter_inject_, so the outputs must be equal."""

import sys

import pytest
import torch
from torch import nn

from osmos.erase.spm import SPM, apply_spm
from spm_tiny import randomized

inject = sys.modules["osmos.erase.spm.inject"]


@pytest.fixture
def block():
    from diffusers import Transformer2DModel

    torch.manual_seed(0)
    return Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=16, norm_num_groups=8,
                              cross_attention_dim=32, use_linear_projection=True).eval()


def test_fused_forward_equals_hook_path_and_is_removed(block, monkeypatch):
    spms = [randomized(SPM.for_unet(block, "a"), 1), randomized(SPM.for_unet(block, "b"), 2)]
    x, text = torch.randn(2, 16, 4, 4), torch.randn(2, 3, 32)
    gamma = torch.tensor([[1.0, 0.2], [0.0, 0.7]])
    run = lambda: block(x, encoder_hidden_states=text).sample  # noqa: E731
    with torch.no_grad():
        base = run()
        with apply_spm(block, spms, gamma=gamma):
            hooked = run()  # CPU: base layers, then the hooks
        calls = []
        fused_op = inject.adapted_linear
        monkeypatch.setattr(inject, "adapted_linear", lambda *a: calls.append(a[1].shape) or fused_op(*a))
        monkeypatch.setattr(inject, "eager_cuda", lambda t: True)
        monkeypatch.setattr(inject, "fused_on_gpu", lambda t: True)
        handle = apply_spm(block, spms, gamma=gamma)
        linears = [m for m in block.modules() if type(m) is nn.Linear and "forward" in m.__dict__]
        assert len(linears) == len(handle._hooks) == 12  # every adapted layer is a Linear here
        fused = run()
        assert len(calls) == 12 and torch.equal(fused, hooked)
        with handle.disabled():
            assert torch.equal(run(), base)
        handle.remove()
        assert not any("forward" in m.__dict__ for m in block.modules())
        assert torch.equal(run(), base) and len(calls) == 12
    with apply_spm(block, spms, gamma=gamma):  # grad mode on: the hooks, as in training
        calls.clear()
        assert torch.equal(run().detach(), hooked) and not calls


def test_forward_wrapped_by_someone_else_passes_through_after_remove(block, monkeypatch):
    spm = randomized(SPM.for_unet(block, "a"), 1)
    monkeypatch.setattr(inject, "eager_cuda", lambda t: True)
    monkeypatch.setattr(inject, "fused_on_gpu", lambda t: True)
    layer = block.transformer_blocks[0].attn1.to_q
    x = torch.randn(2, 5, layer.in_features)
    with torch.no_grad():
        base = layer(x)
        handle = apply_spm(block, [spm])
        ours = layer.forward
        layer.forward = lambda t: ours(t)  # e.g. an offloading hook installed after apply_spm
        adapted = layer(x)
        handle.remove()
        assert not torch.equal(adapted, base)
        assert torch.equal(layer(x), base)


@pytest.mark.gpu
def test_cuda_fused_forward_matches_hook_path(block, monkeypatch):
    """On a GPU, float16 inference: the fused Linear forwards (Triton) against base layer + hook."""
    from osmos import _native

    if not _native.triton_status()[0]:
        pytest.skip(_native.triton_status()[1])
    spms = [randomized(SPM.for_unet(block, "a"), 1), randomized(SPM.for_unet(block, "b"), 2)]
    block = block.cuda().half()
    x, text = torch.randn(2, 16, 8, 8, device="cuda").half(), torch.randn(2, 3, 32, device="cuda").half()
    calls = []
    fused_op = inject.adapted_linear
    monkeypatch.setattr(inject, "adapted_linear", lambda *a: calls.append(1) or fused_op(*a))
    with torch.no_grad(), apply_spm(block, spms, gamma=torch.tensor([[1.0, 0.2], [0.0, 0.7]])):
        fused = block(x, encoder_hidden_states=text).sample
        assert len(calls) == 12
        monkeypatch.setenv("OSMOS_GPU_BACKEND", "torch")
        hooked = block(x, encoder_hidden_states=text).sample
        assert len(calls) == 12
    torch.testing.assert_close(fused, hooked, rtol=2e-2, atol=2e-2)
