"""Concept erasure on the embedded text-to-image model: SPM, UCE and RECE on osmos.zoo's shapes-unet.

For each erased concept (default: the shape "circle" and the colour "red") every method edits a
fresh copy of shapes-unet; the same prompts and seeds then go through the original and the
edited model (DDIM, CFG at the model card's default (2.0 for shapes-unet) or `--guidance`) and the zoo classifier reads the images:

* target rate: fraction of images from prompts naming the concept in which the classifier sees
  it (chance is 1/6; lower = more erased), for up to four prompt sets (`--sets`):
    train     the training templates and wordings ("a red circle", "a picture of a red disc")
    para      the paraphrases: held-out templates with held-out wordings of both named concepts
              ("there is a crimson orb here"), never used for tuning any method
    tmpl      held-out templates with training wordings ("there is a red circle here")
    syn       training templates with held-out synonyms ("a red orb")
* others: prompts naming every other value of the concept's kind, crossed with the other kind
  (for "circle": the 5 other shapes x 6 colours): pair accuracy (shape and colour both seen) and
  the mean absolute pixel change against the original model's image of the same prompt and seed
  (images in [0, 1]; for scale, the "seed gap": the mean change between consecutive images of
  that set in the original model, i.e. another seed or another prompt).
* attacks: the target rate of images generated from RECE's closed-form embedding
  c' = argmin_c sum_l ||W_l' c - W_l c_tar||^2 + lambda_reg ||c||^2 (the concept's token rows
  replaced by c'), for two choices of the edited model W' = W X:
    vs UCE   c' derived against the UCE edit: the embedding that RECE's first epoch finds and
             erases; every model is shown it (SPM without Facilitated Transport too, gamma = 1)
    re-derived  c' derived afresh against this model (for the original, c' ~ c_tar). Whenever
             X is invertible, c = X^-1 c_tar regenerates W c_tar exactly, so this attack can
             only fail through the ridge term; it is the closed-form worst case.

Concepts: any value of the shapes world (shape, colour, style, background); style and
background concepts are named beside a colour on a cycling shape ("a striped red circle"), and
"others" are then the other values of that kind (pair accuracy = that kind and the colour seen).

Methods, all trained on the same target captions (every training template x wording x value of
the other kind, e.g. 72 for circle), each with its own surrogate: the caption without the
concept ("a red circle" -> "a red"), so the erasure direction is the concept's alone:
  SPM      rank-1 adapters, ESD-form loss (eta 1), 2 captions a step, without and with Latent
           Anchoring (anchors: the other values' wordings and captions at their own norms, 4 a
           step, plus the empty prompt every step, i.e. CFG's unconditional branch), the latter
           also with Facilitated Transport (gamma from text similarity, factor 1, token_max)
  ESD-x    the same loss and captions, fine-tuning every cross-attention (attn2) weight
  UCE      erase the concept's training wordings, guide " ", preserve the other values' wordings
  RECE     UCE, then 2 epochs erasing the derived embedding, lambda_reg 1e-3, the last epoch kept
(`--spm-targets word` trains SPM / ESD on the bare concept word with surrogate "" instead, as
before: that is what left circle unerased under Latent Anchoring. `--spm-candidates K` keeps the
best of K SPM training seeds on validation captions of the training vocabulary (never the
paraphrases); `--spm-varied-targets` trains on more varied training-vocabulary captions.)

    PYTHONPATH=python python benchmarks/erasure_eval.py                       # circle and red
    PYTHONPATH=python python benchmarks/erasure_eval.py --concepts striped    # a style
    PYTHONPATH=python python benchmarks/erasure_eval.py --multi --spm-cache DIR   # 1, 3, 5 at once
    PYTHONPATH=python python benchmarks/erasure_eval.py --transfer shapes-unet-ft --spm-cache DIR
    PYTHONPATH=python python benchmarks/erasure_eval.py --quick               # smaller and faster
    PYTHONPATH=python python benchmarks/erasure_eval.py --concepts circle --sets train para \
        --methods spm spm-ft uce rece --spm-cache DIR --transfer shapes-unet-ft   # the short run
Writes benchmarks/figures/erasure_<concept>.png (rows: methods; columns: the concept with each
value of the other kind, then unrelated prompts) or erasure_multi.png, and prints the markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import osmos.zoo
from osmos.erase.closed_form import cross_attention_kv, original_gram, regenerating_embeddings, rece_edit, uce_edit
from osmos.erase.esd import train_esd
from osmos.erase.spm import SPM, apply_spm, train_spm, train_spm_selected
from osmos.erase.text_encoding import token_rows
from osmos.erase.zoo import SPMTrainingPipe, anchor_prompts, caption_naming, concept_of, erasure_prompt_pairs, generate, \
    other_kind_of, training_wordings, validation_check, zoo_text_encoding, zoo_transport
from osmos.zoo import data as D
from osmos.zoo.pipeline import save_grid

FIGURES = Path(__file__).resolve().parent / "figures"
TARGET_SETS = ("train", "para", "tmpl", "syn")
SET_TITLES = {"train": "train wordings", "para": "paraphrases", "tmpl": "held-out templates",
              "syn": "held-out synonyms"}
# the edited models evaluated besides the original: SPM without / with Latent Anchoring, the latter
# also with Facilitated Transport, the ESD-x fine-tune, UCE and RECE
METHODS = ("spm-nola", "spm", "spm-ft", "esd", "uce", "rece")


@dataclass
class Settings:
    seeds: tuple[int, ...]
    variants: int  # training-template variants per (value, other value)
    other_values: int  # values of the other kind crossed with each "other" value
    steps: int  # DDIM steps
    spm_steps: int
    spm_lr: float = 1e-2
    spm_seed: int = 0  # training seed of every SPM (initialisation, prompt and timestep draws)
    la_strength: float = 5.0  # measured on shapes-unet at CFG 2.0: 100 left paraphrases, 0 eroded other colours
    rece_epochs: int = 2
    lambda_reg: float = 1e-3
    attack_seeds: tuple[int, ...] = field(default=(0, 1, 2, 3, 4, 5))
    anchor_captions: bool = True
    spm_targets: str = "captions"  # "captions": caption pairs (concept dropped) | "word": the concept word vs ""
    spm_targets_per_step: int = 2
    spm_varied: bool = False  # SPM training captions: erasure_prompt_pairs(varied=True) (more contexts, training vocabulary)
    spm_candidates: int = 1  # >1: train that many SPMs (seeds spm_seed + 1000 j), keep the best on validation_prompts
    spm_validate_others: int = 0  # >0: the selection also counts the drop in accuracy on that many validation captions per other value
    spm_others_rule: str = "sum"  # "sum": rate + drop; "tie-break": the drop only decides between equal rates
    spm_fixed_anchors: tuple[str, ...] = ("",)  # anchored every step: CFG's unconditional branch
    esd_steps: int = 150
    esd_lr: float = 1e-3
    target_sets: tuple[str, ...] = TARGET_SETS
    methods: tuple[str, ...] = METHODS
    guidance: float | None = None  # classifier-free guidance of every generation; None: the model's default


def load_model(name: str, s: Settings):
    """The zoo pipeline `name`, generating at s.guidance when set (else the model's default)."""
    pipe = osmos.zoo.load(name)
    if s.guidance is not None:
        pipe.recipe = dataclasses.replace(pipe.recipe, default_guidance=s.guidance)
    return pipe


FULL = Settings(seeds=(0, 1), variants=3, other_values=6, steps=15, spm_steps=150)
QUICK = Settings(seeds=(0,), variants=1, other_values=2, steps=10, spm_steps=25, spm_lr=2e-2, attack_seeds=(0, 1, 2))


def prompt_sets(kind: str, value: str, s: Settings) -> dict[str, list[str]]:
    """Prompts per evaluation set (see the module docstring): the target sets s.target_sets (each
    naming the concept with every value of the other kind, s.variants wordings / templates each),
    "others" and their (value, other value) labels "others_labels"."""
    other_kind = other_kind_of(kind)
    others = D.CONCEPTS[other_kind]
    train_words, held_words = D.WORDS[kind][value]
    other_word = lambda o: D.WORDS[other_kind][o][0][0]  # noqa: E731
    other_held = lambda o: D.WORDS[other_kind][o][1][0]  # noqa: E731
    t_train, t_held = D.TEMPLATES["train"], D.TEMPLATES["heldout"]
    # paraphrase k: held-out template k, held-out wording k shifted every full round of templates,
    # so 3 variants cover (t0, w0), (t1, w1), (t0, w1)
    para_word = lambda k: held_words[(k + k // len(t_held)) % len(held_words)]  # noqa: E731
    every = {
        "train": lambda: [caption_naming(t_train[k % len(t_train)], kind, train_words[k % len(train_words)],
                                         other_word(o), i) for i, o in enumerate(others) for k in range(s.variants)],
        "para": lambda: [caption_naming(t_held[k % len(t_held)], kind, para_word(k), other_held(o), i, split="heldout")
                         for i, o in enumerate(others) for k in range(s.variants)],
        "tmpl": lambda: [caption_naming(t_held[k], kind, train_words[0], other_word(o), i)
                         for i, o in enumerate(others) for k in range(min(s.variants, len(t_held)))],
        "syn": lambda: [caption_naming(t_train[k % len(t_train)], kind, held_words[k % len(held_words)], other_word(o), i)
                        for i, o in enumerate(others) for k in range(s.variants)],
    }
    unknown = set(s.target_sets) - set(every)
    if unknown or not s.target_sets:
        raise ValueError(f"target sets must be some of {TARGET_SETS}, got {s.target_sets}")
    sets = {name: every[name]() for name in s.target_sets}
    rest = [v for v in D.CONCEPTS[kind] if v != value]
    sets["others"] = [caption_naming(t_train[0], kind, D.WORDS[kind][v][0][0], other_word(o), i)
                      for v in rest for i, o in enumerate(others[: s.other_values])]
    sets["others_labels"] = [(v, o) for v in rest for o in others[: s.other_values]]
    return sets


class Scorer:
    def __init__(self, kind: str, value: str, sets: dict, seeds: tuple[int, ...]):
        self.clf = osmos.zoo.load("classifier")
        self.kind, self.index = kind, D.CONCEPTS[kind].index(value)
        self.other_kind = other_kind_of(kind)
        labels = [lab for lab in sets["others_labels"] for _ in seeds]
        self.others_kind = torch.tensor([D.CONCEPTS[kind].index(v) for v, _ in labels])
        self.others_other = torch.tensor([D.CONCEPTS[self.other_kind].index(o) for _, o in labels])

    def target_rate(self, images: torch.Tensor) -> float:
        return float((self.clf.predict(images)[self.kind] == self.index).float().mean())

    def pair_acc(self, images: torch.Tensor) -> float:
        pred = self.clf.predict(images)
        ok = (pred[self.kind] == self.others_kind) & (pred[self.other_kind] == self.others_other)
        return float(ok.float().mean())


def attack_states(pipe, encoding, gram, input_map, concept_words, value_word, lambda_reg):
    """Token states of the prompt `value_word` with its subject and later rows replaced by the
    closed-form regenerating embedding against the model with input map X (W' = W X)."""
    target = torch.cat(token_rows(encoding, concept_words, "all"))
    found = regenerating_embeddings(gram, input_map, target, lambda_reg)
    states, mask = pipe.encode_prompt([value_word])
    states = states.clone()
    first = token_rows(encoding, [value_word], "all")[0].shape[0]
    subject = int(encoding.subject_index([value_word])[0])
    states[0, subject : subject + first] = found[:first].to(states.dtype)
    return states, mask


def evaluate_concept(word: str, s: Settings, figures: Path, log, spm_cache: Path | None = None,
                     original_only: bool = False) -> list[dict]:
    """The table rows of one concept (see the module docstring): the original, then the methods
    s.methods. The Latent-Anchoring SPM ("spm", "spm-ft") comes from / goes into `spm_cache`
    (see train_zoo_spm). With original_only: only the original (does the model follow the
    concept at all?)."""
    kind, value = concept_of(word)
    sets = prompt_sets(kind, value, s)
    unknown = set(s.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"methods must be some of {METHODS}, got {s.methods}")
    pipe = load_model("shapes-unet", s)
    scorer = Scorer(kind, value, sets, s.seeds)
    encoding = zoo_text_encoding(pipe)
    layers = cross_attention_kv(pipe.unet)
    gram = original_gram(layers)
    words = training_wordings(kind, value)
    rest_words = [w for v in D.CONCEPTS[kind] if v != value for w in training_wordings(kind, v)]
    eye = torch.eye(gram.shape[0], dtype=torch.float64)

    def run_all(handle=None) -> dict[str, torch.Tensor]:
        return {name: generate(pipe, sets[name], s.seeds, num_inference_steps=s.steps, spm_handle=handle)
                for name in (*s.target_sets, "others")}

    def attack(input_map=None, handle=None) -> float:
        st, m = uce_attack if input_map is None else \
            attack_states(pipe, encoding, gram, input_map, words, words[0], s.lambda_reg)
        return scorer.target_rate(generate(pipe, states=st, mask=m, seeds=s.attack_seeds, num_inference_steps=s.steps,
                                           spm_handle=handle))

    common = dict(erase=words, guide=" ", preserve=rest_words, lambda_=0.5, eta_e=1.0, eta_p=1.0, tokens="all")
    dry = uce_edit(pipe.unet, encoding, **common)  # only for the embedding that breaks UCE
    dry.undo(pipe.unet)
    uce_attack = attack_states(pipe, encoding, gram, dry.input_map, words, words[0], s.lambda_reg)

    rows, grid_rows = [], []
    seed_label = (f", seed {s.spm_seed}" if s.spm_seed else "") + (", varied targets" if s.spm_varied else "") + \
        (f", best of {s.spm_candidates}" if s.spm_candidates > 1 else "")
    t0 = time.perf_counter()
    base = run_all()
    base_attack = (attack(), attack(eye))
    seed_gap = float((base["others"][:-1] - base["others"][1:]).abs().mean()) if len(base["others"]) > 1 else 0.0

    def record(method: str, images: dict, seconds: float | None, attack_rates: tuple[float | None, float | None]):
        row = {"concept": word, "kind": kind, "method": method, "seconds": None if seconds is None else round(seconds, 1)}
        for name in s.target_sets:
            row[f"rate_{name}"] = scorer.target_rate(images[name])
        row["others_pair_acc"] = scorer.pair_acc(images["others"])
        row["others_pixel_change"] = float((images["others"] - base["others"]).abs().mean())
        row["attack_vs_uce"], row["attack_rederived"] = attack_rates
        row["seed_gap"] = seed_gap
        rows.append(row)
        log(json.dumps(row))
        n_other = len(D.CONCEPTS[other_kind_of(kind)])
        per = s.variants * len(s.seeds)
        firsts = images["others"][:: s.other_values * len(s.seeds)][:4]  # one image of each of 4 other values
        grid_rows.append(torch.cat([images["train"][::per][:n_other], firsts]) if "train" in images else firsts)

    record("original", base, time.perf_counter() - t0, base_attack)
    if original_only:
        return rows

    if "spm-nola" in s.methods:
        t0 = time.perf_counter()
        spm = spm_for(pipe, value, s, 0.0)
        train_s = time.perf_counter() - t0
        with apply_spm(pipe.unet, [spm]) as handle:
            record(f"SPM, no LA{seed_label}", run_all(handle), train_s, (attack(handle=handle), None))
    if "spm" in s.methods or "spm-ft" in s.methods:  # time None (shown "cached") when read from spm_cache
        cached = spm_cache is not None and spm_cache_path(spm_cache, value, s).is_file()
        t0 = time.perf_counter()
        spm = train_zoo_spm(pipe, value, s, spm_cache)
        train_s = None if cached else time.perf_counter() - t0
        if "selection" in spm.settings:
            log(json.dumps({"spm_selection": spm.settings["selection"]}))
        if "spm" in s.methods:
            with apply_spm(pipe.unet, [spm]) as handle:
                record(f"SPM, LA {s.la_strength:g}{seed_label}", run_all(handle), train_s, (attack(handle=handle), None))
            if "selection" in spm.settings:
                rows[-1]["spm_selection"] = spm.settings["selection"]
        if "spm-ft" in s.methods:
            with apply_spm(pipe.unet, [spm], transport=zoo_transport(pipe, [spm])) as handle:
                record(f"SPM, LA {s.la_strength:g}, FT{seed_label}", run_all(handle), train_s, (None, None))

    if "esd" in s.methods:  # ESD-x: full fine-tune of the cross-attention weights with the same loss and prompts
        pairs = erasure_prompt_pairs(kind, value) if s.spm_targets == "captions" else None
        t0 = time.perf_counter()
        esd = train_esd(SPMTrainingPipe.of(pipe), value, steps=s.esd_steps, lr=s.esd_lr, sampling_steps=s.steps, seed=0,
                        prompts=pairs, targets_per_step=s.spm_targets_per_step if pairs else 1, progress=False)
        esd_s = time.perf_counter() - t0
        record("ESD-x", run_all(), esd_s, (attack(), None))
        esd.undo(pipe.unet)

    closed_form = (("uce", "UCE", uce_edit, {}),
                   ("rece", f"RECE ({s.rece_epochs} ep)", rece_edit, dict(epochs=s.rece_epochs, lambda_reg=s.lambda_reg)))
    for key, name, edit_fn, extra in closed_form:
        if key not in s.methods:
            continue
        t0 = time.perf_counter()
        edit = edit_fn(pipe.unet, encoding, **common, **extra)
        seconds = time.perf_counter() - t0
        record(name, run_all(), seconds, (attack(), attack(edit.input_map)))
        edit.undo(pipe.unet)

    only_spm = set(s.methods) <= {"spm", "spm-ft"}
    _save_rows_grid(grid_rows, figures / (f"erasure_{value}_spm.png" if only_spm else f"erasure_{value}.png"))
    return rows


def _save_rows_grid(rows: list[torch.Tensor], path: Path) -> None:
    """One grid row per method (each a [N, 3, S, S] batch of images)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(torch.cat(rows), path, nrow=len(rows[0]), scale=4)


MULTI_CONCEPTS = ("circle", "red", "star", "blue", "heart")


VALIDATION_PROMPTS = 24  # validation_prompts per SPM candidate (s.spm_candidates > 1) ...
VALIDATION_SEEDS = (0, 1, 2, 3)  # ... each generated with these seeds


def candidate_seeds(s: Settings) -> list[int]:
    """Training seeds of the s.spm_candidates SPMs: s.spm_seed + 1000 j (j = 0 is the plain seed)."""
    return [s.spm_seed + 1000 * j for j in range(s.spm_candidates)]


def spm_for(pipe, value: str, s: Settings, la_strength: float, cache: Path | None = None) -> SPM:
    """Train an SPM erasing one concept of the shapes world with the settings s (surrogate: the
    caption without the concept, or "" with s.spm_targets == "word"; anchors: the other
    concepts' wordings (and captions) plus s.spm_fixed_anchors, when la_strength > 0).
    With s.spm_candidates > 1: train_spm_selected over candidate_seeds(s), each SPM scored by
    the classifier's rate of the concept on VALIDATION_PROMPTS validation_prompts (training
    vocabulary, none of the training targets, never a paraphrase) x VALIDATION_SEEDS; every
    candidate also goes into `cache` under its own plain-seed name (spm_cache_path with
    spm_seed = its seed, spm_candidates = 1) unless that file exists, so `--spm-seed <its seed>`
    evaluates it alone without retraining; a candidate already there is read, not retrained
    (so another selection score, e.g. --spm-validate-others, re-scores the same draws)."""
    kind = concept_of(value)[0]
    pairs = erasure_prompt_pairs(kind, value, varied=s.spm_varied) if s.spm_targets == "captions" else None
    kwargs = dict(surrogate="", wordings=training_wordings(kind, value), steps=s.spm_steps, lr=s.spm_lr,
                  la_strength=la_strength, anchors=anchor_prompts(kind, value, s.anchor_captions) if la_strength else None,
                  anchors_per_step=4, sampling_steps=s.steps, progress=False, prompts=pairs,
                  targets_per_step=s.spm_targets_per_step if pairs else 1, fixed_anchors=s.spm_fixed_anchors,
                  anchor_norm_range=None)
    if s.spm_candidates <= 1:
        return train_spm(SPMTrainingPipe.of(pipe), value, seed=s.spm_seed, **kwargs)
    trained = [t for t, _ in pairs] if pairs else [value]
    validate = validation_check(pipe, kind, value, exclude=trained, n=VALIDATION_PROMPTS, seeds=VALIDATION_SEEDS,
                                num_inference_steps=s.steps, others=s.spm_validate_others,
                                others_rule=s.spm_others_rule if s.spm_validate_others else "sum")

    def plain(seed: int) -> tuple[Settings, Path | None]:
        one = dataclasses.replace(s, spm_seed=seed, spm_candidates=1)
        return one, None if cache is None else spm_cache_path(cache, value, one)

    def keep(seed: int, spm: SPM, score: float) -> None:
        path = plain(seed)[1]
        if path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            spm.save(path)

    def cached(seed: int) -> SPM | None:  # a candidate an earlier run cached: re-scored, not retrained
        one, path = plain(seed)
        return load_cached_spm(pipe, value, one, path) if path is not None and path.is_file() else None

    return train_spm_selected(SPMTrainingPipe.of(pipe), value, validate, candidate_seeds(s), on_candidate=keep,
                              trained=cached, **kwargs)[0]


def spm_cache_path(cache: Path, value: str, s: Settings) -> Path:
    """The cache file of the SPM erasing `value`: spm_<value>.safetensors, spm_<value>_seed<N>.safetensors
    for training seed s.spm_seed = N other than 0, so SPMs of different seeds never mix."""
    tail = (f"_seed{s.spm_seed}" if s.spm_seed else "") + ("_varied" if s.spm_varied else "") + \
        (f"_best{s.spm_candidates}" if s.spm_candidates > 1 else "") + \
        (f"_o{s.spm_validate_others}" if s.spm_candidates > 1 and s.spm_validate_others else "") + \
        ("_tb" if s.spm_candidates > 1 and s.spm_validate_others and s.spm_others_rule == "tie-break" else "")
    return cache / f"spm_{value}{tail}.safetensors"


def train_zoo_spm(pipe, value: str, s: Settings, cache: Path | None) -> SPM:
    """spm_for(..., s.la_strength), read from / written to `cache` (spm_cache_path) when given.
    A cached SPM trained with other settings (steps, lr, Latent Anchoring, sampling steps, seed) is an
    error, not silently reused; the file does not record which weights it was trained on, so use
    one folder per base model."""
    path = None if cache is None else spm_cache_path(cache, value, s)
    if path is not None and path.is_file():
        return load_cached_spm(pipe, value, s, path)
    spm = spm_for(pipe, value, s, s.la_strength, cache)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        spm.save(path)
    return spm


def load_cached_spm(pipe, value: str, s: Settings, path: Path) -> SPM:
    """The SPM in `path`, checked to have been trained with the settings s (else ValueError)."""
    spm = SPM.load(path, pipe.unet)
    want = {"steps": s.spm_steps, "lr": s.spm_lr, "la_strength": s.la_strength, "sampling_steps": s.steps,
            "seed": s.spm_seed}
    got = {k: spm.settings.get(k) for k in want}
    if s.spm_candidates > 1 or "selection" in spm.settings:  # a selected SPM: its seed is the chosen candidate's
        want["seed"] = candidate_seeds(s)
        got["seed"] = spm.settings.get("selection", {}).get("seeds", spm.settings.get("seed"))
    if s.spm_targets == "captions":  # files written before varied captions existed: the default captions
        kind = concept_of(value)[0]
        want["prompts"] = len(erasure_prompt_pairs(kind, value, varied=s.spm_varied))
        got["prompts"] = spm.settings.get("extra", {}).get("prompts", len(erasure_prompt_pairs(kind, value)))
    if got != want:
        raise ValueError(f"{path} was trained with {got}, this run wants {want}: use another --spm-cache folder")
    return spm


def evaluate_multi(s: Settings, counts: tuple[int, ...], log, cache: Path | None, figures: Path,
                   with_spm: bool = True, with_closed_form: bool = True) -> list[dict]:
    """Erase the first n of MULTI_CONCEPTS at once (n in counts) with UCE, RECE and composed SPMs
    (with and without Facilitated Transport). Erased: the mean target rate over the n concepts on
    their training captions (each with the 6 values of the other kind, seeds s.seeds). Remaining:
    pair accuracy on the prompts that name none of the 5 concepts (3 shapes x 4 colours, 3 seeds),
    the same set for every n, so erosion (original minus edited accuracy) is comparable across n.
    with_spm / with_closed_form: include the SPM / the UCE and RECE rows."""
    pipe = load_model("shapes-unet", s)
    clf = osmos.zoo.load("classifier")
    encoding = zoo_text_encoding(pipe)
    erased_all = [concept_of(c) for c in MULTI_CONCEPTS]
    rest = {kind: [v for v in D.CONCEPTS[kind] if (kind, v) not in erased_all] for kind in ("shape", "colour")}
    remain_prompts = [D.prompt_for(sh, co) for sh in rest["shape"] for co in rest["colour"]]
    remain_seeds = (0, 1, 2)
    remain_labels = {kind: torch.tensor([D.CONCEPTS[kind].index(v) for sh in rest["shape"] for co in rest["colour"]
                                         for v in [(sh if kind == "shape" else co)] for _ in remain_seeds])
                     for kind in ("shape", "colour")}
    named = {c: [caption_naming(D.TEMPLATES["train"][0], k, D.WORDS[k][v][0][0], D.WORDS[other_kind_of(k)][o][0][0], i)
                 for i, o in enumerate(D.CONCEPTS[other_kind_of(k)])] for c, (k, v) in zip(MULTI_CONCEPTS, erased_all)}

    def measure(handle=None) -> tuple[dict[str, float], float, torch.Tensor]:
        rates = {}
        for c, (k, v) in zip(MULTI_CONCEPTS, erased_all):
            images = generate(pipe, named[c], s.seeds, num_inference_steps=s.steps, spm_handle=handle)
            rates[c] = float((clf.predict(images)[k] == D.CONCEPTS[k].index(v)).float().mean())
        images = generate(pipe, remain_prompts, remain_seeds, num_inference_steps=s.steps, spm_handle=handle)
        pred = clf.predict(images)
        acc = float(((pred["shape"] == remain_labels["shape"]) & (pred["colour"] == remain_labels["colour"])).float().mean())
        return rates, acc, images[:: len(remain_seeds)][:6]

    rows, grid_rows = [], []
    base_rates, base_acc, base_images = measure()

    def record(method: str, n: int, rates: dict, acc: float, seconds: float, images: torch.Tensor):
        row = {"method": method, "n": n, "erased_rate": sum(rates[c] for c in MULTI_CONCEPTS[:n]) / n,
               "erased_rate_original": sum(base_rates[c] for c in MULTI_CONCEPTS[:n]) / n,
               "not_yet_erased_rate": (sum(rates[c] for c in MULTI_CONCEPTS[n:]) / (len(MULTI_CONCEPTS) - n)
                                       if n < len(MULTI_CONCEPTS) else None),
               "remaining_acc": acc, "remaining_acc_original": base_acc, "erosion": base_acc - acc,
               "seconds": round(seconds, 1)}
        rows.append(row)
        grid_rows.append(images)
        log(json.dumps(row))

    rows.append({"method": "original", "n": 0, "erased_rate": float("nan"), "erased_rate_original": float("nan"),
                 "not_yet_erased_rate": sum(base_rates.values()) / len(base_rates), "remaining_acc": base_acc,
                 "remaining_acc_original": base_acc, "erosion": 0.0, "seconds": 0.0, "original_rates": base_rates})
    log(json.dumps(rows[-1]))
    rest_words = lambda n: [w for kind in ("shape", "colour") for v in D.CONCEPTS[kind]  # noqa: E731
                            if (kind, v) not in erased_all[:n] for w in training_wordings(kind, v)]
    t0 = time.perf_counter()
    # last concepts first: single-concept runs in parallel (--spm-cache) may meanwhile cache the first ones
    spms = [train_zoo_spm(pipe, v, s, cache) for _, v in erased_all[: max(counts)][::-1]][::-1] if with_spm else []
    spm_s = time.perf_counter() - t0
    for n in counts:
        words = [w for k, v in erased_all[:n] for w in training_wordings(k, v)]
        common = dict(erase=words, guide=" ", preserve=rest_words(n), lambda_=0.5, eta_e=1.0, eta_p=1.0, tokens="all")
        closed_form = (("UCE", uce_edit, {}),
                       (f"RECE ({s.rece_epochs} ep)", rece_edit, dict(epochs=s.rece_epochs, lambda_reg=s.lambda_reg)))
        for name, edit_fn, extra in closed_form if with_closed_form else ():
            t0 = time.perf_counter()
            edit = edit_fn(pipe.unet, encoding, **common, **extra)
            seconds = time.perf_counter() - t0
            rates, acc, images = measure()
            record(name, n, rates, acc, seconds, images)
            edit.undo(pipe.unet)
        if not with_spm:
            continue
        with apply_spm(pipe.unet, spms[:n]) as handle:
            rates, acc, images = measure(handle)
        record("SPM composed", n, rates, acc, spm_s * n / max(counts), images)
        with apply_spm(pipe.unet, spms[:n], transport=zoo_transport(pipe, spms[:n])) as handle:
            rates, acc, images = measure(handle)
        record("SPM composed, FT", n, rates, acc, spm_s * n / max(counts), images)
    figures.mkdir(parents=True, exist_ok=True)
    name = "erasure_multi.png" if with_spm and with_closed_form else \
        "erasure_multi_spm.png" if with_spm else "erasure_multi_closed_form.png"
    save_grid(torch.cat([base_images, *grid_rows]), figures / name, nrow=len(base_images), scale=4)
    for row in rows:
        row["original_rates"] = base_rates
    return rows


def evaluate_transfer(word: str, model: str, s: Settings, cache: Path, log) -> list[dict]:
    """SPM transfer: the SPM trained on shapes-unet (from `cache`, trained there if missing) on
    another zoo model of the same architecture, without retraining: that model's original rates,
    then with the SPM (gamma 1) and with Facilitated Transport."""
    kind, value = concept_of(word)
    sets = prompt_sets(kind, value, s)
    spm = train_zoo_spm(load_model("shapes-unet", s), value, s, cache)
    pipe = load_model(model, s)
    spm.check_compatible(pipe.unet)
    scorer = Scorer(kind, value, sets, s.seeds)
    ft = zoo_transport(pipe, [spm])
    rows, base = [], None
    for method, transport in ((f"{model}: original", None), (f"{model}: SPM from shapes-unet", None),
                              (f"{model}: SPM from shapes-unet, FT", ft)):
        if base is None:
            handle = None
        else:
            handle = apply_spm(pipe.unet, [spm], transport=transport)
        images = {n: generate(pipe, sets[n], s.seeds, num_inference_steps=s.steps, spm_handle=handle)
                  for n in (*s.target_sets, "others")}
        if handle is not None:
            handle.remove()
        base = base or images
        row = {"concept": word, "kind": kind, "method": method, "seconds": 0.0,
               **{f"rate_{n}": scorer.target_rate(images[n]) for n in s.target_sets},
               "others_pair_acc": scorer.pair_acc(images["others"]),
               "others_pixel_change": float((images["others"] - base["others"]).abs().mean()),
               "attack_vs_uce": None, "attack_rederived": None,
               "seed_gap": float((base["others"][:-1] - base["others"][1:]).abs().mean())}
        rows.append(row)
        log(json.dumps(row))
    return rows


def multi_table(rows: list[dict]) -> str:
    out = ["| method | concepts erased | erased: target rate (original) | not yet erased of the 5: target rate | "
           "remaining: pair acc (original) | erosion (points) | edit / train time (s) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        later = "n/a" if r["not_yet_erased_rate"] is None else f"{r['not_yet_erased_rate']:.2f}"
        erased = "n/a" if r["n"] == 0 else f"{r['erased_rate']:.2f} ({r['erased_rate_original']:.2f})"
        out.append(f"| {r['method']} | {r['n']}: {', '.join(MULTI_CONCEPTS[: r['n']]) or '-'} | {erased} | {later} | {r['remaining_acc']:.2f} ({r['remaining_acc_original']:.2f}) | "
                   f"{100 * r['erosion']:+.1f} | {r['seconds']:.1f} |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    """The markdown table of evaluate_concept / evaluate_transfer rows: one target-rate column per
    target set the rows have."""
    names = [n for n in TARGET_SETS if any(f"rate_{n}" in r for r in rows)]
    out = ["| concept | method | " + " | ".join(f"target rate: {SET_TITLES[n]}" for n in names) + " | "
           "attack: c' vs UCE | attack: c' re-derived | others: pair acc | others: pixel change (seed gap) | "
           "edit / train time (s) |",
           "|---|---|" + "---|" * len(names) + "---|---|---|---|---|"]
    rate = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        rates = " | ".join(rate(r.get(f"rate_{n}")) for n in names)
        attack = f"{rate(r['attack_vs_uce'])} | {rate(r['attack_rederived'])}"
        out.append(f"| {r['concept']} ({r['kind']}) | {r['method']} | {rates} | {attack} | {r['others_pair_acc']:.2f} | "
                   f"{r['others_pixel_change']:.3f} ({r['seed_gap']:.3f}) | "
                   f"{'cached' if r['seconds'] is None else format(r['seconds'], '.1f')} |")
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 1 wording, 25 SPM steps, 10 DDIM steps (about 90 s of CPU time)")
    parser.add_argument("--la-strength", type=float, default=None, help="SPM Latent Anchoring weight (5)")
    parser.add_argument("--anchors", choices=("words+captions", "words"), default="words+captions",
                        help="SPM anchor vocabulary: other concepts' wordings, with or without captions")
    parser.add_argument("--concepts", nargs="+", default=["circle", "red"], help="concept words to erase")
    parser.add_argument("--spm-targets", choices=("captions", "word"), default="captions",
                        help="SPM / ESD training targets: caption pairs naming the concept, each with the "
                             "concept dropped as surrogate (default), or the bare concept word vs ''")
    parser.add_argument("--sets", nargs="+", choices=TARGET_SETS, default=None,
                        help=f"target prompt sets to generate (default all: {' '.join(TARGET_SETS)})")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                        help=f"edited models besides the original (default all: {' '.join(METHODS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds per prompt (default 0 1)")
    parser.add_argument("--spm-steps", type=int, default=None, help="SPM training steps (default 150)")
    parser.add_argument("--spm-seed", type=int, default=0,
                        help="training seed of the SPMs (default 0); cached as spm_<concept>_seed<N> when not 0")
    parser.add_argument("--spm-varied-targets", action="store_true",
                        help="train SPMs on the varied training captions (every training wording of the other kind, "
                             "other shape wordings, training backgrounds; erasure_prompt_pairs(varied=True)); "
                             "cached as spm_<concept>[_seed<N>]_varied")
    parser.add_argument("--spm-candidates", type=int, default=1, metavar="K",
                        help="train K SPMs per concept (seeds --spm-seed + 1000 j) and keep the one that leaves the "
                             "fewest images of the concept on validation captions (training vocabulary, none of the "
                             "training targets, no paraphrase); cached as spm_<concept>[...]_best<K> (default 1)")
    parser.add_argument("--spm-validate-others", type=int, default=0, metavar="N",
                        help="with --spm-candidates: also score each candidate by the drop of the classifier's "
                             "accuracy on N validation captions of every other value of the concept's kind "
                             "(seeds 0 1); cached as ..._best<K>_o<N> (default 0: the concept's rate only)")
    parser.add_argument("--spm-others-rule", choices=["sum", "tie-break"], default="sum",
                        help="with --spm-validate-others: add the drop to the rate (sum) or let it decide only "
                             "between equal rates (tie-break; cached as ..._o<N>_tb)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance scale of every generation (default: the model card's, 2.0 for shapes-unet)")
    parser.add_argument("--multi", action="store_true",
                        help=f"instead: erase 1, 3 and 5 of {', '.join(MULTI_CONCEPTS)} at once (UCE, RECE, SPM)")
    parser.add_argument("--closed-form-only", action="store_true", help="--multi with UCE and RECE only (no SPM training)")
    parser.add_argument("--original-only", action="store_true", help="only the original model's row per concept")
    parser.add_argument("--spm-only", action="store_true",
                        help="only the original and the LA SPM (from --spm-cache if there) with and without FT: "
                             "--multi without UCE / RECE, single concepts as --methods spm spm-ft")
    parser.add_argument("--spm-cache", default=None,
                        help="folder for the trained SPMs (LA), one per base model: reused from here when there")
    parser.add_argument("--transfer", default=None, metavar="MODEL",
                        help="also apply each concept's SPM, unchanged, to this zoo model (e.g. shapes-unet-ft) "
                             "if its weights are installed")
    parser.add_argument("--figures", default=str(FIGURES), help="folder for the PNG grids")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.spm_only and args.methods:
        parser.error("--spm-only and --methods exclude each other")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    """FULL or QUICK with the command line's overrides."""
    s = QUICK if args.quick else FULL
    change = dict(anchor_captions=args.anchors == "words+captions", spm_targets=args.spm_targets)
    if args.la_strength is not None:
        change["la_strength"] = args.la_strength
    if args.sets:
        change["target_sets"] = tuple(n for n in TARGET_SETS if n in args.sets)
    if args.methods or args.spm_only:
        change["methods"] = tuple(m for m in METHODS if m in (args.methods or ("spm", "spm-ft")))
    if args.seeds:
        change["seeds"] = tuple(args.seeds)
    if args.spm_steps is not None:
        change["spm_steps"] = args.spm_steps
    if args.guidance is not None:
        change["guidance"] = args.guidance
    change["spm_seed"] = args.spm_seed
    if args.spm_candidates < 1:
        raise SystemExit(f"--spm-candidates must be >= 1, got {args.spm_candidates}")
    change["spm_candidates"] = args.spm_candidates
    if args.spm_validate_others < 0:
        raise SystemExit(f"--spm-validate-others must be >= 0, got {args.spm_validate_others}")
    change["spm_validate_others"] = args.spm_validate_others
    if args.spm_others_rule != "sum" and not args.spm_validate_others:
        raise SystemExit("--spm-others-rule needs --spm-validate-others N > 0")
    change["spm_others_rule"] = args.spm_others_rule
    if args.spm_varied_targets:
        if args.spm_targets != "captions":
            raise SystemExit("--spm-varied-targets needs --spm-targets captions")
        change["spm_varied"] = True
    return dataclasses.replace(s, **change)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    s = settings_from(args)
    cache = Path(args.spm_cache) if args.spm_cache else None
    log = lambda m: print(m, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    if args.multi:
        rows = evaluate_multi(s, (1, 3, 5), log, cache, Path(args.figures), with_spm=not args.closed_form_only,
                              with_closed_form=not args.spm_only)
        text = multi_table(rows)
    else:
        rows = []
        for word in args.concepts:
            rows += evaluate_concept(word, s, Path(args.figures), log, spm_cache=cache, original_only=args.original_only)
            if args.transfer and args.transfer in osmos.zoo.available():
                rows += evaluate_transfer(word, args.transfer, s, cache, log)
            elif args.transfer:
                log(f"transfer skipped: {args.transfer!r} has no installed weights (available: {osmos.zoo.available()})")
        text = table(rows)
    print()
    print(text)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; settings {s}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
