"""Erasure on the embedded model (osmos.zoo shapes-unet): the zoo glue (text encoding, seeded
generation, SPM training inputs) and `osmos erase spm|uce|rece` / `osmos generate` end to end,
judged by the zoo classifier."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import osmos.zoo
from osmos.erase import cli
from osmos.erase.closed_form import cross_attention_kv
from osmos.erase.edit_file import load_edit
from osmos.erase.spm import SPM
from osmos.erase.spm.training import _unet
from osmos.erase.zoo import (
    SPMTrainingPipe, anchor_prompts, concept_of, concept_rate, generate, grid_prompts, validation_check,
    zoo_prompt_encoder, zoo_text_encoding,
)
from osmos.zoo.models import predict_noise


@pytest.fixture(autouse=True)
def one_thread():
    """The shared 2-core machine: two torch threads under load are far slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe():
    return osmos.zoo.load("shapes-unet")


def osmos_cmd(argv):
    parser = argparse.ArgumentParser(prog="osmos")
    sub = parser.add_subparsers(dest="command", required=True)
    cli.add_parser(sub)
    cli.add_generate_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_concept_words_and_vocabularies():
    assert concept_of("circle") == ("shape", "circle")
    assert concept_of("Disc") == ("shape", "circle")
    assert concept_of("crimson") == ("colour", "red")  # a held-out paraphrase is recognised too
    with pytest.raises(ValueError, match="not a concept"):
        concept_of("van gogh")
    anchors = anchor_prompts("shape", "circle")
    assert "square" in anchors and "red" in anchors and "a red square" in anchors
    assert not any(w in a.split() for a in anchors for w in ("circle", "disc"))
    words = anchor_prompts("shape", "circle", captions=False)
    assert set(words) < set(anchors) and "a red square" not in words and "red" in words
    named, unrelated = grid_prompts("red")
    assert len(named) == 6 and all("red" in p for p in named)
    assert len(unrelated) == 4 and not any("red" in p for p in unrelated)
    assert cli._default_preserve(["circle"]) == [w for v in ("square", "triangle", "star", "heart", "cross")
                                                  for w in osmos.zoo.data.WORDS["shape"][v][0]]


def test_zoo_text_encoding_points_at_the_subject(pipe):
    enc = zoo_text_encoding(pipe)
    prompts = ["a red circle", "circle", " "]
    states, mask = enc(prompts)
    assert states.shape == (3, 24, 384) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [5, 3, 2]  # [CLS] a red circle [SEP] / [CLS] circle [SEP] / [CLS] [SEP]
    subject = enc.subject_index(prompts).tolist()
    ids = pipe.text_encoder.tokenizer(prompts, padding="max_length", max_length=24)["input_ids"]
    circle = pipe.text_encoder.tokenizer.convert_tokens_to_ids("circle")
    assert ids[0][subject[0]] == circle and ids[1][subject[1]] == circle and subject[2] == 0
    gammas = [p.content.sum().item() for p in zoo_prompt_encoder(pipe)(prompts)]
    assert gammas == [3, 1, 0]  # [CLS], [SEP] and padding are not content


def test_spm_training_pipe_passes_the_attention_mask(pipe):
    """train_spm's UNet calls see the zoo's padding mask, exactly as the sampler's calls do."""
    tp = SPMTrainingPipe.of(pipe)
    states, added = tp.encode_prompt(["a red circle", "star"])
    x, t = torch.randn(2, *tp.latent_shape, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    with torch.no_grad():
        got = _unet(tp, x, t, states, added)
        want = predict_noise(pipe.unet, x, t, states, added["encoder_attention_mask"])
        unmasked = pipe.unet(x, t, encoder_hidden_states=states).sample
    torch.testing.assert_close(got, want)
    assert (got - unmasked).abs().max() > 1e-3  # the mask matters: it is not silently dropped


def test_generate_is_seeded_per_image(pipe):
    a = generate(pipe, ["a red circle", "a blue star"], seeds=(3, 4), num_inference_steps=3)
    b = generate(pipe, ["a blue star"], seeds=(4,), num_inference_steps=3)
    assert a.shape == (4, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a[3:4], b)  # same prompt and seed -> the same image, whatever the batch
    states, mask = pipe.encode_prompt(["a blue star"])
    torch.testing.assert_close(generate(pipe, states=states, mask=mask, seeds=(4,), num_inference_steps=3), b)
    assert (a[0] - a[1]).abs().mean() > 0.01  # different seeds differ


def test_uce_cli_erases_a_colour_and_keeps_the_rest(tmp_path, capsys):
    out = tmp_path / "uce"
    assert osmos_cmd(["erase", "uce", "--concept", "red", "--out", str(out), "--grid-seeds", "0", "1",
                      "--grid-steps", "8", "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preserve"][:2] == ["green", "emerald"]
    assert summary["concept_rate_before"] >= 0.8  # the original model paints "red" prompts red
    # UCE removes most of the red (the retrained shapes-unet keeps 3 of 12 red images, the 2072-step one
    # kept none; erasure_eval measures 0.31 on its training captions, see RESULTS.md)
    assert summary["concept_rate_after"] <= summary["concept_rate_before"] - 0.5
    # other colours' images barely move: far less than the same model's images move with another seed
    assert summary["unrelated_pixel_change"] < 0.3 * summary["unrelated_seed_gap"]
    assert (out / "grid.png").is_file() and "wrote" in capsys.readouterr().out
    fresh = osmos.zoo.load("shapes-unet")
    before = {n: l.weight.detach().clone() for n, l in cross_attention_kv(fresh.unet).items()}
    edit = load_edit(fresh.unet, out / "uce_red.safetensors")
    assert edit.method == "uce" and edit.settings["erase"] == ["red"]
    assert all(not torch.equal(before[n], l.weight) for n, l in cross_attention_kv(fresh.unet).items())


def test_rece_cli_erases_a_colour(tmp_path):
    out = tmp_path / "rece"
    assert osmos_cmd(["erase", "rece", "--concept", "red", "scarlet", "--epochs", "1", "--out", str(out),
                      "--grid-seeds", "0", "1", "--grid-steps", "8", "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["concept_rate_before"] >= 0.8
    assert summary["concept_rate_after"] <= summary["concept_rate_before"] - 0.5
    assert summary["unrelated_pixel_change"] < 0.3 * summary["unrelated_seed_gap"]
    assert (out / "rece_red-scarlet.safetensors").is_file()


@pytest.mark.slow
def test_spm_cli_trains_saves_and_erases(tmp_path):
    """The CLI's defaults (captions, Latent Anchoring, 150 steps; about 75 s of CPU). On the retrained
    shapes-unet the cheap settings this test used before (12 steps on the bare word, lr 3e-2) no
    longer erase red (0.92 -> 0.92), nor did 40 caption steps at lr 3e-2."""
    out = tmp_path / "spm"
    assert osmos_cmd(["erase", "spm", "--concept", "red", "--out", str(out), "--grid-seeds", "0", "1",
                      "--grid-steps", "15", "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["concept_rate_before"] >= 0.8
    assert summary["concept_rate_after"] <= summary["concept_rate_before"] - 0.5
    assert summary["unrelated_pixel_change"] < 0.3 * summary["unrelated_seed_gap"]
    fresh = osmos.zoo.load("shapes-unet")
    spm = SPM.load(out / "spm_red.safetensors", unet=fresh.unet)
    assert spm.concept == "red" and spm.settings["steps"] == 150
    assert any(float(u.detach().abs().sum()) > 0 for u in spm.up)



def test_spm_cli_stores_the_concepts_training_wordings(tmp_path):
    """On captions (the default), the SPM file records every training wording of the concept, for
    Facilitated Transport; a file path as --out skips the grid."""
    out = tmp_path / "disc.safetensors"
    assert osmos_cmd(["erase", "spm", "--concept", "disc", "--steps", "1", "--sampling-steps", "2",
                      "--out", str(out), "--threads", "1"]) == 0
    spm = SPM.load(out)
    assert spm.concept == "disc" and spm.wordings == ["circle", "disc", "round shape"]

def test_spm_cli_keeps_the_best_of_several_candidates(tmp_path, monkeypatch):
    """--candidates K trains seeds --seed + 1000 j, scores each with validation_check and keeps the
    lowest; the choice is recorded in the file (scores replaced by a stub so the test is fast and
    the winner known)."""
    import osmos.erase.zoo as erase_zoo

    calls = []

    def fake_check(pipe, kind, value, exclude=(), **kw):
        assert (kind, value) == ("shape", "circle") and len(exclude) > 1  # the training captions
        assert kw["others"] == 8 and kw["others_rule"] == "tie-break"  # the default with --candidates
        return lambda spm: calls.append(spm.settings["seed"]) or {0: 0.5, 1000: 0.25, 2000: 0.75}[spm.settings["seed"]]

    monkeypatch.setattr(erase_zoo, "validation_check", fake_check)
    out = tmp_path / "disc.safetensors"
    assert osmos_cmd(["erase", "spm", "--concept", "disc", "--steps", "1", "--sampling-steps", "2",
                      "--candidates", "3", "--out", str(out), "--threads", "1"]) == 0
    spm = SPM.load(out)
    assert calls == [0, 1000, 2000]
    assert spm.settings["seed"] == 1000 and spm.settings["selection"]["chosen"] == 1000
    assert spm.settings["selection"]["scores"] == [0.5, 0.25, 0.75]
    assert spm.settings["selection"]["validate_others"] == 8
    assert spm.settings["selection"]["others_rule"] == "tie-break"
    for argv, match in ((["--candidates", "0"], ">= 1"),
                        (["--candidates", "2", "--checkpoint", str(tmp_path / "c.safetensors")], "checkpoint"),
                        (["--candidates", "2", "--concept", "van gogh"], "zoo classifier"),
                        (["--candidates", "2", "--validate-others", "-1"], ">= 0"),
                        (["--validate-others", "4"], "needs --candidates")):
        args = ["erase", "spm", "--concept", "disc", "--steps", "1", "--out", str(tmp_path / "x.safetensors")]
        with pytest.raises(SystemExit, match=match):
            osmos_cmd(args + argv)


def test_spm_cli_validate_others_reaches_the_check(tmp_path, monkeypatch):
    """--validate-others N / --others-rule are what validation_check gets as others= / others_rule=
    (defaults with --candidates: 8 and tie-break, which met every target in 23 of 26 fresh training
    draws against 22 without the term; benchmarks/RESULTS.md, session 14)."""
    import osmos.erase.zoo as erase_zoo

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    base = ["erase", "spm", "--concept", "disc", "--out", str(tmp_path / "x")]
    assert cli.validate_others(parser.parse_args(base)) == 0
    assert cli.validate_others(parser.parse_args(base + ["--candidates", "3"])) == 8
    assert cli.validate_others(parser.parse_args(base + ["--candidates", "3", "--validate-others", "0"])) == 0
    assert cli.validate_others(parser.parse_args(base + ["--candidates", "2", "--validate-others", "5"])) == 5
    assert cli.validate_others(parser.parse_args(base + ["--validate-others", "0"])) == 0
    assert cli.others_rule(parser.parse_args(base + ["--candidates", "2"])) == "tie-break"
    assert cli.others_rule(parser.parse_args(base + ["--candidates", "2", "--others-rule", "sum"])) == "sum"
    with pytest.raises(SystemExit, match="--others-rule applies"):
        cli.validate_others(parser.parse_args(base + ["--candidates", "2", "--validate-others", "0",
                                                      "--others-rule", "tie-break"]))
    seen = []
    monkeypatch.setattr(erase_zoo, "validation_check",
                        lambda pipe, kind, value, exclude=(), **kw: seen.append((kw["others"], kw["others_rule"]))
                        or (lambda spm: (0.0, 0.0) if kw["others_rule"] == "tie-break" and kw["others"] else 0.0))
    for extra, n, rule in (([], 8, "tie-break"), (["--validate-others", "3", "--others-rule", "sum"], 3, "sum"),
                           (["--validate-others", "0"], 0, "tie-break")):
        out = tmp_path / f"o{n}{rule}.safetensors"
        assert osmos_cmd(["erase", "spm", "--concept", "disc", "--steps", "1", "--sampling-steps", "2", "--candidates",
                          "2", *extra, "--out", str(out), "--threads", "1"]) == 0
        assert SPM.load(out).settings["selection"]["validate_others"] == n
        assert SPM.load(out).settings["selection"]["others_rule"] == rule
    assert seen == [(8, "tie-break"), (3, "sum"), (0, "tie-break")]


def test_the_preservation_term_rejects_a_candidate_that_erodes_the_other_values(pipe):
    """Two candidates that both erase red on its validation images (a stub classifier never sees
    red there); one is neutral, the other changes every image. With others = 0 the tie keeps the
    first (the eroding one); with others > 0 the stub finds the other colours wrong once their
    images differ from the base model's, and the neutral candidate wins."""
    from osmos.erase.spm import train_spm_selected
    from osmos.zoo import data as D

    rest = [D.CONCEPTS["colour"].index(v) for v in D.CONCEPTS["colour"] if v != "red"]
    base = []

    class Stub:
        def predict(self, images):
            if len(images) != len(rest):  # red's own validation images: never red
                return {"colour": torch.full((len(images),), rest[0])}
            if not base:
                base.append(images.clone())
            same = (images - base[0]).abs().amax(dim=(1, 2, 3)) < 1e-6
            return {"colour": torch.where(same, torch.tensor(rest), torch.full((len(rest),), -1))}

    neutral = SPM.for_unet(pipe.unet, "red")  # u = 0: changes nothing
    eroding = SPM.for_unet(pipe.unet, "red", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for u in eroding.up:
            u.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    kept = {}
    for others, rule in ((0, "sum"), (1, "sum"), (1, "tie-break")):
        base.clear()
        check = validation_check(pipe, "colour", "red", n=2, seeds=(0,), num_inference_steps=2, classifier=Stub(),
                                 others=others, others_seeds=(0,), others_rule=rule)
        best, scores = train_spm_selected(object(), "red", check, [0, 1000],
                                          trained=lambda seed: {0: eroding, 1000: neutral}[seed])
        kept[others, rule] = (best, scores)
    assert kept[0, "sum"][1] == [0.0, 0.0] and kept[0, "sum"][0] is eroding
    assert kept[1, "sum"][1] == [1.0, 0.0] and kept[1, "sum"][0] is neutral
    # equal rates (0): the drop breaks the tie, and is reported beside the rate
    assert kept[1, "tie-break"][1] == [(0.0, 1.0), (0.0, 0.0)] and kept[1, "tie-break"][0] is neutral
    with pytest.raises(ValueError, match="others_rule"):
        validation_check(pipe, "colour", "red", classifier=Stub(), others_rule="max")


def test_validation_check_scores_the_concept_rate(pipe):
    """With a zero adapter the check reports the base model's rate of the concept on its validation
    captions, which for red on shapes-unet is high."""
    red = validation_check(pipe, "colour", "red", n=4, seeds=(0,), num_inference_steps=10)
    neutral = SPM.for_unet(pipe.unet, "red")  # u = 0: changes nothing
    assert red(neutral) >= 0.75


def test_validation_check_adds_the_drop_on_the_other_values(pipe):
    """others > 0: the score grows by the fall of the classifier's accuracy on the other values'
    validation captions against the base model's (a stub classifier right on the base model's
    images and wrong afterwards makes the drop 1)."""
    from osmos.zoo import data as D

    calls = []

    class Stub:
        def predict(self, images):
            calls.append(len(images))
            n_other = len(D.CONCEPTS["colour"]) - 1
            if len(calls) == 1:  # the base model's images of the other colours: all right
                labels = [D.CONCEPTS["colour"].index(v) for v in D.CONCEPTS["colour"] if v != "red"]
                return {"colour": torch.tensor(labels)}
            if len(images) == n_other:  # the same captions with the SPM: all wrong
                return {"colour": torch.full((n_other,), -1)}
            return {"colour": torch.zeros(len(images), dtype=torch.long)}  # red's index is 0: all red

    check = validation_check(pipe, "colour", "red", n=2, seeds=(0,), num_inference_steps=2, classifier=Stub(),
                             others=1, others_seeds=(0,), others_rule="sum")
    assert D.CONCEPTS["colour"].index("red") == 0
    assert check(SPM.for_unet(pipe.unet, "red")) == pytest.approx(2.0)  # rate 1 + drop 1
    assert calls[0] == len(D.CONCEPTS["colour"]) - 1  # the base accuracy is measured once, first
    check(SPM.for_unet(pipe.unet, "red"))
    assert len(calls) == 5


def test_generate_cli_with_a_neutral_spm_matches_the_base_model(tmp_path, pipe):
    spm = SPM.for_unet(pipe.unet, "circle")  # u = 0: changes nothing
    spm.save(tmp_path / "zero.safetensors")
    args = ["generate", "--prompt", "a red circle", "a blue star", "--seeds", "0", "--steps", "3", "--threads", "1"]
    osmos_cmd([*args, "--out", str(tmp_path / "base.png")])
    osmos_cmd([*args, "--spm", str(tmp_path / "zero.safetensors"), "--transport", "--out", str(tmp_path / "spm.png")])
    from PIL import Image

    base, with_spm = Image.open(tmp_path / "base.png"), Image.open(tmp_path / "spm.png")
    assert base.size == (2 * 65 + 1, 65 + 1)  # 2 prompts x 1 seed, 16 px x 4 + 1 px padding
    assert np.array_equal(np.asarray(base), np.asarray(with_spm))
    images = generate(pipe, ["a red circle"], seeds=(0,), num_inference_steps=3)
    assert concept_rate(images, "van gogh") is None and concept_rate(images, "red") in (0.0, 1.0)


def test_generate_cli_applies_an_edit_file(tmp_path):
    """`osmos generate --edit FILE` draws what the edited model draws (same prompt, seed, steps)."""
    from osmos.erase.closed_form import uce_edit
    from osmos.erase.edit_file import save_edit
    from osmos.zoo.pipeline import save_grid

    from PIL import Image

    edited = osmos.zoo.load("shapes-unet")
    edit = uce_edit(edited.unet, zoo_text_encoding(edited), erase=["red"], preserve=["green", "blue"])
    save_edit(edit, edited.unet, tmp_path / "red.safetensors")
    osmos_cmd(["generate", "--prompt", "a red heart", "--seeds", "5", "--steps", "3", "--threads", "1",
               "--edit", str(tmp_path / "red.safetensors"), "--out", str(tmp_path / "cli.png")])
    save_grid(generate(edited, ["a red heart"], seeds=(5,), num_inference_steps=3), tmp_path / "api.png", nrow=1)
    osmos_cmd(["generate", "--prompt", "a red heart", "--seeds", "5", "--steps", "3", "--threads", "1",
               "--out", str(tmp_path / "base.png")])
    cli_png, api_png, base_png = (np.asarray(Image.open(tmp_path / f)) for f in ("cli.png", "api.png", "base.png"))
    assert np.array_equal(cli_png, api_png)
    assert np.abs(cli_png.astype(int) - base_png.astype(int)).mean() > 1  # the edit changed the image


def test_erasure_prompt_pairs_and_captions():
    from osmos.erase.zoo import caption_naming, erasure_prompt_pairs

    t = osmos.zoo.data.TEMPLATES["train"][2]
    assert caption_naming(t, "shape", "disc", "red") == "a picture of a red disc"
    assert caption_naming(t, "shape", None, "red") == "a picture of a red"
    assert caption_naming(t, "colour", "scarlet", "star") == "a picture of a scarlet star"
    assert caption_naming(t, "style", "striped", "blue", 1) == "a picture of a striped blue square"
    assert caption_naming(t, "background", "dark", "blue", 0) == "a picture of a blue circle on a dark background"
    for kind, value in (("shape", "circle"), ("colour", "red"), ("style", "striped"), ("background", "white")):
        pairs = erasure_prompt_pairs(kind, value)
        words = osmos.zoo.data.WORDS[kind][value][0]
        assert len(pairs) == 4 * len(words) * 6 and len(set(pairs)) == len(pairs)
        for target, surrogate in pairs:
            assert any(w in target for w in words) and not any(w in surrogate.split() for w in words)
        assert erasure_prompt_pairs(kind, value, surrogate="")[0] == (pairs[0][0], "")
    assert ("a red circle", "a red") in erasure_prompt_pairs("shape", "circle")
    assert ("a striped red circle", "a red circle") in erasure_prompt_pairs("style", "striped")
    assert "a dotted red circle" in anchor_prompts("style", "striped")


@pytest.mark.parametrize("kind, value", [("shape", "circle"), ("colour", "red")])
def test_transport_gives_every_trained_wording_full_strength(pipe, kind, value):
    """Facilitated Transport over an SPM's stored wordings: captions with any training wording
    ("disc", "round shape", "scarlet") get gamma 1 as the concept word does; prompts naming the
    kind's other values with their first wording stay weak, and prompts with the concept word
    itself get the same gamma as with the concept alone."""
    from osmos.erase.zoo import caption_naming, other_kind_of, training_wordings, zoo_transport

    D = osmos.zoo.data
    other = other_kind_of(kind)
    templates = D.TEMPLATES["train"] + D.TEMPLATES["heldout"]
    caption = lambda word: [caption_naming(t, kind, word, D.WORDS[other][o][0][0], i)  # noqa: E731
                            for t in templates for i, o in enumerate(D.CONCEPTS[other])]
    spm = SPM.for_unet(pipe.unet, value, wordings=training_wordings(kind, value))
    single = SPM.for_unet(pipe.unet, value)
    ft, ft_single = zoo_transport(pipe, [spm]), zoo_transport(pipe, [single])
    for word in training_wordings(kind, value):
        assert torch.allclose(ft.gammas(caption(word)), torch.ones(len(caption(word)), 1), atol=1e-6), word
    assert float(ft_single.gammas(caption(training_wordings(kind, value)[1])).max()) < 0.5  # before: weak
    unrelated = [p for v in D.CONCEPTS[kind] if v != value for p in caption(D.WORDS[kind][v][0][0])]
    assert float(ft.gammas(unrelated).max()) < 0.5
    assert torch.equal(ft.gammas(caption(value)), ft_single.gammas(caption(value)))


def _held_out_free(prompt: str) -> bool:
    """No held-out (paraphrase) wording of any concept and no held-out template in the prompt."""
    D = osmos.zoo.data
    held = {w for values in D.WORDS.values() for _, h in values.values() for w in h}
    padded = f" {prompt} "
    return not any(f" {w} " in padded for w in held) and "drawing showing" not in prompt and " here" not in padded


@pytest.mark.parametrize("kind, value", [("shape", "circle"), ("colour", "red"), ("style", "striped"), ("background", "white")])
def test_varied_captions_stay_in_the_training_vocabulary(kind, value):
    from osmos.erase.zoo import erasure_prompt_pairs, training_wordings

    D = osmos.zoo.data
    plain, varied = erasure_prompt_pairs(kind, value), erasure_prompt_pairs(kind, value, varied=True)
    assert len(varied) > len(plain) and len(set(varied)) == len(varied)
    words = training_wordings(kind, value)
    for target, surrogate in varied:
        assert _held_out_free(target), target
        assert any(f" {w} " in f" {target} " for w in words) and not any(f" {w} " in f" {surrogate} " for w in words)
    other = "shape" if kind == "colour" else "colour"
    second = {D.WORDS[other][o][0][1] for o in D.CONCEPTS[other]}
    assert any(any(f" {w} " in f" {t} " for w in second) for t, _ in varied)  # "scarlet" / "disc" appear now
    assert not any(any(f" {w} " in f" {t} " for w in second) for t, _ in plain)  # they did not before
    if kind != "background":
        assert any(" on " in t for t, _ in varied) and not any(" on " in t for t, _ in plain)
    assert erasure_prompt_pairs(kind, value, surrogate="", varied=True)[0] == (varied[0][0], "")


@pytest.mark.parametrize("kind, value", [("shape", "circle"), ("colour", "red"), ("style", "striped")])
def test_validation_prompts_avoid_training_targets_and_paraphrases(kind, value):
    from osmos.erase.zoo import erasure_prompt_pairs, training_wordings, validation_prompts

    D = osmos.zoo.data
    trained = [t for t, _ in erasure_prompt_pairs(kind, value)]
    prompts = validation_prompts(kind, value, 24, exclude=trained)
    assert len(prompts) == len(set(prompts)) == 24
    assert prompts == validation_prompts(kind, value, 24, exclude=trained)  # deterministic
    assert prompts != validation_prompts(kind, value, 24, exclude=trained, seed=1)
    assert not set(prompts) & set(trained)
    words = training_wordings(kind, value)
    other = "shape" if kind == "colour" else "colour"
    for i, p in enumerate(prompts):
        assert _held_out_free(p), p
        assert any(f" {w} " in f" {p} " for w in words), p
        o = D.CONCEPTS[other][i % len(D.CONCEPTS[other])]  # every other value in turn
        assert any(f" {w} " in f" {p} " for w in D.WORDS[other][o][0]), p
    both = trained + [t for t, _ in erasure_prompt_pairs(kind, value, varied=True)]
    assert not set(validation_prompts(kind, value, 24, exclude=both)) & set(both)
    if kind == "shape":  # the smallest space of captions: used up quickly
        with pytest.raises(ValueError, match="validation captions"):
            validation_prompts(kind, value, 10 ** 5, exclude=trained)
    with pytest.raises(ValueError, match="n must be"):
        validation_prompts(kind, value, 0)
