"""SPM structure, file format, transfer, per-sample additive composition and base-weight safety
on tiny UNets shaped like SD 1.5 / SD 2.1 / SDXL."""

import json

import pytest
import torch

from osmos.erase.spm import SPM, ArchitectureMismatch, adapted_layers, apply_spm
from osmos.erase.spm.adapter import METADATA_KEY
from spm_tiny import randomized, run_unet, tiny_unet, unet_inputs

KINDS = ["sd15", "sd21", "sdxl"]


def test_sd15_real_shapes_have_the_papers_parameter_count():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
    layers = adapted_layers(unet)
    params = sum(s.in_features + s.out_features for s in layers.values())
    assert len(layers) == 16 * 12  # 16 Transformer2D blocks x 12 layers
    assert {s.kind for n, s in layers.items() if n.endswith("proj_in")} == {"conv1x1"}
    assert 400_000 < params < 450_000  # the paper: about 424k (1.7 MB fp32)


@pytest.mark.parametrize("kind", KINDS)
def test_adapted_layers_cover_every_target(kind):
    unet = tiny_unet(kind)
    layers = adapted_layers(unet)
    suffixes = {n.split("transformer_blocks.")[-1].split(".", 1)[-1] if "transformer_blocks" in n else n.rsplit(".", 1)[-1]
                for n in layers}
    assert suffixes == {"proj_in", "proj_out", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
                        "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"}
    for name, spec in layers.items():
        module = unet.get_submodule(name)
        assert spec.in_features == (module.in_features if spec.kind == "linear" else module.in_channels)
    expect_conv = kind == "sd15"
    assert any(s.kind == "conv1x1" for s in layers.values()) == expect_conv


@pytest.mark.parametrize("kind", KINDS)
def test_new_spm_is_identity_and_matches_manual_formula(kind):
    unet = tiny_unet(kind)
    inputs = unet_inputs(kind)
    base = run_unet(unet, inputs)
    spm = SPM.for_unet(unet, "cat")
    with torch.no_grad(), apply_spm(unet, [spm]):
        assert torch.equal(run_unet(unet, inputs), base)  # u = 0 at init
    randomized(spm, 1)
    # the hooked output of one layer equals W x + s u (d^T x) computed by hand
    name = spm.layer_names[1]
    module = unet.get_submodule(name)
    x = torch.randn(2, 7, module.in_features)
    d, u = spm.vectors(name)
    with torch.no_grad(), apply_spm(unet, [spm]):
        torch.testing.assert_close(module(x), torch.nn.functional.linear(x, module.weight, module.bias) + (x @ d)[..., None] * u)


@pytest.mark.parametrize("kind", KINDS)
def test_composition_is_additive_and_per_sample(kind):
    unet = tiny_unet(kind)
    inputs = unet_inputs(kind, batch=3)
    a, b = randomized(SPM.for_unet(unet, "cat"), 1), randomized(SPM.for_unet(unet, "dog"), 2)
    name = a.layer_names[0]
    module = unet.get_submodule(name)
    conv = a.layers[name].kind == "conv1x1"
    x = torch.randn(3, module.weight.shape[1], 4, 4) if conv else torch.randn(3, 5, module.weight.shape[1])
    with torch.no_grad():
        base = module(x)
        gamma = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.3, 1.0]])
        with apply_spm(unet, [a, b], gamma=gamma):
            both = module(x)
        deltas = []
        for spm in (a, b):
            with apply_spm(unet, [spm]):
                deltas.append(module(x) - base)
    expected = base + gamma[:, 0].view(3, *[1] * (x.dim() - 1)) * deltas[0] + gamma[:, 1].view(3, *[1] * (x.dim() - 1)) * deltas[1]
    torch.testing.assert_close(both, expected, rtol=1e-5, atol=1e-5)
    # whole UNet: each sample in a batch equals that sample run alone with its own gamma
    with torch.no_grad(), apply_spm(unet, [a, b], gamma=gamma) as h:
        full = run_unet(unet, inputs)
        latents, t, text, added = inputs
        h.set_gamma(gamma[2:3])
        alone = run_unet(unet, (latents[2:3], t, text[2:3], {k: v[2:3] for k, v in added.items()}))
    torch.testing.assert_close(full[2:3], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_base_weights_bitwise_untouched_after_apply_swap_remove(kind):
    unet = tiny_unet(kind)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    inputs = unet_inputs(kind)
    with torch.no_grad():
        base = run_unet(unet, inputs)
        a, b = randomized(SPM.for_unet(unet, "a"), 1), randomized(SPM.for_unet(unet, "b"), 2)
        h = apply_spm(unet, [a])
        out_a = run_unet(unet, inputs)
        h.remove()
        with apply_spm(unet, [b, a], gamma=[0.5, 1.0]):
            run_unet(unet, inputs)
        after = run_unet(unet, inputs)
    assert not torch.equal(out_a, base)
    assert torch.equal(after, base)
    for k, v in unet.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(m._forward_hooks for m in unet.modules())


def test_disabled_context_and_gamma_shapes():
    unet = tiny_unet("sd21")
    inputs = unet_inputs("sd21", batch=2)
    spm = randomized(SPM.for_unet(unet, "a"), 3)
    with torch.no_grad(), apply_spm(unet, [spm]) as h:
        with h.disabled():
            base = run_unet(unet, inputs)
        with h.gamma([0.0]):
            assert torch.equal(run_unet(unet, inputs), base)
        with h.gamma(torch.tensor([[1.0], [1.0], [1.0]])), pytest.raises(ValueError, match="classifier_free_guidance"):
            run_unet(unet, inputs)
        with pytest.raises(ValueError, match="gamma must be"):
            h.set_gamma([1.0, 2.0])
    unet2 = tiny_unet("sd21")
    assert torch.equal(run_unet(unet2, inputs), base)


@pytest.mark.parametrize("kind", KINDS)
def test_file_round_trip_and_transfer_to_finetuned_variant(kind, tmp_path):
    unet = tiny_unet(kind)
    spm = randomized(SPM.for_unet(unet, "van gogh", surrogate="art", scale=0.7, settings={"lr": 1e-4}), 4)
    path = tmp_path / "a.safetensors"
    spm.save(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    assert meta["concept"] == "van gogh" and meta["surrogate"] == "art" and meta["settings"] == {"lr": 1e-4}
    assert meta["architecture_hash"] == spm.architecture_hash
    finetuned = tiny_unet(kind, seed=5)  # same architecture, other weights
    loaded = SPM.load(path, unet=finetuned)
    assert loaded.scale == 0.7
    for p, q in zip(spm.parameters(), loaded.parameters()):
        assert torch.equal(p, q)
    inputs = unet_inputs(kind)
    with torch.no_grad():
        with apply_spm(unet, [spm]):
            x1 = run_unet(unet, inputs)
        with apply_spm(unet, [loaded]):
            x2 = run_unet(unet, inputs)
        with apply_spm(finetuned, [loaded]):
            run_unet(finetuned, inputs)
    assert torch.equal(x1, x2)



def test_wordings_round_trip_and_files_without_them_load(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    unet = tiny_unet("sd15")
    spm = randomized(SPM.for_unet(unet, "circle", wordings=["circle", "disc", "round shape", "disc"]), 2)
    assert spm.wordings == ["circle", "disc", "round shape"]  # duplicates dropped, order kept
    assert SPM.for_unet(unet, "cat").wordings == ["cat"]
    spm.save(tmp_path / "new.safetensors")
    assert SPM.load(tmp_path / "new.safetensors", unet=unet).wordings == ["circle", "disc", "round shape"]
    # a file written before wordings were stored: same tensors, metadata without "wordings"
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    del meta["wordings"]
    save_file(spm.state_tensors(), str(tmp_path / "old.safetensors"), metadata={METADATA_KEY: json.dumps(meta)})
    old = SPM.load(tmp_path / "old.safetensors", unet=unet)
    assert old.wordings == ["circle"]
    for p, q in zip(spm.parameters(), old.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(TypeError, match="sequence of strings"):
        SPM.for_unet(unet, "circle", wordings="circle")

def test_architecture_mismatch_is_a_clear_error(tmp_path):
    spm = SPM.for_unet(tiny_unet("sd15"), "cat")
    other = tiny_unet("sd21")
    with pytest.raises(ArchitectureMismatch, match="missing in this UNet|shape differs") as err:
        apply_spm(other, [spm])
    assert "cat" in str(err.value)
    spm.save(tmp_path / "s.safetensors")
    with pytest.raises(ArchitectureMismatch):
        SPM.load(tmp_path / "s.safetensors", unet=other)


def test_bad_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not an osmos SPM file"):
        SPM.load(tmp_path / "plain.safetensors")
    spm = SPM.for_unet(tiny_unet("sd15"), "cat")
    tensors = spm.state_tensors()
    tensors.pop(next(iter(tensors)))
    with pytest.raises(ValueError, match="lacks"):
        SPM.from_tensors(tensors, spm.metadata())


def test_low_precision_unet():
    unet = tiny_unet("sd21").to(torch.bfloat16)
    spm = randomized(SPM.for_unet(unet, "a"), 1)
    latents, t, text, _ = unet_inputs("sd21")
    with torch.no_grad(), apply_spm(unet, [spm]):
        out = unet(latents.bfloat16(), t, encoder_hidden_states=text.bfloat16()).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_torch_compile_fullgraph_with_spm_hooks():
    from diffusers import Transformer2DModel

    block = Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=16, norm_num_groups=8,
                               cross_attention_dim=32).eval()
    spm_a, spm_b = randomized(SPM.for_unet(block, "a"), 1), randomized(SPM.for_unet(block, "b"), 2)
    # the attention / feed-forward block (diffusers' Transformer2DModel.forward itself warns,
    # which dynamo cannot trace in fullgraph mode)
    inner = block.transformer_blocks[0]
    x, text = torch.randn(2, 16, 16), torch.randn(2, 3, 32)
    with torch.no_grad(), apply_spm(block, [spm_a, spm_b], gamma=torch.tensor([[1.0, 0.2], [0.0, 0.7]])) as h:
        eager = inner(x, encoder_hidden_states=text)
        with h.disabled():
            base = inner(x, encoder_hidden_states=text)
        compiled = torch.compile(inner, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(x, encoder_hidden_states=text), eager)
    assert not torch.allclose(eager, base)
