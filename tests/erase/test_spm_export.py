"""Export of SPMs as LoRA (diffusers / kohya keys) and merging into weights."""

import pytest
import torch

from osmos.erase.spm import SPM, apply_spm, merge_spm, save_lora, to_lora_state_dict
from spm_tiny import run_unet, tiny_unet, unet_inputs
from test_spm_adapter import randomized


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_merge_equals_hooked_adapters(kind):
    unet = tiny_unet(kind)
    a, b = randomized(SPM.for_unet(unet, "a"), 1), randomized(SPM.for_unet(unet, "b"), 2)
    inputs = unet_inputs(kind)
    with torch.no_grad():
        with apply_spm(unet, [a, b], gamma=[0.7, 0.4]):
            hooked = run_unet(unet, inputs)
        merge_spm(unet, [a, b], gamma=[0.7, 0.4])
        merged = run_unet(unet, inputs)
    torch.testing.assert_close(merged, hooked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["sd15", "sd21"])
def test_lora_state_dict_keys_and_shapes(kind, tmp_path):
    unet = tiny_unet(kind)
    spm = randomized(SPM.for_unet(unet, "a", scale=0.5), 1)
    sd = to_lora_state_dict(spm, "diffusers")
    modules = dict(unet.named_modules())
    for name in spm.layer_names:
        w = modules[name].weight
        a, b = sd[f"unet.{name}.lora_A.weight"], sd[f"unet.{name}.lora_B.weight"]
        assert a.dim() == w.dim() and b.dim() == w.dim()
        delta = (b.flatten(1) @ a.flatten(1)).reshape(w.shape)
        d, u = spm.vectors(name)
        torch.testing.assert_close(delta, torch.outer(u, d).detach().reshape(w.shape))
    kohya = to_lora_state_dict(spm, "kohya")
    assert len(kohya) == 3 * len(spm.layer_names)
    key = "lora_unet_" + spm.layer_names[0].replace(".", "_")
    assert kohya[f"{key}.alpha"].item() == 1.0 and kohya[f"{key}.lora_down.weight"].shape[0] == 1
    save_lora(spm, tmp_path / "l.safetensors", "kohya")
    with pytest.raises(ValueError, match="format must be"):
        to_lora_state_dict(spm, "peft")


def test_diffusers_loads_the_exported_lora():
    pytest.importorskip("peft")
    unet = tiny_unet("sd21")
    spm = randomized(SPM.for_unet(unet, "a"), 1)
    inputs = unet_inputs("sd21")
    with torch.no_grad(), apply_spm(unet, [spm]):
        hooked = run_unet(unet, inputs)
    unet.load_lora_adapter(to_lora_state_dict(spm, "diffusers"), prefix="unet", adapter_name="spm")
    with torch.no_grad():
        lora = run_unet(unet, inputs)
    torch.testing.assert_close(lora, hooked, rtol=1e-4, atol=1e-5)
