"""ESD-x / ESD-u baseline on tiny UNets: which parameters are tuned, the loss falls, only the
chosen parameters move, undo restores bitwise, seeded runs repeat, and prompt pairs work."""

import pytest
import torch

from osmos.erase.esd import esd_parameters, train_esd
from spm_tiny import tiny_pipe, tiny_unet


def test_parameter_selection():
    unet = tiny_unet("sd15")
    x = esd_parameters(unet, "xattn")
    u = esd_parameters(unet, "unet_noxattn")
    assert x and all(".attn2." in f".{n}" for n in x)
    assert any(n.endswith("attn2.to_k.weight") for n in x) and any("attn2.to_out" in n for n in x)
    assert set(x).isdisjoint(u) and len(x) + len(u) == len(list(unet.parameters()))
    with pytest.raises(ValueError, match="params must be one of"):
        esd_parameters(unet, "all")


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_train_esd_moves_only_xattn_and_undoes(kind):
    pipe = tiny_pipe(kind)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    edit = train_esd(pipe, "a cat", steps=4, lr=1e-2, sampling_steps=3, progress=False)
    after = pipe.unet.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".attn2." in f".{k}" for k in moved)
    assert len(edit.losses) == 4 and all(torch.isfinite(torch.tensor(edit.losses)))
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    assert any(d.abs().sum() > 0 for d in edit.delta(pipe.unet).values())
    edit.undo(pipe.unet)
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_train_esd_lowers_its_loss_and_is_seeded():
    pipe = tiny_pipe("sd15")
    kw = dict(steps=25, lr=3e-3, sampling_steps=2, progress=False, seed=1,
              prompts=[("a cat", ""), ("a red cat", "a red")], targets_per_step=2)
    edit = train_esd(pipe, "cat", **kw)
    tuned = {k: v.clone() for k, v in edit.delta(pipe.unet).items()}
    first, last = sum(edit.losses[:5]) / 5, sum(edit.losses[-5:]) / 5
    assert last < 0.7 * first
    edit.undo(pipe.unet)
    again = train_esd(pipe, "cat", **kw)
    assert again.losses == edit.losses
    for k, v in again.delta(pipe.unet).items():
        assert torch.equal(v, tuned[k]), k
    again.undo(pipe.unet)
