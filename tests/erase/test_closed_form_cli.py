"""`osmos erase uce|rece` on a tiny SD-1.5-shaped pipeline folder, and edit files on disk."""

from __future__ import annotations

import argparse
import types

import pytest
import torch

import uce_tiny_sd as tiny
from osmos.erase import cli
from osmos.erase.closed_form import cross_attention_kv, uce_edit
from osmos.erase.edit_file import load_edit, save_edit
from osmos.erase.text_encoding import hf_text_encoding, pipeline_text_encoding


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline

    root = tmp_path_factory.mktemp("pipe")
    tok = tiny.clip_tokenizer(root / "tok_src")
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=tiny.clip_text_encoder(tok, seed=1), tokenizer=tok,
                                   unet=tiny.unet("sd15"), scheduler=PNDMScheduler(steps_offset=1), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "sd")
    return root / "sd"


def osmos_erase(argv):
    parser = argparse.ArgumentParser(prog="osmos")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def load_pipe(path):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(path, local_files_only=True)


@pytest.mark.parametrize("method", ["uce", "rece"])
def test_cli_writes_an_edit_that_reproduces_the_api(method, pipeline_dir, tmp_path, capsys):
    out = tmp_path / f"{method}.safetensors"
    extra = ["--epochs", "1", "--lambda-reg", "0.01"] if method == "rece" else []
    assert osmos_erase(["erase", method, "--model", str(pipeline_dir), "--concept", "cat", "red dog",
                        "--preserve", "house", "--out", str(out), *extra]) == 0
    assert "wrote" in capsys.readouterr().out

    pipe = load_pipe(pipeline_dir)
    layers = cross_attention_kv(pipe.unet)
    before = {n: l.weight.detach().clone() for n, l in layers.items()}
    edit = load_edit(pipe.unet, out)
    assert edit.method == method and edit.settings["erase"] == ["cat", "red dog"]
    assert all(not torch.equal(before[n], l.weight) for n, l in layers.items())
    if method == "uce":  # the file holds exactly what the API gives
        api = load_pipe(pipeline_dir)
        uce_edit(api.unet, pipeline_text_encoding(api), erase=["cat", "red dog"], preserve=["house"])
        for n, l in cross_attention_kv(api.unet).items():
            assert torch.equal(l.weight, layers[n].weight)
    edit.undo(pipe.unet)
    assert all(torch.equal(before[n], l.weight) for n, l in layers.items())


def test_edit_file_rejects_another_architecture(tmp_path, pipeline_dir):
    pipe = load_pipe(pipeline_dir)
    edit = uce_edit(pipe.unet, pipeline_text_encoding(pipe), erase="cat")
    path = tmp_path / "e.safetensors"
    save_edit(edit, pipe.unet, path)
    with pytest.raises(ValueError, match="does not have"):
        load_edit(tiny.unet("sdxl"), path)
    other = tiny.unet("sd15")
    next(iter(cross_attention_kv(other).values())).weight.data = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape"):
        load_edit(other, path)


def test_pipeline_text_encoding_picks_dual_encoders(tmp_path):
    tok = tiny.clip_tokenizer(tmp_path)
    te1 = tiny.clip_text_encoder(tok, seed=1)
    te2 = tiny.clip_text_encoder(tok, seed=2, with_projection=True)
    sdxl = pipeline_text_encoding(types.SimpleNamespace(tokenizer=tok, tokenizer_2=tok, text_encoder=te1, text_encoder_2=te2))
    states, mask = sdxl(["cat", " "])
    assert states.shape == (2, tiny.MAX_LENGTH, 2 * tiny.TEXT_DIM) and mask.all()
    assert sdxl.subject_index(["cat", " ", "red dog"]).tolist() == [3, 0, 6]  # c a t</w>; the start token; r e d</w> d o g</w>
    refiner = pipeline_text_encoding(types.SimpleNamespace(tokenizer=None, tokenizer_2=tok, text_encoder=None,
                                                           text_encoder_2=te2))
    torch.testing.assert_close(refiner(["cat"])[0], states[:1, :, tiny.TEXT_DIM:])
    single = pipeline_text_encoding(types.SimpleNamespace(tokenizer=tok, text_encoder=te1))
    torch.testing.assert_close(single(["cat"])[0], hf_text_encoding(tok, te1)(["cat"])[0])


def test_spm_cli_on_a_diffusers_pipeline_folder(pipeline_dir, tmp_path, capsys):
    """`osmos erase spm` trains on an SD-1.x-shaped pipeline folder (CLIP states, 4-channel latents)."""
    from osmos.erase.spm import SPM

    out = tmp_path / "cat.safetensors"
    assert osmos_erase(["erase", "spm", "--model", str(pipeline_dir), "--concept", "cat", "--steps", "2",
                        "--sampling-steps", "2", "--la-strength", "0", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    pipe = load_pipe(pipeline_dir)
    spm = SPM.load(out, unet=pipe.unet)
    assert spm.concept == "cat" and spm.settings["steps"] == 2
    assert any(float(u.detach().abs().sum()) > 0 for u in spm.up)  # trained: the zero-initialised u moved
