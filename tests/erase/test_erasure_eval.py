"""benchmarks/erasure_eval.py's logic: the prompt sets (training wordings vs paraphrases), the
command-line settings that shorten a run, and the SPM cache that must not reuse an SPM trained
with other settings."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

import osmos.zoo
from osmos.erase.spm import SPM
from osmos.erase.zoo import caption_naming
from osmos.zoo import data as D

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "erasure_eval.py"
_spec = importlib.util.spec_from_file_location("erasure_eval", _PATH)
E = sys.modules.setdefault("erasure_eval", importlib.util.module_from_spec(_spec))  # dataclasses look it up
_spec.loader.exec_module(E)


def _names(prompt: str, wording: str) -> bool:
    return re.search(rf"(^| ){re.escape(wording)}( |$)", prompt) is not None


def _template_of(prompt: str, split: str) -> int:
    """Index of the `split` template the prompt was made from (the words between its slots)."""
    for i, t in enumerate(D.TEMPLATES[split]):
        fixed = [w for w in re.split(r"\{[a-z]+\}", t) if w.strip()]
        if all(w.strip() in prompt for w in fixed) and (not fixed or prompt.startswith(fixed[0].strip())):
            return i
    raise AssertionError(f"{prompt!r} is from no {split} template")


@pytest.mark.parametrize("kind, value", [("shape", "circle"), ("colour", "red"), ("style", "striped")])
def test_paraphrase_set_uses_only_held_out_wordings_and_templates(kind, value):
    s = E.settings_from(E.parse_args(["--sets", "para", "train"]))
    sets = E.prompt_sets(kind, value, s)
    assert set(sets) == {"train", "para", "others", "others_labels"}  # only the sets asked for
    other = "shape" if kind == "colour" else "colour"
    train_words, held_words = D.WORDS[kind][value]
    n_other = len(D.CONCEPTS[other])
    assert len(sets["para"]) == len(sets["train"]) == n_other * s.variants
    used_words, used_templates = set(), set()
    for i, o in enumerate(D.CONCEPTS[other]):
        for prompt in sets["para"][i * s.variants:(i + 1) * s.variants]:
            assert not any(_names(prompt, w) for w in train_words), prompt  # never a tuning wording
            held = [w for w in held_words if _names(prompt, w)]
            assert len(held) == 1, prompt
            used_words.add(held[0])
            assert any(_names(prompt, w) for w in D.WORDS[other][o][1]), prompt  # the other kind paraphrased too
            assert not any(_names(prompt, w) for w in D.WORDS[other][o][0]), prompt
            used_templates.add(_template_of(prompt, "heldout"))
    assert used_words == set(held_words) and used_templates == set(range(len(D.TEMPLATES["heldout"])))
    for prompt in sets["train"]:
        assert any(_names(prompt, w) for w in train_words) and not any(_names(prompt, w) for w in held_words)
        _template_of(prompt, "train")
    with pytest.raises(ValueError, match="target sets"):
        E.prompt_sets(kind, value, E.dataclasses.replace(s, target_sets=("paraphrase",)))


def test_caption_naming_paraphrase_split():
    t = D.TEMPLATES["heldout"][1]
    assert caption_naming(t, "shape", "orb", "crimson", split="heldout") == "there is a crimson orb here"
    assert caption_naming(t, "style", "banded", "crimson", 1, split="heldout") == "there is a banded crimson block here"
    assert caption_naming(t, "background", "midnight", "lime", 0, split="heldout") == \
        "there is a lime orb here against a midnight backdrop"
    assert caption_naming(t, "style", "striped", "red", 1) == "there is a striped red square here"  # train: unchanged


def test_command_line_settings():
    s = E.settings_from(E.parse_args(["--sets", "para", "train", "--methods", "uce", "spm-ft", "spm",
                                      "--seeds", "3", "--spm-steps", "80"]))
    assert s.target_sets == ("train", "para") and s.methods == ("spm", "spm-ft", "uce")  # canonical order
    assert s.seeds == (3,) and s.spm_steps == 80
    assert s.steps == E.FULL.steps and s.la_strength == E.FULL.la_strength  # the rest untouched
    full = E.settings_from(E.parse_args([]))
    assert full.target_sets == E.TARGET_SETS and full.methods == E.METHODS and full.seeds == E.FULL.seeds
    assert E.settings_from(E.parse_args(["--spm-only"])).methods == ("spm", "spm-ft")
    with pytest.raises(SystemExit):
        E.parse_args(["--spm-only", "--methods", "uce"])


def test_guidance_setting_reaches_the_pipeline():
    assert E.settings_from(E.parse_args([])).guidance is None
    s = E.settings_from(E.parse_args(["--guidance", "1.5"]))
    assert s.guidance == 1.5
    assert E.load_model("shapes-unet", s).recipe.default_guidance == 1.5
    assert E.load_model("shapes-unet", E.FULL).recipe.default_guidance == osmos.zoo.load("shapes-unet").recipe.default_guidance


def test_table_has_a_column_per_target_set():
    row = {"concept": "circle", "kind": "shape", "method": "UCE", "seconds": 0.1, "rate_train": 0.5, "rate_para": 0.25,
           "attack_vs_uce": None, "attack_rederived": 0.5, "others_pair_acc": 0.75, "others_pixel_change": 0.01,
           "seed_gap": 0.1}
    lines = E.table([row]).splitlines()
    assert "train wordings" in lines[0] and "paraphrases" in lines[0] and "synonyms" not in lines[0]
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 0.50 | 0.25 | n/a | 0.50 | 0.75 |" in lines[2]


def test_spm_cache_is_reused_only_with_the_same_settings(tmp_path):
    pipe = osmos.zoo.load("shapes-unet")
    s = E.dataclasses.replace(E.FULL, spm_steps=7)
    settings = {"steps": 7, "lr": s.spm_lr, "la_strength": s.la_strength, "sampling_steps": s.steps, "seed": 0}
    cached = SPM.for_unet(pipe.unet, "circle", settings=settings)
    for u in cached.up:
        u.data.fill_(0.5)  # not what a fresh SPM or 7 steps of training would give
    cached.save(tmp_path / "spm_circle.safetensors")
    got = E.train_zoo_spm(pipe, "circle", s, tmp_path)
    assert all(bool((u == 0.5).all()) for u in got.up)  # read back, not retrained
    with pytest.raises(ValueError, match="was trained with"):
        E.train_zoo_spm(pipe, "circle", E.dataclasses.replace(s, spm_steps=150), tmp_path)


def test_spm_seed_reaches_training_and_keeps_caches_apart(tmp_path, monkeypatch):
    assert E.settings_from(E.parse_args([])).spm_seed == 0
    s1 = E.settings_from(E.parse_args(["--spm-seed", "1", "--spm-steps", "7"]))
    assert s1.spm_seed == 1
    s0 = E.dataclasses.replace(s1, spm_seed=0)
    assert E.spm_cache_path(tmp_path, "circle", s0).name == "spm_circle.safetensors"  # seed 0: the old name
    names = {E.spm_cache_path(tmp_path, "circle", E.dataclasses.replace(s1, spm_seed=k)).name for k in range(4)}
    assert len(names) == 4
    pipe = osmos.zoo.load("shapes-unet")
    seen = []
    monkeypatch.setattr(E, "train_spm", lambda *a, **kw: seen.append(kw["seed"]) or SPM.for_unet(
        pipe.unet, "circle", settings={"steps": 7, "lr": s1.spm_lr, "la_strength": s1.la_strength,
                                       "sampling_steps": s1.steps, "seed": kw["seed"]}))
    E.train_zoo_spm(pipe, "circle", s1, tmp_path)  # trained (seed 1) and cached under its own name
    assert seen == [1] and E.spm_cache_path(tmp_path, "circle", s1).is_file()
    assert not E.spm_cache_path(tmp_path, "circle", s0).exists()
    E.train_zoo_spm(pipe, "circle", s1, tmp_path)  # read back, not retrained
    assert seen == [1]
    E.train_zoo_spm(pipe, "circle", s0, tmp_path)  # seed 0 does not pick up the seed-1 file
    assert seen == [1, 0]
    E.spm_cache_path(tmp_path, "circle", s0).rename(E.spm_cache_path(tmp_path, "circle", E.dataclasses.replace(s1, spm_seed=2)))
    with pytest.raises(ValueError, match="was trained with"):  # a seed-0 SPM under a seed-2 name is refused
        E.train_zoo_spm(pipe, "circle", E.dataclasses.replace(s1, spm_seed=2), tmp_path)


def test_spm_candidates_and_varied_targets_settings_and_cache_names(tmp_path):
    s = E.settings_from(E.parse_args(["--spm-seed", "2", "--spm-candidates", "3", "--spm-varied-targets"]))
    assert s.spm_candidates == 3 and s.spm_varied
    assert E.candidate_seeds(s) == [2, 1002, 2002]
    assert E.spm_cache_path(tmp_path, "striped", s).name == "spm_striped_seed2_varied_best3.safetensors"
    plain = E.settings_from(E.parse_args([]))
    assert plain.spm_candidates == 1 and not plain.spm_varied and E.candidate_seeds(plain) == [0]
    assert E.spm_cache_path(tmp_path, "striped", plain).name == "spm_striped.safetensors"
    with pytest.raises(SystemExit):
        E.settings_from(E.parse_args(["--spm-candidates", "0"]))
    others = E.settings_from(E.parse_args(["--spm-candidates", "3", "--spm-validate-others", "8"]))
    assert others.spm_validate_others == 8 and plain.spm_validate_others == 0
    assert E.spm_cache_path(tmp_path, "blue", others).name == "spm_blue_best3_o8.safetensors"
    with pytest.raises(SystemExit):
        E.settings_from(E.parse_args(["--spm-validate-others", "-1"]))
    tie = E.settings_from(E.parse_args(["--spm-candidates", "3", "--spm-validate-others", "8",
                                        "--spm-others-rule", "tie-break"]))
    assert tie.spm_others_rule == "tie-break" and others.spm_others_rule == "sum"
    assert E.spm_cache_path(tmp_path, "blue", tie).name == "spm_blue_best3_o8_tb.safetensors"
    with pytest.raises(SystemExit):
        E.settings_from(E.parse_args(["--spm-candidates", "3", "--spm-others-rule", "tie-break"]))
    with pytest.raises(SystemExit):
        E.settings_from(E.parse_args(["--spm-varied-targets", "--spm-targets", "word"]))


def test_spm_candidates_validate_on_held_in_captions_and_cache_the_choice(tmp_path, monkeypatch):
    """--spm-candidates: train_spm_selected gets the candidate seeds and a validation_check that
    excludes the training targets (and never uses a paraphrase); the chosen SPM is cached
    and read back only for the same candidates."""
    pipe = osmos.zoo.load("shapes-unet")
    s = E.dataclasses.replace(E.FULL, spm_steps=7, spm_seed=1, spm_candidates=2)
    seen = {}

    def fake_selected(train_pipe, concept, validate, seeds, **kw):
        seen["seeds"], seen["prompts"] = seeds, kw["prompts"]
        spm = SPM.for_unet(pipe.unet, concept, settings={"steps": 7, "lr": s.spm_lr, "la_strength": s.la_strength,
                                                        "sampling_steps": s.steps, "seed": seeds[1],
                                                        "extra": {"prompts": len(kw["prompts"])}})
        for seed in seeds:  # every candidate is offered for caching under its plain-seed name
            kw["on_candidate"](seed, SPM.for_unet(pipe.unet, concept, settings={**spm.settings, "seed": seed}), 0.5)
        spm.settings["selection"] = {"seeds": list(seeds), "scores": [0.5, 0.25], "chosen": seeds[1]}
        return spm, [0.5, 0.25]

    captured = []
    monkeypatch.setattr(E, "train_spm_selected", fake_selected)
    monkeypatch.setattr(E, "validation_check", lambda *a, **kw: captured.append((a, kw)) or (lambda spm: 0.5))
    got = E.train_zoo_spm(pipe, "striped", s, tmp_path)
    assert seen["seeds"] == [1, 1001] and got.settings["selection"]["chosen"] == 1001
    (args, kw), = captured
    assert args[1:3] == ("style", "striped") and set(kw["exclude"]) == {t for t, _ in seen["prompts"]}
    assert kw["n"] == E.VALIDATION_PROMPTS and kw["seeds"] == E.VALIDATION_SEEDS and kw["others"] == 0
    assert E.spm_cache_path(tmp_path, "striped", s).is_file()
    for seed in (1, 1001):
        plain = E.dataclasses.replace(s, spm_seed=seed, spm_candidates=1)
        assert E.spm_cache_path(tmp_path, "striped", plain).name == f"spm_striped_seed{seed}.safetensors"
        assert SPM.load(E.spm_cache_path(tmp_path, "striped", plain), pipe.unet).settings["seed"] == seed
        assert "selection" not in SPM.load(E.spm_cache_path(tmp_path, "striped", plain), pipe.unet).settings
    seen.clear()
    again = E.train_zoo_spm(pipe, "striped", s, tmp_path)  # read back, not retrained
    assert not seen and again.settings["selection"]["chosen"] == 1001
    three = E.dataclasses.replace(s, spm_candidates=3)
    E.spm_cache_path(tmp_path, "striped", s).rename(E.spm_cache_path(tmp_path, "striped", three))
    with pytest.raises(ValueError, match="was trained with"):  # 2 candidates' choice under a 3-candidate name
        E.train_zoo_spm(pipe, "striped", three, tmp_path)


def test_spm_candidates_cached_alone_are_rescored_not_retrained(tmp_path, monkeypatch):
    """A best-of-K run hands train_spm_selected the candidates already cached under their plain-seed
    names (checked against the run's settings), so a new selection score (--spm-validate-others)
    re-scores the same draws; a missing candidate is trained (trained(seed) gives None)."""
    pipe = osmos.zoo.load("shapes-unet")
    s = E.dataclasses.replace(E.FULL, spm_steps=7, spm_seed=1, spm_candidates=3, spm_validate_others=8)
    settings = lambda seed: {"steps": 7, "lr": s.spm_lr, "la_strength": s.la_strength,  # noqa: E731
                             "sampling_steps": s.steps, "seed": seed,
                             "extra": {"prompts": len(E.erasure_prompt_pairs("colour", "blue"))}}
    for seed in (1, 2001):
        plain = E.dataclasses.replace(s, spm_seed=seed, spm_candidates=1)
        SPM.for_unet(pipe.unet, "blue", settings=settings(seed)).save(E.spm_cache_path(tmp_path, "blue", plain))
    got = {}

    def fake_selected(train_pipe, concept, validate, seeds, trained=None, **kw):
        got.update({seed: trained(seed) for seed in seeds})
        spm = got[1]
        spm.settings["selection"] = {"seeds": list(seeds), "scores": [0.0, 0.1, 0.2], "chosen": 1}
        return spm, [0.0, 0.1, 0.2]

    monkeypatch.setattr(E, "train_spm_selected", fake_selected)
    monkeypatch.setattr(E, "validation_check", lambda *a, **kw: (lambda spm: 0.0))
    E.train_zoo_spm(pipe, "blue", s, tmp_path)
    assert got[1001] is None and got[1].settings["seed"] == 1 and got[2001].settings["seed"] == 2001
    assert E.spm_cache_path(tmp_path, "blue", s).name == "spm_blue_seed1_best3_o8.safetensors"
    assert E.spm_cache_path(tmp_path, "blue", s).is_file()
    bad = E.dataclasses.replace(s, spm_seed=2, spm_candidates=1)  # a candidate trained with other steps
    SPM.for_unet(pipe.unet, "blue", settings={**settings(2), "steps": 8}).save(E.spm_cache_path(tmp_path, "blue", bad))
    with pytest.raises(ValueError, match="was trained with"):
        E.train_zoo_spm(pipe, "blue", E.dataclasses.replace(s, spm_seed=2), tmp_path)
