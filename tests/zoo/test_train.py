"""Zoo denoiser training: a few steps train, export, resume, and (on a GPU) run with --device cuda."""

import json

import pytest
import torch
from safetensors.torch import load_file

import osmos.zoo.train as zoo_train
from osmos.zoo.models import build_model, recipe


def _train(tmp_path, monkeypatch, steps, resume=False, device="cpu"):
    monkeypatch.setattr(zoo_train, "CAPTION_POOL", 64)  # a small caption pool keeps the test fast
    return zoo_train.train_denoiser(recipe("shapes-unet"), 0, 10.0, steps, tmp_path, resume, device)


def _check_export(tmp_path, steps):
    card = json.loads((tmp_path / "shapes-unet.json").read_text())["card"]
    assert card["steps"] == steps
    weights = load_file(str(tmp_path / "shapes-unet.safetensors"))
    assert all(v.device.type == "cpu" and torch.isfinite(v).all() for v in weights.values())
    build_model(recipe("shapes-unet")).load_state_dict(weights)  # same keys and shapes as the class
    return card


def test_train_export_and_resume(tmp_path, monkeypatch):
    card = _train(tmp_path, monkeypatch, 2)
    assert card["steps"] == 2 and "--device" not in card["command"]
    _check_export(tmp_path, 2)
    _train(tmp_path, monkeypatch, 3, resume=True)  # continues from the checkpoint: one more step
    _check_export(tmp_path, 3)


@pytest.mark.gpu
def test_train_on_cuda(tmp_path, monkeypatch):
    card = _train(tmp_path, monkeypatch, 2, device="cuda")
    assert card["command"].endswith("--device cuda") and card["machine"] == torch.cuda.get_device_name(0)
    _check_export(tmp_path, 2)
